//! Fixture trees in temp dirs, in the kernel's file formats (see `fixture.rs`).

use std::fs;
use std::sync::{Arc, Mutex};

use super::fixture::{self, Sample};
use super::*;

fn tree() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// What a correct reader makes of `s` (v2 semantics; v1 files are written so the same holds).
fn expected(s: &Sample) -> Usage {
    Usage {
        cpu_usage_usec: Some(s.cpu_usage_usec),
        memory_current_bytes: Some(s.memory_bytes),
        memory_working_set_bytes: Some(s.memory_bytes - s.inactive_file_bytes),
        cpu_nr_periods: Some(s.nr_periods),
        cpu_nr_throttled: Some(s.nr_throttled),
        cpu_throttled_usec: Some(s.throttled_usec),
    }
}

// ---- detection ----

#[test]
fn v2_root_is_detected_from_cgroup_controllers() {
    let t = tree();
    fixture::v2_root(t.path()).unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();
    assert_eq!(
        cg.hierarchy(),
        &Hierarchy::V2 {
            root: t.path().to_owned()
        }
    );
    assert_eq!(cg.hierarchy().name(), "v2");
}

#[test]
fn v1_root_with_separate_controllers_is_detected() {
    let t = tree();
    fixture::v1_root(t.path(), false).unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();
    let Hierarchy::V1 { controllers } = cg.hierarchy() else {
        panic!("want v1, got {:?}", cg.hierarchy());
    };
    assert_eq!(controllers.cpu, Some(t.path().join("cpu")));
    assert_eq!(controllers.cpuacct, Some(t.path().join("cpuacct")));
    assert_eq!(controllers.memory, Some(t.path().join("memory")));
}

#[test]
fn v1_root_with_co_mounted_cpu_cpuacct_is_detected() {
    let t = tree();
    fs::create_dir_all(t.path().join("cpu,cpuacct")).unwrap();
    fs::create_dir_all(t.path().join("memory")).unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();
    let Hierarchy::V1 { controllers } = cg.hierarchy() else {
        panic!("want v1, got {:?}", cg.hierarchy());
    };
    assert_eq!(controllers.cpu, Some(t.path().join("cpu,cpuacct")));
    assert_eq!(controllers.cpuacct, Some(t.path().join("cpu,cpuacct")));
}

#[test]
fn hybrid_root_is_detected_from_unified_cgroup_controllers() {
    let t = tree();
    fixture::hybrid_root(t.path()).unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();
    let Hierarchy::Hybrid {
        unified,
        controllers,
    } = cg.hierarchy()
    else {
        panic!("want hybrid, got {:?}", cg.hierarchy());
    };
    assert_eq!(unified, &t.path().join("unified"));
    assert_eq!(controllers.memory, Some(t.path().join("memory")));
    assert_eq!(cg.hierarchy().to_string(), "hybrid");
}

#[test]
fn missing_root_is_an_error_naming_it() {
    let t = tree();
    let root = t.path().join("nope");
    let err = Cgroups::detect(&root).unwrap_err();
    assert!(matches!(err, Error::Root { .. }), "{err:?}");
    assert!(err.to_string().contains(&*root.to_string_lossy()), "{err}");
}

