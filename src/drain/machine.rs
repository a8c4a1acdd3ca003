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
use crate::config::{DrainConfig, FailureAction, Reaction, StopRemaining};
use crate::notice::{
    LifecycleState, MaintenanceCode, MaintenanceEvent, MaintenanceState, Notice, SpotAction,
};

/// Auto Scaling keeps an instance in a wait state for at most 100 × HeartbeatTimeout or 48 hours,
/// whichever is smaller ("global timeout", Amazon EC2 Auto Scaling lifecycle hooks documentation).
pub const MAX_GLOBAL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);

/// The longest wait between retries of a failing drain call.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

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
    pub max_duration: Duration,
    pub stop_remaining: StopRemaining,
    pub stop_lead: Duration,
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
            max_duration: c.max_duration,
            stop_remaining: c.stop_remaining,
            stop_lead: c.stop_lead,
        }
    }

    /// The wait before retrying a call that failed `failures` times in a row without being
    /// refused: the check interval doubled per failure up to a minute, times a jitter in [½, 1)
    /// (`jitter` in [0, 1)), so a fleet throttled at once does not retry at once.
    fn retry_delay(&self, failures: u32, jitter: f64) -> Duration {
        let base = self
            .check_interval
            .saturating_mul(1u32 << failures.min(10))
            .min(MAX_RETRY_DELAY)
            .max(self.check_interval);
        base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// Complete a pending lifecycle action this long before its global timeout, so the call lands
    /// before Auto Scaling gives up on its own.
    fn deadline_margin(&self) -> Duration {
        (self.check_interval * 2).max(Duration::from_secs(1))
    }

    /// The setting that says to only report notices of this kind, when it does.
    fn report_only(&self, reason: &Reason) -> Option<&'static str> {
        let (reaction, setting) = match reason {
            Reason::Spot { .. } => (self.on_spot, "drain.on_spot"),
            Reason::AutoScaling { .. } => (self.on_autoscaling, "drain.on_autoscaling"),
            Reason::Rebalance => (self.on_rebalance, "drain.on_rebalance"),
            Reason::Maintenance { .. } => (self.on_maintenance, "drain.on_maintenance"),
            Reason::Manual | Reason::Shutdown => return None,
        };
        (reaction == Reaction::Report).then_some(setting)
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
    /// The boot (`/proc/sys/kernel/random/boot_id`) the daemon last ran in: a different one at start
    /// means the instance rebooted or was stopped and started since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
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
    pub code: MaintenanceCode,
    pub not_before: SystemTime,
    pub drain_at: SystemTime,
}

/// Why a drain runs. A drain can have several (a spot notice and the ASG's termination).
/// Persisted in `drain.json`: the fields keep the names and string forms they were written with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    Spot {
        action: SpotAction,
    },
    AutoScaling {
        /// Where Auto Scaling takes the instance; `Terminated` is left out of the file, as a state
        /// written before this field existed reads as `Terminated`.
        #[serde(default, skip_serializing_if = "LifecycleState::is_terminated")]
        target: LifecycleState,
    },
    /// A rebalance recommendation: elevated risk of interruption, no deadline.
    Rebalance,
    Maintenance {
        event_id: String,
        code: MaintenanceCode,
    },
    Manual,
    Shutdown,
}

