use std::os::unix::fs::symlink;

use serde_json::{Value, json};

use super::*;
use crate::drain::machine::{Done, Input, Settings, step};
use crate::notice::Notice;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// An Auto Scaling drain with its hook found: every kind of time and a heartbeat timeout.
fn asg_pending() -> State {
    let settings = Settings::default();
    let mut st = State::default();
    for input in [
        Input::Notice(Notice::AutoScalingTerminated { seen_at: t(0) }),
        Input::Done(Done::SetDraining(Ok(()))),
        Input::Done(Done::FindHook(Ok(Some(Hook {
            group: "asg".into(),
            name: "drain-hook".into(),
            heartbeat_timeout: Duration::from_secs(300),
        })))),
    ] {
        st = step(&st, input, t(0), &settings).0;
    }
    assert!(matches!(
        st.phase,
        Phase::Draining(ref d) if matches!(d.lifecycle, Lifecycle::Pending { .. })
    ));
    st
}

fn on_disk(state: &State) -> Value {
    json!({
        "version": VERSION,
        "updated_at": {"secs_since_epoch": 1_700_000_000u64, "nanos_since_epoch": 0},
        "state": serde_json::to_value(state).unwrap(),
    })
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn aside(dir: &Path) -> PathBuf {
    let found: Vec<_> = names(dir)
        .into_iter()
        .filter(|n| n.starts_with("drain.json.corrupt-"))
        .collect();
    assert_eq!(found.len(), 1, "{:?}", names(dir));
    dir.join(&found[0])
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn missing_state_is_active_and_updates_persist() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("sub")).unwrap();
    assert_eq!(store.load().unwrap(), State::default());
    store
        .update(|s| {
            s.handled.insert("spot:x".into());
        })
        .unwrap();
    let again = Store::open(dir.path().join("sub")).unwrap();
    assert!(again.load().unwrap().handled.contains("spot:x"));
    // No temp or probe file is left behind; the files are private.
    assert_eq!(names(&dir.path().join("sub")), ["drain.json", "drain.lock"]);
    assert_eq!(mode(&dir.path().join("sub")), 0o700);
    assert_eq!(mode(&store.path()), 0o600);
    assert_eq!(mode(&dir.path().join("sub/drain.lock")), 0o600);
}

/// Each form of unreadable state: `load` names the file and why, `update` moves it aside as it is
/// and goes on from ACTIVE, writing a good file.
#[test]
fn every_corrupt_form_is_moved_aside_and_the_store_starts_from_active() {
    let pending = on_disk(&asg_pending());
    let with = |pointer: &str, v: Value| {
        let mut doc = pending.clone();
        *doc.pointer_mut(pointer).unwrap() = v;
        doc.to_string()
    };
    let far = json!({"secs_since_epoch": 100_000_000_000u64, "nanos_since_epoch": 0});
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"{ not json".to_vec(), "key must be a string"),
        ("binary", vec![0, 159, 146, 150, 255, 1], "not UTF-8"),
        ("empty", Vec::new(), "EOF"),
        ("an array", b"[]".to_vec(), "invalid length"),
        (
            "wrong shape",
            br#"{"version":1,"updated_at":{"secs_since_epoch":1,"nanos_since_epoch":0},"state":{"phase":7}}"#
                .to_vec(),
            "invalid type",
        ),
        (
            "another version",
            with("/version", json!(9)).into_bytes(),
            "version 9",
        ),
        (
            "a time past 2200",
            with("/state/phase/since", far.clone()).into_bytes(),
            "the drain's start",
        ),
        (
            "a heartbeat past 2200",
            with("/state/phase/lifecycle/last_heartbeat", far).into_bytes(),
            "the last heartbeat",
        ),
        (
            "a time that overflows",
            with(
                "/state/phase/since",
                json!({"secs_since_epoch": u64::MAX, "nanos_since_epoch": 0}),
            )
            .into_bytes(),
            "overflow",
        ),
        (
            "a huge heartbeat timeout",
            with(
                "/state/phase/lifecycle/hook/heartbeat_timeout",
                json!({"secs": u64::MAX, "nanos": 0}),
            )
            .into_bytes(),
            "heartbeat timeout of hook drain-hook",
        ),
    ];
    for (what, bytes, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(store.path(), &bytes).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("drain.json") && err.contains(why),
            "{what}: {err}"
        );
        let phase = store.update(|s| s.phase.clone()).unwrap();
        assert_eq!(phase, Phase::Active, "{what}");
        assert_eq!(std::fs::read(aside(dir.path())).unwrap(), bytes, "{what}");
        // The state written in its place reads back.
        store.update(|s| s.handled.insert(what.into())).unwrap();
        assert!(store.load().unwrap().handled.contains(what), "{what}");
    }
}

