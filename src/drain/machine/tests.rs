use super::*;
use crate::notice::MaintenanceEvent;
use serde_json::json;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn hook() -> Hook {
    Hook {
        group: "asg".into(),
        name: "drain-hook".into(),
        heartbeat_timeout: Duration::from_secs(300),
    }
}

fn spot(at: u64) -> Notice {
    Notice::Spot {
        action: SpotAction::Terminate,
        time: t(at),
    }
}

fn maintenance(
    id: &str,
    code: MaintenanceCode,
    not_before: u64,
    state: MaintenanceState,
) -> Notice {
    Notice::Maintenance(MaintenanceEvent {
        event_id: id.into(),
        code,
        not_before: t(not_before),
        not_after: None,
        state,
        description: "scheduled".into(),
    })
}

/// Event `ev-1`, an instance-stop with NotBefore at `not_before`.
fn instance_stop(not_before: u64, state: MaintenanceState) -> Notice {
    maintenance("ev-1", MaintenanceCode::InstanceStop, not_before, state)
}

fn run(state: &State, input: Input, now: u64) -> (State, Vec<Effect>) {
    step(state, input, t(now), &Settings::default())
}

/// Effects without the log lines, which only inform.
fn acts(fx: &[Effect]) -> Vec<Effect> {
    fx.iter()
        .filter(|e| !matches!(e, Effect::Log { .. }))
        .cloned()
        .collect()
}

fn draining(st: &State) -> &Drain {
    match &st.phase {
        Phase::Draining(d) => d,
        other => panic!("not draining: {other:?}"),
    }
}

/// A spot drain that ECS accepted.
fn spot_draining() -> State {
    let (st, _) = run(&State::default(), Input::Notice(spot(120)), 0);
    let (st, _) = run(&st, Input::Done(Done::SetDraining(Ok(()))), 1);
    st
}

/// An Auto Scaling drain with its hook found (seen at t=0).
fn asg_pending() -> State {
    let (st, _) = run(
        &State::default(),
        Input::Notice(Notice::AutoScalingTerminated { seen_at: t(0) }),
        0,
    );
    let (st, _) = run(&st, Input::Done(Done::SetDraining(Ok(()))), 0);
    let (st, _) = run(&st, Input::Done(Done::FindHook(Ok(Some(hook())))), 0);
    st
}

fn transient(m: &str) -> Failure {
    Failure::new(Outcome::NotApplied, m)
}

fn permanent(m: &str) -> Failure {
    Failure::new(Outcome::Rejected, m)
}

#[test]
fn spot_notice_drains_at_once_with_the_notice_time_as_deadline() {
    let (st, fx) = run(&State::default(), Input::Notice(spot(120)), 0);
    assert_eq!(acts(&fx), vec![Effect::SetDraining]);
    let d = draining(&st);
    assert_eq!(d.deadline, Some(t(120)));
    assert!(!d.ecs_draining);
    assert_eq!(d.lifecycle, Lifecycle::None);
}

#[test]
fn spot_configured_to_report_only_logs() {
    let s = Settings {
        on_spot: Reaction::Report,
        ..Settings::default()
    };
    let (st, fx) = step(&State::default(), Input::Notice(spot(120)), t(0), &s);
    assert_eq!(st.phase, Phase::Active);
    assert!(acts(&fx).is_empty());
    assert!(
        matches!(&fx[0], Effect::Log { level: Level::Warn, message } if message.contains("report"))
    );
    // Reported once: the same notice again says nothing.
    let (_, fx) = step(&st, Input::Notice(spot(120)), t(1), &s);
    assert!(fx.is_empty());
}

#[test]
fn the_same_notice_many_times_is_one_drain() {
    let mut st = State::default();
    let mut set_draining = 0;
    for i in 0..10 {
        let (next, fx) = run(&st, Input::Notice(spot(120)), i);
        set_draining += fx.iter().filter(|e| **e == Effect::SetDraining).count();
        st = next;
    }
    assert_eq!(set_draining, 1);
}

#[test]
fn a_second_kind_of_notice_joins_the_running_drain() {
    let st = spot_draining();
    let (st, fx) = run(
        &st,
        Input::Notice(Notice::AutoScalingTerminated { seen_at: t(5) }),
        5,
    );
    assert_eq!(acts(&fx), vec![Effect::FindHook]);
    let d = draining(&st);
    assert_eq!(d.reasons.len(), 2);
    assert_eq!(d.lifecycle, Lifecycle::Finding { seen_at: t(5) });
    assert!(d.ecs_draining, "DRAINING is not sent again");
}

#[test]
fn set_draining_is_retried_on_the_next_tick_after_a_transient_failure() {
    let (st, _) = run(&State::default(), Input::Notice(spot(120)), 0);
    let (st, fx) = run(
        &st,
        Input::Done(Done::SetDraining(Err(transient("throttled")))),
        0,
    );
    assert!(acts(&fx).is_empty());
    let (st, fx) = run(&st, Input::Tick { tasks: None }, 5);
    assert_eq!(acts(&fx), vec![Effect::SetDraining]);
    let (st, _) = run(&st, Input::Done(Done::SetDraining(Ok(()))), 5);
    assert!(draining(&st).ecs_draining);
}

#[test]
fn tasks_gone_without_lifecycle_is_drained() {
    let st = spot_draining();
    let (st, fx) = run(&st, Input::Tick { tasks: Some(2) }, 5);
    assert!(acts(&fx).is_empty());
    assert_eq!(draining(&st).tasks_remaining, Some(2));
    let (st, fx) = run(&st, Input::Tick { tasks: Some(0) }, 10);
    assert!(acts(&fx).is_empty());
    assert!(matches!(st.phase, Phase::Drained { forced: false, .. }));
}

#[test]
fn unknown_task_count_never_ends_a_drain() {
    let st = spot_draining();
    let (st, _) = run(&st, Input::Tick { tasks: Some(3) }, 5);
    let (st, fx) = run(&st, Input::Tick { tasks: None }, 10);
    assert!(acts(&fx).is_empty());
    assert_eq!(
        draining(&st).tasks_remaining,
        Some(3),
        "the last count is kept"
    );
}

