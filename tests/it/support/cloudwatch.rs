//! A CloudWatch endpoint for tests: a small proxy on 127.0.0.1 that speaks the Smithy RPC v2 CBOR
//! protocol of current `aws-sdk-cloudwatch` towards the SDK and awsJson1_0 towards moto, which does
//! not speak CBOR. It also counts the `PutMetricData` requests it sees, can refuse connections (an
//! outage) and can deny access (a role without the permission).
//!
//! Translation: request bodies are gzip-decoded when the SDK compressed them (it does for
//! PutMetricData past 10 KiB), CBOR → JSON with epoch-seconds timestamps (CBOR tag 1) as JSON
//! numbers; responses JSON → CBOR with numbers as floats (every number in the CloudWatch responses we
//! read is a double) and the timestamp members tagged again. Dimension matching is made exact, as in
//! CloudWatch (see `exact_dimension_sets`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::post;
use ciborium::Value as Cbor;
use serde_json::Value as Json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One PutMetricData the proxy received: metric names and datum timestamps (epoch seconds).
#[derive(Debug, Clone)]
pub struct Put {
    /// The request's namespace.
    pub namespace: Option<String>,
    pub metrics: Vec<String>,
    /// Each datum's value, in the order of `metrics`.
    pub values: Vec<f64>,
    pub timestamps: Vec<i64>,
    pub datums: usize,
}

impl Put {
    /// The values sent for `metric` in this request (one per dimension set).
    pub fn values_of(&self, metric: &str) -> Vec<f64> {
        self.metrics
            .iter()
            .zip(&self.values)
            .filter(|(m, _)| *m == metric)
            .map(|(_, v)| *v)
            .collect()
    }

    /// The startup check's probe (only `AgentStarts`), not a period.
    pub fn is_probe(&self) -> bool {
        self.metrics.iter().all(|m| m == "AgentStarts")
    }
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    puts: Mutex<Vec<Put>>,
    deny: AtomicBool,
}

pub struct CloudWatchProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Option<(CancellationToken, JoinHandle<()>)>,
}

impl CloudWatchProxy {
    /// Starts the proxy in front of moto at `upstream` (its base URL).
    pub async fn start(upstream: &str) -> CloudWatchProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            puts: Mutex::new(Vec::new()),
            deny: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let mut proxy = CloudWatchProxy {
            addr,
            shared,
            serving: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/service/{service}/operation/{op}", post(handle))
            .with_state(self.shared.clone());
        let token = CancellationToken::new();
        let stop = token.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        self.serving = Some((token, task));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening: connections are refused until [`up`](Self::up). Idle keep-alive connections
    /// are closed, so the SDK cannot slip a request through a pooled one.
    pub async fn down(&mut self) {
        if let Some((token, task)) = self.serving.take() {
            token.cancel();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        if self.serving.is_some() {
            return;
        }
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind proxy port");
        self.serve(listener);
    }

    /// Answers every request with 403 AccessDenied (as CloudWatch does for a role without
    /// cloudwatch:PutMetricData in the namespace).
    pub fn deny(&self, deny: bool) {
        self.shared.deny.store(deny, Ordering::SeqCst);
    }

    /// PutMetricData requests moto accepted so far (including the startup probe). Recorded once moto
    /// answered, so a request cut off mid-way (a publisher stopped during a send) is not counted.
    pub fn puts(&self) -> Vec<Put> {
        self.shared.puts.lock().unwrap().clone()
    }

    /// PutMetricData requests that carried periods (not the startup probe).
    pub fn period_puts(&self) -> Vec<Put> {
        self.puts().into_iter().filter(|p| !p.is_probe()).collect()
    }

    /// An SDK configuration for CloudWatch through this proxy: fake credentials, us-east-1, and
    /// quick SDK retries so an outage costs the test little time.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_cloudwatch::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .endpoint_url(self.url())
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(2)
                    .with_initial_backoff(std::time::Duration::from_millis(50)),
            )
            .load()
            .await
    }
}

fn cbor_response(status: StatusCode, body: &Cbor) -> Response<Body> {
    let mut bytes = Vec::new();
    ciborium::into_writer(body, &mut bytes).expect("encode CBOR");
    Response::builder()
        .status(status)
        .header("content-type", "application/cbor")
        .header("smithy-protocol", "rpc-v2-cbor")
        .body(Body::from(bytes))
        .expect("response")
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    cbor_response(
        status,
        &Cbor::Map(vec![
            (Cbor::Text("__type".into()), Cbor::Text(code.into())),
            (Cbor::Text("message".into()), Cbor::Text(message.into())),
        ]),
    )
}