impl Reason {
    /// The instance is rebooted or stopped, not terminated: it starts again with the same id (and a
    /// new boot id). A system shutdown counts: the instance is back only if it was not terminated.
    pub fn is_reboot_or_stop(&self) -> bool {
        match self {
            Reason::Spot { action } => action.is_stop(),
            Reason::AutoScaling { target } => target.is_stop(),
            Reason::Maintenance { code, .. } => code.is_reboot_or_stop(),
            Reason::Shutdown => true,
            Reason::Rebalance | Reason::Manual => false,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Spot { action } => write!(f, "spot interruption ({action})"),
            Reason::AutoScaling {
                target: LifecycleState::Terminated,
            } => write!(f, "Auto Scaling termination"),
            Reason::AutoScaling { target } => write!(f, "Auto Scaling moving it to {target}"),
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
    /// Whether this drain set the container instance DRAINING (`true`) or found it DRAINING already,
    /// someone else's (`false`); unknown until ECS was asked. Only a drain that set it is undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by_agent: Option<bool>,
    /// When the remaining tasks were told to stop as the drain neared its bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping: Option<SystemTime>,
    /// A call failed without being refused: the next try waits until `not_before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// Back-off after failed drain calls (throttled, 5xx, unreachable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    pub failures: u32,
    pub not_before: SystemTime,
}

/// When a drain ends whatever its tasks do, and why then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub at: SystemTime,
    pub why: BoundKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKind {
    /// The notice's time (spot, maintenance): the instance goes then regardless.
    Notice,
    /// The lifecycle action's global timeout, less the margin to complete it in time.
    HookTimeout,
    /// `drain.max_duration` after the drain began.
    MaxDuration,
}

impl std::fmt::Display for BoundKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BoundKind::Notice => "the notice's time",
            BoundKind::HookTimeout => "the lifecycle action's global timeout",
            BoundKind::MaxDuration => "drain.max_duration",
        })
    }
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
            set_by_agent: None,
            stopping: None,
            retry: None,
        }
    }

    /// The earliest of the notice's time, the pending lifecycle action's global timeout (less the
    /// margin to complete it before Auto Scaling gives up) and `drain.max_duration` after the start.
    /// Times too far off to represent are no bound.
    pub fn bound(&self, s: &Settings) -> Option<Bound> {
        let hook = match &self.lifecycle {
            Lifecycle::Pending { hook, seen_at, .. } => seen_at
                .checked_add(hook.global_timeout())
                .map(|t| t.checked_sub(s.deadline_margin()).unwrap_or(t)),
            _ => None,
        };
        [
            (self.deadline, BoundKind::Notice),
            (hook, BoundKind::HookTimeout),
            (
                self.since.checked_add(s.max_duration),
                BoundKind::MaxDuration,
            ),
        ]
        .into_iter()
        .filter_map(|(at, why)| at.map(|at| Bound { at, why }))
        .min_by_key(|b| b.at)
    }

    pub fn reason_text(&self) -> String {
        self.reasons
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every reason is a reboot or a stop (`Reason::is_reboot_or_stop`): once the instance runs
    /// again, nothing this drain was for still holds.
    pub fn every_reason_is_reboot_or_stop(&self) -> bool {
        !self.reasons.is_empty() && self.reasons.iter().all(Reason::is_reboot_or_stop)
    }

    /// The last count of remaining tasks was zero.
    fn tasks_seen_gone(&self) -> bool {
        self.tasks_remaining == Some(0)
    }

    /// The earliest of the notice deadline and the lifecycle action's global timeout.
    pub fn effective_deadline(&self) -> Option<SystemTime> {
        let hook = match &self.lifecycle {
            Lifecycle::Pending { hook, seen_at, .. } => seen_at.checked_add(hook.global_timeout()),
            _ => None,
        };
        earliest(self.deadline, hook)
    }
}

/// The earlier of two optional times; either when the other is unknown.
fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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
    /// The process started in this boot (given before `Restarted`).
    Booted {
        boot_id: String,
    },
}

/// The outcome of an effect.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    /// Whether the container instance was DRAINING before this drain set it (asked just before
    /// `SetDraining` while the drain does not know yet).
    DrainingBefore(Result<bool, Failure>),
    SetDraining(Result<(), Failure>),
    SetActive(Result<(), Failure>),
    FindHook(Result<Option<Hook>, Failure>),
    Heartbeat(Result<(), Failure>),
    Complete(Result<(), Failure>),
    /// StopTask of the remaining tasks: how many were told to stop.
    StopTasks(Result<u32, Failure>),
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
    /// StopTask every remaining task in this scope (never `StopRemaining::None`).
    StopTasks(StopRemaining),
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

/// Maintenance codes that take the instance away (or reboot it under its tasks).
fn drains_for(code: &MaintenanceCode) -> bool {
    code.is_reboot_or_stop() || *code == MaintenanceCode::InstanceRetirement
}

/// What a transition reads (the time, the settings) and what it produces (the effects, in order).
struct Ctx<'a> {
    now: SystemTime,
    settings: &'a Settings,
    effects: Vec<Effect>,
}

impl Ctx<'_> {
    fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    fn log(&mut self, level: Level, message: impl Into<String>) {
        self.push(Effect::Log {
            level,
            message: message.into(),
        });
    }
}

