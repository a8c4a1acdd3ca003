//! The capacity arithmetic and the `cluster` command at scale.
//!
//! - `compute/1000 hosts x 20 shapes`: the pure model, as the daemon and `cluster` run it.
//! - `cluster offline in process/2000 hosts x 50 shapes`: reading the AWS CLI JSON files, the model
//!   and the JSON output, without process start-up.
//! - `cluster offline process/2000 hosts x 50 shapes`: the whole `ecs-capacity-agent cluster`
//!   process on those files (budget 50 ms).
//!
//! Run: `cargo bench --bench cluster`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use ecs_capacity_agent::capacity::{self, HostInput, Quantity, TaskShape};
use ecs_capacity_agent::cluster;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_ecs-capacity-agent");

fn hosts(n: usize) -> Vec<HostInput> {
    (0..n)
        .map(|i| {
            let i = i as u64;
            HostInput {
                name: format!("i-{i:017x}"),
                cpu_units: Quantity::new(4096 * (1 + i % 4), (i * 256) % 4096),
                memory_mib: Quantity::new(15702 * (1 + i % 4), (i * 1000) % 15000),
                taken_tcp_ports: [22, 2375, 2376, 51678, 51679, 8000 + (i % 20) as u16]
                    .into_iter()
                    .collect(),
                taken_udp_ports: BTreeSet::new(),
                eni: Some(Quantity::new(3 + i % 5, i % 3)),
            }
        })
        .collect()
}

fn shapes(n: usize) -> Vec<TaskShape> {
    (0..n)
        .map(|i| {
            let i = i as u64;
            TaskShape {
                name: format!("family-{i}"),
                cpu_units: 128 * (1 + i % 8),
                memory_mib: 256 * (1 + i % 12),
                tcp_ports: if i.is_multiple_of(5) {
                    [8000 + (i % 20) as u16].into_iter().collect()
                } else {
                    BTreeSet::new()
                },
                udp_ports: BTreeSet::new(),
                awsvpc: i.is_multiple_of(4),
            }
        })
        .collect()
}

fn resource(name: &str, integer: u64, ports: &[u16]) -> serde_json::Value {
    if name.starts_with("PORTS") {
        json!({"name": name, "type": "STRINGSET", "doubleValue": 0.0, "longValue": 0, "integerValue": 0,
               "stringSetValue": ports.iter().map(u16::to_string).collect::<Vec<_>>()})
    } else {
        json!({"name": name, "type": "INTEGER", "doubleValue": 0.0, "longValue": 0, "integerValue": integer})
    }
}

