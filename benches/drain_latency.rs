//! Time from a spot notice appearing in IMDS to the UpdateContainerInstancesState DRAINING request
//! arriving at ECS: the daemon's whole path (IMDS poller → channel → drain runner → persisted state →
//! AWS SDK → HTTP), at the default configuration (1 s poll, 1 s timeout).
//!
//! Peers on loopback: the fake IMDSv2 of the tests, and a minimal ECS endpoint (awsJson 1.1) that
//! answers the three calls the drain makes and stamps the moment the DRAINING request arrives. The
//! container instance ARN is looked up ahead with `AwsEffects::resolve_ahead`, as the daemon does.
//! Each sample uses a fresh state directory and runner (a new drain), and publishes its notice at a
//! uniformly random phase of the poll cycle: expect p50 ≈ interval/2 and p99 ≈ interval, plus the
//! request times.
//!
//! `cargo bench --bench drain_latency` (DRAIN_SAMPLES=N to change the sample count, default 100).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ecs::config::Credentials;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ecs_capacity_agent::config::{DrainConfig, ImdsConfig};
use ecs_capacity_agent::drain::{AwsEffects, Runner, Settings, Store, Target};
use ecs_capacity_agent::health::Health;
use ecs_capacity_agent::imds::{self, Client};
use ecs_capacity_agent::notice::Notice;
use rand::RngExt as _;
use support::imds::FakeImds;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const SPOT: &str = "spot/instance-action";
const CLUSTER: &str = "bench";
const INSTANCE: &str = "i-0123456789abcdef0";
const ARN: &str = "arn:aws:ecs:us-east-1:123456789012:container-instance/bench/0123456789abcdef";

fn main() {
    let samples = support::env_number("DRAIN_SAMPLES", 100) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(samples));
}

/// What the fake ECS saw: when each DRAINING request arrived, and how many calls of each kind.
#[derive(Default)]
struct Seen {
    draining: Vec<Instant>,
    calls: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

async fn ecs(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    let action = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_string();
    let body = String::from_utf8_lossy(&body);
    let answer = match action.as_str() {
        "ListContainerInstances" => format!(r#"{{"containerInstanceArns":["{ARN}"]}}"#),
        "DescribeContainerInstances" => format!(
            r#"{{"containerInstances":[{{"containerInstanceArn":"{ARN}","ec2InstanceId":"{INSTANCE}","status":"ACTIVE","runningTasksCount":1}}],"failures":[]}}"#
        ),
        "UpdateContainerInstancesState" => {
            let status = if body.contains("DRAINING") {
                "DRAINING"
            } else {
                "ACTIVE"
            };
            if status == "DRAINING" {
                seen.lock().unwrap().draining.push(arrived);
            }
            format!(
                r#"{{"containerInstances":[{{"containerInstanceArn":"{ARN}","ec2InstanceId":"{INSTANCE}","status":"{status}"}}],"failures":[]}}"#
            )
        }
        _ => {
            seen.lock().unwrap().calls.push(action);
            return (StatusCode::BAD_REQUEST, "unexpected call").into_response();
        }
    };
    seen.lock().unwrap().calls.push(action);
    (
        [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
        answer,
    )
        .into_response()
}

async fn run(samples: usize) {
    let seen: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake ECS");
    let ecs_url = format!("http://{}", listener.local_addr().expect("address"));
    let app = Router::new().fallback(ecs).with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .endpoint_url(&ecs_url)
        .load()
        .await;

    let fake = FakeImds::start().await;
    let imds_cfg = ImdsConfig::default();
    let client = Client::with_endpoint(&imds_cfg, &fake.url()).expect("IMDS client");
    let health = Arc::new(Health::default());
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (tx, mut notices) = mpsc::channel(32);
    imds::spawn_pollers(
        Arc::new(client),
        &imds_cfg,
        tx,
        token.clone(),
        &tracker,
        health.clone(),
    );
    // The pollers run for the whole bench; each sample's runner gets the notices through this hop
    // (a channel send, microseconds).
    let current: Arc<Mutex<Option<mpsc::Sender<Notice>>>> = Arc::default();
    let forward_to = current.clone();
    tracker.spawn(async move {
        while let Some(n) = notices.recv().await {
            let tx = forward_to.lock().unwrap().clone();
            if let Some(tx) = tx {
                let _ = tx.send(n).await;
            }
        }
    });
    tracker.close();

    let effects = Arc::new(AwsEffects::new(
        &sdk,
        Target {
            cluster: CLUSTER.into(),
            instance_id: INSTANCE.into(),
            ..Target::default()
        },
    ));
    effects.resolve_ahead(&token).await;
    let settings = Settings::from_config(&DrainConfig::default());
    // Let the first polls (token fetch, connections) happen before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let interval = imds_cfg.poll_interval;
    let base = SystemTime::now() + Duration::from_secs(3600);
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let dir = tempfile::tempdir().expect("state dir");
        let (runner, _handles) = Runner::new(
            settings.clone(),
            Store::open(dir.path()).expect("store"),
            effects.clone(),
            health.clone(),
        );
        let (sample_tx, sample_rx) = mpsc::channel(8);
        *current.lock().unwrap() = Some(sample_tx);
        let stop = CancellationToken::new();
        let running = tokio::spawn(runner.run(sample_rx, stop.clone()));

        let phase = interval.mul_f64(rand::rng().random_range(0.0..1.0));
        tokio::time::sleep(phase).await;
        let before = seen.lock().unwrap().draining.len();
        fake.set_spot_terminate(base + Duration::from_secs(i as u64));
        let published = Instant::now();
        let arrived = loop {
            if let Some(at) = seen.lock().unwrap().draining.get(before).copied() {
                break at;
            }
            assert!(
                published.elapsed() < Duration::from_secs(10),
                "no DRAINING request within 10 s of sample {i}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        latencies.push(arrived.saturating_duration_since(published));
        *current.lock().unwrap() = None;
        stop.cancel();
        running.await.expect("runner");
        fake.remove(SPOT);
    }
    token.cancel();
    tracker.wait().await;

    let calls = seen.lock().unwrap().calls.clone();
    let lookups = calls
        .iter()
        .filter(|c| *c != "UpdateContainerInstancesState")
        .count();
    support::report_latency(
        &format!("drain_latency (IMDS notice → DRAINING request at ECS, poll {interval:?})"),
        &mut latencies,
    );
    println!(
        "ECS calls: {} in all, {lookups} of them looking up the container instance (ahead of the notices)",
        calls.len()
    );
}