/// One step of the machine: each input goes to its transition.
pub fn step(state: &State, input: Input, now: SystemTime, s: &Settings) -> (State, Vec<Effect>) {
    let mut st = state.clone();
    let mut cx = Ctx {
        now,
        settings: s,
        effects: Vec::new(),
    };
    match input {
        Input::Notice(n) => on_notice(&mut st, n, &mut cx),
        Input::Command(Command::Drain) => start_drain(&mut st, Reason::Manual, None, &mut cx),
        Input::Command(Command::ShutdownDrain) => {
            start_drain(&mut st, Reason::Shutdown, None, &mut cx)
        }
        Input::Command(Command::Activate) => on_activate(&mut st, &mut cx),
        Input::Tick { tasks } => on_tick(&mut st, tasks, &mut cx),
        Input::Done(done) => on_done(&mut st, done, &mut cx),
        Input::Restarted => on_restart(&mut st, &mut cx),
        Input::Booted { boot_id } => on_boot(&mut st, boot_id, &mut cx),
    }
    (st, cx.effects)
}

/// The outcome of an effect, one row each.
fn on_done(st: &mut State, done: Done, cx: &mut Ctx) {
    if done.succeeded()
        && let Phase::Draining(d) = &mut st.phase
    {
        d.retry = None;
    }
    match done {
        Done::DrainingBefore(before) => on_draining_before(st, before, cx),
        Done::SetDraining(Ok(())) => {
            if let Phase::Draining(d) = &mut st.phase {
                d.ecs_draining = true;
            }
        }
        Done::SetDraining(Err(f)) => {
            retry_or_fail(st, f, "cannot set DRAINING", "setting DRAINING failed", cx)
        }
        Done::SetActive(Ok(())) => {}
        Done::SetActive(Err(f)) => cx.log(
            Level::Error,
            format!("cannot set the container instance ACTIVE: {}", f.message),
        ),
        Done::FindHook(Ok(found)) => on_hook_found(st, found, cx),
        Done::FindHook(Err(f)) => retry_or_fail(
            st,
            f,
            "cannot find the lifecycle hook",
            "finding the lifecycle hook failed",
            cx,
        ),
        Done::Heartbeat(Ok(())) => {
            if let Phase::Draining(Drain {
                lifecycle: Lifecycle::Pending { last_heartbeat, .. },
                ..
            }) = &mut st.phase
            {
                *last_heartbeat = cx.now;
            }
        }
        Done::Heartbeat(Err(f)) => retry_or_fail(
            st,
            f,
            "lifecycle heartbeat refused",
            "lifecycle heartbeat failed",
            cx,
        ),
        Done::Complete(outcome) => on_completed(st, outcome, cx),
        Done::StopTasks(outcome) => on_stopped(st, outcome, cx),
    }
}

impl Done {
    /// A call to AWS answered with success (a step the drain made, so any back-off is over).
    fn succeeded(&self) -> bool {
        match self {
            Done::DrainingBefore(r) => r.is_ok(),
            Done::SetDraining(r) | Done::SetActive(r) | Done::Heartbeat(r) | Done::Complete(r) => {
                r.is_ok()
            }
            Done::FindHook(r) => r.is_ok(),
            Done::StopTasks(r) => r.is_ok(),
        }
    }
}

/// StopTask answered: a failure that was not a refusal is tried again by the next tick.
fn on_stopped(st: &mut State, outcome: Result<u32, Failure>, cx: &mut Ctx) {
    let Phase::Draining(d) = &mut st.phase else {
        return;
    };
    match outcome {
        Ok(n) => cx.log(
            Level::Warn,
            format!("told {n} remaining task(s) to stop ({})", d.reason_text()),
        ),
        Err(f) if f.kind == Outcome::Rejected => cx.log(
            Level::Error,
            format!("cannot stop the remaining tasks: {}", f.message),
        ),
        Err(f) => {
            d.stopping = None;
            back_off(d, cx);
            cx.log(
                Level::Warn,
                format!(
                    "stopping the remaining tasks failed, retrying: {}",
                    f.message
                ),
            );
        }
    }
}

fn on_notice(st: &mut State, n: Notice, cx: &mut Ctx) {
    if let Notice::MaintenanceListed { event_ids } = n {
        // A snapshot, not an event: compared each time, never recorded as handled.
        on_maintenance_listed(st, &event_ids, cx);
        return;
    }
    if !st.handled.insert(n.revision()) {
        return;
    }
    match n {
        Notice::Spot { action, time } => {
            react(st, Reason::Spot { action }, Some(time), cx);
        }
        Notice::AutoScalingTerminated { seen_at } => {
            leave_group(st, LifecycleState::Terminated, seen_at, cx)
        }
        // Back to the warm pool on scale in: the tasks go as for a termination. The group's
        // EC2_INSTANCE_TERMINATING hook applies to it too (the instance waits in
        // Warmed:Pending:Wait: "Use lifecycle hooks with a warm pool", Amazon EC2 Auto Scaling
        // User Guide), so it is found and completed the same way.
        Notice::AutoScalingWarmed { target, seen_at } => leave_group(st, target, seen_at, cx),
        Notice::Rebalance { .. } => {
            react(st, Reason::Rebalance, None, cx);
        }
        Notice::Maintenance(e) => on_maintenance(st, e, cx),
        Notice::MaintenanceListed { .. } => {}
    }
}