#[test]
fn tasks_at_zero_before_ecs_accepted_draining_is_not_drained() {
    let (st, _) = run(&State::default(), Input::Notice(spot(120)), 0);
    let (st, fx) = run(&st, Input::Tick { tasks: Some(0) }, 5);
    assert_eq!(acts(&fx), vec![Effect::SetDraining]);
    assert!(matches!(st.phase, Phase::Draining(_)));
}

#[test]
fn spot_deadline_passing_ends_the_wait_loudly() {
    let st = spot_draining();
    let (st, fx) = run(&st, Input::Tick { tasks: Some(2) }, 121);
    assert!(matches!(st.phase, Phase::Drained { forced: true, .. }));
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Log {
            level: Level::Error,
            ..
        }
    )));
}

#[test]
fn autoscaling_terminated_drains_and_finds_the_hook() {
    let (st, fx) = run(
        &State::default(),
        Input::Notice(Notice::AutoScalingTerminated { seen_at: t(0) }),
        0,
    );
    assert_eq!(acts(&fx), vec![Effect::SetDraining, Effect::FindHook]);
    assert_eq!(
        draining(&st).reasons,
        vec![Reason::AutoScaling {
            target: LifecycleState::Terminated
        }]
    );
}

#[test]
fn hook_lookup_is_retried_after_a_transient_failure_and_no_hook_means_nothing_to_complete() {
    let (st, _) = run(
        &State::default(),
        Input::Notice(Notice::AutoScalingTerminated { seen_at: t(0) }),
        0,
    );
    let (st, _) = run(&st, Input::Done(Done::SetDraining(Ok(()))), 0);
    let (st, _) = run(&st, Input::Done(Done::FindHook(Err(transient("5xx")))), 0);
    let (st, fx) = run(&st, Input::Tick { tasks: Some(0) }, 5);
    assert_eq!(
        acts(&fx),
        vec![Effect::FindHook],
        "not drained before the hook is known"
    );
    assert!(matches!(st.phase, Phase::Draining(_)));
    let (st, _) = run(&st, Input::Done(Done::FindHook(Ok(None))), 5);
    assert_eq!(draining(&st).lifecycle, Lifecycle::NoHook);
    let (st, _) = run(&st, Input::Tick { tasks: Some(0) }, 10);
    assert!(matches!(st.phase, Phase::Drained { forced: false, .. }));
}

#[test]
fn heartbeats_at_a_third_of_the_timeout_while_tasks_remain() {
    let st = asg_pending();
    let (st, fx) = run(&st, Input::Tick { tasks: Some(1) }, 50);
    assert!(acts(&fx).is_empty(), "100 s between heartbeats");
    let (st, fx) = run(&st, Input::Tick { tasks: Some(1) }, 100);
    assert_eq!(acts(&fx), vec![Effect::Heartbeat(hook())]);
    let (st, _) = run(&st, Input::Done(Done::Heartbeat(Ok(()))), 100);
    let (st, fx) = run(&st, Input::Tick { tasks: Some(1) }, 150);
    assert!(acts(&fx).is_empty());
    let (_, fx) = run(&st, Input::Tick { tasks: Some(1) }, 200);
    assert_eq!(acts(&fx), vec![Effect::Heartbeat(hook())]);
}

#[test]
fn a_failed_heartbeat_is_tried_again_on_the_next_tick() {
    let st = asg_pending();
    let (st, _) = run(&st, Input::Tick { tasks: Some(1) }, 100);
    let (st, _) = run(
        &st,
        Input::Done(Done::Heartbeat(Err(transient("timeout")))),
        100,
    );
    let (_, fx) = run(&st, Input::Tick { tasks: Some(1) }, 105);
    assert_eq!(acts(&fx), vec![Effect::Heartbeat(hook())]);
}

#[test]
fn tasks_gone_completes_the_lifecycle_action_once_with_continue() {
    let st = asg_pending();
    let (st, fx) = run(&st, Input::Tick { tasks: Some(0) }, 30);
    assert_eq!(
        acts(&fx),
        vec![Effect::Complete(hook(), LifecycleResult::Continue)]
    );
    assert!(matches!(
        draining(&st).lifecycle,
        Lifecycle::Completing { .. }
    ));
    // Ticks while the call is in flight do not send it again.
    let (st2, fx) = run(&st, Input::Tick { tasks: Some(0) }, 31);
    assert!(acts(&fx).is_empty());
    assert_eq!(st2, st);
    let (st, fx) = run(&st, Input::Done(Done::Complete(Ok(()))), 31);
    assert!(acts(&fx).is_empty());
    match &st.phase {
        Phase::Drained {
            drain,
            forced: false,
            ..
        } => assert!(matches!(
            drain.lifecycle,
            Lifecycle::Completed {
                result: LifecycleResult::Continue,
                ..
            }
        )),
        other => panic!("{other:?}"),
    }
    let (_, fx) = run(&st, Input::Tick { tasks: Some(0) }, 40);
    assert!(acts(&fx).is_empty());
}

#[test]
fn a_throttled_completion_is_retried_but_an_unanswered_one_is_not() {
    let st = asg_pending();
    let (st, _) = run(&st, Input::Tick { tasks: Some(0) }, 30);
    let (st, _) = run(
        &st,
        Input::Done(Done::Complete(Err(transient("Throttling")))),
        30,
    );
    assert!(
        matches!(draining(&st).lifecycle, Lifecycle::Pending { seen_at, .. } if seen_at == t(0))
    );
    let (st, fx) = run(&st, Input::Tick { tasks: Some(0) }, 35);
    assert_eq!(
        acts(&fx),
        vec![Effect::Complete(hook(), LifecycleResult::Continue)]
    );
    let (st, _) = run(
        &st,
        Input::Done(Done::Complete(Err(Failure::new(
            Outcome::MaybeApplied,
            "timed out",
        )))),
        36,
    );
    assert!(
        matches!(&st.phase, Phase::Drained { drain, .. } if matches!(drain.lifecycle, Lifecycle::Uncertain { .. }))
    );
    let (_, fx) = run(&st, Input::Tick { tasks: Some(0) }, 40);
    assert!(acts(&fx).is_empty());
}

/// Settings whose own bound (`max_duration`) is past the hook's and that never stop tasks.
fn unbounded() -> Settings {
    Settings {
        max_duration: MAX_GLOBAL_TIMEOUT,
        stop_remaining: StopRemaining::None,
        ..Settings::default()
    }
}