#[test]
fn a_directory_without_cgroups_is_an_error_naming_it_and_the_setting() {
    let t = tree();
    fs::create_dir_all(t.path().join("something-else")).unwrap();
    let err = Cgroups::detect(t.path()).unwrap_err();
    assert!(matches!(err, Error::Unrecognised { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&*t.path().to_string_lossy()), "{msg}");
    assert!(msg.contains("ECS_CGROUP_PATH"), "{msg}");
}

// ---- locating and reading, cgroup v2 ----

#[test]
fn v2_ecs_task_cgroup_is_found_and_read() {
    let t = tree();
    fixture::v2_root(t.path()).unwrap();
    let (task, id, s) = (
        fixture::task_id(1),
        fixture::container_id(1),
        Sample::nth(1),
    );
    let rel = format!("ecstasks.slice/ecstasks-{task}.slice/docker-{id}.scope");
    let dir = fixture::v2_container(t.path(), &rel, &s).unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();

    let c = cg.container(&id, Some(&task)).expect("located");
    assert_eq!(c.layout(), Layout::EcsTask);
    assert_eq!(c.path(), dir);
    assert_eq!(c.read(), expected(&s));
}

#[test]
fn v2_ecs_task_cgroup_is_found_without_the_task_id_or_with_a_wrong_one() {
    let t = tree();
    fixture::v2_root(t.path()).unwrap();
    let (task, id) = (fixture::task_id(2), fixture::container_id(2));
    let rel = format!("ecstasks.slice/ecstasks-{task}.slice/docker-{id}.scope");
    fixture::v2_container(t.path(), &rel, &Sample::nth(2)).unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();

    for task_id in [None, Some("0123456789abcdef0123456789abcdef")] {
        let c = cg
            .container(&id, task_id)
            .expect("located by scanning ecstasks.slice");
        assert_eq!(c.layout(), Layout::EcsTask);
        assert_eq!(c.path(), t.path().join(&rel));
    }
}

#[test]
fn v2_docker_systemd_and_cgroupfs_layouts_are_found() {
    let t = tree();
    fixture::v2_root(t.path()).unwrap();
    let (a, b) = (fixture::container_id(3), fixture::container_id(4));
    fixture::v2_container(
        t.path(),
        &format!("system.slice/docker-{a}.scope"),
        &Sample::nth(3),
    )
    .unwrap();
    fixture::v2_container(t.path(), &format!("docker/{b}"), &Sample::nth(4)).unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();

    let ca = cg.container(&a, None).expect("systemd scope");
    assert_eq!(ca.layout(), Layout::DockerSystemd);
    assert_eq!(ca.read(), expected(&Sample::nth(3)));
    // A task id that has no ECS cgroup (task limits off) still finds Docker's.
    let cb = cg
        .container(&b, Some(&fixture::task_id(4)))
        .expect("cgroupfs");
    assert_eq!(cb.layout(), Layout::DockerCgroupfs);
    assert_eq!(cb.read(), expected(&Sample::nth(4)));
}

#[test]
fn v2_without_the_cpu_controller_has_usage_but_no_throttling() {
    let t = tree();
    fixture::v2_root(t.path()).unwrap();
    let id = fixture::container_id(5);
    let s = Sample::nth(5);
    let dir = fixture::v2_container(t.path(), &format!("docker/{id}"), &s).unwrap();
    fs::write(dir.join("cpu.stat"), fixture::v2_cpu_stat(&s, false)).unwrap();
    let u = Cgroups::detect(t.path())
        .unwrap()
        .container(&id, None)
        .unwrap()
        .read();
    assert_eq!(u.cpu_usage_usec, Some(s.cpu_usage_usec));
    assert_eq!(
        (u.cpu_nr_periods, u.cpu_nr_throttled, u.cpu_throttled_usec),
        (None, None, None)
    );
}

#[test]
fn working_set_is_floored_at_zero_when_inactive_file_exceeds_usage() {
    let t = tree();
    fixture::v2_root(t.path()).unwrap();
    let id = fixture::container_id(6);
    let s = Sample {
        memory_bytes: 1000,
        inactive_file_bytes: 5000,
        ..Sample::nth(6)
    };
    fixture::v2_container(t.path(), &format!("docker/{id}"), &s).unwrap();
    let u = Cgroups::detect(t.path())
        .unwrap()
        .container(&id, None)
        .unwrap()
        .read();
    assert_eq!(u.memory_current_bytes, Some(1000));
    assert_eq!(u.memory_working_set_bytes, Some(0));
}

// ---- locating and reading, cgroup v1 and hybrid ----

#[test]
fn v1_ecs_task_cgroup_is_read_with_units_converted() {
    let t = tree();
    fixture::v1_root(t.path(), false).unwrap();
    let (task, id, s) = (
        fixture::task_id(7),
        fixture::container_id(7),
        Sample::nth(7),
    );
    fixture::v1_container(t.path(), &format!("ecs/{task}/{id}"), &s).unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();

    let c = cg.container(&id, Some(&task)).expect("located");
    assert_eq!(c.layout(), Layout::EcsTask);
    assert_eq!(c.path(), t.path().join("cpuacct/ecs").join(&task).join(&id));
    // cpuacct.usage and throttled_time are nanoseconds; the working set subtracts
    // total_inactive_file (not the cgroup's own inactive_file, which the fixture makes different).
    assert_eq!(c.read(), expected(&s));
    // Found by scanning ecs/ too.
    assert_eq!(cg.container(&id, None).unwrap().layout(), Layout::EcsTask);
}

#[test]
fn v1_docker_layouts_are_found_on_co_mounted_cpu_cpuacct() {
    let t = tree();
    fixture::v1_root(t.path(), true).unwrap();
    let (a, b) = (fixture::container_id(8), fixture::container_id(9));
    fixture::v1_container(t.path(), &format!("docker/{a}"), &Sample::nth(8)).unwrap();
    fixture::v1_container(
        t.path(),
        &format!("system.slice/docker-{b}.scope"),
        &Sample::nth(9),
    )
    .unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();

    let ca = cg.container(&a, None).unwrap();
    assert_eq!(ca.layout(), Layout::DockerCgroupfs);
    assert_eq!(ca.read(), expected(&Sample::nth(8)));
    let cb = cg.container(&b, None).unwrap();
    assert_eq!(cb.layout(), Layout::DockerSystemd);
    assert_eq!(cb.read(), expected(&Sample::nth(9)));
}

#[test]
fn hybrid_reads_the_v1_controllers() {
    let t = tree();
    fixture::hybrid_root(t.path()).unwrap();
    let id = fixture::container_id(10);
    let s = Sample::nth(10);
    fixture::hybrid_container(t.path(), &format!("docker/{id}"), &s).unwrap();
    // The unified side says something else: it must not win over cpuacct.
    fs::write(
        t.path().join("unified/docker").join(&id).join("cpu.stat"),
        "usage_usec 1\nuser_usec 1\nsystem_usec 0\n",
    )
    .unwrap();
    let c = Cgroups::detect(t.path())
        .unwrap()
        .container(&id, None)
        .unwrap();
    assert_eq!(c.read(), expected(&s));
}

#[test]
fn hybrid_falls_back_to_the_unified_cpu_stat_for_cpu_time() {
    let t = tree();
    fixture::hybrid_root(t.path()).unwrap();
    let id = fixture::container_id(11);
    let s = Sample::nth(11);
    let dir = fixture::hybrid_container(t.path(), &format!("docker/{id}"), &s).unwrap();
    fs::remove_file(dir.join("cpuacct.usage")).unwrap();
    let u = Cgroups::detect(t.path())
        .unwrap()
        .container(&id, None)
        .unwrap()
        .read();
    assert_eq!(u.cpu_usage_usec, Some(s.cpu_usage_usec));
}

#[test]
fn an_absent_container_or_a_hostile_id_is_not_found() {
    let t = tree();
    fixture::v1_root(t.path(), false).unwrap();
    fixture::v1_container(t.path(), "docker/x", &Sample::nth(0)).unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();
    assert!(cg.container(&fixture::container_id(12), None).is_none());
    assert!(
        cg.container(&fixture::container_id(12), Some("t"))
            .is_none()
    );
    assert!(cg.container("../docker/x", None).is_none());
    assert!(cg.container("x", Some("..")).is_none());
    assert!(cg.container("", None).is_none());
    assert!(cg.container("x", None).is_some());
}

// ---- vanishing and garbage ----

#[test]
fn v2_cgroup_removed_mid_read_leaves_the_rest_none() {
    let t = tree();
    fixture::v2_root(t.path()).unwrap();
    let id = fixture::container_id(13);
    let s = Sample::nth(13);
    let dir = fixture::v2_container(t.path(), &format!("docker/{id}"), &s).unwrap();
    let c = Cgroups::detect(t.path())
        .unwrap()
        .container(&id, None)
        .unwrap();

    // The container exits right after its cpu.stat was read.
    let u = c.read_observed(|path| {
        if path.ends_with("memory.current") {
            fs::remove_dir_all(&dir).unwrap();
        }
    });
    assert_eq!(u.cpu_usage_usec, Some(s.cpu_usage_usec));
    assert_eq!(u.cpu_throttled_usec, Some(s.throttled_usec));
    assert_eq!(u.memory_current_bytes, None);
    assert_eq!(u.memory_working_set_bytes, None);
    // And read again once it is gone: nothing, no panic.
    assert_eq!(c.read(), Usage::default());
}

#[test]
fn v1_memory_stat_vanishing_mid_read_blanks_only_the_working_set() {
    let t = tree();
    fixture::v1_root(t.path(), false).unwrap();
    let id = fixture::container_id(14);
    let s = Sample::nth(14);
    fixture::v1_container(t.path(), &format!("docker/{id}"), &s).unwrap();
    let c = Cgroups::detect(t.path())
        .unwrap()
        .container(&id, None)
        .unwrap();

    let u = c.read_observed(|path| {
        if path.ends_with("memory.stat") {
            fs::remove_file(path).unwrap();
        }
    });
    assert_eq!(
        u,
        Usage {
            memory_working_set_bytes: None,
            ..expected(&s)
        }
    );
}

/// Captures the debug log of a closure.
fn logs_of(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn garbage_gives_none_and_a_debug_log_naming_the_file() {
    let t = tree();
    fixture::v2_root(t.path()).unwrap();
    let id = fixture::container_id(15);
    let s = Sample::nth(15);
    let dir = fixture::v2_container(t.path(), &format!("docker/{id}"), &s).unwrap();
    fs::write(dir.join("memory.current"), "lots\n").unwrap();
    fs::write(
        dir.join("cpu.stat"),
        "usage_usec 12x\nuser_usec 1\nsystem_usec 1\nnr_periods 5\nnr_throttled 1\nthrottled_usec 99\n",
    )
    .unwrap();
    let c = Cgroups::detect(t.path())
        .unwrap()
        .container(&id, None)
        .unwrap();

    let mut u = Usage::default();
    let logs = logs_of(|| u = c.read());
    assert_eq!(
        u,
        Usage {
            cpu_usage_usec: None,
            memory_current_bytes: None,
            memory_working_set_bytes: None,
            cpu_nr_periods: Some(5),
            cpu_nr_throttled: Some(1),
            cpu_throttled_usec: Some(99),
        }
    );
    for file in ["memory.current", "cpu.stat"] {
        let path = dir.join(file);
        assert!(
            logs.contains(&*path.to_string_lossy()),
            "no debug log naming {}:\n{logs}",
            path.display()
        );
    }
}

#[test]
fn an_empty_file_gives_none() {
    let t = tree();
    fixture::v1_root(t.path(), false).unwrap();
    let id = fixture::container_id(16);
    let s = Sample::nth(16);
    let dir = fixture::v1_container(t.path(), &format!("docker/{id}"), &s).unwrap();
    fs::write(dir.join("cpuacct.usage"), "").unwrap();
    let u = Cgroups::detect(t.path())
        .unwrap()
        .container(&id, None)
        .unwrap()
        .read();
    assert_eq!(u.cpu_usage_usec, None);
    assert_eq!(u.memory_current_bytes, Some(s.memory_bytes));
}

#[test]
fn serializes_for_status() {
    let t = tree();
    fixture::hybrid_root(t.path()).unwrap();
    let cg = Cgroups::detect(t.path()).unwrap();
    let json = serde_json::to_value(cg.hierarchy()).unwrap();
    assert_eq!(json["version"], "hybrid");
    let u = serde_json::to_value(Usage {
        cpu_usage_usec: Some(7),
        ..Usage::default()
    })
    .unwrap();
    assert_eq!(u["cpu_usage_usec"], 7);
    assert!(u["memory_current_bytes"].is_null());
    assert_eq!(serde_json::to_value(Layout::EcsTask).unwrap(), "ecs_task");
}

#[test]
fn a_file_larger_than_the_read_buffer_is_read_whole() {
    let t = tree();
    fixture::v2_root(t.path()).unwrap();
    let id = fixture::container_id(17);
    let s = Sample::nth(17);
    let dir = fixture::v2_container(t.path(), &format!("docker/{id}"), &s).unwrap();
    let filler: String = (0..2000).map(|i| format!("filler_{i} {i}\n")).collect();
    fs::write(
        dir.join("memory.stat"),
        format!("{filler}{}", fixture::v2_memory_stat(&s)),
    )
    .unwrap();
    let u = Cgroups::detect(t.path())
        .unwrap()
        .container(&id, None)
        .unwrap()
        .read();
    assert_eq!(u, expected(&s));
}