/// Auto Scaling takes the instance out of service (to `target`): drain, and find the terminating
/// lifecycle hook whose action waits on this drain.
fn leave_group(st: &mut State, target: LifecycleState, seen_at: SystemTime, cx: &mut Ctx) {
    if react(st, Reason::AutoScaling { target }, None, cx)
        && let Phase::Draining(d) = &mut st.phase
        && d.lifecycle == Lifecycle::None
    {
        d.lifecycle = Lifecycle::Finding { seen_at };
        cx.push(Effect::FindHook);
    }
}

/// A notice drains unless its kind is configured to be only reported. Returns whether it drains.
fn react(st: &mut State, reason: Reason, deadline: Option<SystemTime>, cx: &mut Ctx) -> bool {
    if reported_only(&reason, cx) {
        return false;
    }
    start_drain(st, reason, deadline, cx);
    true
}

fn reported_only(reason: &Reason, cx: &mut Ctx) -> bool {
    let Some(setting) = cx.settings.report_only(reason) else {
        return false;
    };
    cx.log(
        Level::Warn,
        format!("{reason} announced ({setting} = \"report\": not draining)"),
    );
    true
}

fn on_maintenance(st: &mut State, e: MaintenanceEvent, cx: &mut Ctx) {
    match e.state {
        MaintenanceState::Active if drains_for(&e.code) => schedule(st, e, cx),
        MaintenanceState::Active => cx.log(
            Level::Info,
            format!("scheduled {} {}: does not need a drain", e.code, e.event_id),
        ),
        MaintenanceState::Canceled | MaintenanceState::Completed => {
            st.scheduled.remove(&e.event_id);
            stand_down(st, &e.event_id, "canceled or completed", cx);
        }
    }
}

/// An active event that drains: the drain starts `maintenance_lead_time` before its NotBefore (at
/// once when that has passed). A rescheduled event replaces its earlier entry.
fn schedule(st: &mut State, e: MaintenanceEvent, cx: &mut Ctx) {
    let reason = Reason::Maintenance {
        event_id: e.event_id.clone(),
        code: e.code.clone(),
    };
    if reported_only(&reason, cx) {
        return;
    }
    let drain_at = e
        .not_before
        .checked_sub(cx.settings.maintenance_lead_time)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    cx.log(
        Level::Info,
        format!(
            "scheduled {} {}: draining from {}",
            e.code,
            e.event_id,
            crate::rfc3339::format(drain_at)
        ),
    );
    let entry = Scheduled {
        code: e.code,
        not_before: e.not_before,
        drain_at,
    };
    st.scheduled.insert(e.event_id, entry);
    start_due_maintenance(st, cx);
}

fn start_drain(st: &mut State, reason: Reason, deadline: Option<SystemTime>, cx: &mut Ctx) {
    if let Phase::Draining(d) = &mut st.phase {
        // One drain: a further notice adds its reason and can only bring the deadline closer.
        if !d.reasons.contains(&reason) {
            d.reasons.push(reason);
        }
        d.deadline = earliest(d.deadline, deadline);
        return;
    }
    cx.log(Level::Warn, format!("draining: {reason}"));
    st.phase = Phase::Draining(Drain::new(reason, cx.now, deadline));
    cx.push(Effect::SetDraining);
}

fn start_due_maintenance(st: &mut State, cx: &mut Ctx) {
    let (due, later): (BTreeMap<_, _>, _) = std::mem::take(&mut st.scheduled)
        .into_iter()
        .partition(|(_, e)| e.drain_at <= cx.now);
    st.scheduled = later;
    for (event_id, e) in due {
        let reason = Reason::Maintenance {
            event_id,
            code: e.code,
        };
        start_drain(st, reason, Some(e.not_before), cx);
    }
}