#[test]
fn near_the_global_timeout_the_action_is_completed_anyway() {
    let st = asg_pending();
    let s = unbounded();
    // 300 s × 100 = 30 000 s; completed one margin (2 × check interval) before it.
    let (_, fx) = step(&st, Input::Tick { tasks: Some(4) }, t(30_000 - 11), &s);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Complete(..))));
    let (st, fx) = step(&st, Input::Tick { tasks: Some(4) }, t(30_000 - 10), &s);
    assert_eq!(
        acts(&fx),
        vec![Effect::Complete(hook(), LifecycleResult::Continue)]
    );
    assert!(fx.iter().any(|e| matches!(e, Effect::Log { level: Level::Error, message } if message.contains("global timeout"))));
    let (st, _) = run(&st, Input::Done(Done::Complete(Ok(()))), 30_000);
    assert!(matches!(st.phase, Phase::Drained { forced: true, .. }));
}

#[test]
fn global_timeout_is_capped_at_48_hours() {
    let long = Hook {
        heartbeat_timeout: Duration::from_secs(7200),
        ..hook()
    };
    assert_eq!(long.global_timeout(), MAX_GLOBAL_TIMEOUT);
}

#[test]
fn permanent_failure_abandons_a_pending_lifecycle_action_by_default() {
    let st = asg_pending();
    let (st, fx) = run(
        &st,
        Input::Done(Done::Heartbeat(Err(permanent("AccessDenied")))),
        10,
    );
    assert_eq!(
        acts(&fx),
        vec![Effect::Complete(hook(), LifecycleResult::Abandon)]
    );
    assert!(matches!(st.phase, Phase::Failed { .. }));
    let (st, _) = run(&st, Input::Done(Done::Complete(Ok(()))), 11);
    match &st.phase {
        Phase::Failed { drain, .. } => assert!(matches!(
            drain.lifecycle,
            Lifecycle::Completed {
                result: LifecycleResult::Abandon,
                ..
            }
        )),
        other => panic!("{other:?}"),
    }
}

#[test]
fn permanent_failure_with_stay_draining_leaves_the_action_to_time_out() {
    let s = Settings {
        on_failure: FailureAction::StayDraining,
        ..Settings::default()
    };
    let st = asg_pending();
    let (st, fx) = step(
        &st,
        Input::Done(Done::Heartbeat(Err(permanent("denied")))),
        t(10),
        &s,
    );
    assert!(acts(&fx).is_empty());
    assert!(
        matches!(&st.phase, Phase::Failed { drain, .. } if matches!(drain.lifecycle, Lifecycle::Pending { .. }))
    );
    let (_, fx) = step(&st, Input::Tick { tasks: Some(0) }, t(20), &s);
    assert!(acts(&fx).is_empty(), "a failed drain does nothing more");
}

#[test]
fn permanent_set_draining_failure_fails_the_drain() {
    let (st, _) = run(&State::default(), Input::Notice(spot(120)), 0);
    let (st, _) = run(
        &st,
        Input::Done(Done::SetDraining(Err(permanent("no container instance")))),
        0,
    );
    assert!(
        matches!(&st.phase, Phase::Failed { error, .. } if error.contains("no container instance"))
    );
}

#[test]
fn rebalance_is_reported_by_default_and_drains_when_configured() {
    let n = Notice::Rebalance { notice_time: t(0) };
    let (st, fx) = run(&State::default(), Input::Notice(n.clone()), 0);
    assert_eq!(st.phase, Phase::Active);
    assert!(acts(&fx).is_empty());
    let s = Settings {
        on_rebalance: Reaction::Drain,
        ..Settings::default()
    };
    let (st, _) = step(&State::default(), Input::Notice(n), t(0), &s);
    assert_eq!(draining(&st).reasons, vec![Reason::Rebalance]);
    assert_eq!(draining(&st).deadline, None);
}

#[test]
fn maintenance_drains_at_not_before_minus_lead_time() {
    // Lead time 15 min: NotBefore at 3600 → drain from 2700.
    let n = maintenance(
        "ev-1",
        MaintenanceCode::SystemReboot,
        3600,
        MaintenanceState::Active,
    );
    let (st, fx) = run(&State::default(), Input::Notice(n), 0);
    assert!(acts(&fx).is_empty());
    assert_eq!(st.scheduled["ev-1"].drain_at, t(2700));
    let (st, fx) = run(&st, Input::Tick { tasks: None }, 2699);
    assert!(acts(&fx).is_empty());
    let (st, fx) = run(&st, Input::Tick { tasks: None }, 2700);
    assert_eq!(acts(&fx), vec![Effect::SetDraining]);
    assert_eq!(draining(&st).deadline, Some(t(3600)));
    assert!(st.scheduled.is_empty());
}

#[test]
fn maintenance_already_within_the_lead_time_drains_at_once() {
    let n = maintenance(
        "ev-1",
        MaintenanceCode::InstanceRetirement,
        600,
        MaintenanceState::Active,
    );
    let (st, fx) = run(&State::default(), Input::Notice(n), 0);
    assert_eq!(acts(&fx), vec![Effect::SetDraining]);
    assert!(
        matches!(&draining(&st).reasons[0], Reason::Maintenance { event_id, .. } if event_id == "ev-1")
    );
}

#[test]
fn every_draining_maintenance_code_drains_and_others_do_not() {
    for code in [
        MaintenanceCode::InstanceStop,
        MaintenanceCode::InstanceRetirement,
        MaintenanceCode::SystemReboot,
        MaintenanceCode::InstanceReboot,
    ] {
        let (st, _) = run(
            &State::default(),
            Input::Notice(maintenance("e", code.clone(), 0, MaintenanceState::Active)),
            0,
        );
        assert!(matches!(st.phase, Phase::Draining(_)), "{code:?}");
    }
    for code in [
        MaintenanceCode::SystemMaintenance,
        MaintenanceCode::Other("x".into()),
    ] {
        let (st, fx) = run(
            &State::default(),
            Input::Notice(maintenance("e", code.clone(), 0, MaintenanceState::Active)),
            0,
        );
        assert_eq!(st.phase, Phase::Active, "{code:?}");
        assert!(acts(&fx).is_empty());
    }
}