#[test]
fn a_directory_a_symlink_or_a_fifo_at_the_state_path_is_moved_aside() {
    // A directory, with something in it.
    let dir = tempfile::tempdir().unwrap();
    let health = Arc::new(Health::default());
    let store = Store::open(dir.path()).unwrap().with_health(health.clone());
    std::fs::create_dir(store.path()).unwrap();
    std::fs::write(store.path().join("x"), "x").unwrap();
    assert!(store.load().unwrap_err().to_string().contains("directory"));
    store.update(|s| s.handled.insert("a".into())).unwrap();
    let moved = aside(dir.path());
    assert!(moved.join("x").exists());
    assert!(store.load().unwrap().handled.contains("a"));
    // Unhealthy until restarted, naming both paths and why.
    store.update(|s| s.handled.insert("b".into())).unwrap();
    let fault = &health.faults()["drain_state_corrupt"];
    assert!(
        fault.contains("it is a directory") && fault.contains(&*moved.to_string_lossy()),
        "{fault}"
    );

    // A symbolic link, even to a good state: its target is neither read nor written.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state")).unwrap();
    let target = dir.path().join("elsewhere.json");
    let good = on_disk(&asg_pending()).to_string();
    std::fs::write(&target, &good).unwrap();
    symlink(&target, store.path()).unwrap();
    assert!(
        store
            .load()
            .unwrap_err()
            .to_string()
            .contains("symbolic link")
    );
    let phase = store.update(|s| s.phase.clone()).unwrap();
    assert_eq!(phase, Phase::Active);
    store.update(|s| s.handled.insert("b".into())).unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), good);
    let moved = aside(store.dir());
    assert!(std::fs::symlink_metadata(&moved).unwrap().is_symlink());
    assert!(
        !std::fs::symlink_metadata(store.path())
            .unwrap()
            .is_symlink()
    );

    // A FIFO does not hang the reader.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    nix::unistd::mkfifo(&store.path(), nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert!(store.load().unwrap_err().to_string().contains("a FIFO"));
    store.update(|s| s.handled.insert("c".into())).unwrap();
    assert!(store.load().unwrap().handled.contains("c"));
}

#[test]
fn the_bounds_leave_the_machine_room_for_its_arithmetic() {
    // A state at the very bounds loads, and the machine steps over it without overflowing.
    let mut st = asg_pending();
    let latest = SystemTime::UNIX_EPOCH + LATEST;
    if let Phase::Draining(d) = &mut st.phase {
        d.since = latest;
        d.deadline = Some(latest);
        d.lifecycle = Lifecycle::Pending {
            hook: Hook {
                group: "asg".into(),
                name: "h".into(),
                heartbeat_timeout: MAX_GLOBAL_TIMEOUT,
            },
            seen_at: latest,
            last_heartbeat: latest,
        };
    }
    validate(&st).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    std::fs::write(store.path(), on_disk(&st).to_string()).unwrap();
    assert_eq!(store.load().unwrap(), st);
    let settings = Settings::default();
    for now in [t(0), latest] {
        for input in [Input::Restarted, Input::Tick { tasks: Some(1) }] {
            let (next, _) = step(&st, input, now, &settings);
            let _ = crate::drain::DrainStatus::from_state(&next).summary();
        }
    }
}

#[test]
fn the_temp_file_never_follows_or_reuses_what_is_at_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state")).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    // O_EXCL | O_NOFOLLOW: a link (or file) already at the name is refused.
    let planted = store.dir().join(".planted");
    symlink(&victim, &planted).unwrap();
    let e = create_new(&planted).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    // The name the old build used for its temp file is not used any more.
    let old_tmp = store.dir().join(".drain.json.tmp");
    symlink(&victim, &old_tmp).unwrap();
    store.update(|s| s.handled.insert("x".into())).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(std::fs::symlink_metadata(&old_tmp).unwrap().is_symlink());
    assert!(store.load().unwrap().handled.contains("x"));
    // Two temp names in a row differ.
    let (_, a) = create_temp(store.dir(), ".t").unwrap();
    let (_, b) = create_temp(store.dir(), ".t").unwrap();
    assert_ne!(a, b);
}

#[test]
fn a_lock_file_that_is_a_symlink_is_not_followed_and_the_drain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let health = Arc::new(Health::default());
    let store = Store::new(dir.path().join("state")).with_health(health.clone());
    store.prepare().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let lock = store.dir().join(LOCK_FILE);
    symlink(&victim, &lock).unwrap();
    let degraded = store.update(|s| s.handled.insert("x".into())).unwrap_err();
    assert!(degraded.value);
    assert!(
        matches!(degraded.error, StateError::Lock { .. }),
        "{}",
        degraded.error
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    // Written all the same, without the lock; unhealthy while the lock cannot be taken.
    assert!(!store.unsaved());
    assert!(
        Store::new(store.dir())
            .load()
            .unwrap()
            .handled
            .contains("x")
    );
    assert!(health.faults()["drain_state"].contains("drain.lock"));
    assert_eq!(health.state_write_errors(), 1);
    // A dangling link is not created either.
    std::fs::remove_file(&victim).unwrap();
    store.update(|s| s.handled.insert("y".into())).unwrap_err();
    assert!(!victim.exists());
    std::fs::remove_file(&lock).unwrap();
    store.update(|s| s.handled.insert("z".into())).unwrap();
    assert!(health.faults().is_empty());
}