async fn handle(
    State(s): State<Arc<Shared>>,
    Path((service, op)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    let gzipped = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let raw = if gzipped {
        let mut out = Vec::new();
        if let Err(e) =
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out)
        {
            return error(
                StatusCode::BAD_REQUEST,
                "SerializationException",
                &format!("gzip: {e}"),
            );
        }
        out
    } else {
        body.to_vec()
    };
    let request: Cbor = if raw.is_empty() {
        Cbor::Map(Vec::new())
    } else {
        match ciborium::from_reader(&raw[..]) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "SerializationException",
                    &format!("CBOR: {e}"),
                );
            }
        }
    };
    let mut json = cbor_to_json(request);
    exact_dimension_sets(&op, &mut json);
    if s.deny.load(Ordering::SeqCst) {
        return error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            &format!(
                "User: arn:aws:sts::123456789012:assumed-role/test is not authorized to perform: cloudwatch:{op}"
            ),
        );
    }
    let mut forward = s
        .http
        .post(format!("{}/", s.upstream))
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amz-target", format!("{service}.{op}"))
        .body(json.to_string());
    // moto reads the region from the SigV4 credential scope.
    if let Some(auth) = headers.get("authorization") {
        forward = forward.header("authorization", auth.clone());
    }
    let (status, text) = match forward.send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => return error(StatusCode::BAD_GATEWAY, "InternalFailure", &e.to_string()),
    };
    if op == "PutMetricData" && status == 200 {
        let data = json["MetricData"].as_array().cloned().unwrap_or_default();
        s.puts.lock().unwrap().push(Put {
            namespace: json["Namespace"].as_str().map(str::to_string),
            metrics: data
                .iter()
                .map(|d| d["MetricName"].as_str().unwrap_or("").to_string())
                .collect(),
            values: data
                .iter()
                .map(|d| d["Value"].as_f64().unwrap_or(f64::NAN))
                .collect(),
            timestamps: data
                .iter()
                .filter_map(|d| d["Timestamp"].as_f64().map(|t| t as i64))
                .collect(),
            datums: data.len(),
        });
    }
    let value: Json = if text.trim().is_empty() {
        Json::Object(Default::default())
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "message": text }))
    };
    cbor_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json_to_cbor(None, value),
    )
}

/// CloudWatch matches a query's dimensions to a metric's exact dimension set; moto matches any
/// metric whose dimensions include the query's (so `{ClusterName}` would also sum the
/// `{ClusterName, InstanceId}` datums). Tagging every datum and query with a `_DimensionSet`
/// dimension naming its whole set makes moto's subset match an exact one.
fn exact_dimension_sets(op: &str, json: &mut Json) {
    fn tag(dims: &mut Json) {
        let mut names: Vec<String> = dims
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["Name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let marker = serde_json::json!({ "Name": "_DimensionSet", "Value": names.join(",") });
        match dims {
            Json::Array(a) => a.push(marker),
            other => *other = Json::Array(vec![marker]),
        }
    }
    match op {
        "PutMetricData" => {
            if let Some(data) = json["MetricData"].as_array_mut() {
                for d in data {
                    if d.get("Dimensions").is_none() {
                        d["Dimensions"] = Json::Array(Vec::new());
                    }
                    tag(&mut d["Dimensions"]);
                }
            }
        }
        "GetMetricStatistics" => {
            if json.get("Dimensions").is_none() {
                json["Dimensions"] = Json::Array(Vec::new());
            }
            tag(&mut json["Dimensions"]);
        }
        _ => {}
    }
}

/// CBOR → JSON as awsJson1_0 wants it: timestamps (tag 1) as epoch seconds.
pub fn cbor_to_json(v: Cbor) -> Json {
    match v {
        Cbor::Null => Json::Null,
        Cbor::Bool(b) => Json::Bool(b),
        Cbor::Integer(i) => {
            let i: i128 = i.into();
            Json::from(i as i64)
        }
        Cbor::Float(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        Cbor::Text(s) => Json::String(s),
        Cbor::Bytes(b) => Json::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        Cbor::Tag(_, inner) => cbor_to_json(*inner),
        Cbor::Array(a) => Json::Array(a.into_iter().map(cbor_to_json).collect()),
        Cbor::Map(m) => Json::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Cbor::Text(s) => s,
                        other => format!("{other:?}"),
                    };
                    (key, cbor_to_json(v))
                })
                .collect(),
        ),
        _ => Json::Null,
    }
}

/// JSON → CBOR for the SDK: numbers as doubles, `Timestamp`/`Timestamps` members as tag-1 epoch
/// seconds, strings that moto returns as ISO dates for timestamp members converted too.
pub fn json_to_cbor(key: Option<&str>, v: Json) -> Cbor {
    let is_time = matches!(key, Some("Timestamp" | "Timestamps"));
    match v {
        Json::Null => Cbor::Null,
        Json::Bool(b) => Cbor::Bool(b),
        Json::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if is_time {
                Cbor::Tag(1, Box::new(Cbor::Float(f)))
            } else {
                Cbor::Float(f)
            }
        }
        Json::String(s) => {
            if is_time
                && let Ok(t) =
                    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            {
                return Cbor::Tag(1, Box::new(Cbor::Float(t.unix_timestamp() as f64)));
            }
            Cbor::Text(s)
        }
        Json::Array(a) => Cbor::Array(a.into_iter().map(|x| json_to_cbor(key, x)).collect()),
        Json::Object(m) => Cbor::Map(
            m.into_iter()
                .map(|(k, v)| {
                    let c = json_to_cbor(Some(&k), v);
                    (Cbor::Text(k), c)
                })
                .collect(),
        ),
    }
}