/// A maintenance event was canceled, completed or withdrawn (`why`): drop its reason; with no reason
/// left, the drain is undone.
fn stand_down(st: &mut State, event_id: &str, why: &str, cx: &mut Ctx) {
    let is_it =
        |r: &Reason| matches!(r, Reason::Maintenance { event_id: id, .. } if id == event_id);
    let (Phase::Draining(drain) | Phase::Drained { drain, .. }) = &mut st.phase else {
        return;
    };
    if !drain.reasons.iter().any(is_it) {
        return;
    }
    drain.reasons.retain(|r| !is_it(r));
    if drain.reasons.is_empty() && drain.lifecycle == Lifecycle::None {
        undo(
            st,
            format!("scheduled event {event_id} {why}: standing down"),
            cx,
        );
    }
}

/// The drain is over without the instance going. ACTIVE again when this agent set it DRAINING;
/// otherwise (someone else's DRAINING, or not known) the instance is left DRAINING.
fn undo(st: &mut State, why: String, cx: &mut Ctx) {
    let ours = drain_mut(&mut st.phase).is_some_and(|d| d.set_by_agent == Some(true));
    if ours {
        to_active(st, Level::Warn, format!("{why}, back to ACTIVE"), cx);
    } else {
        cx.log(
            Level::Warn,
            format!(
                "{why}; the container instance was DRAINING before this agent drained it (or that \
                 is not known): leaving it DRAINING"
            ),
        );
        st.phase = Phase::Active;
    }
}

/// `events/maintenance/scheduled` lists `listed` now. An event waiting for its drain time that is no
/// longer listed is forgotten; a drain for one whose NotBefore has not come stands down. Either
/// event is acted on again if it is listed again.
fn on_maintenance_listed(st: &mut State, listed: &BTreeSet<String>, cx: &mut Ctx) {
    let unlisted = |id: &String| !listed.contains(id);
    let withdrawn: Vec<String> = st
        .scheduled
        .keys()
        .filter(|id| unlisted(id))
        .cloned()
        .collect();
    for event_id in withdrawn {
        st.scheduled.remove(&event_id);
        forget_event(st, &event_id);
        cx.log(
            Level::Info,
            format!("scheduled event {event_id} is no longer listed: not draining for it"),
        );
    }
    // The drain's deadline is the earliest NotBefore of its events: before it, every one of them
    // is still to come, so one that vanishes was withdrawn, not carried out.
    let Some(d) = drain_mut(&mut st.phase) else {
        return;
    };
    if d.deadline.is_some_and(|deadline| cx.now >= deadline) {
        return;
    }
    let vanished: Vec<String> = d
        .reasons
        .iter()
        .filter_map(|r| match r {
            Reason::Maintenance { event_id, .. } if unlisted(event_id) => Some(event_id.clone()),
            _ => None,
        })
        .collect();
    for event_id in vanished {
        forget_event(st, &event_id);
        stand_down(st, &event_id, "withdrawn before its time", cx);
    }
}

/// Forgets that the notices of a maintenance event were handled, so it is acted on if it returns.
fn forget_event(st: &mut State, event_id: &str) {
    st.handled
        .retain(|revision| !Notice::is_revision_of_event(revision, event_id));
}

/// Whether the container instance was DRAINING before this drain set it: recorded once.
fn on_draining_before(st: &mut State, before: Result<bool, Failure>, cx: &mut Ctx) {
    let Phase::Draining(d) = &mut st.phase else {
        return;
    };
    if d.set_by_agent.is_some() {
        return;
    }
    match before {
        Ok(false) => d.set_by_agent = Some(true),
        Ok(true) => {
            d.set_by_agent = Some(false);
            cx.log(
                Level::Warn,
                "the container instance was DRAINING already: draining on, and leaving it DRAINING \
                 if this drain is undone",
            );
        }
        Err(f) => cx.log(
            Level::Warn,
            format!(
                "cannot tell whether the container instance was DRAINING already ({}): if this \
                 drain is undone, it stays DRAINING",
                f.message
            ),
        ),
    }
}

/// The process started in boot `boot_id`. After a reboot (or a stop and start), a drain whose every
/// reason was a reboot or a stop has nothing left to wait for: it is undone.
fn on_boot(st: &mut State, boot_id: String, cx: &mut Ctx) {
    let previous = st.boot_id.replace(boot_id.clone());
    if previous.is_none_or(|p| p == boot_id) {
        return;
    }
    let Some(d) = drain_mut(&mut st.phase) else {
        return;
    };
    if !d.every_reason_is_reboot_or_stop() {
        return;
    }
    let why = format!(
        "the instance rebooted or was stopped and started since the drain ({})",
        d.reason_text()
    );
    undo(st, why, cx);
}

