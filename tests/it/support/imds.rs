//! A fake IMDSv2 server on 127.0.0.1: `PUT /latest/api/token` hands out tokens with the asked TTL,
//! `GET /latest/meta-data/<path>` requires a live token and serves what the test set (404 otherwise).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

#[derive(Default)]
struct Inner {
    values: HashMap<String, String>,
    tokens: HashMap<String, Instant>,
    next_token: u64,
    requests: HashMap<String, u64>,
    token_requests: u64,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Inner>>);

pub struct FakeImds {
    addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeImds {
    pub async fn start() -> FakeImds {
        let shared = Shared::default();
        let app = Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/meta-data/{*path}", get(meta_data))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake IMDS");
        let addr = listener.local_addr().expect("fake IMDS address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeImds { addr, shared, task }
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

    /// Expires every token handed out so far: the next GET with one gets 401.
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
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

async fn token(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
        return (StatusCode::BAD_REQUEST, "missing or invalid TTL").into_response();
    };
    let mut inner = s.0.lock().unwrap_or_else(|p| p.into_inner());
    inner.token_requests += 1;
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
    let mut inner = s.0.lock().unwrap_or_else(|p| p.into_inner());
    *inner.requests.entry(path.clone()).or_default() += 1;
    let valid = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| inner.tokens.get(t))
        .is_some_and(|exp| *exp > Instant::now());
    if !valid {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match inner.values.get(&path) {
        Some(body) => (StatusCode::OK, body.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
