//! `ecs-capacity-agent cluster` end to end: offline on AWS CLI output files (tests/fixtures/cluster),
//! and live against moto.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::require;
use crate::support::moto::{Moto, run_instance};

const BIN: &str = env!("CARGO_BIN_EXE_ecs-capacity-agent");

fn fixture(name: &str) -> PathBuf {
    crate::support::repo_root()
        .join("tests/fixtures/cluster")
        .join(name)
}

fn agent() -> Command {
    let mut cmd = Command::new(BIN);
    // Offline runs must not need AWS at all; make sure nothing could reach the link-local IMDS.
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

fn offline(args: &[&str]) -> Output {
    agent().arg("cluster").args(args).output().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn host<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no host {name} in {v}"))
}

fn close(v: &Value, want: f64) -> bool {
    (v.as_f64().unwrap() - want).abs() < 1e-6
}

fn full_fixture_args() -> Vec<String> {
    [
        "--container-instances",
        path(&fixture("container-instances.json")),
        "--task-definition",
        path(&fixture("task-definition-web.json")),
        "--task-definition",
        path(&fixture("task-definition-api.json")),
        "--instance-types",
        path(&fixture("instance-types.json")),
        "--tasks",
        path(&fixture("tasks.json")),
        "--output",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The fixture cluster: a free c5.large, an m5.xlarge running web (port 80) and one awsvpc api task,
/// and a DRAINING m5.xlarge. Largest task: 512 CPU units, 1024 MiB, TCP 80, one ENI.
#[test]
fn offline_files_give_the_documented_json() {
    let args = full_fixture_args();
    let v = json_of(&offline(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));

    assert_eq!(v["container_capacity"], 1);
    assert!(close(&v["idle_host_capacity"], 1.0));
    assert!(close(&v["idle_host_capacity_conservative"], 1.0));
    assert_eq!(v["scale_out"], false);
    assert_eq!(v["scale_in"], false);
    let l = &v["largest_task"];
    assert_eq!(
        (l["cpu_units"].as_u64(), l["memory_mib"].as_u64()),
        (Some(512), Some(1024))
    );
    assert_eq!(l["tcp_ports"], serde_json::json!([80]));
    assert_eq!(l["awsvpc"], true);

    let pr = &v["per_resource"];
    assert_eq!(pr["cpu"]["capacity"], 4 + 6);
    assert_eq!(pr["memory"]["capacity"], 3 + 13);
    assert_eq!(pr["ports"]["capacity"], 1);
    assert_eq!(pr["eni"]["capacity"], 2 + 2);
    assert!(close(&pr["cpu"]["idle_hosts"], 1.0 + 6.0 / 8.0));
    assert!(pr["ports_udp"].is_null(), "no shape needs a UDP port");

    assert_eq!(v["hosts"].as_array().unwrap().len(), 2);
    let free = host(&v, "i-0a1b2c3d4e5f60001");
    assert_eq!(free["spare_tasks"], 1);
    assert_eq!(
        free["per_resource"]["eni"]["registered"], 2,
        "c5.large: 3 ENIs − the primary"
    );
    let busy = host(&v, "i-0a1b2c3d4e5f60002");
    assert_eq!(busy["spare_tasks"], 0);
    assert_eq!(
        busy["per_resource"]["ports"]["conflicts"],
        serde_json::json!([80])
    );
    assert_eq!(
        busy["per_resource"]["eni"]["reserved"], 1,
        "the stopped task's ENI is gone"
    );
    assert_eq!(busy["per_resource"]["cpu"]["remaining"], 4096 - 768);

    let shapes: Vec<(String, u64)> = v["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["fits"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shapes, vec![("web".into(), 1), ("api".into(), 4)]);
}

#[test]
fn draining_instances_excluded() {
    let args = full_fixture_args();
    let v = json_of(&offline(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["name"] != "i-0a1b2c3d4e5f60003")
    );
    assert_eq!(v["excluded"][0]["name"], "i-0a1b2c3d4e5f60003");
    assert_eq!(v["excluded"][0]["status"], "DRAINING");
}

#[test]
fn instance_type_with_4_network_interfaces_and_only_awsvpc_tasks_fits_3_per_host() {
    let v = json_of(&offline(&[
        "--container-instances",
        path(&fixture("awsvpc-container-instances.json")),
        "--task-definition",
        path(&fixture("task-definition-api.json")),
        "--instance-types",
        path(&fixture("instance-types.json")),
        "-o",
        "json",
    ]));
    for h in v["hosts"].as_array().unwrap() {
        assert_eq!(h["spare_tasks"], 3, "{h}");
        assert_eq!(h["per_resource"]["eni"]["max"], 3);
    }
    assert_eq!(v["container_capacity"], 6);
}

#[test]
fn without_instance_types_enis_do_not_constrain_and_a_note_says_so() {
    let v = json_of(&offline(&[
        "--container-instances",
        path(&fixture("awsvpc-container-instances.json")),
        "--task-definition",
        path(&fixture("task-definition-api.json")),
        "--output",
        "json",
    ]));
    assert!(v["per_resource"]["eni"].is_null());
    // CPU bounds it: 4096 / 256 = 16 per host.
    assert_eq!(v["container_capacity"], 32);
    assert!(v["notes"].to_string().contains("--instance-types"));
}

#[test]
fn table_is_the_default_output() {
    let out = offline(&[
        "--container-instances",
        path(&fixture("container-instances.json")),
        "--task-definition",
        path(&fixture("task-definition-web.json")),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "ContainerCapacity",
        "IdleHostCapacity",
        "i-0a1b2c3d4e5f60001",
        "i-0a1b2c3d4e5f60002",
        "excluded: i-0a1b2c3d4e5f60003 (DRAINING)",
        "largest task: web",
    ] {
        assert!(t.contains(needle), "{needle:?} not in:\n{t}");
    }
}

fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in stderr: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_file_exits_66_naming_the_file() {
    let out = offline(&[
        "--container-instances",
        "/nonexistent/ci.json",
        "--task-definition",
        path(&fixture("task-definition-web.json")),
    ]);
    assert_fails(&out, 66, &["/nonexistent/ci.json", "cannot read"]);
    let out = offline(&[
        "--container-instances",
        path(&fixture("container-instances.json")),
        "--task-definition",
        "/nonexistent/td.json",
    ]);
    assert_fails(&out, 66, &["/nonexistent/td.json"]);
}

#[test]
fn malformed_json_exits_65_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ci.json");
    std::fs::write(&bad, "{\"containerInstances\": [").unwrap();
    let out = offline(&[
        "--container-instances",
        path(&bad),
        "--task-definition",
        path(&fixture("task-definition-web.json")),
    ]);
    assert_fails(&out, 65, &[path(&bad), "describe-container-instances"]);
}

#[test]
fn wrong_value_type_exits_65_naming_the_json_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("container-instances.json"))
        .unwrap()
        .replacen(
            "\"runningTasksCount\": 0",
            "\"runningTasksCount\": \"none\"",
            1,
        );
    let bad = dir.path().join("ci.json");
    std::fs::write(&bad, text).unwrap();
    let out = offline(&[
        "--container-instances",
        path(&bad),
        "--task-definition",
        path(&fixture("task-definition-web.json")),
    ]);
    assert_fails(
        &out,
        65,
        &[path(&bad), "containerInstances[0].runningTasksCount"],
    );

    // A task definition file given where the container instances belong.
    let out = offline(&[
        "--container-instances",
        path(&fixture("task-definition-web.json")),
        "--task-definition",
        path(&fixture("task-definition-web.json")),
    ]);
    assert_fails(
        &out,
        65,
        &["task-definition-web.json", "containerInstances"],
    );
}

#[test]
fn instance_without_cpu_exits_65_naming_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let mut v: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("container-instances.json")).unwrap(),
    )
    .unwrap();
    v["containerInstances"][1]["registeredResources"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["name"] != "CPU");
    let bad = dir.path().join("ci.json");
    std::fs::write(&bad, v.to_string()).unwrap();
    let out = offline(&[
        "--container-instances",
        path(&bad),
        "--task-definition",
        path(&fixture("task-definition-web.json")),
    ]);
    assert_fails(
        &out,
        65,
        &["i-0a1b2c3d4e5f60002", "no CPU in registeredResources"],
    );
}