fn on_activate(st: &mut State, cx: &mut Ctx) {
    if let Phase::Draining(d) = &st.phase {
        match d.lifecycle {
            Lifecycle::Completing { .. } => {
                // The completion is in flight in another process: leaving DRAINING now would lose it.
                cx.log(
                    Level::Error,
                    "a lifecycle action is being completed: not activating",
                );
                return;
            }
            Lifecycle::Finding { .. } | Lifecycle::Pending { .. } => cx.log(
                Level::Warn,
                "activating while an Auto Scaling termination is pending: the group still terminates this instance when the hook times out",
            ),
            _ => {}
        }
    }
    to_active(st, Level::Info, "activating: back to ACTIVE", cx);
}

/// The drain ends without the instance going: ACTIVE again in ECS.
fn to_active(st: &mut State, level: Level, message: impl Into<String>, cx: &mut Ctx) {
    cx.log(level, message);
    st.phase = Phase::Active;
    cx.push(Effect::SetActive);
}

/// Draining → Drained (other phases stay as they are). `forced`: the tasks were not seen gone.
fn to_drained(st: &mut State, forced: bool, now: SystemTime) {
    if let Phase::Draining(drain) = &st.phase {
        st.phase = Phase::Drained {
            drain: drain.clone(),
            at: now,
            forced,
        };
    }
}

fn on_tick(st: &mut State, tasks: Option<u32>, cx: &mut Ctx) {
    let was_draining = matches!(st.phase, Phase::Draining(_));
    start_due_maintenance(st, cx);
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
    let backing_off = d.retry.as_ref().is_some_and(|r| cx.now < r.not_before);
    if !d.ecs_draining && !backing_off {
        cx.push(Effect::SetDraining);
    }
    stop_near_bound(d, cx);
    match d.lifecycle {
        Lifecycle::Finding { .. } if !backing_off => cx.push(Effect::FindHook),
        Lifecycle::Finding { .. } => {}
        Lifecycle::Pending { .. } => tick_pending(d, tasks, backing_off, cx),
        Lifecycle::Completing { .. } => {}
        Lifecycle::None
        | Lifecycle::NoHook
        | Lifecycle::Completed { .. }
        | Lifecycle::Uncertain { .. } => end_without_hook(st, tasks, cx),
    }
}

/// As the drain nears its bound with tasks remaining, tells them to stop (`drain.stop_lead` before
/// it), once: at the notice's time the instance goes regardless, so every remaining task is stopped
/// (unless `drain.stop_remaining = "none"`); at the other bounds, the configured scope.
fn stop_near_bound(d: &mut Drain, cx: &mut Ctx) {
    if d.stopping.is_some() || !d.ecs_draining || d.tasks_seen_gone() {
        return;
    }
    if matches!(d.lifecycle, Lifecycle::Completing { .. }) {
        return;
    }
    let Some(bound) = d.bound(cx.settings) else {
        return;
    };
    let scope = match (cx.settings.stop_remaining, bound.why) {
        (StopRemaining::None, _) => return,
        (_, BoundKind::Notice) => StopRemaining::All,
        (scope, _) => scope,
    };
    let stop_at = bound
        .at
        .checked_sub(cx.settings.stop_lead)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if cx.now < stop_at {
        return;
    }
    d.stopping = Some(cx.now);
    let which = match scope {
        StopRemaining::All => "every remaining task",
        _ => "the remaining tasks no service owns",
    };
    cx.log(
        Level::Warn,
        format!(
            "{} ({}) comes at {} with {} task(s) remaining: stopping {which} now",
            bound.why,
            d.reason_text(),
            crate::rfc3339::format(bound.at),
            count(d.tasks_remaining)
        ),
    );
    cx.push(Effect::StopTasks(scope));
}

/// A lifecycle action waits on this drain: complete it when the tasks are gone or the drain's bound
/// has come; heartbeat it meanwhile. The heartbeat is also due when the wall clock went back past
/// the last one, so a backward clock step cannot let the hook time out.
fn tick_pending(d: &mut Drain, tasks: Option<u32>, backing_off: bool, cx: &mut Ctx) {
    let Lifecycle::Pending {
        hook,
        last_heartbeat,
        ..
    } = &d.lifecycle
    else {
        return;
    };
    let due = cx.now < *last_heartbeat
        || last_heartbeat
            .checked_add(hook.heartbeat_every())
            .is_none_or(|next| cx.now >= next);
    let heartbeat = due.then(|| hook.clone());
    let bound = d.bound(cx.settings).filter(|b| cx.now >= b.at);
    if let Some(bound) = bound {
        cx.log(
            Level::Error,
            format!(
                "{} ({}) has come with {} task(s) remaining: completing the lifecycle action anyway",
                bound.why,
                crate::rfc3339::format(bound.at),
                count(d.tasks_remaining)
            ),
        );
        complete(&mut d.lifecycle, LifecycleResult::Continue, cx);
    } else if backing_off {
    } else if d.ecs_draining && tasks == Some(0) {
        complete(&mut d.lifecycle, LifecycleResult::Continue, cx);
    } else if let Some(hook) = heartbeat {
        cx.push(Effect::Heartbeat(hook));
    }
}

