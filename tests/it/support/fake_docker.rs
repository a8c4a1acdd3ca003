//! A Docker Engine API on a unix socket of its own, for daemon tests that need an exact set of
//! running ECS task containers: the real engine is shared with every other test running at the
//! same time, so "this host runs nothing" cannot be said of it.
//!
//! It answers what the daemon asks (`/version`, `/_ping`, the container list, inspect and the
//! event stream), with or without the API version prefix bollard adds after negotiation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Response, StatusCode, Uri};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One running container of an ECS task, as the ECS agent would have started it.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub id: String,
    pub cluster: String,
    pub task_arn: String,
    pub family: String,
    pub revision: u32,
    pub cpu_shares: i64,
    pub memory_bytes: i64,
}

impl FakeContainer {
    fn inspect(&self) -> Value {
        json!({
            "Id": self.id,
            "Name": format!("/ecs-{}-{}", self.family, self.id),
            "State": {"Running": true, "Status": "running"},
            "Config": {"Labels": {
                "com.amazonaws.ecs.cluster": self.cluster,
                "com.amazonaws.ecs.task-arn": self.task_arn,
                "com.amazonaws.ecs.task-definition-family": self.family,
                "com.amazonaws.ecs.task-definition-version": self.revision.to_string(),
                "com.amazonaws.ecs.container-name": self.family,
            }},
            "HostConfig": {
                "CpuShares": self.cpu_shares,
                "Memory": self.memory_bytes,
                "NetworkMode": "bridge",
            },
        })
    }
}

struct Shared {
    containers: Mutex<BTreeMap<String, FakeContainer>>,
    events: broadcast::Sender<String>,
}

pub struct FakeDocker {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    shared: Arc<Shared>,
    token: CancellationToken,
}

impl FakeDocker {
    pub async fn start() -> FakeDocker {
        let dir = tempfile::tempdir().expect("socket dir");
        let socket = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind fake docker socket");
        let shared = Arc::new(Shared {
            containers: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(64).0,
        });
        let state = shared.clone();
        let app = Router::new().fallback(move |uri: Uri| {
            let state = state.clone();
            async move { answer(&state, &uri) }
        });
        let token = CancellationToken::new();
        let stop = token.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        FakeDocker {
            _dir: dir,
            socket,
            shared,
            token,
        }
    }

    /// The socket to give the daemon as `host.docker_socket`.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Starts `c` (a `start` event on the stream).
    pub fn run(&self, c: FakeContainer) {
        let id = c.id.clone();
        self.shared.containers.lock().unwrap().insert(id.clone(), c);
        self.event("start", &id);
    }

    /// Stops and removes the container `id` (`die` and `destroy` events).
    pub fn remove(&self, id: &str) {
        self.shared.containers.lock().unwrap().remove(id);
        self.event("die", id);
        self.event("destroy", id);
    }

    fn event(&self, action: &str, id: &str) {
        let line = json!({
            "Type": "container",
            "Action": action,
            "Actor": {"ID": id, "Attributes": {}},
            "time": 0,
        });
        let _ = self.shared.events.send(format!("{line}\n"));
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn answer(shared: &Shared, uri: &Uri) -> Response<Body> {
    // `/v1.47/containers/json` and `/containers/json` alike.
    let path = uri.path();
    let path = match path.strip_prefix("/v") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        _ => path,
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["_ping"] => text(StatusCode::OK, "OK"),
        ["version"] => body(
            StatusCode::OK,
            json!({"ApiVersion": "1.43", "MinAPIVersion": "1.12", "Version": "24.0.0", "Os": "linux"}),
        ),
        ["containers", "json"] => {
            let list: Vec<Value> = shared
                .containers
                .lock()
                .unwrap()
                .values()
                .map(|c| json!({"Id": c.id, "Names": [format!("/ecs-{}", c.id)], "State": "running"}))
                .collect();
            body(StatusCode::OK, Value::Array(list))
        }
        ["containers", id, "json"] => match shared.containers.lock().unwrap().get(*id) {
            Some(c) => body(StatusCode::OK, c.inspect()),
            None => body(
                StatusCode::NOT_FOUND,
                json!({"message": format!("No such container: {id}")}),
            ),
        },
        ["events"] => {
            let rx = shared.events.subscribe();
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(line) => return Some((Ok::<_, std::convert::Infallible>(line), rx)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .expect("events response")
        }
        _ => body(
            StatusCode::NOT_FOUND,
            json!({"message": format!("fake docker: {path} not served")}),
        ),
    }
}

fn body(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .expect("response")
}

fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Body::from(s))
        .expect("response")
}
