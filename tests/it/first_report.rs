//! Never a guess, against the real Docker engine: a daemon (re)started on a host that runs an ECS
//! task never reports the host empty — no `ecs_capacity_running_tasks 0`, no figures from before
//! Docker's first listing — and the shape it discovers from a running container with a hard limit
//! and a soft reservation (128 / 32 MiB) needs the hard limit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::require;
use crate::start::free_port;
use crate::support::docker::{self, ContainerSpec};

const MIB: i64 = 1024 * 1024;

/// Every value of `family` (unlabelled) in /metrics, polled every 10 ms from the daemon's start
/// until `after_first` past the first one (or 30 s with none).
async fn watch_gauge(port: u16, family: &str, after_first: Duration) -> Vec<f64> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(30)
        && first.is_none_or(|f| f.elapsed() < after_first)
    {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            && let Ok(text) = r.text().await
        {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix(&format!("{family} ")) {
                    seen.push(v.trim().parse::<f64>().unwrap_or(f64::NAN));
                    first.get_or_insert_with(Instant::now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_never_reports_a_busy_host_empty() {
    let engine = require!(docker::connect().await, "docker");
    let id = format!("first{}", std::process::id());
    let cluster = "first-report";
    let task_arn = format!("arn:aws:ecs:us-east-1:123456789012:task/{cluster}/{id}");
    let mut spec = ContainerSpec::new(&format!("eca-it-first-{id}"), "sleep 3600").ecs_task(
        cluster,
        &task_arn,
        "soft-hard",
        "1",
        "app",
    );
    spec.cpu_shares = Some(256);
    spec.memory_bytes = Some(128 * MIB);
    spec.memory_reservation_bytes = Some(32 * MIB);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(spec.name.clone());
    require!(docker::start(&engine, &spec).await, "docker");

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
aws = "off"
cluster = "{cluster}"
interval = "1s"
state_dir = "{}"
ecs_config_path = "/nonexistent/ecs.config"

[host]
ecs_agent_url = "http://127.0.0.1:9"

[sinks]
enabled = ["prometheus"]

[prometheus]
listen = "127.0.0.1:{port}"
"#,
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    for run in ["first start", "restart"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ecs-capacity-agent"))
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let seen = watch_gauge(port, "ecs_capacity_running_tasks", Duration::from_secs(3)).await;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
        assert!(!seen.is_empty(), "{run}: no running-task figure in 30 s");
        assert!(
            seen.iter().all(|n| *n >= 1.0),
            "{run}: the host was reported running nothing: {seen:?}"
        );
    }

    // The shape discovered from the running container (AWS off: the only source) needs the hard
    // limit, not the soft reservation the container reserves.
    let v = crate::support::status_json(&cfg, std::iter::empty::<(&str, &str)>());
    let shape = v["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "soft-hard")
        .unwrap_or_else(|| panic!("no discovered shape: {v}"))
        .clone();
    assert_eq!(shape["memory_mib"], 128, "{shape}");
    assert_eq!(shape["cpu_units"], 256, "{shape}");
    assert!(
        v["shape_sources"].to_string().contains("running_tasks"),
        "{v}"
    );
    let task = v["snapshot"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["arn"] == task_arn.as_str())
        .unwrap_or_else(|| panic!("task not in status: {v}"))
        .clone();
    assert_eq!(
        task["memory_mib"], 32,
        "a running container reserves its soft figure: {task}"
    );
}