/// Writes describe-container-instances, describe-instance-types, describe-tasks and `shapes`
/// describe-task-definition files in the AWS CLI's shapes; returns the command's arguments.
fn write_files(dir: &Path, instances: usize, shapes: usize) -> Vec<String> {
    let reserved = [22u16, 2375, 2376, 51678, 51679];
    let types = ["c5.large", "m5.xlarge", "m5.2xlarge", "r5.4xlarge"];
    let cis: Vec<_> = (0..instances)
        .map(|i| {
            let cpu = 2048u64 << (i % 4);
            let mem = 3763u64 << (i % 4);
            let mut taken = reserved.to_vec();
            taken.push(8000 + (i % 20) as u16);
            json!({
                "containerInstanceArn": format!("arn:aws:ecs:us-east-1:123456789012:container-instance/big/{i:032x}"),
                "ec2InstanceId": format!("i-{i:017x}"),
                "version": 4,
                "versionInfo": {"agentVersion": "1.86.3", "agentHash": "5a5b3d4e", "dockerVersion": "DockerVersion: 25.0.3"},
                "registeredResources": [resource("CPU", cpu, &[]), resource("MEMORY", mem, &[]),
                                        resource("PORTS", 0, &reserved), resource("PORTS_UDP", 0, &[])],
                "remainingResources": [resource("CPU", cpu - (i as u64 * 128) % cpu, &[]),
                                       resource("MEMORY", mem - (i as u64 * 512) % mem, &[]),
                                       resource("PORTS", 0, &taken), resource("PORTS_UDP", 0, &[])],
                "status": if i.is_multiple_of(50) { "DRAINING" } else { "ACTIVE" },
                "agentConnected": true,
                "runningTasksCount": 3,
                "pendingTasksCount": 0,
                "attributes": [{"name": "ecs.instance-type", "value": types[i % 4]},
                               {"name": "ecs.os-type", "value": "linux"},
                               {"name": "ecs.capability.task-eni"}],
                "registeredAt": "2026-11-20T09:14:03.512000+00:00",
                "attachments": [], "tags": []
            })
        })
        .collect();
    let ci_path = dir.join("container-instances.json");
    std::fs::write(
        &ci_path,
        serde_json::to_string_pretty(&json!({"containerInstances": cis, "failures": []})).unwrap(),
    )
    .unwrap();

    let it_path = dir.join("instance-types.json");
    let its: Vec<_> = types
        .iter()
        .zip([3, 4, 4, 8])
        .map(|(t, e)| json!({"InstanceType": t, "NetworkInfo": {"MaximumNetworkInterfaces": e}}))
        .collect();
    std::fs::write(&it_path, json!({"InstanceTypes": its}).to_string()).unwrap();

    let tasks: Vec<_> = (0..instances)
        .filter(|i| i.is_multiple_of(3))
        .map(|i| {
            json!({
                "taskArn": format!("arn:aws:ecs:us-east-1:123456789012:task/big/{i:032x}"),
                "containerInstanceArn": format!("arn:aws:ecs:us-east-1:123456789012:container-instance/big/{i:032x}"),
                "lastStatus": "RUNNING", "desiredStatus": "RUNNING",
                "attachments": [{"id": "a", "type": "ElasticNetworkInterface", "status": "ATTACHED", "details": []}]
            })
        })
        .collect();
    let tasks_path = dir.join("tasks.json");
    std::fs::write(
        &tasks_path,
        json!({"tasks": tasks, "failures": []}).to_string(),
    )
    .unwrap();

    let mut args: Vec<String> = vec![
        "cluster".into(),
        "--output".into(),
        "json".into(),
        "--container-instances".into(),
        ci_path.display().to_string(),
        "--instance-types".into(),
        it_path.display().to_string(),
        "--tasks".into(),
        tasks_path.display().to_string(),
    ];
    for s in 0..shapes {
        let awsvpc = s.is_multiple_of(4);
        let td = json!({"taskDefinition": {
            "taskDefinitionArn": format!("arn:aws:ecs:us-east-1:123456789012:task-definition/family-{s}:1"),
            "family": format!("family-{s}"),
            "revision": 1,
            "networkMode": if awsvpc { "awsvpc" } else { "bridge" },
            "status": "ACTIVE",
            "containerDefinitions": [
                {"name": "app", "image": "app:1", "cpu": 128 * (1 + s % 8), "memory": 256 * (1 + s % 12),
                 "portMappings": if s.is_multiple_of(5) && !awsvpc { json!([{"containerPort": 80, "hostPort": 8000 + s % 20, "protocol": "tcp"}]) } else { json!([]) },
                 "essential": true},
                {"name": "log", "image": "log:1", "cpu": 0, "memoryReservation": 64, "essential": false}
            ]
        }, "tags": []});
        let p: PathBuf = dir.join(format!("td-{s}.json"));
        std::fs::write(&p, serde_json::to_string_pretty(&td).unwrap()).unwrap();
        args.push("--task-definition".into());
        args.push(p.display().to_string());
    }
    args
}

fn bench(c: &mut Criterion) {
    let h = hosts(1000);
    let s = shapes(20);
    c.bench_function("compute/1000 hosts x 20 shapes", |b| {
        b.iter(|| capacity::compute(std::hint::black_box(&h), std::hint::black_box(&s), 1.0))
    });

    let dir = tempfile::tempdir().unwrap();
    let args = write_files(dir.path(), 2000, 50);
    let tds: Vec<PathBuf> = args
        .iter()
        .skip_while(|a| *a != "--task-definition")
        .filter(|a| *a != "--task-definition")
        .map(PathBuf::from)
        .collect();
    let paths = cluster::files::Paths {
        container_instances: &dir.path().join("container-instances.json"),
        task_definitions: &tds,
        instance_types: Some(&dir.path().join("instance-types.json")),
        tasks: Some(&dir.path().join("tasks.json")),
    };
    let mut group = c.benchmark_group("cluster offline");
    group.sample_size(20);
    group.bench_function("in process/2000 hosts x 50 shapes", |b| {
        b.iter(|| {
            let inputs = cluster::files::load(&paths).unwrap();
            let mut out = Vec::new();
            cluster::calculate(&inputs, 1.0)
                .write_json(&mut out)
                .unwrap();
            out
        })
    });
    group.bench_function("process/2000 hosts x 50 shapes", |b| {
        b.iter(|| {
            let status = Command::new(BIN)
                .args(&args)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
