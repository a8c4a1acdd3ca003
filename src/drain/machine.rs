//! The drain state machine: pure. `step(state, input, now, settings)` returns the next state and the
//! effects to perform; the runner performs them and feeds their outcomes back as `Input::Done`.
//!
//! The state is persisted after every step that changes it, *before* the step's effects run. That
//! ordering is what makes the lifecycle action at-most-once: the intent to complete it
//! (`Lifecycle::Completing`) is on disk before CompleteLifecycleAction is sent, and a process that
//! starts and finds that intent without an outcome does NOT send it again (`Input::Restarted` turns it
//! into `Lifecycle::Uncertain`). If the crash came before the request left, the instance waits for the
//! hook's heartbeat timeout and Auto Scaling applies the hook's default result: slower, never twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::aws::Outcome;
use crate::config::{DrainConfig, FailureAction, Reaction};
use crate::notice::{MaintenanceCode, MaintenanceState, Notice, SpotAction};

/// Auto Scaling keeps an instance in a wait state for at most 100 × HeartbeatTimeout or 48 hours,
/// whichever is smaller ("global timeout", Amazon EC2 Auto Scaling lifecycle hooks documentation).
pub const MAX_GLOBAL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);

/// The reactions and timings the machine needs from `drain.*` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub on_spot: Reaction,
    pub on_autoscaling: Reaction,
    pub on_rebalance: Reaction,
    pub on_maintenance: Reaction,
    pub maintenance_lead_time: Duration,
    pub check_interval: Duration,
    pub on_failure: FailureAction,
}

impl Settings {
    pub fn from_config(c: &DrainConfig) -> Settings {
        Settings {
            on_spot: c.on_spot,
            on_autoscaling: c.on_autoscaling,
            on_rebalance: c.on_rebalance,
            on_maintenance: c.on_maintenance,
            maintenance_lead_time: c.maintenance_lead_time,
            check_interval: c.check_interval,
            on_failure: c.on_failure,
        }
    }

    /// Complete a pending lifecycle action this long before its global timeout, so the call lands
    /// before Auto Scaling gives up on its own.
    fn deadline_margin(&self) -> Duration {
        (self.check_interval * 2).max(Duration::from_secs(1))
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_config(&DrainConfig::default())
    }
}

/// Everything persisted between steps (and across restarts).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    /// Keys of notices already acted on or reported: a notice seen again is ignored.
    pub handled: BTreeSet<String>,
    /// Scheduled maintenance waiting for its drain time, by event id.
    pub scheduled: BTreeMap<String, Scheduled>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    #[default]
    Active,
    Draining(Drain),
    /// Tasks are gone (or the deadline passed: `forced`).
    Drained {
        drain: Drain,
        at: SystemTime,
        forced: bool,
    },
    /// An unrecoverable error; the instance stays DRAINING in ECS.
    Failed {
        drain: Drain,
        at: SystemTime,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduled {
    pub code: String,
    pub not_before: SystemTime,
    pub drain_at: SystemTime,
}

/// Why a drain runs. A drain can have several (a spot notice and the ASG's termination).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    Spot {
        action: String,
    },
    AutoScaling,
    /// A rebalance recommendation: elevated risk of interruption, no deadline.
    Rebalance,
    Maintenance {
        event_id: String,
        code: String,
    },
    Manual,
    Shutdown,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Spot { action } => write!(f, "spot interruption ({action})"),
            Reason::AutoScaling => write!(f, "Auto Scaling termination"),
            Reason::Rebalance => write!(f, "rebalance recommendation"),
            Reason::Maintenance { event_id, code } => {
                write!(f, "scheduled {code} ({event_id})")
            }
            Reason::Manual => write!(f, "operator request"),
            Reason::Shutdown => write!(f, "system shutdown"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    pub reasons: Vec<Reason>,
    pub since: SystemTime,
    /// When the instance goes regardless (spot: the notice's time; maintenance: NotBefore).
    pub deadline: Option<SystemTime>,
    /// ECS accepted DRAINING.
    pub ecs_draining: bool,
    pub tasks_remaining: Option<u32>,
    pub lifecycle: Lifecycle,
}

