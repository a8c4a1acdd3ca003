//! A recording proxy in front of moto. moto 5.2 lacks CompleteLifecycleAction and
//! RecordLifecycleActionHeartbeat: this proxy answers those itself (as Auto Scaling's query protocol
//! does) and forwards every other request to moto unchanged. It records every call it sees, by
//! action name (`X-Amz-Target` for JSON services such as ECS, `Action=` for query services), so
//! tests can count them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One call seen by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub action: String,
    /// Query parameters (query protocol) or the JSON body (JSON protocol) as text.
    pub params: Vec<(String, String)>,
    pub body: String,
}

impl Call {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    calls: Arc<Mutex<Vec<Call>>>,
    throttles: Arc<Mutex<Vec<Throttle>>>,
    registered: Arc<Mutex<Option<(i64, i64)>>>,
}

/// The next `left` JSON calls of `action` whose body contains `needle` are answered with
/// ThrottlingException (HTTP 400), as ECS does when a caller exceeds its rate.
struct Throttle {
    action: String,
    needle: String,
    left: u32,
}

pub struct LifecycleProxy {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    throttles: Arc<Mutex<Vec<Throttle>>>,
    registered: Arc<Mutex<Option<(i64, i64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LifecycleProxy {
    pub async fn start(upstream: &str) -> LifecycleProxy {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let throttles = Arc::new(Mutex::new(Vec::new()));
        let registered = Arc::new(Mutex::new(None));
        let shared = Shared {
            throttles: throttles.clone(),
            registered: registered.clone(),
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("proxy client"),
            calls: calls.clone(),
        };
        let app = Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind lifecycle proxy");
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LifecycleProxy {
            addr,
            calls,
            throttles,
            registered,
            task,
        }
    }

    /// moto registers every container instance with 4096 CPU units and 7482 MiB, whatever the
    /// instance (it ignores `totalResources`), while ECS registers what the agent on the host
    /// reports. From now on DescribeContainerInstances answers with `cpu`/`memory` registered and
    /// the remaining figures moved by the same amount (what moto reserved stays reserved).
    pub fn register_as(&self, cpu: i64, memory: i64) {
        *self.registered.lock().unwrap() = Some((cpu, memory));
    }

    /// Throttles the next `times` JSON calls of `action` whose body contains `needle` (e.g. a
    /// cluster name, so one test's calls are throttled and not another's).
    pub fn throttle(&self, action: &str, needle: &str, times: u32) {
        self.throttles.lock().unwrap().push(Throttle {
            action: action.into(),
            needle: needle.into(),
            left: times,
        });
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Calls of one action (e.g. "CompleteLifecycleAction", "UpdateContainerInstancesState").
    pub fn calls_of(&self, action: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.action == action)
            .collect()
    }
}

impl Drop for LifecycleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(action: &str) -> Response {
    let body = format!(
        "<{action}Response xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
         <{action}Result/><ResponseMetadata><RequestId>proxy-1</RequestId></ResponseMetadata>\
         </{action}Response>"
    );
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/xml"));
    r
}

async fn handle(State(s): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, 16 * 1024 * 1024).await else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let text = String::from_utf8_lossy(&bytes).to_string();
    let (action, params) = match parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        // awsJson (ECS): the body's top-level string members are the parameters.
        Some(target) => (
            target.rsplit('.').next().unwrap_or(target).to_string(),
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes)
                .map(|m| {
                    m.into_iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        None => {
            let params: Vec<(String, String)> = form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let action = params
                .iter()
                .find(|(k, _)| k == "Action")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            (action, params)
        }
    };
    s.calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Call {
            action: action.clone(),
            params,
            body: text.clone(),
        });
    if action == "CompleteLifecycleAction" || action == "RecordLifecycleActionHeartbeat" {
        return answer(&action);
    }
    let throttled = s.throttles.lock().unwrap().iter_mut().any(|t| {
        let hit = t.left > 0 && t.action == action && text.contains(&t.needle);
        if hit {
            t.left -= 1;
        }
        hit
    });
    if throttled {
        let mut r = (
            StatusCode::BAD_REQUEST,
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        )
            .into_response();
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        return r;
    }
    let response = forward(&s, parts.method, &parts.uri, &parts.headers, bytes).await;
    let registered = *s.registered.lock().unwrap();
    match registered {
        Some(r) if action == "DescribeContainerInstances" => registered_as(response, r).await,
        _ => response,
    }
}

/// A DescribeContainerInstances answer with the CPU and MEMORY registered as `(cpu, memory)`.
async fn registered_as(response: Response, (cpu, memory): (i64, i64)) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let value = |list: &serde_json::Value, name: &str| {
        list.as_array()?
            .iter()
            .find(|r| r["name"] == name)?
            .get("integerValue")?
            .as_i64()
    };
    for ci in v["containerInstances"].as_array_mut().into_iter().flatten() {
        for (name, want) in [("CPU", cpu), ("MEMORY", memory)] {
            let Some(had) = value(&ci["registeredResources"], name) else {
                continue;
            };
            let delta = want - had;
            for (key, add) in [
                ("registeredResources", delta),
                ("remainingResources", delta),
            ] {
                if let Some(list) = ci[key].as_array_mut()
                    && let Some(r) = list.iter_mut().find(|r| r["name"] == name)
                    && let Some(n) = r["integerValue"].as_i64()
                {
                    r["integerValue"] = serde_json::json!(n + add);
                }
            }
        }
    }
    let mut parts = parts;
    parts.headers.remove("content-length");
    Response::from_parts(parts, Body::from(serde_json::to_vec(&v).unwrap()))
}

async fn forward(
    s: &Shared,
    method: axum::http::Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = s
        .client
        .request(method, format!("{}{path}", s.upstream))
        .body(body);
    for (k, v) in headers {
        if k == "host" || k == "content-length" {
            continue;
        }
        req = req.header(k, v);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status();
            let headers = r.headers().clone();
            let body = r.bytes().await.unwrap_or_default();
            let mut out = Response::new(Body::from(body));
            *out.status_mut() = status;
            for (k, v) in &headers {
                if k == "content-length" || k == "transfer-encoding" || k == "connection" {
                    continue;
                }
                out.headers_mut().insert(k, v.clone());
            }
            out
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("moto: {e}")).into_response(),
    }
}
