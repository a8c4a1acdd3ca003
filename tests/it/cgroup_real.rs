//! The cgroup reader against this machine's real cgroup filesystem and Docker engine: it finds the
//! cgroups of running containers, sees a spinning container's CPU time rise and a container's held
//! memory, finds a container under an ECS-agent-style task cgroup, and shrugs when a container goes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ecs_capacity_agent::cgroup::{Cgroups, ContainerCgroup, Hierarchy, Layout};
use ecs_capacity_agent::host::usage::{CpuRates, Usage};

use crate::require;
use crate::support::{
    docker::{self, ContainerSpec},
    eventually,
};

const MIB: u64 = 1024 * 1024;

fn cgroup_root() -> PathBuf {
    std::env::var_os("ECS_CGROUP_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/sys/fs/cgroup".into())
}

/// Removes the test's containers (and the ECS-style parent cgroups Docker leaves behind) even when
/// an assertion fails.
struct Cleanup {
    containers: Vec<String>,
    cgroup_dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v", name])
                .output();
        }
        // rmdir only: succeeds on an empty cgroup, never touches anything else.
        for dir in &self.cgroup_dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

async fn locate(cg: &Cgroups, id: &str, task_id: Option<&str>) -> ContainerCgroup {
    eventually(Duration::from_secs(10), || async {
        cg.container(id, task_id)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no cgroup found for container {id} under {} ({})",
            cg.root().display(),
            cg.hierarchy()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_finds_real_containers_and_sees_cpu_rise_and_memory_held() {
    let dk = require!(docker::connect().await, "docker");
    let info = dk.info().await.expect("docker info");
    let driver = info
        .cgroup_driver
        .map(|d| d.to_string())
        .unwrap_or_default();
    let cg = Cgroups::detect(&cgroup_root()).expect("this machine's cgroup filesystem");
    eprintln!(
        "cgroup hierarchy: {}, Docker cgroup driver: {driver}",
        cg.hierarchy()
    );

    // Unique names: other test runs share this Docker engine.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag = format!("{}-{nanos}", std::process::id());
    let task_id = format!("{:032x}", std::process::id() as u128 * 7919 + 0xec5);
    let mut cleanup = Cleanup {
        containers: vec![],
        cgroup_dirs: vec![],
    };

    // The layout the ECS agent uses for task cgroups with this Docker driver (task_linux.go
    // BuildCgroupRoot): `/ecs/<task>` with cgroupfs, `ecstasks-<task>.slice` with systemd on v2.
    let ecs_parent = match (cg.hierarchy(), driver.as_str()) {
        (Hierarchy::V2 { .. }, "systemd") => Some(format!("ecstasks-{task_id}.slice")),
        (Hierarchy::V1 { .. } | Hierarchy::Hybrid { .. }, "cgroupfs") => {
            // Docker creates the parent in every mounted hierarchy (pids, blkio, unified, …).
            // `ecs` itself goes too when no other run is using it (rmdir fails on a non-empty one).
            let hierarchies: Vec<PathBuf> = std::fs::read_dir(cg.root())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            for h in &hierarchies {
                cleanup.cgroup_dirs.push(h.join("ecs").join(&task_id));
            }
            for h in &hierarchies {
                cleanup.cgroup_dirs.push(h.join("ecs"));
            }
            Some(format!("/ecs/{task_id}"))
        }
        _ => None,
    };

    let spin_name = format!("cgroup-it-spin-{tag}");
    let hold_name = format!("cgroup-it-hold-{tag}");
    let ecs_name = format!("cgroup-it-ecs-{tag}");
    cleanup.containers = vec![spin_name.clone(), hold_name.clone(), ecs_name.clone()];

    let spin = docker::start(&dk, &ContainerSpec::new(&spin_name, "while :; do :; done"))
        .await
        .expect("start spinner");
    // 16 MiB in the container's /dev/shm (tmpfs): charged to its memory cgroup and not reclaimable
    // file cache, so it shows in the working set too.
    let hold = docker::start(
        &dk,
        &ContainerSpec::new(
            &hold_name,
            "yes 0123456789abcdef | head -c 16777216 > /dev/shm/hold; sleep 3600",
        ),
    )
    .await
    .expect("start memory holder");

    let expected_layout = if driver == "systemd" {
        Layout::DockerSystemd
    } else {
        Layout::DockerCgroupfs
    };

    // CPU: the spinner's cumulative CPU time keeps rising.
    let spin_cg = locate(&cg, &spin, None).await;
    assert_eq!(
        spin_cg.layout(),
        expected_layout,
        "{}",
        spin_cg.path().display()
    );
    let first = spin_cg.read();
    let first_at = Instant::now();
    let first_usec = first.cpu_usage_usec.expect("spinner's CPU time readable");
    let (later, later_at) = eventually(Duration::from_secs(20), || async {
        let u = spin_cg.read();
        (u.cpu_usage_usec? > first_usec + 200_000).then(|| (u, Instant::now()))
    })
    .await
    .expect("spinner's CPU time did not rise by 0.2 s within 20 s");
    // The rate as the observer takes it, from two readings of the same container.
    let mut rates = CpuRates::default();
    assert_eq!(rates.rate(&spin, first_usec, first_at), None);
    let cores = rates
        .rate(&spin, later.cpu_usage_usec.unwrap(), later_at)
        .expect("both readings have CPU time");
    assert!(cores > 0.0, "rate {cores}");
    eprintln!("spinner: {cores:.2} cores, {later:?}");
    assert!(later.memory_current_bytes.is_some(), "{later:?}");

    // Memory: the holder's 16 MiB shows in current and in the working set.
    let hold_cg = locate(&cg, &hold, None).await;
    assert_eq!(hold_cg.layout(), expected_layout);
    let held = eventually(Duration::from_secs(20), || async {
        let u = hold_cg.read();
        (u.memory_working_set_bytes? >= 15 * MIB).then_some(u)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "holder's working set never reached 15 MiB: {:?}",
            hold_cg.read()
        )
    });
    assert!(held.memory_current_bytes.unwrap() >= held.memory_working_set_bytes.unwrap());
    eprintln!("holder: {held:?}");

    // The sum over both is at least each.
    let mut total = Usage::from(later);
    total.add(&held.into());
    assert!(total.cpu_usage_usec.unwrap() >= later.cpu_usage_usec.unwrap());
    assert!(total.working_set_bytes.unwrap() >= held.memory_working_set_bytes.unwrap());

    // An ECS task's container under the agent's task cgroup, found with and without the task id.
    match ecs_parent {
        Some(parent) => {
            let spec = ContainerSpec {
                cgroup_parent: Some(parent),
                ..ContainerSpec::new(&ecs_name, "while :; do :; done").ecs_task(
                    "cgroup-it",
                    &format!("arn:aws:ecs:us-east-1:123456789012:task/cgroup-it/{task_id}"),
                    "cgroup-it",
                    "1",
                    "spin",
                )
            };
            let ecs = docker::start(&dk, &spec)
                .await
                .expect("start ECS-style task container");
            let by_task = locate(&cg, &ecs, Some(&task_id)).await;
            assert_eq!(
                by_task.layout(),
                Layout::EcsTask,
                "{}",
                by_task.path().display()
            );
            let by_scan = locate(&cg, &ecs, None).await;
            assert_eq!(by_scan.path(), by_task.path());
            let u = eventually(Duration::from_secs(20), || async {
                let u = by_task.read();
                (u.cpu_usage_usec? > 0 && u.memory_current_bytes? > 0).then_some(u)
            })
            .await
            .expect("ECS task container shows CPU time and memory");
            eprintln!("ECS task container at {}: {u:?}", by_task.path().display());
        }
        None => eprintln!(
            "ECS task cgroup layout not exercised: the ECS agent does not run on {} with the {driver} driver",
            cg.hierarchy()
        ),
    }

    // The spinner goes: its cgroup is no longer found, and the handle read before reads nothing.
    docker::remove(&dk, &spin).await;
    eventually(Duration::from_secs(10), || async {
        cg.container(&spin, None).is_none().then_some(())
    })
    .await
    .expect("removed container's cgroup still found after 10 s");
    assert_eq!(spin_cg.read(), ecs_capacity_agent::cgroup::Usage::default());
    drop(cleanup);
    assert!(!spin_cg.path().exists());
}
