//! Reading 200 containers' usage from a fixture cgroup tree and summing it as the observer does
//! (target: ≤ 10 ms per snapshot). Run: `cargo bench --bench cgroup`.
//!
//! `read/*` reads 200 already-located cgroups; `locate+read/*` also locates each one first, as the
//! observer's reader does at every snapshot. The tree lives on tmpfs
//! (`/dev/shm`, when there is one) because cgroupfs is in-memory too; on a disk filesystem each open
//! costs more than it would on /sys/fs/cgroup.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ecs_capacity_agent::cgroup::{self, Cgroups};
use ecs_capacity_agent::host::Usage;

#[path = "../src/cgroup/fixture.rs"]
mod fixture;

const CONTAINERS: u64 = 200;
/// ECS tasks of four containers each, under the agent's task cgroups.
const PER_TASK: u64 = 4;

struct Tree {
    _dir: tempfile::TempDir,
    cgroups: Cgroups,
    ids: Vec<(String, String)>,
}

fn tree(version: &str) -> Tree {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let root = dir.path();
    match version {
        "v2" => fixture::v2_root(root),
        "v1" => fixture::v1_root(root, true),
        _ => fixture::hybrid_root(root),
    }
    .expect("fixture root");
    let mut ids = Vec::new();
    for n in 0..CONTAINERS {
        let (task, id) = (fixture::task_id(n / PER_TASK), fixture::container_id(n));
        let sample = fixture::Sample::nth(n);
        match version {
            "v2" => fixture::v2_container(
                root,
                &format!("ecstasks.slice/ecstasks-{task}.slice/docker-{id}.scope"),
                &sample,
            ),
            "v1" => fixture::v1_container(root, &format!("ecs/{task}/{id}"), &sample),
            _ => fixture::hybrid_container(root, &format!("docker/{id}"), &sample),
        }
        .expect("fixture container");
        ids.push((id, task));
    }
    let cgroups = Cgroups::detect(root).expect("detect fixture");
    Tree {
        _dir: dir,
        cgroups,
        ids,
    }
}

/// The host's sum, as the observer makes it from the readings.
fn total(readings: impl Iterator<Item = cgroup::Usage>) -> Usage {
    readings.fold(Usage::default(), |mut acc, u| {
        acc.add(&u.into());
        acc
    })
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("cgroup_200_containers");
    for version in ["v2", "v1", "hybrid"] {
        let t = tree(version);
        let located: Vec<_> = t
            .ids
            .iter()
            .map(|(id, task)| t.cgroups.container(id, Some(task)).expect("located"))
            .collect();
        // Every container reads fully: a benchmark of None would measure nothing.
        for c in &located {
            let u = c.read();
            assert!(u.cpu_usage_usec.is_some() && u.memory_working_set_bytes.is_some());
        }
        group.bench_function(format!("read/{version}"), |b| {
            b.iter(|| black_box(total(located.iter().map(|c| c.read()))))
        });
        group.bench_function(format!("locate+read/{version}"), |b| {
            b.iter(|| {
                black_box(total(
                    t.ids
                        .iter()
                        .filter_map(|(id, task)| t.cgroups.container(id, Some(task)))
                        .map(|c| c.read()),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
