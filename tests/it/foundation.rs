//! The daemon binary end to end: configuration errors, the local default run, clean shutdown, and the
//! test harness's peers (moto, Docker, fake IMDS).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::require;
use crate::support::{self, docker, imds::FakeImds, moto::Moto};

const BIN: &str = env!("CARGO_BIN_EXE_ecs-capacity-agent");

/// A config file in a temp dir that never reads the machine's /etc/ecs/ecs.config.
pub(crate) fn config_file(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[agent]\necs_config_path = \"{}\"\nstate_dir = \"{}\"\n{body}",
        dir.join("ecs.config").display(),
        dir.join("state").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn agent() -> Command {
    let mut cmd = Command::new(BIN);
    // Never let a test reach the link-local IMDS: point it at a closed loopback port.
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn unknown_key_fails_with_ex_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "[prometheus]\nlisten_address = \"127.0.0.1:1\"\n",
    );
    for args in [
        vec!["check-config", cfg.to_str().unwrap()],
        vec!["run", "--config", cfg.to_str().unwrap()],
    ] {
        let out = agent().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(stderr.contains("listen_address"), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_value_fails_with_ex_config_naming_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "[drain]\non_spot = \"panic\"\n");
    let out = agent()
        .args(["check-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("drain.on_spot") && stderr.contains("panic"),
        "{stderr}"
    );
    assert!(
        stderr.contains("drain") && stderr.contains("report"),
        "names what is allowed: {stderr}"
    );
}

#[test]
fn bad_environment_value_fails_with_ex_config_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "");
    let out = agent()
        .args(["check-config", cfg.to_str().unwrap()])
        .env("ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN", "localhost")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN"),
        "{stderr}"
    );
}

#[test]
fn check_config_prints_each_value_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ecs.config"),
        "ECS_CLUSTER=prod\nECS_RESERVED_MEMORY=128\n",
    )
    .unwrap();
    let cfg = config_file(dir.path(), "[prometheus]\nlisten = \"127.0.0.1:9100\"\n");
    let out = agent()
        .args(["check-config", cfg.to_str().unwrap()])
        .env("ECS_CAPACITY_AGENT_AGENT_INTERVAL", "10s")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("agent.cluster = \"prod\"  # ecs.config ECS_CLUSTER"),
        "{stdout}"
    );
    assert!(
        stdout.contains("host.reserved_memory_mib = 128  # ecs.config ECS_RESERVED_MEMORY"),
        "{stdout}"
    );
    assert!(
        stdout.contains("prometheus.listen = \"127.0.0.1:9100\"  # file"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("agent.interval = \"10s\"  # environment ECS_CAPACITY_AGENT_AGENT_INTERVAL"),
        "{stdout}"
    );
    assert!(
        stdout.contains("imds.poll_interval = \"1s\"  # default"),
        "{stdout}"
    );
}

/// Starts `run` on a local config and returns the child and the Prometheus address it logged.
pub(crate) fn start_daemon(cfg: &Path) -> (Child, String) {
    let mut child = agent()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(addr) = v.get("addr").and_then(|a| a.as_str())
            {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("daemon logs its Prometheus address");
    (child, addr)
}

pub(crate) fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[tokio::test]
async fn local_default_run_reports_serves_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "interval = \"1s\"\n[prometheus]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
    );
    let (mut child, addr) = start_daemon(&cfg);
    let http = reqwest::Client::new();
    let metrics = support::eventually(Duration::from_secs(20), || async {
        let body = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        body.contains("ecs_capacity_registered_cpu_units")
            .then_some(body)
    })
    .await
    .expect("/metrics serves the host's figures");
    assert!(
        metrics.contains("# TYPE ecs_capacity_agent_errors_total counter"),
        "{metrics}"
    );
    let healthz = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);

    // stdout is not a terminal here, so each interval's report is a JSON line.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let report: serde_json::Value = serde_json::from_str(&line).expect("a JSON report line");
    assert!(
        report["snapshot"]["registered"]["cpu_units"]
            .as_u64()
            .unwrap()
            >= 1024,
        "{report}"
    );

    sigterm(&child);
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("daemon still running 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = signalled.elapsed();
    assert!(status.success(), "exit after SIGTERM: {status}");
    // Shutdown involves no waiting of its own, so 1 s is far above what it takes.
    assert!(
        took < Duration::from_secs(1),
        "SIGTERM to exit took {took:?}"
    );
}

#[tokio::test]
async fn status_prints_json_with_registered_resources() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "aws = \"off\"\n");
    let out = agent()
        .args([
            "status",
            "--output",
            "json",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["snapshot"]["registered"]["memory_mib"].as_u64().unwrap() > 0,
        "{v}"
    );
}

#[tokio::test]
async fn harness_moto_serves_ecs_and_resets() {
    let moto = require!(Moto::start(), "moto");
    let ecs = aws_sdk_ecs::Client::new(&moto.sdk_config().await);
    ecs.create_cluster()
        .cluster_name("harness")
        .send()
        .await
        .unwrap();
    let arns = ecs
        .list_clusters()
        .send()
        .await
        .unwrap()
        .cluster_arns
        .unwrap_or_default();
    assert!(arns.iter().any(|a| a.ends_with("/harness")), "{arns:?}");
    moto.reset().await;
    let arns = ecs
        .list_clusters()
        .send()
        .await
        .unwrap()
        .cluster_arns
        .unwrap_or_default();
    assert!(arns.is_empty(), "reset forgets clusters: {arns:?}");
}

#[tokio::test]
async fn harness_docker_builds_image_and_runs_labelled_container() {
    let d = require!(docker::connect().await, "docker");
    let spec = docker::ContainerSpec::new("eca-harness-labelled", "sleep 30").ecs_task(
        "harness",
        "arn:aws:ecs:us-east-1:123456789012:task/harness/0123456789abcdef",
        "web",
        "3",
        "app",
    );
    let id = docker::start(&d, &spec).await.unwrap();
    let info = d.inspect_container(&id, None).await.unwrap();
    docker::remove(&d, &id).await;
    assert_eq!(info.state.and_then(|s| s.running), Some(true));
    let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(
        labels
            .get("com.amazonaws.ecs.task-definition-family")
            .map(String::as_str),
        Some("web")
    );
}

#[tokio::test]
async fn harness_fake_imds_requires_a_token() {
    let imds = FakeImds::start().await;
    imds.set("instance-id", "i-0123456789abcdef0");
    let http = reqwest::Client::new();
    let base = imds.url();
    let no_token = http
        .get(format!("{base}/latest/meta-data/instance-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let token = http
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let get = |path: &'static str| {
        http.get(format!("{base}/latest/meta-data/{path}"))
            .header("X-aws-ec2-metadata-token", &token)
            .send()
    };
    let ok = get("instance-id").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "i-0123456789abcdef0");
    assert_eq!(get("spot/instance-action").await.unwrap().status(), 404);
    imds.expire_tokens();
    assert_eq!(get("instance-id").await.unwrap().status(), 401);
}