#[test]
fn bad_task_cpu_exits_65_naming_file_and_family() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("task-definition-api.json"))
        .unwrap()
        .replacen("\"cpu\": \"256\"", "\"cpu\": \"a quarter\"", 1);
    let bad = dir.path().join("td.json");
    std::fs::write(&bad, text).unwrap();
    let out = offline(&[
        "--container-instances",
        path(&fixture("container-instances.json")),
        "--task-definition",
        path(&bad),
    ]);
    assert_fails(&out, 65, &[path(&bad), "api", "a quarter"]);
}

#[test]
fn no_task_definition_exits_65() {
    let out = offline(&[
        "--container-instances",
        path(&fixture("container-instances.json")),
    ]);
    assert_fails(&out, 65, &["--task-definition"]);
}

/// moto 5.2.x ignores `totalResources` in RegisterContainerInstance: every instance registers
/// 4096 CPU units, 7482 MiB and TCP ports 22, 2375, 2376, 51678, 51679 whatever its type, and
/// RunTask/StartTask subtract the containers' cpu/memory (hard limit, else reservation) and host
/// ports from `remainingResources`. The test is built on those figures.
#[tokio::test]
async fn live_cluster_against_moto() {
    use aws_sdk_ecs::types as ecs;

    let moto = require!(Moto::start(), "moto");
    let sdk = moto.sdk_config().await;
    let client = aws_sdk_ecs::Client::new(&sdk);

    let run = |itype: &'static str| {
        let sdk = sdk.clone();
        async move { run_instance(&sdk, itype).await.unwrap() }
    };
    let ids = [
        run("m5.xlarge").await,
        run("m5.xlarge").await,
        run("c5.large").await,
    ];

    client
        .create_cluster()
        .cluster_name("live")
        .send()
        .await
        .unwrap();
    let mut arns = Vec::new();
    for id in &ids {
        arns.push(
            crate::support::moto::register(&client, "live", id)
                .await
                .unwrap(),
        );
    }
    client
        .update_container_instances_state()
        .cluster("live")
        .container_instances(&arns[2])
        .status(ecs::ContainerInstanceStatus::Draining)
        .send()
        .await
        .unwrap();

    client
        .register_task_definition()
        .family("web")
        .network_mode(ecs::NetworkMode::Bridge)
        .container_definitions(
            ecs::ContainerDefinition::builder()
                .name("web")
                .image("busybox")
                .cpu(1024)
                .memory(2048)
                .port_mappings(
                    ecs::PortMapping::builder()
                        .container_port(80)
                        .host_port(8080)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    client
        .register_task_definition()
        .family("api")
        .network_mode(ecs::NetworkMode::Awsvpc)
        .cpu("256")
        .memory("512")
        .container_definitions(
            ecs::ContainerDefinition::builder()
                .name("api")
                .image("busybox")
                .memory_reservation(128)
                .build(),
        )
        .send()
        .await
        .unwrap();
    for family in ["web", "api"] {
        client
            .create_service()
            .cluster("live")
            .service_name(family)
            .task_definition(family)
            .desired_count(0)
            .send()
            .await
            .unwrap();
    }
    // web on the first instance. No awsvpc task runs: moto 5.2.5's RunTask for an awsvpc task
    // fails (AttributeError: NetworkInterface has no private_dns_name), so the ENIs held by tasks
    // are covered by the offline tests (tests/fixtures/cluster/tasks.json).
    client
        .start_task()
        .cluster("live")
        .task_definition("web")
        .container_instances(&arns[0])
        .send()
        .await
        .unwrap();

    let out = agent()
        .envs(moto.env())
        .args(["cluster", "--cluster", "live", "--output", "json"])
        .output()
        .unwrap();
    let v = json_of(&out);

    // Largest of web (1024 CPU, 2048 MiB, TCP 8080) and api (256 CPU, 512 MiB, one ENI).
    let l = &v["largest_task"];
    assert_eq!(
        (l["cpu_units"].as_u64(), l["memory_mib"].as_u64()),
        (Some(1024), Some(2048))
    );
    assert_eq!(l["awsvpc"], true);
    assert_eq!(
        v["hosts"].as_array().unwrap().len(),
        2,
        "the DRAINING instance does not count"
    );
    assert_eq!(v["excluded"][0]["name"], ids[2].as_str());

    let mut want_total = 0;
    for (i, id) in ids[..2].iter().enumerate() {
        let h = host(&v, id);
        let web_here = i == 0;
        let cpu_left = 4096 - if web_here { 1024 } else { 0 };
        let mem_left = 7482 - if web_here { 2048 } else { 0 };
        let eni_used = 0;
        assert_eq!(h["per_resource"]["cpu"]["remaining"], cpu_left, "{h}");
        assert_eq!(h["per_resource"]["memory"]["remaining"], mem_left, "{h}");
        assert_eq!(
            h["per_resource"]["eni"]["registered"], 3,
            "m5.xlarge: 4 ENIs − the primary"
        );
        assert_eq!(h["per_resource"]["eni"]["reserved"], eni_used, "{h}");
        let port_free = u64::from(!web_here);
        let want = [cpu_left / 1024, mem_left / 2048, port_free, 3 - eni_used]
            .into_iter()
            .min()
            .unwrap();
        assert_eq!(h["spare_tasks"], want, "{h}");
        want_total += want;
    }
    assert_eq!(v["container_capacity"], want_total);
    assert_eq!(v["container_capacity"], 1);

    // Asking for one family instead of the services' task definitions.
    let out = agent()
        .envs(moto.env())
        .args([
            "cluster",
            "--cluster",
            "live",
            "--task-definition-family",
            "api",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["largest_task"]["name"], "api");
    assert_eq!(v["shapes"].as_array().unwrap().len(), 1);
}

#[test]
fn live_with_aws_unreachable_exits_69_naming_the_call() {
    let out = agent()
        .envs([
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_MAX_ATTEMPTS", "1"),
        ])
        .args(["cluster", "--cluster", "nowhere"])
        .output()
        .unwrap();
    assert_fails(&out, 69, &["ListContainerInstances", "nowhere"]);
}