impl Drain {
    fn new(reason: Reason, since: SystemTime, deadline: Option<SystemTime>) -> Drain {
        Drain {
            reasons: vec![reason],
            since,
            deadline,
            ecs_draining: false,
            tasks_remaining: None,
            lifecycle: Lifecycle::None,
        }
    }

    pub fn reason_text(&self) -> String {
        self.reasons
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The earliest of the notice deadline and the lifecycle action's global timeout.
    pub fn effective_deadline(&self) -> Option<SystemTime> {
        let hook = match &self.lifecycle {
            Lifecycle::Pending { hook, seen_at, .. } => Some(*seen_at + hook.global_timeout()),
            _ => None,
        };
        match (self.deadline, hook) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// An Auto Scaling lifecycle hook on EC2_INSTANCE_TERMINATING.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub group: String,
    pub name: String,
    pub heartbeat_timeout: Duration,
}

impl Hook {
    pub fn global_timeout(&self) -> Duration {
        (self.heartbeat_timeout * 100).min(MAX_GLOBAL_TIMEOUT)
    }

    /// Heartbeat at a third of the timeout: two chances before it runs out.
    pub fn heartbeat_every(&self) -> Duration {
        (self.heartbeat_timeout / 3).max(Duration::from_millis(500))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LifecycleResult {
    Continue,
    Abandon,
}

impl LifecycleResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleResult::Continue => "CONTINUE",
            LifecycleResult::Abandon => "ABANDON",
        }
    }
}

/// Where the Auto Scaling lifecycle action of this drain is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Lifecycle {
    /// No Auto Scaling termination is part of this drain.
    #[default]
    None,
    /// Terminated was seen; the group and hook are being looked up.
    Finding { seen_at: SystemTime },
    /// The group has no terminating hook: nothing to complete.
    NoHook,
    Pending {
        hook: Hook,
        seen_at: SystemTime,
        last_heartbeat: SystemTime,
    },
    /// The intent is recorded; CompleteLifecycleAction is being sent. Never sent again from here.
    Completing {
        hook: Hook,
        result: LifecycleResult,
        at: SystemTime,
        seen_at: SystemTime,
    },
    Completed {
        hook: Hook,
        result: LifecycleResult,
        at: SystemTime,
    },
    /// The call may or may not have reached Auto Scaling (crash or lost response); not repeated.
    Uncertain {
        hook: Hook,
        result: LifecycleResult,
        at: SystemTime,
        why: String,
    },
}

/// Operator commands (the CLI) and the daemon's own shutdown drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Drain,
    ShutdownDrain,
    Activate,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Notice(Notice),
    Command(Command),
    /// Periodic check; `tasks` = remaining tasks when they could be counted.
    Tick {
        tasks: Option<u32>,
    },
    Done(Done),
    /// The process (re)started with this state loaded.
    Restarted,
}

/// The outcome of an effect.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    SetDraining(Result<(), Failure>),
    SetActive(Result<(), Failure>),
    FindHook(Result<Option<Hook>, Failure>),
    Heartbeat(Result<(), Failure>),
    Complete(Result<(), Failure>),
}

/// A failed effect: what it means for a retry, and what to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: Outcome,
    pub message: String,
}

