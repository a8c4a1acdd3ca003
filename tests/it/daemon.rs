//! The whole daemon, wired: the real binary against a fake IMDSv2 and moto. A spot notice that
//! appears in IMDS ends with this instance DRAINING in ECS, and `status` then reports the drain.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use aws_sdk_ecs::types::ContainerInstanceStatus;

use crate::require;
use crate::support::imds::FakeImds;
use crate::support::moto::{Moto, ecs_status, run_and_register};

const CLUSTER: &str = "daemon-test";

#[tokio::test]
async fn spot_notice_in_imds_drains_this_instance_through_the_running_daemon() {
    let moto = require!(Moto::start(), "moto");
    let sdk = moto.sdk_config().await;
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    ecs.create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .unwrap();
    let (instance, arn) = run_and_register(&sdk, CLUSTER, "c5.large").await.unwrap();

    let imds = FakeImds::start().await;
    imds.set("instance-id", &instance);
    imds.set("instance-type", "c5.large");
    imds.set("network/interfaces/macs/", "0e:00:00:00:00:01/");

    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        crate::support::daemon_config(
            "on",
            CLUSTER,
            &state_dir,
            "\n[sinks]\nenabled = [\"stdout\"]\n",
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecs-capacity-agent"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .envs(moto.env())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    // Running and polling, not draining: no notice yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        ecs_status(&ecs, CLUSTER, &arn).await,
        Some(ContainerInstanceStatus::Active)
    );

    imds.set_spot_terminate(SystemTime::now() + Duration::from_secs(120));

    let mut draining = false;
    for _ in 0..150 {
        if ecs_status(&ecs, CLUSTER, &arn).await == Some(ContainerInstanceStatus::Draining) {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(draining, "instance never DRAINING; daemon log:\n{}", logs());

    // `status` reads the daemon's drain from the state directory.
    let v = crate::support::status_json(
        &cfg,
        [("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")],
    );
    let drain = v
        .get("drain")
        .unwrap_or_else(|| panic!("no drain in status: {v}"));
    assert!(
        drain.to_string().contains("spot"),
        "drain status names the spot notice: {drain}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "daemon exit {exit:?}; log:\n{}", logs());
}
