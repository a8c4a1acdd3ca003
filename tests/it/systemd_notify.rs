//! The daemon speaks systemd's notify protocol (`Type=notify`): READY=1 after the first observation,
//! WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM. The test plays the service manager: it
//! binds the datagram socket that NOTIFY_SOCKET names and runs the real binary on the local config.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::repo_root;

const BIN: &str = env!("CARGO_BIN_EXE_ecs-capacity-agent");
/// A generous bound for messages to arrive on a loaded machine; not a speed assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// The daemon on config/local.toml, made hermetic: a free Prometheus port, state and ecs.config in
/// `dir`, IMDS on a closed loopback port. Its log goes to `dir/stderr.log`.
fn daemon(dir: &Path, socket: &Path, watchdog_usec: Option<u64>) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(repo_root().join("config/local.toml"))
        .env("NOTIFY_SOCKET", socket)
        .env("ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN", "127.0.0.1:0")
        .env("ECS_CAPACITY_AGENT_AGENT_STATE_DIR", dir.join("state"))
        .env(
            "ECS_CAPACITY_AGENT_AGENT_ECS_CONFIG_PATH",
            dir.join("ecs.config"),
        )
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("WATCHDOG_PID")
        .env_remove("WATCHDOG_USEC")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
    if let Some(usec) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", usec.to_string());
    }
    cmd.spawn().expect("start ecs-capacity-agent")
}

/// Collects notify datagrams until `done` says so; panics with what arrived when `PATIENCE` runs out.
fn receive_until(
    sock: &UnixDatagram,
    dir: &Path,
    got: &mut Vec<String>,
    done: impl Fn(&[String]) -> bool,
) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !done(got) {
        assert!(
            start.elapsed() < PATIENCE,
            "notify messages so far: {got:?}; daemon log:\n{}",
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
        );
        match sock.recv(&mut buf) {
            Ok(n) => got.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
    }
}

fn count(got: &[String], msg: &str) -> usize {
    got.iter().filter(|m| *m == msg).count()
}

fn stop(child: &mut Child) -> std::process::ExitStatus {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    child.wait().unwrap()
}

fn bind(dir: &Path) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (sock, path)
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, path) = bind(dir.path());
    // WatchdogSec=0.4s: WATCHDOG=1 every 200 ms.
    let mut child = daemon(dir.path(), &path, Some(400_000));

    let mut got = Vec::new();
    receive_until(&sock, dir.path(), &mut got, |g| {
        count(g, "READY=1") == 1 && count(g, "WATCHDOG=1") >= 3
    });
    assert_eq!(count(&got, "STOPPING=1"), 0, "{got:?}");

    let status = stop(&mut child);
    receive_until(&sock, dir.path(), &mut got, |g| count(g, "STOPPING=1") == 1);
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert_eq!(count(&got, "READY=1"), 1, "READY=1 is sent once: {got:?}");
    let stopping = got.iter().position(|m| m == "STOPPING=1").unwrap();
    let ready = got.iter().position(|m| m == "READY=1").unwrap();
    assert!(ready < stopping, "{got:?}");
}

#[test]
fn no_watchdog_pings_when_the_unit_sets_no_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, path) = bind(dir.path());
    let mut child = daemon(dir.path(), &path, None);

    let mut got = Vec::new();
    receive_until(&sock, dir.path(), &mut got, |g| count(g, "READY=1") == 1);
    let status = stop(&mut child);
    receive_until(&sock, dir.path(), &mut got, |g| count(g, "STOPPING=1") == 1);
    assert!(status.success(), "exit after SIGTERM: {status}");
    // The daemon has exited, so everything it sent is queued: read the rest, none is a watchdog ping.
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        got.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned),
        );
    }
    assert_eq!(count(&got, "WATCHDOG=1"), 0, "{got:?}");
}
