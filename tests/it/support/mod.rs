//! Shared test support: real peers on 127.0.0.1 (moto, the local Docker engine, a fake IMDSv2).
//!
//! A missing peer fails the test when `CI=true`; elsewhere the test is skipped with a loud message on
//! stderr (use the `require!` macro).

#![allow(dead_code)]

pub mod cfn;
pub mod cloudwatch;
pub mod docker;
pub mod fake_docker;
pub mod imds;
pub mod lifecycle;
pub mod logs;
pub mod moto;

use std::path::PathBuf;

pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Called when a peer a test needs is missing: panics in CI, warns loudly elsewhere.
pub fn missing_peer(peer: &str, why: &str) {
    let msg = format!("required test peer missing: {peer}: {why} (run scripts/test-env.sh)");
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("\n*** SKIPPED (not in CI): {msg} ***\n");
}

/// `let moto = require!(Moto::start(), "moto");` — the value, or return from the test after
/// `missing_peer` (which panics in CI).
#[macro_export]
macro_rules! require {
    ($result:expr, $peer:expr) => {
        match $result {
            Ok(v) => v,
            Err(why) => {
                $crate::support::missing_peer($peer, &why.to_string());
                return;
            }
        }
    };
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`. For eventual consistency in
/// tests (events arriving, servers starting) — a generous bound, never a speed assertion.
pub async fn eventually<T, F, Fut>(limit: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The `[agent]` and `[host]` tables of a daemon run against local peers: `agent.aws = aws` in
/// `cluster`, observing every second, its state in `state_dir`, and no Docker, no ECS agent and
/// no ecs.config to find. `extra` follows as it is (more `[host]` keys first, then other tables).
pub fn daemon_config(aws: &str, cluster: &str, state_dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"[agent]
aws = "{aws}"
cluster = "{cluster}"
interval = "1s"
state_dir = "{}"
ecs_config_path = "/nonexistent/ecs.config"

[host]
docker_socket = "/nonexistent/docker.sock"
ecs_agent_url = "http://127.0.0.1:9"
{extra}"#,
        state_dir.display()
    )
}

/// `ecs-capacity-agent status --output json --config cfg` with `env` added, parsed; panics with
/// what it printed when that is not JSON.
pub fn status_json<K, V>(
    cfg: &std::path::Path,
    env: impl IntoIterator<Item = (K, V)>,
) -> serde_json::Value
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecs-capacity-agent"))
        .args(["status", "--output", "json", "--config"])
        .arg(cfg)
        .envs(env)
        .output()
        .expect("run ecs-capacity-agent status");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status JSON: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
