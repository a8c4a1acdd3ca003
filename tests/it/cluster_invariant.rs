//! The cluster invariant, end to end: several daemons (the real binary, each with its own fake IMDS
//! and fake Docker engine) in one moto ECS cluster publish per-host datums whose Sum over one
//! CloudWatch period is exactly what `cluster --cluster NAME --output json` computes over the same
//! ECS state. One host is busy, one idle, one still in the warm pool (`Warmed:Pending`, not
//! registered) and one set DRAINING by someone else; the cluster's services are sized at container
//! level (hard 128 / soft 32) and at task level. And an idle cluster with the default configuration
//! publishes Sum ContainerCapacity ≥ 1 and IdleHostCapacity = its number of hosts.
//!
//! moto registers every container instance with the same CPU and memory whatever the host: the
//! recording proxy in front of it answers with what the agent on this machine would register (read
//! from `status`), the correction ECS's own accounting needs (never the product's).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_ecs::types as ecs;

use crate::require;
use crate::support::cloudwatch::CloudWatchProxy;
use crate::support::eventually;
use crate::support::fake_docker::{FakeContainer, FakeDocker};
use crate::support::imds::FakeImds;
use crate::support::lifecycle::LifecycleProxy;
use crate::support::moto::{Moto, run_instance};

struct Peers {
    moto: Moto,
    proxy: LifecycleProxy,
    cloudwatch: CloudWatchProxy,
    sdk: aws_config::SdkConfig,
}

impl Peers {
    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .moto
            .env()
            .into_iter()
            .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
            .collect();
        env.push(("AWS_ENDPOINT_URL".into(), self.proxy.url()));
        env.push(("AWS_ENDPOINT_URL_CLOUDWATCH".into(), self.cloudwatch.url()));
        env
    }
}

/// One host: its daemon, fake IMDS and fake Docker engine.
struct Host {
    child: Child,
    log: std::path::PathBuf,
    _imds: FakeImds,
    _docker: FakeDocker,
    _dir: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, cluster: &str, aws: &str, extra: &str, docker: &Path) -> std::path::PathBuf {
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
aws = "{aws}"
cluster = "{cluster}"
state_dir = "{}"
ecs_config_path = "/nonexistent/ecs.config"
{extra}

[host]
docker_socket = "{}"
ecs_agent_url = "http://127.0.0.1:9"
"#,
            dir.join("state").display(),
            docker.display(),
        ),
    )
    .unwrap();
    cfg
}

/// What the ECS agent on this machine would register: the daemon's own reading, AWS off.
fn registered_here() -> (i64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "x",
        "off",
        "",
        Path::new("/nonexistent/docker.sock"),
    );
    let v = crate::support::status_json(&cfg, std::iter::empty::<(&str, &str)>());
    let r = &v["snapshot"]["registered"];
    (
        r["cpu_units"].as_i64().expect("cpu"),
        r["memory_mib"].as_i64().expect("memory"),
    )
}

