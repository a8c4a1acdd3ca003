//! The Prometheus listener under a flood of idle connections: the real daemon, started with the
//! descriptor limit systemd gives a service by default (1,024), keeps answering `/healthz` and keeps
//! observing while 2,000 connections that never send a byte are held open against it.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::foundation::{config_file, sigterm, start_daemon};

const IDLE_CONNECTIONS: usize = 2_000;
/// systemd's default soft RLIMIT_NOFILE for a service.
const SYSTEMD_DEFAULT_NOFILE: u64 = 1_024;

fn observations(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ecs_capacity_agent_observations_total "))
        .and_then(|v| v.trim().parse().ok())
}

async fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    // A fresh client: no pooled connection, every request pays for its own connect and accept.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = http
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.map_err(|e| e.to_string())?))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_starve_neither_healthz_nor_observations() {
    // The daemon inherits this process's limits: give it systemd's default, then raise ours to hold
    // the idle connections.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let needed = (IDLE_CONNECTIONS + 256) as u64;
    assert!(
        hard >= needed,
        "the hard descriptor limit ({hard}) is below what the test needs ({needed})"
    );
    setrlimit(
        Resource::RLIMIT_NOFILE,
        SYSTEMD_DEFAULT_NOFILE.min(soft),
        hard,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "interval = \"1s\"\naws = \"off\"\n[prometheus]\nlisten = \"127.0.0.1:0\"\n[sinks]\nenabled = [\"prometheus\"]\n[log]\nformat = \"json\"\n",
    );
    let (mut child, addr) = start_daemon(&cfg);
    setrlimit(Resource::RLIMIT_NOFILE, needed.max(soft), hard).unwrap();

    let first = crate::support::eventually(Duration::from_secs(20), || async {
        let (_, body) = get(&addr, "/metrics").await.ok()?;
        observations(&body).filter(|&n| n >= 1.0)
    })
    .await
    .expect("the daemon observes before the flood");

    let target: std::net::SocketAddr = addr.parse().unwrap();
    let flood = Instant::now();
    let held = tokio::task::spawn_blocking(move || {
        (0..IDLE_CONNECTIONS)
            .map(|i| {
                TcpStream::connect_timeout(&target, Duration::from_secs(10))
                    .map_err(|e| format!("connection {i}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e} after {:?}", flood.elapsed()));
    println!(
        "{IDLE_CONNECTIONS} idle connections opened in {:.0} ms",
        flood.elapsed().as_secs_f64() * 1e3
    );
    // Let the daemon accept them all.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut took = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let (status, body) = get(&addr, "/healthz")
            .await
            .unwrap_or_else(|e| panic!("/healthz does not answer under the flood: {e}"));
        took.push(start.elapsed());
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    took.sort();
    let median = took[took.len() / 2];
    println!(
        "healthz with {IDLE_CONNECTIONS} idle connections held: median {:.1} ms, max {:.1} ms over {} requests; daemon fds {}",
        median.as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3,
        took.len(),
        open_fds(child.id()),
    );
    assert!(median <= Duration::from_millis(100), "{took:?}");
    assert!(took.iter().all(|t| *t < Duration::from_secs(1)), "{took:?}");

    // Observations go on while the connections are still held.
    let later = crate::support::eventually(Duration::from_secs(10), || async {
        let (_, body) = get(&addr, "/metrics").await.ok()?;
        observations(&body).filter(|&n| n >= first + 2.0)
    })
    .await;
    assert!(
        later.is_some(),
        "observations stopped under the flood (were {first})"
    );
    let fds = open_fds(child.id());
    assert!(
        fds < SYSTEMD_DEFAULT_NOFILE as usize / 4,
        "the daemon holds {fds} descriptors"
    );
    drop(held);

    sigterm(&child);
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if stopping.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the daemon did not stop within 10 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}
