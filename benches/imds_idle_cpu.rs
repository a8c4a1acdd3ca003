//! CPU used by the four idle notice pollers (every path answering 404 / InService) at the default
//! 1 s poll, measured with getrusage(RUSAGE_SELF) over IDLE_SECONDS (default 60).
//!
//! The fake IMDS runs in a child process (this same binary, re-executed), so only the pollers' own
//! CPU — HTTP client, parsing, timers, the multi-threaded runtime the daemon uses — is counted.
//!
//! `cargo bench --bench imds_idle_cpu` (IDLE_SECONDS=N to shorten).

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecs_capacity_agent::config::ImdsConfig;
use ecs_capacity_agent::health::Health;
use ecs_capacity_agent::imds::{self, Client};
use nix::sys::resource::{UsageWho, getrusage};
use support::imds::FakeImds;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CHILD_ENV: &str = "IMDS_IDLE_CPU_FAKE_IMDS";

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        serve_fake_imds();
        return;
    }
    let seconds = support::env_number("IDLE_SECONDS", 60);

    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fake IMDS child");
    let mut url = String::new();
    BufReader::new(child.stdout.take().expect("child stdout"))
        .read_line(&mut url)
        .expect("fake IMDS url");
    let url = url.trim().to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (cpu, wall, health) = rt.block_on(measure(&url, Duration::from_secs(seconds)));
    drop(child.stdin.take()); // EOF: the child exits
    let _ = child.wait();

    let pct = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    println!(
        "imds_idle_cpu (4 pollers, poll 1s, {:.0} s): CPU {:.1} ms → {:.3} % of one core \
         ({:.0} µs per poll); errors {:?}",
        wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e3,
        pct,
        cpu.as_secs_f64() * 1e6 / (4.0 * wall.as_secs_f64()),
        health.errors()
    );
    println!(
        "target ≤ 0.5 % of one core: {}",
        if pct <= 0.5 { "met" } else { "NOT MET" }
    );
}

async fn measure(url: &str, duration: Duration) -> (Duration, Duration, Arc<Health>) {
    let cfg = ImdsConfig::default();
    let client = Client::with_endpoint(&cfg, url).expect("client");
    let (tx, mut rx) = mpsc::channel(16);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let health = Arc::new(Health::default());
    imds::spawn_pollers(
        Arc::new(client),
        &cfg,
        tx,
        token.clone(),
        &tracker,
        health.clone(),
    );
    tracker.close();
    // Warm up: token, connections, first parses.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before = cpu_time();
    let started = Instant::now();
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        n = rx.recv() => panic!("an idle IMDS produced a notice: {n:?}"),
    }
    let cpu = cpu_time().saturating_sub(before);
    let wall = started.elapsed();
    token.cancel();
    tracker.wait().await;
    (cpu, wall, health)
}

fn cpu_time() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

fn serve_fake_imds() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fake = FakeImds::start().await;
        fake.set("autoscaling/target-lifecycle-state", "InService");
        println!("{}", fake.url());
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .expect("stdin watcher");
    });
}
