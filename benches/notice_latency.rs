//! Time from a notice appearing in IMDS to the `Notice` arriving on the pollers' channel, at the
//! default configuration (1 s poll, 1 s timeout), against the fake IMDSv2 on loopback.
//!
//! Each sample waits a random fraction of the poll interval before publishing, so the notice lands
//! at a uniformly random phase of the poll cycle (as a real one does): expect p50 ≈ interval/2 plus
//! the request time, p99 ≈ interval plus the request time.
//!
//! `cargo bench --bench notice_latency` (NOTICE_SAMPLES=N to change the sample count, default 120).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ecs_capacity_agent::config::ImdsConfig;
use ecs_capacity_agent::health::Health;
use ecs_capacity_agent::imds::{self, Client};
use ecs_capacity_agent::notice::Notice;
use rand::RngExt as _;
use support::imds::FakeImds;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn main() {
    let samples = support::env_number("NOTICE_SAMPLES", 120) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(samples));
}

async fn run(samples: usize) {
    let fake = FakeImds::start().await;
    let cfg = ImdsConfig::default();
    let client = Client::with_endpoint(&cfg, &fake.url()).expect("client");
    let (tx, mut rx) = mpsc::channel(16);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    imds::spawn_pollers(
        Arc::new(client),
        &cfg,
        tx,
        token.clone(),
        &tracker,
        Arc::new(Health::default()),
    );
    tracker.close();
    // Let the first polls (token fetch, connections) happen before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let interval = cfg.poll_interval;
    let mut latencies = Vec::with_capacity(samples);
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    for i in 0..samples {
        let phase = interval.mul_f64(rand::rng().random_range(0.0..1.0));
        tokio::time::sleep(phase).await;
        let time = base + Duration::from_secs(i as u64);
        fake.set_spot_terminate(time);
        let published = Instant::now();
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the notice arrives within 10 s")
                .expect("pollers alive");
            if matches!(n, Notice::Spot { time: t, .. } if t == time) {
                break;
            }
        }
        latencies.push(published.elapsed());
    }
    token.cancel();
    tracker.wait().await;

    support::report_latency(
        &format!("notice_latency (IMDS notice → Notice on the channel, poll {interval:?})"),
        &mut latencies,
    );
}