/// Pending → Completing, then CompleteLifecycleAction: the intent is persisted before the call.
fn complete(lifecycle: &mut Lifecycle, result: LifecycleResult, cx: &mut Ctx) {
    let Lifecycle::Pending { hook, seen_at, .. } = lifecycle else {
        return;
    };
    cx.push(Effect::Complete(hook.clone(), result));
    *lifecycle = Lifecycle::Completing {
        hook: hook.clone(),
        result,
        at: cx.now,
        seen_at: *seen_at,
    };
}

/// Without a lifecycle action to complete, the drain ends when the tasks are gone or its bound (the
/// notice's time, `drain.max_duration`) has come.
fn end_without_hook(st: &mut State, tasks: Option<u32>, cx: &mut Ctx) {
    let Phase::Draining(d) = &st.phase else {
        return;
    };
    if d.ecs_draining && tasks == Some(0) {
        cx.log(
            Level::Warn,
            format!("drained: no tasks remain ({})", d.reason_text()),
        );
        to_drained(st, false, cx.now);
    } else if let Some(bound) = d.bound(cx.settings)
        && cx.now >= bound.at
    {
        cx.log(
            Level::Error,
            format!(
                "{} ({}) has come with {} task(s) remaining: the drain ends here ({})",
                bound.why,
                crate::rfc3339::format(bound.at),
                count(d.tasks_remaining),
                d.reason_text()
            ),
        );
        to_drained(st, true, cx.now);
    }
}