#[test]
fn maintenance_canceled_before_its_drain_time_is_forgotten() {
    let n = instance_stop(3600, MaintenanceState::Active);
    let (st, _) = run(&State::default(), Input::Notice(n), 0);
    let c = instance_stop(3600, MaintenanceState::Canceled);
    let (st, fx) = run(&st, Input::Notice(c), 10);
    assert!(acts(&fx).is_empty());
    assert!(st.scheduled.is_empty());
    let (st, fx) = run(&st, Input::Tick { tasks: None }, 3000);
    assert!(acts(&fx).is_empty());
    assert_eq!(st.phase, Phase::Active);
}

#[test]
fn maintenance_canceled_while_draining_stands_down_to_active() {
    let n = instance_stop(60, MaintenanceState::Active);
    let (st, _) = run(&State::default(), Input::Notice(n), 0);
    let st = set_draining_by(&st, Ok(false), 0);
    let c = instance_stop(60, MaintenanceState::Canceled);
    let (st, fx) = run(&st, Input::Notice(c), 10);
    assert_eq!(acts(&fx), vec![Effect::SetActive]);
    assert_eq!(st.phase, Phase::Active);
}

#[test]
fn maintenance_canceled_does_not_stand_down_a_drain_with_another_reason() {
    let n = instance_stop(60, MaintenanceState::Active);
    let (st, _) = run(&State::default(), Input::Notice(n), 0);
    let (st, _) = run(&st, Input::Notice(spot(120)), 1);
    let c = instance_stop(60, MaintenanceState::Canceled);
    let (st, fx) = run(&st, Input::Notice(c), 10);
    assert!(acts(&fx).is_empty());
    assert_eq!(draining(&st).reasons.len(), 1);
    assert_eq!(
        draining(&st).deadline,
        Some(t(60)),
        "deadlines only get closer"
    );
}

#[test]
fn a_rescheduled_maintenance_event_moves_its_drain_time() {
    let n = instance_stop(3600, MaintenanceState::Active);
    let (st, _) = run(&State::default(), Input::Notice(n), 0);
    let later = instance_stop(7200, MaintenanceState::Active);
    let (st, _) = run(&st, Input::Notice(later), 10);
    assert_eq!(st.scheduled["ev-1"].drain_at, t(6300));
}

#[test]
fn manual_drain_and_activate() {
    let (st, fx) = run(&State::default(), Input::Command(Command::Drain), 0);
    assert_eq!(acts(&fx), vec![Effect::SetDraining]);
    assert_eq!(draining(&st).reasons, vec![Reason::Manual]);
    let (st, fx) = run(&st, Input::Command(Command::Activate), 5);
    assert_eq!(acts(&fx), vec![Effect::SetActive]);
    assert_eq!(st.phase, Phase::Active);
}

#[test]
fn activate_does_not_forget_handled_notices() {
    let st = spot_draining();
    let (st, _) = run(&st, Input::Command(Command::Activate), 5);
    let (st, fx) = run(&st, Input::Notice(spot(120)), 6);
    assert!(fx.is_empty());
    assert_eq!(st.phase, Phase::Active);
}

#[test]
fn activate_refuses_while_a_completion_is_in_flight() {
    let st = asg_pending();
    let (st, _) = run(&st, Input::Tick { tasks: Some(0) }, 30);
    let (st2, fx) = run(&st, Input::Command(Command::Activate), 31);
    assert!(acts(&fx).is_empty());
    assert_eq!(st2.phase, st.phase);
}

#[test]
fn restart_from_active_does_nothing() {
    let (st, fx) = run(&State::default(), Input::Restarted, 0);
    assert_eq!(st, State::default());
    assert!(fx.is_empty());
}

#[test]
fn restart_while_draining_resumes_and_sends_draining_again() {
    let st = asg_pending();
    let (st, fx) = run(&st, Input::Restarted, 50);
    assert_eq!(acts(&fx), vec![Effect::SetDraining]);
    assert!(matches!(draining(&st).lifecycle, Lifecycle::Pending { .. }));
    // And it carries on: tasks gone → one completion.
    let (st, _) = run(&st, Input::Done(Done::SetDraining(Ok(()))), 50);
    let (_, fx) = run(&st, Input::Tick { tasks: Some(0) }, 55);
    assert_eq!(
        acts(&fx),
        vec![Effect::Complete(hook(), LifecycleResult::Continue)]
    );
}

#[test]
fn restart_while_finding_the_hook_looks_again() {
    let (st, _) = run(
        &State::default(),
        Input::Notice(Notice::AutoScalingTerminated { seen_at: t(0) }),
        0,
    );
    let (st, _) = run(&st, Input::Restarted, 5);
    let (st, _) = run(&st, Input::Done(Done::SetDraining(Ok(()))), 5);
    let (_, fx) = run(&st, Input::Tick { tasks: Some(0) }, 10);
    assert_eq!(acts(&fx), vec![Effect::FindHook]);
}

#[test]
fn restart_with_a_completion_in_flight_never_sends_it_again() {
    let st = asg_pending();
    let (st, _) = run(&st, Input::Tick { tasks: Some(0) }, 30);
    let (st, fx) = run(&st, Input::Restarted, 40);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Complete(..))));
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Log {
            level: Level::Error,
            ..
        }
    )));
    match &st.phase {
        Phase::Drained { drain, .. } => {
            assert!(matches!(drain.lifecycle, Lifecycle::Uncertain { .. }))
        }
        other => panic!("{other:?}"),
    }
    let (_, fx) = run(&st, Input::Tick { tasks: Some(0) }, 50);
    assert!(acts(&fx).is_empty());
}

#[test]
fn restart_when_drained_or_failed_stays_there() {
    let st = spot_draining();
    let (drained, _) = run(&st, Input::Tick { tasks: Some(0) }, 10);
    let (again, fx) = run(&drained, Input::Restarted, 20);
    assert_eq!(again, drained);
    assert!(fx.is_empty());
    let (failed, _) = run(&st, Input::Done(Done::SetDraining(Err(permanent("x")))), 10);
    let (again, fx) = run(&failed, Input::Restarted, 20);
    assert_eq!(again, failed);
    assert!(fx.is_empty());
}

