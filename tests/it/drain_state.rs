//! A drain state directory that does not work never stops the drain: the real binary against a fake
//! IMDSv2 and moto, with the state broken in each way before start. A spot notice still ends with
//! this instance DRAINING in ECS, and `/healthz` answers 503 naming what is wrong.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use aws_sdk_ecs::types::ContainerInstanceStatus;

use crate::require;
use crate::support::imds::FakeImds;
use crate::support::moto::{Moto, ecs_status, run_and_register};

const CLUSTER: &str = "state-test";

/// Starts the daemon and returns it with the Prometheus address it logged.
fn start(cfg: &Path, moto: &Moto, imds: &FakeImds, log: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecs-capacity-agent"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .envs(moto.env())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut log = std::fs::File::create(log).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Write;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
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

#[tokio::test]
async fn a_broken_state_directory_still_drains_and_reports_unhealthy() {
    let moto = require!(Moto::start(), "moto");
    let sdk = moto.sdk_config().await;
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    ecs.create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .unwrap();
    let http = reqwest::Client::new();

    type Break = fn(&Path);
    // (what, how the state directory is broken before start, what /healthz must name)
    let cases: [(&str, Break, &[&str]); 5] = [
        (
            "drain.json is a directory",
            |d| std::fs::create_dir_all(d.join("drain.json/inside")).unwrap(),
            &[
                "drain_state_corrupt",
                "it is a directory",
                "drain.json.corrupt-",
            ],
        ),
        (
            "drain.json is garbage",
            |d| std::fs::write(d.join("drain.json"), b"\x00\xffnot a state").unwrap(),
            &["drain_state_corrupt", "drain.json.corrupt-"],
        ),
        (
            "drain.lock cannot be opened",
            |d| std::fs::create_dir_all(d.join("drain.lock")).unwrap(),
            &["drain_state:", "cannot lock", "drain.lock"],
        ),
        (
            "drain.lock is held by a stopped drain command",
            // As a `drain` command stopped with ^Z while it holds the lock would: this test process
            // holds it (flock conflicts across open files) until it ends.
            |d| {
                let file = std::fs::File::create(d.join("drain.lock")).unwrap();
                let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                    .map_err(|(_, e)| e)
                    .unwrap();
                std::mem::forget(held);
            },
            &["drain_state:", "locked by another process", "drain.lock"],
        ),
        (
            "nothing can be written",
            // The state directory's parent is a regular file: fails for root too.
            |d| std::fs::write(d, "").unwrap(),
            &["drain_state:", "from memory"],
        ),
    ];
    for (what, break_it, reasons) in cases {
        let (instance, arn) = run_and_register(&sdk, CLUSTER, "c5.large").await.unwrap();
        let imds = FakeImds::start().await;
        imds.set("instance-id", &instance);
        imds.set("instance-type", "c5.large");
        imds.set("network/interfaces/macs/", "0e:00:00:00:00:01/");

        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken");
        if what == "nothing can be written" {
            break_it(&broken);
        } else {
            std::fs::create_dir(&broken).unwrap();
            break_it(&broken);
        }
        let state_dir = if what == "nothing can be written" {
            broken.join("state")
        } else {
            broken.clone()
        };
        let cfg = dir.path().join("config.toml");
        std::fs::write(
            &cfg,
            crate::support::daemon_config(
                "on",
                CLUSTER,
                &state_dir,
                r#"

[drain]
check_interval = "200ms"

[sinks]
enabled = ["prometheus"]

[prometheus]
listen = "127.0.0.1:0"

[log]
format = "json"
"#,
            ),
        )
        .unwrap();
        let log = dir.path().join("daemon.log");
        let (mut child, addr) = start(&cfg, &moto, &imds, &log);
        let logs = || std::fs::read_to_string(&log).unwrap_or_default();

        imds.set_spot_terminate(SystemTime::now() + Duration::from_secs(120));
        let draining = crate::support::eventually(Duration::from_secs(20), || async {
            (ecs_status(&ecs, CLUSTER, &arn).await == Some(ContainerInstanceStatus::Draining))
                .then_some(())
        })
        .await;
        assert!(
            draining.is_some(),
            "{what}: instance never DRAINING; daemon log:\n{}",
            logs()
        );

        let health = crate::support::eventually(Duration::from_secs(10), || async {
            let r = http
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .ok()?;
            let status = r.status().as_u16();
            let body = r.text().await.ok()?;
            reasons
                .iter()
                .all(|r| body.contains(r))
                .then_some((status, body))
        })
        .await;
        let Some((status, body)) = health else {
            panic!(
                "{what}: /healthz never named {reasons:?}; daemon log:\n{}",
                logs()
            );
        };
        assert_eq!(status, 503, "{what}: {body}");
        let metrics = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("# TYPE ecs_capacity_agent_state_write_errors_total counter"),
            "{what}: {metrics}"
        );
        assert!(
            !logs().contains("not acting on it"),
            "{what}: daemon log:\n{}",
            logs()
        );
        if reasons[0] == "drain_state:" {
            // The failures are logged at ERROR, once, not at every step.
            let errors = logs()
                .lines()
                .filter(|l| l.contains("cannot store the drain state"))
                .count();
            assert_eq!(errors, 1, "{what}: daemon log:\n{}", logs());
        }

        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let exit = child.wait().unwrap();
        assert!(
            exit.success(),
            "{what}: daemon exit {exit:?}; log:\n{}",
            logs()
        );
    }
}