/// A directory that cannot hold the state (here: its path runs through a regular file, which fails
/// even for root): every step still happens, from memory, and is written once the directory works.
#[test]
fn state_that_cannot_be_stored_is_kept_in_memory_reported_and_written_later() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let health = Arc::new(Health::default());
    let store = Store::new(blocker.join("state")).with_health(health.clone());
    let e = store.prepare().unwrap_err();
    assert!(matches!(e, StateError::CreateDir { .. }), "{e}");
    assert!(health.faults().contains_key("drain_state"));

    let first = store.update(|s| {
        s.handled.insert("spot:1".into());
        s.handled.len()
    });
    let Err(Degraded { value: 1, error }) = first else {
        panic!("{first:?}");
    };
    assert!(error.to_string().contains("blocker"), "{error}");
    assert!(store.unsaved());
    // The next step starts from the state in memory, and status shows it.
    let second = store.update(|s| {
        s.handled.insert("spot:2".into());
        s.handled.len()
    });
    assert!(
        matches!(second, Err(Degraded { value: 2, .. })),
        "{second:?}"
    );
    assert_eq!(store.load().unwrap().handled.len(), 2);
    assert_eq!(store.current().handled.len(), 2);
    assert!(health.state_write_errors() >= 2);
    assert!(health.faults()["drain_state"].contains("from memory"));

    // The directory works again: the next update writes what memory holds, even unchanged.
    std::fs::remove_file(&blocker).unwrap();
    store.prepare().unwrap();
    assert_eq!(store.update(|s| s.handled.len()).unwrap(), 2);
    assert!(!store.unsaved());
    assert!(health.faults().is_empty());
    let fresh = Store::new(store.dir());
    assert_eq!(fresh.load().unwrap().handled.len(), 2);
}

#[test]
fn the_directory_is_made_private_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    let readable = dir.path().join("readable");
    std::fs::create_dir(&readable).unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o755)).unwrap();
    Store::open(&readable).unwrap();
    assert_eq!(mode(&readable), 0o700);

    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let health = Arc::new(Health::default());
    let store = Store::new(&shared).with_health(health.clone());
    store.prepare().unwrap();
    assert_eq!(mode(&shared), 0o1777, "a shared directory is left as it is");
    let fault = &health.faults()["state_dir"];
    assert!(
        fault.contains("mode 1777") && fault.contains("others can write"),
        "{fault}"
    );
    // Used all the same: the files in it are private and never follow links.
    store.update(|s| s.handled.insert("x".into())).unwrap();
    assert_eq!(mode(&store.path()), 0o600);
}

#[test]
fn concurrent_writers_do_not_lose_updates() {
    let dir = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = Store::open(dir.path()).unwrap();
            std::thread::spawn(move || {
                for i in 0..25 {
                    store
                        .update(|s| {
                            s.handled.insert(format!("{t}:{i}"));
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap().handled.len(), 100);
}

/// A `drain` command stopped while it holds the lock does not wedge the daemon: an update waits a
/// bounded time, then steps and writes without the lock, and says so.
#[test]
fn a_lock_held_by_another_process_is_waited_for_a_bounded_time_then_gone_around() {
    let dir = tempfile::tempdir().unwrap();
    let health = Arc::new(Health::default());
    let store = Store::new(dir.path()).with_health(health.clone());
    store.prepare().unwrap();
    // flock conflicts across open files, as it would with the other process's.
    let other = File::create(dir.path().join(LOCK_FILE)).unwrap();
    let held = Flock::lock(other, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();

    let started = Instant::now();
    let stepped = store.update(|s| {
        s.handled.insert("spot:1".into());
    });
    let waited = started.elapsed();
    let Err(Degraded { error, .. }) = stepped else {
        panic!("{stepped:?}");
    };
    assert!(matches!(error, StateError::LockHeld { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("drain.lock is locked by another process"),
        "{error}"
    );
    // Waited for the lock, not forever (the figure is not a speed target: only that it ended).
    assert!(waited >= LOCK_WAIT, "{waited:?}");
    assert!(health.faults().contains_key(FAULT_STATE));
    // The step was written all the same: a reader sees it.
    assert!(
        read(&store.path())
            .unwrap()
            .unwrap()
            .handled
            .contains("spot:1")
    );

    // Once the other process lets go, updates take the lock again and the fault clears.
    drop(held);
    store
        .update(|s| {
            s.handled.insert("spot:2".into());
        })
        .unwrap();
    assert!(!health.faults().contains_key(FAULT_STATE));
}