#[test]
fn restart_after_a_shutdown_drain_returns_to_active() {
    let (st, _) = run(&State::default(), Input::Command(Command::ShutdownDrain), 0);
    let (st, _) = run(&st, Input::Done(Done::SetDraining(Ok(()))), 0);
    let (st, _) = run(&st, Input::Tick { tasks: Some(0) }, 5);
    assert!(matches!(st.phase, Phase::Drained { .. }));
    let (st, fx) = run(&st, Input::Restarted, 500);
    assert_eq!(acts(&fx), vec![Effect::SetActive]);
    assert_eq!(st.phase, Phase::Active);
}

#[test]
fn state_round_trips_through_json_in_every_phase() {
    let st = asg_pending();
    let (completing, _) = run(&st, Input::Tick { tasks: Some(0) }, 30);
    let (drained, _) = run(&completing, Input::Done(Done::Complete(Ok(()))), 31);
    let (failed, _) = run(&st, Input::Done(Done::Heartbeat(Err(permanent("x")))), 10);
    for s in [State::default(), st, completing, drained, failed] {
        let text = serde_json::to_string(&s).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }
}

/// `drain.json` as the build before typed reasons wrote it: every reason kind, a scheduled event
/// with a known code and one with a code this build does not know.
fn state_as_written_before() -> serde_json::Value {
    let time = |secs: u64| json!({"secs_since_epoch": secs, "nanos_since_epoch": 0});
    json!({
        "phase": {
            "phase": "draining",
            "reasons": [
                {"kind": "spot", "action": "hibernate"},
                {"kind": "auto-scaling"},
                {"kind": "rebalance"},
                {"kind": "maintenance", "event_id": "ev-1", "code": "system-reboot"},
                {"kind": "maintenance", "event_id": "ev-2", "code": "fleet-shuffle"},
                {"kind": "manual"},
                {"kind": "shutdown"}
            ],
            "since": time(10),
            "deadline": time(120),
            "ecs_draining": true,
            "tasks_remaining": 2,
            "lifecycle": {"state": "finding", "seen_at": time(10)}
        },
        "handled": ["maintenance:ev-1:Active:1700003600", "spot:Hibernate:120"],
        "scheduled": {
            "ev-3": {"code": "instance-stop", "not_before": time(3600), "drain_at": time(2700)},
            "ev-4": {"code": "fleet-shuffle", "not_before": time(3600), "drain_at": time(2700)}
        }
    })
}

#[test]
fn state_written_before_typed_reasons_reads_as_typed_and_is_written_the_same() {
    let old = state_as_written_before();
    let st: State = serde_json::from_value(old.clone()).unwrap();
    assert_eq!(
        draining(&st).reasons,
        vec![
            Reason::Spot {
                action: SpotAction::Hibernate
            },
            Reason::AutoScaling {
                target: LifecycleState::Terminated
            },
            Reason::Rebalance,
            Reason::Maintenance {
                event_id: "ev-1".into(),
                code: MaintenanceCode::SystemReboot
            },
            Reason::Maintenance {
                event_id: "ev-2".into(),
                code: MaintenanceCode::Other("fleet-shuffle".into())
            },
            Reason::Manual,
            Reason::Shutdown,
        ]
    );
    assert_eq!(st.scheduled["ev-3"].code, MaintenanceCode::InstanceStop);
    assert_eq!(
        st.scheduled["ev-4"].code,
        MaintenanceCode::Other("fleet-shuffle".into())
    );
    assert_eq!(serde_json::to_value(&st).unwrap(), old);
}

#[test]
fn a_warm_pool_target_is_written_and_read_back() {
    let reason = Reason::AutoScaling {
        target: LifecycleState::Warmed("Stopped".into()),
    };
    let text = serde_json::to_value(&reason).unwrap();
    assert_eq!(
        text,
        json!({"kind": "auto-scaling", "target": "Warmed:Stopped"})
    );
    assert_eq!(serde_json::from_value::<Reason>(text).unwrap(), reason);
}

#[test]
fn a_maintenance_notice_already_handled_before_is_still_handled() {
    // The handled set of a state written before keeps matching the notices IMDS serves again.
    let st: State = serde_json::from_value(state_as_written_before()).unwrap();
    let st = State {
        phase: Phase::Active,
        ..st
    };
    let Notice::Maintenance(mut e) = maintenance(
        "ev-1",
        MaintenanceCode::SystemReboot,
        3600,
        MaintenanceState::Active,
    ) else {
        unreachable!()
    };
    // NotAfter is not part of the key: nothing in the drain depends on it.
    e.not_after = Some(t(4600));
    let (next, fx) = run(&st, Input::Notice(Notice::Maintenance(e)), 0);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(next, st);
}

#[test]
fn every_reason_reboot_or_stop_type() {
    let maintenance = |code| Reason::Maintenance {
        event_id: "e".into(),
        code,
    };
    let spot = |action| Reason::Spot { action };
    let warmed = |s: &str| Reason::AutoScaling {
        target: LifecycleState::Warmed(s.into()),
    };
    for (reasons, expected) in [
        (vec![maintenance(MaintenanceCode::SystemReboot)], true),
        (vec![maintenance(MaintenanceCode::InstanceReboot)], true),
        (vec![maintenance(MaintenanceCode::InstanceStop)], true),
        (
            vec![maintenance(MaintenanceCode::InstanceRetirement)],
            false,
        ),
        (
            vec![spot(SpotAction::Stop), spot(SpotAction::Hibernate)],
            true,
        ),
        (vec![spot(SpotAction::Terminate)], false),
        (vec![warmed("Stopped"), warmed("Hibernated")], true),
        (vec![warmed("Running")], false),
        (
            vec![Reason::AutoScaling {
                target: LifecycleState::Terminated,
            }],
            false,
        ),
        (vec![Reason::Shutdown], true),
        (vec![spot(SpotAction::Stop), Reason::Manual], false),
        (vec![Reason::Rebalance], false),
        (vec![], false),
    ] {
        let mut d = Drain::new(Reason::Manual, t(0), None);
        d.reasons = reasons.clone();
        assert_eq!(d.every_reason_is_reboot_or_stop(), expected, "{reasons:?}");
    }
}

/// ECS answers whether the instance was DRAINING before (`before`), then accepts DRAINING.
fn set_draining_by(st: &State, before: Result<bool, Failure>, now: u64) -> State {
    let (st, _) = run(st, Input::Done(Done::DrainingBefore(before)), now);
    let (st, _) = run(&st, Input::Done(Done::SetDraining(Ok(()))), now);
    st
}