impl Failure {
    pub fn new(kind: Outcome, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    SetDraining,
    SetActive,
    FindHook,
    Heartbeat(Hook),
    Complete(Hook, LifecycleResult),
    /// Publish metrics at once (a drain started or ended).
    PublishNow,
    /// Tell the operator: a notice configured as `report`, or something that deserves a loud line.
    Log {
        level: Level,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// The key a notice is de-duplicated by. A maintenance event's state and NotBefore are part of it, so
/// a cancellation or a reschedule of an event already seen is acted on.
pub fn notice_key(n: &Notice) -> String {
    match n {
        Notice::Maintenance(e) => format!(
            "{}:{:?}:{}",
            n.id(),
            e.state,
            e.not_before
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        ),
        _ => n.id(),
    }
}

/// Maintenance codes that take the instance away (or reboot it under its tasks).
fn drains_for(code: &MaintenanceCode) -> bool {
    matches!(
        code,
        MaintenanceCode::InstanceStop
            | MaintenanceCode::InstanceRetirement
            | MaintenanceCode::SystemReboot
            | MaintenanceCode::InstanceReboot
    )
}

fn code_name(code: &MaintenanceCode) -> String {
    match code {
        MaintenanceCode::InstanceReboot => "instance-reboot".into(),
        MaintenanceCode::SystemReboot => "system-reboot".into(),
        MaintenanceCode::SystemMaintenance => "system-maintenance".into(),
        MaintenanceCode::InstanceRetirement => "instance-retirement".into(),
        MaintenanceCode::InstanceStop => "instance-stop".into(),
        MaintenanceCode::Other(s) => s.clone(),
    }
}

fn spot_action(a: SpotAction) -> &'static str {
    match a {
        SpotAction::Terminate => "terminate",
        SpotAction::Stop => "stop",
        SpotAction::Hibernate => "hibernate",
    }
}

fn log(level: Level, message: impl Into<String>) -> Effect {
    Effect::Log {
        level,
        message: message.into(),
    }
}

/// One step of the machine.
pub fn step(state: &State, input: Input, now: SystemTime, s: &Settings) -> (State, Vec<Effect>) {
    let mut next = state.clone();
    let mut fx = Vec::new();
    match input {
        Input::Notice(n) => on_notice(&mut next, n, now, s, &mut fx),
        Input::Command(c) => on_command(&mut next, c, now, &mut fx),
        Input::Tick { tasks } => on_tick(&mut next, tasks, now, s, &mut fx),
        Input::Done(d) => on_done(&mut next, d, now, s, &mut fx),
        Input::Restarted => on_restart(&mut next, now, &mut fx),
    }
    (next, fx)
}

fn on_notice(st: &mut State, n: Notice, now: SystemTime, s: &Settings, fx: &mut Vec<Effect>) {
    let key = notice_key(&n);
    if !st.handled.insert(key) {
        return;
    }
    match n {
        Notice::Spot { action, time } => {
            let reason = Reason::Spot {
                action: spot_action(action).into(),
            };
            react(st, s.on_spot, reason, Some(time), now, fx);
        }
        Notice::AutoScalingTerminated { seen_at } => {
            if s.on_autoscaling == Reaction::Report {
                fx.push(log(
                    Level::Warn,
                    "Auto Scaling is terminating this instance (drain.on_autoscaling = \"report\": not draining)",
                ));
                return;
            }
            start_drain(st, Reason::AutoScaling, None, now, fx);
            if let Phase::Draining(d) = &mut st.phase
                && d.lifecycle == Lifecycle::None
            {
                d.lifecycle = Lifecycle::Finding { seen_at };
                fx.push(Effect::FindHook);
            }
        }
        Notice::Rebalance { .. } => {
            react(st, s.on_rebalance, Reason::Rebalance, None, now, fx);
        }
        Notice::Maintenance(e) => {
            let code = code_name(&e.code);
            match e.state {
                MaintenanceState::Active if drains_for(&e.code) => {
                    if s.on_maintenance == Reaction::Report {
                        fx.push(log(
                            Level::Warn,
                            format!(
                                "scheduled {code} {} (drain.on_maintenance = \"report\": not draining)",
                                e.event_id
                            ),
                        ));
                        return;
                    }
                    let drain_at = e
                        .not_before
                        .checked_sub(s.maintenance_lead_time)
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    st.scheduled.insert(
                        e.event_id.clone(),
                        Scheduled {
                            code: code.clone(),
                            not_before: e.not_before,
                            drain_at,
                        },
                    );
                    fx.push(log(
                        Level::Info,
                        format!(
                            "scheduled {code} {}: draining from {}",
                            e.event_id,
                            humantime::format_rfc3339_seconds(drain_at)
                        ),
                    ));
                    start_due_maintenance(st, now, fx);
                }
                MaintenanceState::Active => fx.push(log(
                    Level::Info,
                    format!("scheduled {code} {}: does not need a drain", e.event_id),
                )),
                MaintenanceState::Canceled | MaintenanceState::Completed => {
                    st.scheduled.remove(&e.event_id);
                    stand_down(st, &e.event_id, fx);
                }
            }
        }
    }
}

/// A notice that either drains or is only reported.
fn react(
    st: &mut State,
    reaction: Reaction,
    reason: Reason,
    deadline: Option<SystemTime>,
    now: SystemTime,
    fx: &mut Vec<Effect>,
) {
    if reaction == Reaction::Report {
        fx.push(log(
            Level::Warn,
            format!("{reason} announced (configured to report only: not draining)"),
        ));
        return;
    }
    start_drain(st, reason, deadline, now, fx);
}

fn start_drain(
    st: &mut State,
    reason: Reason,
    deadline: Option<SystemTime>,
    now: SystemTime,
    fx: &mut Vec<Effect>,
) {
    match &mut st.phase {
        Phase::Draining(d) => {
            // One drain: a further notice adds its reason and can only bring the deadline closer.
            if !d.reasons.contains(&reason) {
                d.reasons.push(reason);
            }
            d.deadline = match (d.deadline, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        _ => {
            fx.push(log(Level::Warn, format!("draining: {reason}")));
            st.phase = Phase::Draining(Drain::new(reason, now, deadline));
            fx.push(Effect::SetDraining);
            fx.push(Effect::PublishNow);
        }
    }
}

fn start_due_maintenance(st: &mut State, now: SystemTime, fx: &mut Vec<Effect>) {
    let due: Vec<(String, Scheduled)> = st
        .scheduled
        .iter()
        .filter(|(_, e)| e.drain_at <= now)
        .map(|(id, e)| (id.clone(), e.clone()))
        .collect();
    for (id, e) in due {
        st.scheduled.remove(&id);
        let reason = Reason::Maintenance {
            event_id: id,
            code: e.code,
        };
        start_drain(st, reason, Some(e.not_before), now, fx);
    }
}

/// A maintenance event was canceled or completed: drop its reason; with no reason left, back to ACTIVE.
fn stand_down(st: &mut State, event_id: &str, fx: &mut Vec<Effect>) {
    let is_it =
        |r: &Reason| matches!(r, Reason::Maintenance { event_id: id, .. } if id == event_id);
    let drain = match &mut st.phase {
        Phase::Draining(d) => d,
        Phase::Drained { drain, .. } => drain,
        _ => return,
    };
    if !drain.reasons.iter().any(is_it) {
        return;
    }
    drain.reasons.retain(|r| !is_it(r));
    if drain.reasons.is_empty() && drain.lifecycle == Lifecycle::None {
        fx.push(log(
            Level::Warn,
            format!(
                "scheduled event {event_id} canceled or completed: standing down, back to ACTIVE"
            ),
        ));
        st.phase = Phase::Active;
        fx.push(Effect::SetActive);
        fx.push(Effect::PublishNow);
    }
}

fn on_command(st: &mut State, c: Command, now: SystemTime, fx: &mut Vec<Effect>) {
    match c {
        Command::Drain => start_drain(st, Reason::Manual, None, now, fx),
        Command::ShutdownDrain => start_drain(st, Reason::Shutdown, None, now, fx),
        Command::Activate => {
            if let Phase::Draining(d) = &st.phase
                && matches!(
                    d.lifecycle,
                    Lifecycle::Finding { .. } | Lifecycle::Pending { .. }
                )
            {
                fx.push(log(
                    Level::Warn,
                    "activating while an Auto Scaling termination is pending: the group still terminates this instance when the hook times out",
                ));
            }
            if let Phase::Draining(d) = &st.phase
                && let Lifecycle::Completing { .. } = d.lifecycle
            {
                // The completion is in flight in another process: leaving DRAINING now would lose it.
                fx.push(log(
                    Level::Error,
                    "a lifecycle action is being completed: not activating",
                ));
                return;
            }
            st.phase = Phase::Active;
            fx.push(log(Level::Info, "activating: back to ACTIVE"));
            fx.push(Effect::SetActive);
            fx.push(Effect::PublishNow);
        }
    }
}

fn on_tick(
    st: &mut State,
    tasks: Option<u32>,
    now: SystemTime,
    s: &Settings,
    fx: &mut Vec<Effect>,
) {
    let was_draining = matches!(st.phase, Phase::Draining(_));
    start_due_maintenance(st, now, fx);
    let Phase::Draining(d) = &mut st.phase else {
        return;
    };
    if !was_draining {
        // Started by this very tick: its effects are already queued.
        return;
    }
    if tasks.is_some() {
        d.tasks_remaining = tasks;
    }
    if !d.ecs_draining {
        fx.push(Effect::SetDraining);
    }
    match &d.lifecycle {
        Lifecycle::Finding { .. } => fx.push(Effect::FindHook),
        Lifecycle::Pending {
            hook,
            seen_at,
            last_heartbeat,
        } => {
            let (hook, seen_at, last_heartbeat) = (hook.clone(), *seen_at, *last_heartbeat);
            let global_deadline = seen_at + hook.global_timeout();
            if now + s.deadline_margin() >= global_deadline {
                fx.push(log(
                    Level::Error,
                    format!(
                        "the lifecycle action's global timeout ({}) is near with {} task(s) remaining: completing it anyway",
                        humantime::format_rfc3339_seconds(global_deadline),
                        d.tasks_remaining.map(|n| n.to_string()).unwrap_or_else(|| "unknown".into())
                    ),
                ));
                d.lifecycle = Lifecycle::Completing {
                    hook: hook.clone(),
                    result: LifecycleResult::Continue,
                    at: now,
                    seen_at,
                };
                fx.push(Effect::Complete(hook, LifecycleResult::Continue));
                return;
            }
            if d.ecs_draining && tasks == Some(0) {
                d.lifecycle = Lifecycle::Completing {
                    hook: hook.clone(),
                    result: LifecycleResult::Continue,
                    at: now,
                    seen_at,
                };
                fx.push(Effect::Complete(hook, LifecycleResult::Continue));
                return;
            }
            if now >= last_heartbeat + hook.heartbeat_every() {
                fx.push(Effect::Heartbeat(hook));
            }
        }
        _ => {}
    }
    // Without a lifecycle action to complete, the drain ends when the tasks are gone or the
    // instance's own deadline has passed.
    let Phase::Draining(d) = &mut st.phase else {
        return;
    };
    let waiting_on_hook = matches!(
        d.lifecycle,
        Lifecycle::Finding { .. } | Lifecycle::Pending { .. } | Lifecycle::Completing { .. }
    );
    if waiting_on_hook {
        return;
    }
    if d.ecs_draining && tasks == Some(0) {
        let drain = d.clone();
        fx.push(log(
            Level::Warn,
            format!("drained: no tasks remain ({})", drain.reason_text()),
        ));
        st.phase = Phase::Drained {
            drain,
            at: now,
            forced: false,
        };
        fx.push(Effect::PublishNow);
    } else if let Some(deadline) = d.deadline
        && now >= deadline
    {
        let drain = d.clone();
        fx.push(log(
            Level::Error,
            format!(
                "deadline {} passed with {} task(s) remaining: the instance goes now ({})",
                humantime::format_rfc3339_seconds(deadline),
                drain
                    .tasks_remaining
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                drain.reason_text()
            ),
        ));
        st.phase = Phase::Drained {
            drain,
            at: now,
            forced: true,
        };
        fx.push(Effect::PublishNow);
    }
}

fn on_done(st: &mut State, done: Done, now: SystemTime, s: &Settings, fx: &mut Vec<Effect>) {
    match done {
        Done::SetActive(Ok(())) => {}
        Done::SetActive(Err(f)) => fx.push(log(
            Level::Error,
            format!("cannot set the container instance ACTIVE: {}", f.message),
        )),
        Done::Complete(outcome) => on_completed(st, outcome, now, fx),
        other => {
            let Phase::Draining(d) = &mut st.phase else {
                return;
            };
            match other {
                Done::SetDraining(Ok(())) => d.ecs_draining = true,
                Done::SetDraining(Err(f)) => {
                    if f.kind == Outcome::Rejected {
                        fail(
                            st,
                            format!("cannot set DRAINING: {}", f.message),
                            now,
                            s,
                            fx,
                        );
                    } else {
                        fx.push(log(
                            Level::Warn,
                            format!("setting DRAINING failed, retrying: {}", f.message),
                        ));
                    }
                }
                Done::FindHook(Ok(found)) => {
                    let Lifecycle::Finding { seen_at } = d.lifecycle else {
                        return;
                    };
                    d.lifecycle = match found {
                        Some(hook) => {
                            fx.push(log(
                                Level::Info,
                                format!(
                                    "lifecycle hook {} of group {}: heartbeat timeout {}s, completing by {}",
                                    hook.name,
                                    hook.group,
                                    hook.heartbeat_timeout.as_secs(),
                                    humantime::format_rfc3339_seconds(
                                        seen_at + hook.global_timeout()
                                    )
                                ),
                            ));
                            Lifecycle::Pending {
                                hook,
                                seen_at,
                                last_heartbeat: seen_at,
                            }
                        }
                        None => {
                            fx.push(log(
                                Level::Warn,
                                "no terminating lifecycle hook: Auto Scaling does not wait for this drain",
                            ));
                            Lifecycle::NoHook
                        }
                    };
                }
                Done::FindHook(Err(f)) => {
                    if f.kind == Outcome::Rejected {
                        fail(
                            st,
                            format!("cannot find the lifecycle hook: {}", f.message),
                            now,
                            s,
                            fx,
                        );
                    } else {
                        fx.push(log(
                            Level::Warn,
                            format!("finding the lifecycle hook failed, retrying: {}", f.message),
                        ));
                    }
                }
                Done::Heartbeat(Ok(())) => {
                    if let Lifecycle::Pending { last_heartbeat, .. } = &mut d.lifecycle {
                        *last_heartbeat = now;
                    }
                }
                Done::Heartbeat(Err(f)) => {
                    if f.kind == Outcome::Rejected {
                        fail(
                            st,
                            format!("lifecycle heartbeat refused: {}", f.message),
                            now,
                            s,
                            fx,
                        );
                    } else {
                        fx.push(log(
                            Level::Warn,
                            format!("lifecycle heartbeat failed, retrying: {}", f.message),
                        ));
                    }
                }
                Done::SetActive(_) | Done::Complete(_) => unreachable!("handled above"),
            }
        }
    }
}

fn drain_mut(phase: &mut Phase) -> Option<&mut Drain> {
    match phase {
        Phase::Draining(d) => Some(d),
        Phase::Drained { drain, .. } | Phase::Failed { drain, .. } => Some(drain),
        Phase::Active => None,
    }
}

fn on_completed(
    st: &mut State,
    outcome: Result<(), Failure>,
    now: SystemTime,
    fx: &mut Vec<Effect>,
) {
    let Some(d) = drain_mut(&mut st.phase) else {
        return;
    };
    let Lifecycle::Completing {
        hook,
        result,
        seen_at,
        ..
    } = d.lifecycle.clone()
    else {
        return;
    };
    match outcome {
        Ok(()) => {
            fx.push(log(
                Level::Warn,
                format!(
                    "lifecycle action completed with {} (hook {} of group {})",
                    result.as_str(),
                    hook.name,
                    hook.group
                ),
            ));
            d.lifecycle = Lifecycle::Completed {
                hook,
                result,
                at: now,
            };
        }
        Err(f) if f.kind == Outcome::NotApplied => {
            // Not applied (throttled or refused before processing): the next tick tries again.
            fx.push(log(
                Level::Warn,
                format!(
                    "completing the lifecycle action failed, retrying: {}",
                    f.message
                ),
            ));
            d.lifecycle = Lifecycle::Pending {
                hook,
                seen_at,
                last_heartbeat: now,
            };
            return;
        }
        Err(f) => {
            fx.push(log(
                Level::Error,
                format!(
                    "CompleteLifecycleAction {} may not have been applied and is not repeated: {}; \
                     Auto Scaling applies the hook's default result when its heartbeat timeout ends",
                    result.as_str(),
                    f.message
                ),
            ));
            d.lifecycle = Lifecycle::Uncertain {
                hook,
                result,
                at: now,
                why: f.message,
            };
        }
    }
    if let Phase::Draining(d) = &st.phase {
        let drain = d.clone();
        let forced = drain.tasks_remaining != Some(0);
        st.phase = Phase::Drained {
            drain,
            at: now,
            forced,
        };
        fx.push(Effect::PublishNow);
    }
}

fn fail(st: &mut State, error: String, now: SystemTime, s: &Settings, fx: &mut Vec<Effect>) {
    let Phase::Draining(d) = &mut st.phase else {
        return;
    };
    let mut drain = d.clone();
    if let (FailureAction::Abandon, Lifecycle::Pending { hook, seen_at, .. }) =
        (s.on_failure, &drain.lifecycle)
    {
        let (hook, seen_at) = (hook.clone(), *seen_at);
        fx.push(log(
            Level::Error,
            format!("{error}: abandoning the lifecycle action (drain.on_failure = \"abandon\")"),
        ));
        drain.lifecycle = Lifecycle::Completing {
            hook: hook.clone(),
            result: LifecycleResult::Abandon,
            at: now,
            seen_at,
        };
        fx.push(Effect::Complete(hook, LifecycleResult::Abandon));
    } else {
        fx.push(log(
            Level::Error,
            format!("{error}: the drain stops here; the instance stays DRAINING"),
        ));
    }
    st.phase = Phase::Failed {
        drain,
        at: now,
        error,
    };
    fx.push(Effect::PublishNow);
}

fn on_restart(st: &mut State, now: SystemTime, fx: &mut Vec<Effect>) {
    let Some(d) = drain_mut(&mut st.phase) else {
        return;
    };
    // A drain made only because the system was shutting down ends when the system is back up.
    if d.reasons == [Reason::Shutdown] && d.lifecycle == Lifecycle::None {
        fx.push(log(
            Level::Warn,
            "started after a shutdown drain: back to ACTIVE",
        ));
        st.phase = Phase::Active;
        fx.push(Effect::SetActive);
        fx.push(Effect::PublishNow);
        return;
    }
    if let Lifecycle::Completing {
        hook, result, at, ..
    } = d.lifecycle.clone()
    {
        fx.push(log(
            Level::Error,
            format!(
                "restarted while completing the lifecycle action ({} at {}): not sending it again; \
                 if it never reached Auto Scaling, the hook's heartbeat timeout applies its default result",
                result.as_str(),
                humantime::format_rfc3339_seconds(at)
            ),
        ));
        d.lifecycle = Lifecycle::Uncertain {
            hook,
            result,
            at,
            why: "interrupted by a restart".into(),
        };
        if let Phase::Draining(d) = &st.phase {
            let drain = d.clone();
            let forced = drain.tasks_remaining != Some(0);
            st.phase = Phase::Drained {
                drain,
                at: now,
                forced,
            };
        }
        fx.push(Effect::PublishNow);
    } else if let Phase::Draining(d) = &st.phase {
        fx.push(log(
            Level::Warn,
            format!(
                "resuming the drain started {} ({})",
                humantime::format_rfc3339_seconds(d.since),
                d.reason_text()
            ),
        ));
        // ECS may have missed DRAINING if the process died right after recording it: it is idempotent.
        if let Phase::Draining(d) = &mut st.phase {
            d.ecs_draining = false;
        }
        fx.push(Effect::SetDraining);
    }
}

#[cfg(test)]
mod tests;
