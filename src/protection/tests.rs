use std::collections::BTreeSet;
use std::time::Duration;

use super::volunteer::{View, ViewHost, judge, rest_can_hold};
use super::*;
use crate::capacity::{HostInput, Quantity, TaskShape};

fn min(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn settings() -> Settings {
    Settings {
        idle_grace: min(5),
        launch_warmup: min(10),
        volunteer: true,
        volunteer_after: min(10),
        volunteer_timeout: min(30),
    }
}

fn obs(at_min: u64, busy: Option<bool>, draining: bool) -> Observation {
    Observation {
        at: min(at_min),
        busy,
        draining,
    }
}

/// (minute, busy, draining) → (protect, removable, reason).
type Row = (u64, Option<bool>, bool, Option<bool>, bool, Reason);

/// For a host launched at minute 0.
#[test]
fn protection_follows_busy_warmup_and_grace() {
    let rows: &[Row] = &[
        (0, Some(false), false, Some(true), false, Reason::WarmingUp),
        (9, Some(false), false, Some(true), false, Reason::WarmingUp),
        // Idle since minute 0: past the warm-up and the grace.
        (10, Some(false), false, Some(false), true, Reason::Idle),
        (11, Some(true), false, Some(true), false, Reason::Busy),
        (12, None, false, None, false, Reason::Unknown),
        // Idle again from 13: the grace starts over.
        (
            13,
            Some(false),
            false,
            Some(true),
            false,
            Reason::IdleInGrace,
        ),
        (
            17,
            Some(false),
            false,
            Some(true),
            false,
            Reason::IdleInGrace,
        ),
        (18, Some(false), false, Some(false), true, Reason::Idle),
        (19, Some(false), true, None, false, Reason::Draining),
        (20, Some(true), true, None, false, Reason::Draining),
    ];
    let mut p = Protection::new(settings(), Duration::ZERO);
    for &(at, busy, draining, protect, removable, reason) in rows {
        let d = p.decide(obs(at, busy, draining));
        assert_eq!(
            d,
            Decision {
                protect,
                removable,
                reason
            },
            "minute {at} busy {busy:?} draining {draining}"
        );
    }
}

#[test]
fn short_idle_spells_never_lift_protection() {
    let mut p = Protection::new(settings(), Duration::ZERO);
    // Busy and idle alternating every 4 minutes (shorter than the 5-minute grace), long after launch.
    for m in (20..200).step_by(4) {
        let busy = (m / 4) % 2 == 0;
        let d = p.decide(obs(m, Some(busy), false));
        assert_eq!(d.protect, Some(true), "minute {m}");
        assert!(!d.removable, "minute {m}");
    }
}

fn host(id: &str, tasks: u64, cpu_reserved: u64, mem_reserved: u64) -> ViewHost {
    ViewHost {
        instance_id: id.into(),
        input: HostInput {
            name: id.into(),
            cpu_units: Quantity::new(2048, cpu_reserved),
            memory_mib: Quantity::new(4096, mem_reserved),
            taken_tcp_ports: BTreeSet::new(),
            taken_udp_ports: BTreeSet::new(),
            eni: None,
        },
        tasks,
        in_service: true,
        protected: true,
    }
}

fn shape(cpu: u64, mem: u64) -> TaskShape {
    TaskShape {
        name: format!("t{cpu}x{mem}"),
        cpu_units: cpu,
        memory_mib: mem,
        ..TaskShape::default()
    }
}

fn verdict(me: &str, hosts: &[ViewHost], my_tasks: &[TaskShape]) -> Verdict {
    judge(&View {
        me,
        hosts,
        my_tasks,
        shapes: &[shape(512, 1024)],
        scale_out_threshold: 1.0,
        daemon_tasks: 0,
    })
}

#[test]
fn the_least_loaded_busy_host_volunteers_when_more_than_a_host_is_idle() {
    // Three hosts of 4 tasks' room each, 1-2 tasks each: 12 - 5 = 7 free, > 1 host idle.
    let hosts = [
        host("i-a", 2, 1024, 2048),
        host("i-b", 1, 512, 1024),
        host("i-c", 2, 1024, 2048),
    ];
    let mine = [shape(512, 1024)];
    assert_eq!(verdict("i-b", &hosts, &mine), Verdict::Volunteer);
    assert_eq!(
        verdict("i-a", &hosts, &mine),
        Verdict::NotLeastLoaded {
            instance_id: "i-b".into()
        }
    );
}

#[test]
fn ties_go_to_fewer_reserved_then_the_smaller_instance_id() {
    let hosts = [
        host("i-c", 1, 512, 1024),
        host("i-b", 1, 512, 1024),
        host("i-a", 1, 1024, 1024),
    ];
    let mine = [shape(512, 1024)];
    assert_eq!(verdict("i-b", &hosts, &mine), Verdict::Volunteer);
    for other in ["i-a", "i-c"] {
        assert_eq!(
            verdict(other, &hosts, &mine),
            Verdict::NotLeastLoaded {
                instance_id: "i-b".into()
            },
            "{other}"
        );
    }
}

#[test]
fn no_volunteer_when_a_host_is_removable_already() {
    let mut hosts = vec![
        host("i-a", 2, 1024, 2048),
        host("i-b", 1, 512, 1024),
        host("i-c", 1, 0, 0),
    ];
    hosts[2].protected = false;
    assert_eq!(
        verdict("i-b", &hosts, &[shape(512, 1024)]),
        Verdict::RemovableExists {
            instance_id: "i-c".into(),
            before_me: true
        }
    );
    // A removable host that is not InService (launching, terminating) does not count.
    hosts[2].in_service = false;
    assert_eq!(
        verdict("i-b", &hosts, &[shape(512, 1024)]),
        Verdict::Volunteer
    );
}

#[test]
fn no_volunteer_while_another_host_is_idle_even_protected() {
    // i-c runs only its daemon task: it is idle, in its grace or warm-up, and will go by itself.
    let hosts = [
        host("i-a", 3, 1024, 2048),
        host("i-b", 2, 512, 1024),
        host("i-c", 1, 128, 256),
    ];
    let v = judge(&View {
        me: "i-b",
        hosts: &hosts,
        my_tasks: &[shape(512, 1024)],
        shapes: &[shape(512, 1024)],
        scale_out_threshold: 1.0,
        daemon_tasks: 1,
    });
    assert_eq!(
        v,
        Verdict::IdleHostExists {
            instance_id: "i-c".into()
        }
    );
}

#[test]
fn no_volunteer_without_more_than_a_host_idle() {
    // 2 hosts × 4 = 8 slots, 5 taken: 3 free of 4 per host = 0.75 idle.
    let hosts = [host("i-a", 3, 1536, 3072), host("i-b", 2, 1024, 2048)];
    assert!(matches!(
        verdict("i-b", &hosts, &[shape(512, 1024), shape(512, 1024)]),
        Verdict::NoExcess { idle_host_capacity } if idle_host_capacity <= 1.0
    ));
}

#[test]
fn no_volunteer_when_the_rest_cannot_hold_its_tasks() {
    // Plenty idle in sum, but this host's one big task fits nowhere else.
    let hosts = [
        host("i-a", 2, 1024, 2048),
        host("i-b", 1, 1024, 1024),
        host("i-c", 2, 1024, 2048),
    ];
    assert_eq!(
        verdict("i-b", &hosts, &[shape(1024, 3000)]),
        Verdict::RestCannotHold
    );
}

#[test]
fn the_rest_must_keep_room_for_the_largest_task_after_the_move() {
    let rest = vec![host("i-a", 3, 1536, 3072).input];
    // The one 512/1024 slot left takes the task, and then nothing is left: a scale-out would follow.
    assert!(!rest_can_hold(
        rest.clone(),
        &[shape(512, 1024)],
        &[shape(512, 1024)],
        1.0
    ));
    assert!(rest_can_hold(rest, &[], &[shape(512, 1024)], 1.0));
}

#[test]
fn a_volunteer_lifts_after_volunteer_after_and_protects_again_after_the_timeout() {
    let s = settings();
    let mut p = Protection::new(s, Duration::ZERO);
    let busy = |p: &mut Protection, m| p.decide(obs(m, Some(true), false));
    // Eligible from minute 20; volunteer_after is 10 minutes.
    for m in [20, 25] {
        p.on_verdict(min(m), &Verdict::Volunteer);
        assert_eq!(busy(&mut p, m).reason, Reason::Busy, "minute {m}");
    }
    p.on_verdict(min(30), &Verdict::Volunteer);
    let d = busy(&mut p, 30);
    assert_eq!(
        (d.protect, d.removable, d.reason),
        (Some(false), true, Reason::Volunteering)
    );
    // Not taken by minute 60 (timeout 30): protected again, and resting for volunteer_after.
    assert_eq!(busy(&mut p, 59).reason, Reason::Volunteering);
    let d = busy(&mut p, 60);
    assert_eq!((d.protect, d.removable), (Some(true), false));
    for m in [61, 65, 70] {
        p.on_verdict(min(m), &Verdict::Volunteer);
        assert_eq!(busy(&mut p, m).reason, Reason::Busy, "resting, minute {m}");
    }
    // Rest over at 70: eligible again from 70, volunteers at 80.
    p.on_verdict(min(80), &Verdict::Volunteer);
    assert_eq!(busy(&mut p, 80).reason, Reason::Volunteering);
}

#[test]
fn a_volunteer_stands_down_for_one_that_comes_first_and_keeps_its_place_otherwise() {
    let s = Settings {
        volunteer_after: Duration::ZERO,
        ..settings()
    };
    let mut p = Protection::new(s, Duration::ZERO);
    p.on_verdict(min(20), &Verdict::Volunteer);
    assert!(p.volunteering(min(20)));
    p.on_verdict(
        min(25),
        &Verdict::RemovableExists {
            instance_id: "i-z".into(),
            before_me: false,
        },
    );
    assert!(p.volunteering(min(25)), "the other one stands down");
    p.on_verdict(
        min(30),
        &Verdict::RemovableExists {
            instance_id: "i-a".into(),
            before_me: true,
        },
    );
    assert!(!p.volunteering(min(30)));
    p.on_verdict(
        min(31),
        &Verdict::NoExcess {
            idle_host_capacity: 0.5,
        },
    );
    assert!(!p.volunteering(min(31)));
}

#[test]
fn an_idle_host_is_not_a_volunteer_and_goes_by_the_idle_rule() {
    let s = Settings {
        volunteer_after: Duration::ZERO,
        ..settings()
    };
    let mut p = Protection::new(s, Duration::ZERO);
    p.on_verdict(min(20), &Verdict::Volunteer);
    assert_eq!(
        p.decide(obs(20, Some(true), false)).reason,
        Reason::Volunteering
    );
    let d = p.decide(obs(21, Some(false), false));
    assert_eq!((d.protect, d.reason), (Some(true), Reason::IdleInGrace));
    assert!(!p.volunteering(min(21)));
}

#[test]
fn verdicts_are_ignored_when_volunteering_is_off() {
    let s = Settings {
        volunteer: false,
        volunteer_after: Duration::ZERO,
        ..settings()
    };
    let mut p = Protection::new(s, Duration::ZERO);
    p.on_verdict(min(20), &Verdict::Volunteer);
    assert_eq!(p.decide(obs(20, Some(true), false)).reason, Reason::Busy);
}

#[test]
fn the_view_interval_stretches_with_the_cluster() {
    let five = min(5);
    assert_eq!(aws::view_interval(five, 10), five);
    assert_eq!(aws::view_interval(five, 100), five);
    assert_eq!(
        aws::view_interval(five, 1000),
        Duration::from_secs(1000 * 21)
    );
}

#[test]
fn daemon_families_neither_make_a_host_busy_nor_move() {
    let task = |family: &str, cpu_units| crate::host::Task {
        arn: format!("arn:aws:ecs:us-east-1:1:task/c/{family}"),
        family: family.into(),
        revision: "1".into(),
        network_mode: crate::host::NetworkMode::Bridge,
        cpu_units,
        memory_mib: 128,
        tcp_ports: BTreeSet::new(),
        udp_ports: BTreeSet::new(),
        containers: Vec::new(),
        known_status: None,
        desired_status: None,
        usage: None,
        reserved_by: crate::host::ReservedBy::Docker,
    };
    let daemons = vec!["log-router".to_string()];
    let only_daemon = aws::Local::observed(&[task("log-router", 64)], &daemons, &[], false);
    assert!(!only_daemon.busy);
    assert_eq!(only_daemon.daemon_tasks, 1);
    assert!(only_daemon.tasks.is_empty());
    let both = aws::Local::observed(
        &[task("log-router", 64), task("web", 256)],
        &daemons,
        &[shape(256, 128)],
        true,
    );
    assert!(both.busy && both.draining);
    assert_eq!(both.tasks.len(), 1);
    assert_eq!(both.tasks[0].name, "web");
    assert_eq!(both.tasks[0].cpu_units, 256);
}
