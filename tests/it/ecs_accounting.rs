//! The host's figures in ECS's own accounting, through the real `status` command against moto (ECS,
//! EC2), a fake IMDS and the local Docker engine: a task sized only at task level reserves its
//! task-level cpu/memory, the task shapes are the cluster's services' (a new copy needs the hard
//! memory limit), and placeability comes from DescribeContainerInstances and IMDS. (moto keeps no
//! container instance attributes, so the trunk attribute is pinned by the unit tests of
//! `host::assess`.)

use std::process::Command;

use aws_sdk_ecs::types as ecs;

use crate::require;
use crate::support::docker::{self, ContainerSpec};
use crate::support::imds::FakeImds;
use crate::support::moto::{Moto, run_and_register};

const CLUSTER: &str = "accounting";

fn status(cfg: &std::path::Path, moto: &Moto, imds: &FakeImds) -> serde_json::Value {
    let mut env = moto.env();
    env.push((
        "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
        imds.url().to_string(),
    ));
    crate::support::status_json(cfg, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reserves_task_definitions_plans_for_cluster_services_and_asks_ecs_about_placement()
{
    let moto = require!(Moto::start(), "moto");
    let engine = require!(docker::connect().await, "docker");
    let sdk = moto.sdk_config().await;
    let client = aws_sdk_ecs::Client::new(&sdk);
    client
        .create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .unwrap();
    let (instance, ci) = run_and_register(&sdk, CLUSTER, "c5.large").await.unwrap();
    // Sized at task level only: Docker shows nothing of it (CpuShares 2, no memory limit).
    let sized = client
        .register_task_definition()
        .family("task-level")
        .cpu("512")
        .memory("1024")
        .container_definitions(
            ecs::ContainerDefinition::builder()
                .name("app")
                .image("busybox")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap();
    // A service sized at container level with a hard limit and a soft reservation.
    client
        .register_task_definition()
        .family("container-level")
        .container_definitions(
            ecs::ContainerDefinition::builder()
                .name("web")
                .image("busybox")
                .cpu(256)
                .memory(128)
                .memory_reservation(32)
                .build(),
        )
        .send()
        .await
        .unwrap();
    client
        .create_service()
        .cluster(CLUSTER)
        .service_name("web")
        .task_definition("container-level")
        .desired_count(0)
        .send()
        .await
        .unwrap();

    let id = format!("acct{}", std::process::id());
    let task_arn = format!("arn:aws:ecs:us-east-1:123456789012:task/{CLUSTER}/{id}");
    let mut spec = ContainerSpec::new(&format!("eca-it-acct-{id}"), "sleep 3600").ecs_task(
        CLUSTER,
        &task_arn,
        "task-level",
        &sized.revision.to_string(),
        "app",
    );
    spec.cpu_shares = Some(2);
    let name = spec.name.clone();
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(name);
    require!(docker::start(&engine, &spec).await, "docker");

    let imds = FakeImds::start().await;
    imds.set("instance-id", &instance);
    imds.set("instance-type", "c5.large");
    imds.set("network/interfaces/macs/", "0e:00:00:00:00:01/");
    imds.set("autoscaling/target-lifecycle-state", "InService");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
aws = "on"
cluster = "{CLUSTER}"
state_dir = "{}"
ecs_config_path = "/nonexistent/ecs.config"

[host]
ecs_agent_url = "http://127.0.0.1:9"
"#,
            dir.path().join("state").display()
        ),
    )
    .unwrap();

    let v = status(&cfg, &moto, &imds);
    let task = v["snapshot"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["arn"] == task_arn.as_str())
        .unwrap_or_else(|| panic!("task not in status: {v}"))
        .clone();
    assert_eq!(task["cpu_units"], 512, "{task}");
    assert_eq!(task["memory_mib"], 1024, "{task}");
    assert_eq!(task["reserved_by"], "task_definition", "{task}");
    assert_eq!(
        v["shape_sources"],
        serde_json::json!(["cluster_services"]),
        "{v}"
    );
    let shapes = v["shapes"].as_array().unwrap();
    assert_eq!(shapes.len(), 1, "{v}");
    assert_eq!(shapes[0]["name"], "container-level");
    assert_eq!(
        shapes[0]["memory_mib"], 128,
        "a new copy needs the hard limit: {v}"
    );
    assert_eq!(v["placement"]["placeable"], true, "{v}");
    assert_eq!(v["ecs"]["status"], "ACTIVE", "{v}");
    assert_eq!(v["capacity_unknown"], serde_json::Value::Null, "{v}");
    assert!(v["capacity"]["spare_tasks"].as_u64().is_some(), "{v}");
    // The task definition was cached: a revision is fetched once.
    assert!(
        dir.path()
            .join(format!(
                "state/task-definitions/task-level:{}.json",
                sized.revision
            ))
            .exists()
    );
    assert!(dir.path().join("state/cluster-shapes.json").exists());

    // Someone else sets the instance DRAINING: it is not placeable.
    client
        .update_container_instances_state()
        .cluster(CLUSTER)
        .container_instances(&ci)
        .status(ecs::ContainerInstanceStatus::Draining)
        .send()
        .await
        .unwrap();
    let v = status(&cfg, &moto, &imds);
    assert_eq!(v["placement"]["placeable"], false, "{v}");
    assert!(
        v["placement"]["why_not"].to_string().contains("DRAINING"),
        "{v}"
    );

    // A warm-pool instance is not placeable either, whatever ECS says.
    client
        .update_container_instances_state()
        .cluster(CLUSTER)
        .container_instances(&ci)
        .status(ecs::ContainerInstanceStatus::Active)
        .send()
        .await
        .unwrap();
    imds.set("autoscaling/target-lifecycle-state", "Warmed:Pending");
    let v = status(&cfg, &moto, &imds);
    assert_eq!(v["placement"]["placeable"], false, "{v}");
    assert!(
        v["placement"]["why_not"]
            .to_string()
            .contains("Warmed:Pending"),
        "{v}"
    );

    // Not registered: ECS knows no container instance for this EC2 instance.
    client
        .deregister_container_instance()
        .cluster(CLUSTER)
        .container_instance(&ci)
        .force(true)
        .send()
        .await
        .unwrap();
    imds.set("autoscaling/target-lifecycle-state", "InService");
    let v = status(&cfg, &moto, &imds);
    assert_eq!(v["placement"]["placeable"], false, "{v}");
    assert_eq!(v["ecs"]["registered"], false, "{v}");
}