fn count(tasks: Option<u32>) -> String {
    tasks
        .map(|n| n.to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn on_hook_found(st: &mut State, found: Option<Hook>, cx: &mut Ctx) {
    let Phase::Draining(d) = &mut st.phase else {
        return;
    };
    let Lifecycle::Finding { seen_at } = d.lifecycle else {
        return;
    };
    d.lifecycle = match found {
        Some(hook) => {
            cx.log(
                Level::Info,
                format!(
                    "lifecycle hook {} of group {}: heartbeat timeout {}s, completing by {}",
                    hook.name,
                    hook.group,
                    hook.heartbeat_timeout.as_secs(),
                    crate::rfc3339::format(seen_at + hook.global_timeout())
                ),
            );
            Lifecycle::Pending {
                hook,
                seen_at,
                last_heartbeat: seen_at,
            }
        }
        None => {
            cx.log(
                Level::Warn,
                "no terminating lifecycle hook: Auto Scaling does not wait for this drain",
            );
            Lifecycle::NoHook
        }
    };
}

/// A call of the drain failed: a permanent failure fails the drain, any other is retried by the
/// next tick. `refused` and `retrying` say what failed, for each case.
fn retry_or_fail(st: &mut State, f: Failure, refused: &str, retrying: &str, cx: &mut Ctx) {
    if !matches!(st.phase, Phase::Draining(_)) {
        return;
    }
    if f.kind == Outcome::Rejected {
        fail(st, format!("{refused}: {}", f.message), cx);
    } else if let Phase::Draining(d) = &mut st.phase {
        let wait = back_off(d, cx);
        cx.log(
            Level::Warn,
            format!(
                "{retrying}, retrying in {}: {}",
                humantime::format_duration(Duration::from_secs(wait.as_secs().max(1))),
                f.message
            ),
        );
    }
}

/// One more failure in a row: the drain's calls wait [`Settings::retry_delay`] before the next try.
/// The jitter comes from the sub-second part of the time of the failure.
fn back_off(d: &mut Drain, cx: &Ctx) -> Duration {
    let failures = d.retry.as_ref().map_or(0, |r| r.failures);
    let jitter = f64::from(
        cx.now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |t| t.subsec_nanos()),
    ) / 1e9;
    let wait = cx.settings.retry_delay(failures, jitter);
    d.retry = Some(Retry {
        failures: failures.saturating_add(1),
        not_before: cx.now.checked_add(wait).unwrap_or(cx.now),
    });
    wait
}

fn fail(st: &mut State, error: String, cx: &mut Ctx) {
    let Phase::Draining(d) = &st.phase else {
        return;
    };
    let mut drain = d.clone();
    let abandon = matches!(drain.lifecycle, Lifecycle::Pending { .. });
    if abandon && cx.settings.on_failure == FailureAction::Abandon {
        cx.log(
            Level::Error,
            format!("{error}: abandoning the lifecycle action (drain.on_failure = \"abandon\")"),
        );
        complete(&mut drain.lifecycle, LifecycleResult::Abandon, cx);
    } else {
        cx.log(
            Level::Error,
            format!("{error}: the drain stops here; the instance stays DRAINING"),
        );
    }
    st.phase = Phase::Failed {
        drain,
        at: cx.now,
        error,
    };
}

fn drain_mut(phase: &mut Phase) -> Option<&mut Drain> {
    match phase {
        Phase::Draining(d) => Some(d),
        Phase::Drained { drain, .. } | Phase::Failed { drain, .. } => Some(drain),
        Phase::Active => None,
    }
}

/// CompleteLifecycleAction answered. Unless it is to be retried, a draining drain is over.
fn on_completed(st: &mut State, outcome: Result<(), Failure>, cx: &mut Ctx) {
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
    let retry = matches!(&outcome, Err(f) if f.kind == Outcome::NotApplied);
    d.lifecycle = completion(hook, result, seen_at, outcome, cx);
    if retry {
        back_off(d, cx);
    } else {
        let forced = !d.tasks_seen_gone();
        to_drained(st, forced, cx.now);
    }
}

/// Where a lifecycle action is after CompleteLifecycleAction answered: completed; pending again when
/// the call is known not to have been applied; otherwise uncertain, and never sent again.
fn completion(
    hook: Hook,
    result: LifecycleResult,
    seen_at: SystemTime,
    outcome: Result<(), Failure>,
    cx: &mut Ctx,
) -> Lifecycle {
    let at = cx.now;
    match outcome {
        Ok(()) => {
            let message = format!(
                "lifecycle action completed with {} (hook {} of group {})",
                result.as_str(),
                hook.name,
                hook.group
            );
            cx.log(Level::Warn, message);
            Lifecycle::Completed { hook, result, at }
        }
        Err(f) if f.kind == Outcome::NotApplied => {
            // Not applied (throttled or refused before processing): the next tick tries again.
            let message = format!(
                "completing the lifecycle action failed, retrying: {}",
                f.message
            );
            cx.log(Level::Warn, message);
            Lifecycle::Pending {
                hook,
                seen_at,
                last_heartbeat: at,
            }
        }
        Err(f) => {
            cx.log(
                Level::Error,
                format!(
                    "CompleteLifecycleAction {} may not have been applied and is not repeated: {}; \
                     Auto Scaling applies the hook's default result when its heartbeat timeout ends",
                    result.as_str(),
                    f.message
                ),
            );
            let why = f.message;
            Lifecycle::Uncertain {
                hook,
                result,
                at,
                why,
            }
        }
    }
}

fn on_restart(st: &mut State, cx: &mut Ctx) {
    let Some(d) = drain_mut(&mut st.phase) else {
        return;
    };
    if d.reasons == [Reason::Shutdown] && d.lifecycle == Lifecycle::None {
        // A drain made only because the system was shutting down ends when the system is back up.
        to_active(
            st,
            Level::Warn,
            "started after a shutdown drain: back to ACTIVE",
            cx,
        );
    } else if let Lifecycle::Completing {
        hook, result, at, ..
    } = d.lifecycle.clone()
    {
        cx.log(
            Level::Error,
            format!(
                "restarted while completing the lifecycle action ({} at {}): not sending it again; \
                 if it never reached Auto Scaling, the hook's heartbeat timeout applies its default result",
                result.as_str(),
                crate::rfc3339::format(at)
            ),
        );
        let why = "interrupted by a restart".into();
        d.lifecycle = Lifecycle::Uncertain {
            hook,
            result,
            at,
            why,
        };
        let forced = !d.tasks_seen_gone();
        to_drained(st, forced, cx.now);
    } else if let Phase::Draining(d) = &mut st.phase {
        cx.log(
            Level::Warn,
            format!(
                "resuming the drain started {} ({})",
                crate::rfc3339::format(d.since),
                d.reason_text()
            ),
        );
        // ECS may have missed DRAINING if the process died right after recording it: it is idempotent.
        d.ecs_draining = false;
        cx.push(Effect::SetDraining);
    }
}

#[cfg(test)]
mod tests;
