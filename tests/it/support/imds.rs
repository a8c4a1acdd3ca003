//! A fake IMDSv2 server on 127.0.0.1: `PUT /latest/api/token` hands out tokens with the asked TTL,
//! `GET /latest/meta-data/<path>` requires a live token (401 otherwise, as IMDSv2-only instances
//! answer) and serves what the test set (404 otherwise).
//!
//! Faults can be injected: latency on every answer, a fixed status (500s, 401s), garbage bodies,
//! answers slower than any client timeout, refused tokens (an IMDSv1-only peer). It can also be
//! started on a chosen address, so a test can make IMDS unreachable first and appear later.
//!
//! Also used by the benchmarks (`benches/support/`), so it depends only on regular dependencies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

/// What every meta-data GET answers instead of the stored value while set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// This HTTP status, empty body.
    Status(u16),
    /// 200 with this body, for every path.
    Garbage(String),
    /// No answer for this long (longer than the client's timeout: a timeout).
    Hang(Duration),
}

#[derive(Default)]
struct Inner {
    values: HashMap<String, String>,
    tokens: HashMap<String, Instant>,
    next_token: u64,
    requests: HashMap<String, u64>,
    token_requests: u64,
    token_ttls: Vec<u64>,
    unauthorized: u64,
    latency: Duration,
    fault: Option<Fault>,
    /// Some(status): the token endpoint answers this (e.g. 404/405: no IMDSv2 here).
    refuse_tokens: Option<u16>,
    /// false: GETs without a token are served (IMDSv1 allowed on the instance).
    require_token: bool,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Inner>>);

pub struct FakeImds {
    addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeImds {
    pub async fn start() -> FakeImds {
        Self::start_on("127.0.0.1:0".parse().expect("loopback address"))
            .await
            .expect("bind fake IMDS")
    }

    /// Starts on `addr` (e.g. a port that was refusing connections until now).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeImds> {
        let shared = Shared(Arc::new(Mutex::new(Inner {
            require_token: true,
            ..Inner::default()
        })));
        let app = Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/meta-data/{*path}", get(meta_data))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeImds { addr, shared, task })
    }

    /// A loopback address nothing listens on (bound, then released): connections are refused.
    pub fn closed_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to put in AWS_EC2_METADATA_SERVICE_ENDPOINT.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `body` at `latest/meta-data/<path>` from now on.
    pub fn set(&self, path: &str, body: &str) {
        self.lock()
            .values
            .insert(path.trim_matches('/').to_string(), body.to_string());
    }

    /// Makes `path` answer 404 again.
    pub fn remove(&self, path: &str) {
        self.lock().values.remove(path.trim_matches('/'));
    }

    /// Serves a spot interruption notice: `terminate` at `time`, in whole seconds UTC as IMDS
    /// writes it (`2017-09-18T08:22:00Z`).
    pub fn set_spot_terminate(&self, time: SystemTime) {
        let at = time::OffsetDateTime::from(time)
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .expect("format a spot notice time");
        self.set(
            "spot/instance-action",
            &format!(r#"{{"action":"terminate","time":"{at}"}}"#),
        );
    }

    /// Waits until each notice path has been polled at least `more` more times than now; false
    /// when that takes longer than `limit` (the pollers stopped).
    pub async fn polls_pass(&self, more: u64, limit: Duration) -> bool {
        const PATHS: [&str; 4] = [
            "spot/instance-action",
            "autoscaling/target-lifecycle-state",
            "events/recommendations/rebalance",
            "events/maintenance/scheduled",
        ];
        let base = PATHS.map(|p| self.requests(p));
        let start = Instant::now();
        while !PATHS
            .iter()
            .zip(base)
            .all(|(p, b)| self.requests(p) >= b + more)
        {
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// GETs seen for `path` (with or without a valid token).
    pub fn requests(&self, path: &str) -> u64 {
        self.lock()
            .requests
            .get(path.trim_matches('/'))
            .copied()
            .unwrap_or(0)
    }

    pub fn token_requests(&self) -> u64 {
        self.lock().token_requests
    }

    /// The TTLs (seconds) asked for, one per token request that carried a valid one.
    pub fn token_ttls(&self) -> Vec<u64> {
        self.lock().token_ttls.clone()
    }

    /// 401s answered so far.
    pub fn unauthorized(&self) -> u64 {
        self.lock().unauthorized
    }

    /// Expires every token handed out so far: the next GET with one gets 401.
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Delays every answer (token and meta-data) by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Every meta-data GET answers `fault` (None: back to normal).
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.lock().fault = fault;
    }

    /// The token endpoint answers `status` (None: hands out tokens again).
    pub fn refuse_tokens(&self, status: Option<u16>) {
        self.lock().refuse_tokens = status;
    }

    /// Whether meta-data GETs need a token (true by default, as on an IMDSv2-only instance).
    pub fn require_token(&self, required: bool) {
        self.lock().require_token = required;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn token(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let (latency, refuse) = {
        let inner = s.lock();
        (inner.latency, inner.refuse_tokens)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = refuse {
        s.lock().token_requests += 1;
        return status_only(status);
    }
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
        return (StatusCode::BAD_REQUEST, "missing or invalid TTL").into_response();
    };
    let mut inner = s.lock();
    inner.token_requests += 1;
    inner.token_ttls.push(ttl);
    inner.next_token += 1;
    let tok = format!("token-{}", inner.next_token);
    inner
        .tokens
        .insert(tok.clone(), Instant::now() + Duration::from_secs(ttl));
    (StatusCode::OK, tok).into_response()
}

async fn meta_data(
    State(s): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = path.trim_matches('/').to_string();
    let (latency, fault) = {
        let mut inner = s.lock();
        *inner.requests.entry(path.clone()).or_default() += 1;
        (inner.latency, inner.fault.clone())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Some(Fault::Status(status)) => {
            if status == 401 {
                s.lock().unauthorized += 1;
            }
            return status_only(status);
        }
        Some(Fault::Garbage(body)) => return (StatusCode::OK, body).into_response(),
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        None => {}
    }
    let mut inner = s.lock();
    let valid = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| inner.tokens.get(t))
        .is_some_and(|exp| *exp > Instant::now());
    if !valid && inner.require_token {
        inner.unauthorized += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match inner.values.get(&path) {
        Some(body) => (StatusCode::OK, body.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn status_only(status: u16) -> Response {
    StatusCode::from_u16(status)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response()
}