#[allow(clippy::too_many_arguments)]
async fn start_host(
    peers: &Peers,
    cluster: &str,
    n: usize,
    instance: &str,
    lifecycle: &str,
    containers: Vec<FakeContainer>,
    agent_extra: &str,
    namespace: &str,
) -> Host {
    let imds = FakeImds::start().await;
    imds.set("instance-id", instance);
    imds.set("instance-type", "c5.large");
    imds.set(
        "network/interfaces/macs/",
        &format!("0e:00:00:00:00:{n:02x}/"),
    );
    imds.set("autoscaling/target-lifecycle-state", lifecycle);
    let docker = FakeDocker::start().await;
    for c in containers {
        docker.run(c);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        cluster,
        "on",
        &format!(
            "{agent_extra}\n[sinks]\nenabled = [\"cloudwatch\"]\n[cloudwatch]\nnamespace = \"{namespace}\"\n\
             [scale_in]\nprotection = \"off\"\n"
        ),
        docker.socket(),
    );
    let log = dir.path().join("daemon.log");
    let child = Command::new(env!("CARGO_BIN_EXE_ecs-capacity-agent"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .envs(peers.env())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Host {
        child,
        log,
        _imds: imds,
        _docker: docker,
        _dir: dir,
    }
}

fn logs(hosts: &[Host]) -> String {
    hosts
        .iter()
        .map(|h| std::fs::read_to_string(&h.log).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n----\n")
}

/// Per period start (epoch seconds): how many `metric` datums of `namespace` arrived and their sum.
fn sums(cw: &CloudWatchProxy, namespace: &str, metric: &str) -> BTreeMap<i64, (usize, f64)> {
    let mut by_period: BTreeMap<i64, (usize, f64)> = BTreeMap::new();
    for p in cw.period_puts() {
        if p.namespace.as_deref() != Some(namespace) {
            continue;
        }
        for ((m, v), t) in p.metrics.iter().zip(&p.values).zip(&p.timestamps) {
            if m == metric {
                let e = by_period.entry(*t).or_default();
                e.0 += 1;
                e.1 += v;
            }
        }
    }
    by_period
}

async fn register(peers: &Peers, cluster: &str, instance: &str) -> String {
    crate::support::moto::register(&aws_sdk_ecs::Client::new(&peers.sdk), cluster, instance)
        .await
        .unwrap()
}

/// The cluster's services: one sized at container level (hard 128 / soft 32: a new copy needs 128),
/// one at task level (512 CPU units, 1024 MiB); neither runs a task (moto places none).
async fn services(peers: &Peers, cluster: &str) {
    let client = aws_sdk_ecs::Client::new(&peers.sdk);
    client
        .register_task_definition()
        .family(format!("{cluster}-web"))
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
        .register_task_definition()
        .family(format!("{cluster}-batch"))
        .cpu("512")
        .memory("1024")
        .container_definitions(
            ecs::ContainerDefinition::builder()
                .name("batch")
                .image("busybox")
                .build(),
        )
        .send()
        .await
        .unwrap();
    for name in ["web", "batch"] {
        client
            .create_service()
            .cluster(cluster)
            .service_name(name)
            .task_definition(format!("{cluster}-{name}"))
            .desired_count(0)
            .send()
            .await
            .unwrap();
    }
}

fn cluster_json(peers: &Peers, cluster: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ecs-capacity-agent"))
        .args(["cluster", "--cluster", cluster, "--output", "json"])
        .envs(peers.env())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "cluster JSON: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Waits for `complete` periods in which every host sent its datum; returns the latest.
async fn complete_period(
    cw: &CloudWatchProxy,
    namespace: &str,
    hosts: usize,
    complete: usize,
) -> Option<i64> {
    eventually(Duration::from_secs(300), || async {
        let full: Vec<i64> = sums(cw, namespace, "ContainerCapacity")
            .into_iter()
            .filter(|(_, (n, _))| *n == hosts)
            .map(|(t, _)| t)
            .collect();
        (full.len() >= complete).then(|| *full.last().unwrap())
    })
    .await
}

/// Busy, idle, warm-pool and DRAINING hosts at one observation interval: the period sums are
/// `cluster`'s figures.
async fn invariant_at(peers: &Peers, interval: &str) {
    let cluster = format!("invariant-{interval}");
    let namespace = format!("Invariant/{interval}");
    let client = aws_sdk_ecs::Client::new(&peers.sdk);
    client
        .create_cluster()
        .cluster_name(&cluster)
        .send()
        .await
        .unwrap();
    services(peers, &cluster).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(run_instance(&peers.sdk, "c5.large").await.unwrap());
    }
    let (busy, idle, warm, draining) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let busy_ci = register(peers, &cluster, busy).await;
    register(peers, &cluster, idle).await;
    let draining_ci = register(peers, &cluster, draining).await;
    client
        .update_container_instances_state()
        .cluster(&cluster)
        .container_instances(&draining_ci)
        .status(ecs::ContainerInstanceStatus::Draining)
        .send()
        .await
        .unwrap();
    // The busy host runs one task of a third definition (256 CPU units, 128 MiB), in ECS and in
    // its Docker engine.
    let plain = client
        .register_task_definition()
        .family(format!("{cluster}-plain"))
        .container_definitions(
            ecs::ContainerDefinition::builder()
                .name("plain")
                .image("busybox")
                .cpu(256)
                .memory(128)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap();
    let task_arn = client
        .start_task()
        .cluster(&cluster)
        .task_definition(format!("{cluster}-plain"))
        .container_instances(&busy_ci)
        .send()
        .await
        .unwrap()
        .tasks
        .unwrap_or_default()
        .into_iter()
        .next()
        .and_then(|t| t.task_arn)
        .unwrap();
    let running = FakeContainer {
        id: format!("{interval}busy"),
        cluster: cluster.clone(),
        task_arn,
        family: format!("{cluster}-plain"),
        revision: plain.revision as u32,
        cpu_shares: 256,
        memory_bytes: 128 << 20,
    };
    let agent = format!("interval = \"{interval}\"");
    let hosts = vec![
        start_host(
            peers,
            &cluster,
            1,
            busy,
            "InService",
            vec![running],
            &agent,
            &namespace,
        )
        .await,
        start_host(
            peers,
            &cluster,
            2,
            idle,
            "InService",
            vec![],
            &agent,
            &namespace,
        )
        .await,
        start_host(
            peers,
            &cluster,
            3,
            warm,
            "Warmed:Pending",
            vec![],
            &agent,
            &namespace,
        )
        .await,
        start_host(
            peers,
            &cluster,
            4,
            draining,
            "InService",
            vec![],
            &agent,
            &namespace,
        )
        .await,
    ];
    // The first complete periods may still be planned before every host read the cluster's
    // shapes: the third is compared.
    let period = complete_period(&peers.cloudwatch, &namespace, hosts.len(), 3)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{interval}: no period with a datum from every host: {:?}; logs:\n{}",
                sums(&peers.cloudwatch, &namespace, "ContainerCapacity"),
                logs(&hosts)
            )
        });
    let (_, container) = sums(&peers.cloudwatch, &namespace, "ContainerCapacity")[&period];
    let (_, idle_sum) = sums(&peers.cloudwatch, &namespace, "IdleHostCapacity")[&period];
    let c = cluster_json(peers, &cluster);
    eprintln!(
        "interval {interval}: period {period}: Sum ContainerCapacity {container}, Sum IdleHostCapacity {idle_sum:.4}; cluster: container_capacity {}, idle_host_capacity_conservative {}",
        c["container_capacity"], c["idle_host_capacity_conservative"]
    );
    assert!(container > 0.0, "the idle and busy hosts have room: {c}");
    assert_eq!(
        Some(container),
        c["container_capacity"].as_f64(),
        "{interval}: Sum ContainerCapacity vs cluster: {c}\nlogs:\n{}",
        logs(&hosts)
    );
    // Each host publishes its own idle fraction (min over resources), so the Sum is the
    // conservative cluster figure.
    let want = c["idle_host_capacity_conservative"].as_f64().unwrap();
    assert!(
        (idle_sum - want).abs() < 1e-6,
        "{interval}: Sum IdleHostCapacity {idle_sum} vs cluster {want}: {c}\nlogs:\n{}",
        logs(&hosts)
    );
    let excluded = c["excluded"].to_string();
    assert!(
        excluded.contains(draining_ci.rsplit('/').next().unwrap()) || excluded.contains("DRAINING"),
        "{c}"
    );
}

/// N idle hosts, default configuration (only the endpoints and the cluster set): the cluster can
/// take a task and N hosts are idle.
async fn idle_cluster(peers: &Peers, n: usize) {
    let cluster = "idle-cluster";
    let namespace = "ECS/CapacityAgent";
    aws_sdk_ecs::Client::new(&peers.sdk)
        .create_cluster()
        .cluster_name(cluster)
        .send()
        .await
        .unwrap();
    services(peers, cluster).await;
    let mut hosts = Vec::new();
    for i in 0..n {
        let id = run_instance(&peers.sdk, "c5.large").await.unwrap();
        register(peers, cluster, &id).await;
        hosts.push(
            start_host(
                peers,
                cluster,
                10 + i,
                &id,
                "InService",
                vec![],
                "",
                namespace,
            )
            .await,
        );
    }
    let period = complete_period(&peers.cloudwatch, namespace, n, 1)
        .await
        .unwrap_or_else(|| {
            panic!(
                "idle hosts published no complete period; logs:\n{}",
                logs(&hosts)
            )
        });
    let (_, container) = sums(&peers.cloudwatch, namespace, "ContainerCapacity")[&period];
    let (_, idle) = sums(&peers.cloudwatch, namespace, "IdleHostCapacity")[&period];
    eprintln!(
        "idle cluster of {n}: Sum ContainerCapacity {container}, Sum IdleHostCapacity {idle}"
    );
    assert!(container >= 1.0, "{container}");
    assert!((idle - n as f64).abs() < 1e-9, "{idle}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn period_sums_over_hosts_are_the_clusters_figures() {
    let moto = require!(Moto::start(), "moto");
    moto.pin_task_states().await;
    let proxy = LifecycleProxy::start(moto.url()).await;
    let (cpu, memory) = registered_here();
    proxy.register_as(cpu, memory);
    let cloudwatch = CloudWatchProxy::start(moto.url()).await;
    let sdk = moto.sdk_config().await;
    let peers = Peers {
        moto,
        proxy,
        cloudwatch,
        sdk,
    };
    tokio::join!(
        invariant_at(&peers, "60s"),
        invariant_at(&peers, "20s"),
        idle_cluster(&peers, 3),
    );
}