fn booted(st: &State, boot_id: &str, now: u64) -> (State, Vec<Effect>) {
    run(
        st,
        Input::Booted {
            boot_id: boot_id.into(),
        },
        now,
    )
}

fn listed(ids: &[&str]) -> Input {
    Input::Notice(Notice::MaintenanceListed {
        event_ids: ids.iter().map(|s| s.to_string()).collect(),
    })
}

/// Boot `boot-a`, event ev-1 (an instance-stop at 60) draining; `before`: whether ECS had the
/// instance DRAINING already.
fn stop_draining_in_boot_a(before: Result<bool, Failure>) -> State {
    let (st, _) = booted(&State::default(), "boot-a", 0);
    let (st, _) = run(
        &st,
        Input::Notice(instance_stop(60, MaintenanceState::Active)),
        0,
    );
    set_draining_by(&st, before, 1)
}

#[test]
fn whether_this_agent_set_draining_is_recorded_once() {
    let st = stop_draining_in_boot_a(Ok(false));
    assert_eq!(draining(&st).set_by_agent, Some(true));
    // A resumed drain sends DRAINING again and finds it DRAINING: still this agent's.
    let (st, _) = run(&st, Input::Restarted, 5);
    let st = set_draining_by(&st, Ok(true), 5);
    assert_eq!(draining(&st).set_by_agent, Some(true));

    let st = stop_draining_in_boot_a(Ok(true));
    assert_eq!(draining(&st).set_by_agent, Some(false));
    let st = stop_draining_in_boot_a(Err(transient("timeout")));
    assert_eq!(draining(&st).set_by_agent, None);
}

#[test]
fn maintenance_canceled_leaves_a_draining_this_agent_did_not_set_alone() {
    for before in [Ok(true), Err(transient("timeout"))] {
        let st = stop_draining_in_boot_a(before.clone());
        let c = instance_stop(60, MaintenanceState::Canceled);
        let (st, fx) = run(&st, Input::Notice(c), 10);
        assert!(acts(&fx).is_empty(), "{before:?}: {fx:?}");
        assert_eq!(st.phase, Phase::Active, "{before:?}: the drain is over");
    }
}

#[test]
fn maintenance_completed_in_history_stands_down_to_active() {
    let st = stop_draining_in_boot_a(Ok(false));
    let c = instance_stop(60, MaintenanceState::Completed);
    let (st, fx) = run(&st, Input::Notice(c), 10);
    assert_eq!(acts(&fx), vec![Effect::SetActive]);
    assert_eq!(st.phase, Phase::Active);
}

#[test]
fn maintenance_withdrawn_before_its_time_stands_down_and_counts_again_if_listed_again() {
    let st = stop_draining_in_boot_a(Ok(false));
    // Still listed: nothing changes.
    let (same, fx) = run(&st, listed(&["ev-1"]), 10);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(same, st);
    let (st, fx) = run(&st, listed(&[]), 10);
    assert_eq!(acts(&fx), vec![Effect::SetActive]);
    assert_eq!(st.phase, Phase::Active);
    assert!(st.handled.is_empty(), "{:?}", st.handled);
    // Listed again, unchanged: it drains again.
    let (st, fx) = run(
        &st,
        Input::Notice(instance_stop(60, MaintenanceState::Active)),
        20,
    );
    assert_eq!(acts(&fx), vec![Effect::SetDraining]);
    assert!(matches!(st.phase, Phase::Draining(_)));
}

#[test]
fn maintenance_gone_from_the_list_after_its_time_does_not_stand_down() {
    let st = stop_draining_in_boot_a(Ok(false));
    let (next, fx) = run(&st, listed(&[]), 60);
    assert!(acts(&fx).is_empty(), "{fx:?}");
    assert_eq!(next, st);
}

#[test]
fn a_withdrawn_event_waiting_for_its_drain_time_is_forgotten() {
    let n = instance_stop(3600, MaintenanceState::Active);
    let (st, _) = run(&State::default(), Input::Notice(n.clone()), 0);
    assert_eq!(st.scheduled.len(), 1);
    let (st, fx) = run(&st, listed(&["ev-other"]), 10);
    assert!(acts(&fx).is_empty());
    assert!(st.scheduled.is_empty());
    assert!(st.handled.is_empty());
    let (st, fx) = run(&st, Input::Tick { tasks: None }, 3600);
    assert!(acts(&fx).is_empty());
    assert_eq!(st.phase, Phase::Active);
    // Back in the list: scheduled again.
    let (st, _) = run(&st, Input::Notice(n), 3601);
    assert_eq!(st.scheduled.len(), 0, "its drain time has come");
    assert!(matches!(st.phase, Phase::Draining(_)));
}

#[test]
fn a_maintenance_listing_is_never_recorded_as_handled() {
    let (st, _) = run(&State::default(), listed(&["ev-1", "ev-2"]), 0);
    assert!(st.handled.is_empty());
    assert_eq!(st, State::default());
}

#[test]
fn withdrawn_maintenance_does_not_stand_down_a_drain_with_another_reason() {
    let st = stop_draining_in_boot_a(Ok(false));
    let (st, _) = run(&st, Input::Notice(spot(120)), 2);
    let (st, fx) = run(&st, listed(&[]), 10);
    assert!(acts(&fx).is_empty(), "{fx:?}");
    assert_eq!(
        draining(&st).reasons,
        vec![Reason::Spot {
            action: SpotAction::Terminate
        }]
    );
}

#[test]
fn after_a_new_boot_a_reboot_or_stop_drain_this_agent_set_is_undone() {
    let warmed = |s: &str, at: u64| Notice::AutoScalingWarmed {
        target: LifecycleState::Warmed(s.into()),
        seen_at: t(at),
    };
    let spot_action = |action| Notice::Spot {
        action,
        time: t(120),
    };
    let code = |c: MaintenanceCode| maintenance("ev-1", c, 60, MaintenanceState::Active);
    for (notice, undone) in [
        (code(MaintenanceCode::SystemReboot), true),
        (code(MaintenanceCode::InstanceReboot), true),
        (code(MaintenanceCode::InstanceStop), true),
        (spot_action(SpotAction::Stop), true),
        (spot_action(SpotAction::Hibernate), true),
        (warmed("Stopped", 0), true),
        (warmed("Hibernated", 0), true),
        (code(MaintenanceCode::InstanceRetirement), false),
        (spot_action(SpotAction::Terminate), false),
        (warmed("Running", 0), false),
        (Notice::AutoScalingTerminated { seen_at: t(0) }, false),
    ] {
        let (st, _) = booted(&State::default(), "boot-a", 0);
        let (st, _) = run(&st, Input::Notice(notice.clone()), 0);
        let st = set_draining_by(&st, Ok(false), 1);
        let (st, _) = run(&st, Input::Tick { tasks: Some(0) }, 2);
        let (again, fx) = booted(&st, "boot-b", 500);
        if undone {
            assert_eq!(acts(&fx), vec![Effect::SetActive], "{notice:?}");
            assert_eq!(again.phase, Phase::Active, "{notice:?}");
        } else {
            assert!(acts(&fx).is_empty(), "{notice:?}: {fx:?}");
            assert_eq!(again.phase, st.phase, "{notice:?}");
        }
        assert_eq!(again.boot_id.as_deref(), Some("boot-b"));
    }
}

#[test]
fn after_a_new_boot_a_draining_someone_else_set_stays() {
    let st = stop_draining_in_boot_a(Ok(true));
    let (st, fx) = booted(&st, "boot-b", 500);
    assert!(acts(&fx).is_empty(), "{fx:?}");
    assert_eq!(st.phase, Phase::Active, "this agent's drain is over");
}

#[test]
fn the_same_boot_or_a_first_boot_id_undoes_nothing() {
    let st = stop_draining_in_boot_a(Ok(false));
    let (same, fx) = booted(&st, "boot-a", 500);
    assert!(fx.is_empty());
    assert_eq!(same, st);
    // A state written before boot ids were recorded: nothing to compare with.
    let mut old = st.clone();
    old.boot_id = None;
    let (next, fx) = booted(&old, "boot-b", 500);
    assert!(fx.is_empty());
    assert!(matches!(next.phase, Phase::Draining(_)));
    assert_eq!(next.boot_id.as_deref(), Some("boot-b"));
}

#[test]
fn a_drain_mixing_a_reboot_with_a_termination_is_not_undone() {
    let st = stop_draining_in_boot_a(Ok(false));
    let (st, _) = run(&st, Input::Notice(spot(120)), 2);
    let (next, fx) = booted(&st, "boot-b", 500);
    assert!(acts(&fx).is_empty(), "{fx:?}");
    assert_eq!(next.phase, st.phase);
}

#[test]
fn a_return_to_the_warm_pool_drains_and_finds_the_hook_like_a_termination() {
    let n = Notice::AutoScalingWarmed {
        target: LifecycleState::Warmed("Stopped".into()),
        seen_at: t(0),
    };
    let (st, fx) = run(&State::default(), Input::Notice(n.clone()), 0);
    assert_eq!(acts(&fx), vec![Effect::SetDraining, Effect::FindHook]);
    let d = draining(&st);
    assert_eq!(
        d.reasons,
        vec![Reason::AutoScaling {
            target: LifecycleState::Warmed("Stopped".into())
        }]
    );
    assert_eq!(d.lifecycle, Lifecycle::Finding { seen_at: t(0) });
    // The same notice again is one drain.
    let (again, fx) = run(&st, Input::Notice(n), 1);
    assert!(fx.is_empty());
    assert_eq!(again, st);
    // Found and completed as for a termination.
    let st = set_draining_by(&st, Ok(false), 1);
    let (st, _) = run(&st, Input::Done(Done::FindHook(Ok(Some(hook())))), 1);
    let (_, fx) = run(&st, Input::Tick { tasks: Some(0) }, 2);
    assert_eq!(
        acts(&fx),
        vec![Effect::Complete(hook(), LifecycleResult::Continue)]
    );
}

/// A manual drain that ECS accepted at t=0 (it has no deadline of its own).
fn manual_draining(s: &Settings) -> State {
    let (st, _) = step(&State::default(), Input::Command(Command::Drain), t(0), s);
    let (st, _) = step(&st, Input::Done(Done::SetDraining(Ok(()))), t(0), s);
    st
}

#[test]
fn at_max_duration_unowned_tasks_are_stopped_first_and_the_drain_ends() {
    let s = Settings::default();
    let (max, lead) = (s.max_duration.as_secs(), s.stop_lead.as_secs());
    let st = manual_draining(&s);
    let (st, fx) = step(&st, Input::Tick { tasks: Some(3) }, t(max - lead - 1), &s);
    assert!(acts(&fx).is_empty(), "{fx:?}");
    let (st, fx) = step(&st, Input::Tick { tasks: Some(3) }, t(max - lead), &s);
    assert_eq!(acts(&fx), vec![Effect::StopTasks(StopRemaining::Unowned)]);
    assert!(fx.iter().any(
        |e| matches!(e, Effect::Log { message, .. } if message.contains("drain.max_duration"))
    ));
    let (st, _) = step(&st, Input::Done(Done::StopTasks(Ok(2))), t(max - lead), &s);
    // Told once: later ticks do not repeat it.
    let (st, fx) = step(&st, Input::Tick { tasks: Some(1) }, t(max - 1), &s);
    assert!(acts(&fx).is_empty(), "{fx:?}");
    let (st, _) = step(&st, Input::Tick { tasks: Some(1) }, t(max), &s);
    assert!(
        matches!(st.phase, Phase::Drained { forced: true, .. }),
        "{st:?}"
    );
}

#[test]
fn stopped_tasks_that_leave_end_the_drain_normally() {
    let s = Settings::default();
    let max = s.max_duration.as_secs();
    let st = manual_draining(&s);
    let (st, _) = step(&st, Input::Tick { tasks: Some(1) }, t(max - 30), &s);
    let (st, _) = step(&st, Input::Tick { tasks: Some(0) }, t(max - 20), &s);
    assert!(
        matches!(st.phase, Phase::Drained { forced: false, .. }),
        "{st:?}"
    );
}

#[test]
fn before_a_spot_deadline_every_remaining_task_is_stopped_unless_none() {
    let st = spot_draining();
    let s = Settings::default();
    let lead = s.stop_lead.as_secs();
    let (_, fx) = step(&st, Input::Tick { tasks: Some(2) }, t(120 - lead - 1), &s);
    assert!(acts(&fx).is_empty(), "{fx:?}");
    let (_, fx) = step(&st, Input::Tick { tasks: Some(2) }, t(120 - lead), &s);
    assert_eq!(acts(&fx), vec![Effect::StopTasks(StopRemaining::All)]);
    let none = Settings {
        stop_remaining: StopRemaining::None,
        ..Settings::default()
    };
    let (st, fx) = step(&st, Input::Tick { tasks: Some(2) }, t(120 - lead), &none);
    assert!(acts(&fx).is_empty(), "{fx:?}");
    let (st, _) = step(&st, Input::Tick { tasks: Some(2) }, t(120), &none);
    assert!(matches!(st.phase, Phase::Drained { forced: true, .. }));
}

#[test]
fn a_pending_lifecycle_action_completes_with_continue_at_max_duration() {
    let s = Settings::default();
    let (max, lead) = (s.max_duration.as_secs(), s.stop_lead.as_secs());
    let st = asg_pending();
    let (st, fx) = step(&st, Input::Tick { tasks: Some(2) }, t(max - lead), &s);
    assert!(
        acts(&fx).contains(&Effect::StopTasks(StopRemaining::Unowned)),
        "{fx:?}"
    );
    let (st, _) = step(&st, Input::Done(Done::StopTasks(Ok(0))), t(max - lead), &s);
    let (st, fx) = step(&st, Input::Tick { tasks: Some(2) }, t(max), &s);
    assert_eq!(
        acts(&fx),
        vec![Effect::Complete(hook(), LifecycleResult::Continue)]
    );
    let (st, _) = step(&st, Input::Done(Done::Complete(Ok(()))), t(max), &s);
    assert!(matches!(st.phase, Phase::Drained { forced: true, .. }));
}

#[test]
fn a_failed_stop_is_tried_again_after_a_back_off_and_a_refused_one_is_not() {
    let s = Settings::default();
    let (max, lead) = (s.max_duration.as_secs(), s.stop_lead.as_secs());
    let at = max - lead;
    let st = manual_draining(&s);
    let (st, _) = step(&st, Input::Tick { tasks: Some(1) }, t(at), &s);
    let throttled = Failure::new(Outcome::NotApplied, "ThrottlingException");
    let (st, _) = step(&st, Input::Done(Done::StopTasks(Err(throttled))), t(at), &s);
    // Back-off after one failure: at most one check interval.
    let later = at + s.check_interval.as_secs();
    let (st, fx) = step(&st, Input::Tick { tasks: Some(1) }, t(later), &s);
    assert_eq!(acts(&fx), vec![Effect::StopTasks(StopRemaining::Unowned)]);
    let refused = Failure::new(Outcome::Rejected, "AccessDenied");
    let (st, _) = step(
        &st,
        Input::Done(Done::StopTasks(Err(refused))),
        t(later),
        &s,
    );
    let (_, fx) = step(&st, Input::Tick { tasks: Some(1) }, t(later + 60), &s);
    assert!(acts(&fx).is_empty(), "{fx:?}");
}

#[test]
fn retries_back_off_with_jitter_and_a_success_resets_them() {
    let s = Settings::default();
    let ci = s.check_interval;
    // Half to all of the doubled interval, capped at a minute.
    for failures in 0..12 {
        for jitter in [0.0, 0.5, 0.999] {
            let d = s.retry_delay(failures, jitter);
            let full = ci
                .saturating_mul(1 << failures.min(10))
                .min(MAX_RETRY_DELAY);
            assert!(d >= full / 2 && d <= full, "{failures} {jitter} {d:?}");
        }
    }
    assert_ne!(s.retry_delay(3, 0.1), s.retry_delay(3, 0.9));
    let (st, _) = run(&State::default(), Input::Notice(spot(600)), 0);
    let throttled = || Failure::new(Outcome::NotApplied, "ThrottlingException: Rate exceeded");
    let (st, fx) = run(&st, Input::Done(Done::SetDraining(Err(throttled()))), 1);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Log { message, .. } if message.contains("retrying in")))
    );
    let first = draining(&st).retry.clone().expect("backing off");
    assert_eq!(first.failures, 1);
    // Not before the back-off ends: no call.
    let (_, fx) = step(
        &st,
        Input::Tick { tasks: None },
        first.not_before - Duration::from_millis(1),
        &s,
    );
    assert!(acts(&fx).is_empty(), "{fx:?}");
    let (st, fx) = step(&st, Input::Tick { tasks: None }, first.not_before, &s);
    assert_eq!(acts(&fx), vec![Effect::SetDraining]);
    let (st, _) = step(
        &st,
        Input::Done(Done::SetDraining(Err(throttled()))),
        first.not_before,
        &s,
    );
    let second = draining(&st).retry.clone().expect("backing off");
    assert_eq!(second.failures, 2);
    let (st, _) = run(&st, Input::Done(Done::SetDraining(Ok(()))), 40);
    assert_eq!(draining(&st).retry, None);
}

#[test]
fn a_backward_clock_step_makes_the_heartbeat_due_at_once() {
    let st = asg_pending();
    // Heartbeat at t=100 (every 100 s for a 300 s hook), then the clock is stepped back to t=50.
    let (st, _) = run(&st, Input::Tick { tasks: Some(2) }, 100);
    let (st, _) = run(&st, Input::Done(Done::Heartbeat(Ok(()))), 100);
    let (_, fx) = run(&st, Input::Tick { tasks: Some(2) }, 150);
    assert!(acts(&fx).is_empty(), "{fx:?}");
    let (_, fx) = run(&st, Input::Tick { tasks: Some(2) }, 50);
    assert_eq!(acts(&fx), vec![Effect::Heartbeat(hook())]);
}

#[test]
fn times_at_the_edge_of_the_clock_are_no_bound_and_no_panic() {
    let s = Settings::default();
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
    let (st, _) = step(&State::default(), Input::Command(Command::Drain), far, &s);
    let (st, _) = step(&st, Input::Done(Done::SetDraining(Ok(()))), far, &s);
    let (st, _) = step(&st, Input::Tick { tasks: Some(1) }, far, &s);
    assert!(matches!(st.phase, Phase::Draining(_)));
}
