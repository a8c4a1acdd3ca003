//! Self-drain: reacts to interruption notices by draining this container instance in ECS, waits for
//! its tasks to go, keeps a pending Auto Scaling lifecycle action alive and completes it once.
//!
//! - `machine`: the pure state machine (notices, ticks and effect outcomes in; effects and state out).
//! - `state`: the persisted state (atomic writes, flock against a second writer).
//! - `actions`: the effects on AWS (ECS, Auto Scaling).
//! - this module: the `Runner` that feeds the machine and performs its effects, the status it
//!   publishes, the commands it takes while running (`Handles`), and the drain-before-shutdown
//!   helper.

pub mod actions;
pub mod command;
pub mod machine;
pub mod state;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use serde::{Serialize, Serializer};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use actions::{AwsEffects, Target};
pub use machine::{
    Command, Done, Effect, Failure, Hook, Input, Level, Lifecycle, LifecycleResult, Phase,
    Settings, State,
};
pub use state::{Degraded, StateError, Store};

use crate::config::StopRemaining;
use crate::health::Health;
use crate::liveness::Beat;
use crate::notice::Notice;

/// What the drain does on AWS. Implemented by `AwsEffects`; tests substitute their own.
pub trait Effects: Send + Sync + 'static {
    /// UpdateContainerInstancesState DRAINING (`true`) or ACTIVE (`false`); idempotent.
    fn set_draining(&self, draining: bool) -> BoxFuture<'_, Result<(), Failure>>;
    /// Whether the container instance's status in ECS is DRAINING.
    fn is_draining(&self) -> BoxFuture<'_, Result<bool, Failure>>;
    /// Tasks still to wait for on this instance.
    fn remaining_tasks(&self) -> BoxFuture<'_, Result<u32, Failure>>;
    /// The terminating lifecycle hook of this instance's group; `None` when there is none.
    fn find_hook(&self) -> BoxFuture<'_, Result<Option<Hook>, Failure>>;
    fn heartbeat<'a>(&'a self, hook: &'a Hook) -> BoxFuture<'a, Result<(), Failure>>;
    /// StopTask every remaining task of this instance in `scope` (ignored families excepted);
    /// returns how many were told to stop.
    fn stop_tasks(&self, scope: StopRemaining) -> BoxFuture<'_, Result<u32, Failure>>;
    /// CompleteLifecycleAction, sent once (no retries below this call).
    fn complete<'a>(
        &'a self,
        hook: &'a Hook,
        result: LifecycleResult,
    ) -> BoxFuture<'a, Result<(), Failure>>;
}

impl<T: Effects + ?Sized> Effects for Arc<T> {
    fn set_draining(&self, draining: bool) -> BoxFuture<'_, Result<(), Failure>> {
        (**self).set_draining(draining)
    }
    fn is_draining(&self) -> BoxFuture<'_, Result<bool, Failure>> {
        (**self).is_draining()
    }
    fn remaining_tasks(&self) -> BoxFuture<'_, Result<u32, Failure>> {
        (**self).remaining_tasks()
    }
    fn find_hook(&self) -> BoxFuture<'_, Result<Option<Hook>, Failure>> {
        (**self).find_hook()
    }
    fn heartbeat<'a>(&'a self, hook: &'a Hook) -> BoxFuture<'a, Result<(), Failure>> {
        (**self).heartbeat(hook)
    }
    fn stop_tasks(&self, scope: StopRemaining) -> BoxFuture<'_, Result<u32, Failure>> {
        (**self).stop_tasks(scope)
    }
    fn complete<'a>(
        &'a self,
        hook: &'a Hook,
        result: LifecycleResult,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        (**self).complete(hook, result)
    }
}

/// The drain as `status`, metrics and Prometheus show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum DrainStatus {
    Idle {
        /// Scheduled maintenance that will start a drain.
        scheduled: Vec<ScheduledStatus>,
    },
    Draining {
        #[serde(serialize_with = "rfc3339")]
        since: SystemTime,
        reason: String,
        tasks_remaining: Option<u32>,
        #[serde(serialize_with = "rfc3339_opt")]
        deadline: Option<SystemTime>,
        lifecycle: String,
    },
    Drained {
        #[serde(serialize_with = "rfc3339")]
        since: SystemTime,
        #[serde(serialize_with = "rfc3339")]
        at: SystemTime,
        reason: String,
        /// The deadline ended the wait, not the tasks.
        forced: bool,
        lifecycle: String,
    },
    Failed {
        #[serde(serialize_with = "rfc3339")]
        since: SystemTime,
        #[serde(serialize_with = "rfc3339")]
        at: SystemTime,
        reason: String,
        error: String,
        lifecycle: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduledStatus {
    pub event_id: String,
    pub code: String,
    #[serde(serialize_with = "rfc3339")]
    pub not_before: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub drain_at: SystemTime,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    crate::rfc3339::serialize(t, s)
}

fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

fn lifecycle_text(l: &Lifecycle) -> String {
    match l {
        Lifecycle::None => "none".into(),
        Lifecycle::Finding { .. } => "finding hook".into(),
        Lifecycle::NoHook => "no hook".into(),
        Lifecycle::Pending { hook, .. } => format!("pending ({}/{})", hook.group, hook.name),
        Lifecycle::Completing { result, .. } => format!("completing {}", result.as_str()),
        Lifecycle::Completed { result, .. } => format!("completed {}", result.as_str()),
        Lifecycle::Uncertain { result, why, .. } => {
            format!("{} not confirmed: {why}", result.as_str())
        }
    }
}

impl DrainStatus {
    pub fn from_state(s: &State) -> DrainStatus {
        match &s.phase {
            Phase::Active => DrainStatus::Idle {
                scheduled: s
                    .scheduled
                    .iter()
                    .map(|(id, e)| ScheduledStatus {
                        event_id: id.clone(),
                        code: e.code.to_string(),
                        not_before: e.not_before,
                        drain_at: e.drain_at,
                    })
                    .collect(),
            },
            Phase::Draining(d) => DrainStatus::Draining {
                since: d.since,
                reason: d.reason_text(),
                tasks_remaining: d.tasks_remaining,
                deadline: d.effective_deadline(),
                lifecycle: lifecycle_text(&d.lifecycle),
            },
            Phase::Drained { drain, at, forced } => DrainStatus::Drained {
                since: drain.since,
                at: *at,
                reason: drain.reason_text(),
                forced: *forced,
                lifecycle: lifecycle_text(&drain.lifecycle),
            },
            Phase::Failed { drain, at, error } => DrainStatus::Failed {
                since: drain.since,
                at: *at,
                reason: drain.reason_text(),
                error: error.clone(),
                lifecycle: lifecycle_text(&drain.lifecycle),
            },
        }
    }

    /// The instance is (or stays) DRAINING in ECS.
    pub fn is_draining(&self) -> bool {
        !matches!(self, DrainStatus::Idle { .. })
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let t = |t: &SystemTime| crate::rfc3339::format(*t).to_string();
        match self {
            DrainStatus::Idle { scheduled } if scheduled.is_empty() => "active".into(),
            DrainStatus::Idle { scheduled } => format!(
                "active; scheduled: {}",
                scheduled
                    .iter()
                    .map(|e| format!("{} {} drains at {}", e.code, e.event_id, t(&e.drain_at)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            DrainStatus::Draining {
                since,
                reason,
                tasks_remaining,
                deadline,
                lifecycle,
            } => format!(
                "draining since {} ({reason}): {} task(s) remaining, deadline {}, lifecycle {lifecycle}",
                t(since),
                tasks_remaining
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into()),
                deadline.as_ref().map(t).unwrap_or_else(|| "none".into()),
            ),
            DrainStatus::Drained {
                at,
                reason,
                forced,
                lifecycle,
                ..
            } => format!(
                "drained at {} ({reason}){}, lifecycle {lifecycle}",
                t(at),
                if *forced { " by deadline" } else { "" }
            ),
            DrainStatus::Failed {
                at, reason, error, ..
            } => format!("drain failed at {} ({reason}): {error}", t(at)),
        }
    }
}

/// The drain status recorded under `state_dir`, for `status` (no lock: writes are atomic renames;
/// nothing is created or changed).
pub fn status_from_disk(state_dir: &Path) -> Result<DrainStatus, StateError> {
    Ok(DrainStatus::from_state(&Store::new(state_dir).load()?))
}

/// How many commands may wait for a running runner; senders wait beyond that.
const COMMAND_QUEUE: usize = 4;

/// A command for a running runner, with where to send what its effects did.
struct Request {
    command: Command,
    reply: oneshot::Sender<Vec<Done>>,
}

/// What the daemon's other parts hold on to: the status the runner publishes, and the way to give
/// the running runner a command (one runner steps the state; commands do not open a second one).
#[derive(Clone)]
pub struct Handles {
    /// Changes with every step that changes the drain; the daemon publishes its figures at once on
    /// a change, so a drain that starts or ends is in the next metrics.
    pub status: watch::Receiver<DrainStatus>,
    commands: mpsc::Sender<Request>,
}

impl Handles {
    /// Has the running runner apply `command` between its notices and checks, and waits until it
    /// has. Returns the outcomes of the effects performed; `None` when the runner is not running.
    pub async fn command(&self, command: Command) -> Option<Vec<Done>> {
        let (reply, done) = oneshot::channel();
        self.commands.send(Request { command, reply }).await.ok()?;
        done.await.ok()
    }
}

/// Feeds the machine (notices, commands, periodic checks, effect outcomes) and performs its effects.
pub struct Runner {
    settings: Settings,
    store: Store,
    effects: Box<dyn Effects>,
    health: Arc<Health>,
    status: watch::Sender<DrainStatus>,
    /// Taken by `run`.
    commands: Option<mpsc::Receiver<Request>>,
    /// The boot this process runs in (`with_boot_id`).
    boot_id: Option<String>,
    /// Registered by `run`: beats at every turn and after every effect.
    beat: Option<Beat>,
}

/// How long the runner may go without a turn beyond two check intervals before it counts as
/// stalled: a step's AWS calls (30 s each at most, several per step) fit well inside.
const RUNNER_SLACK: Duration = Duration::from_secs(300);

impl Runner {
    pub fn new(
        settings: Settings,
        store: Store,
        effects: impl Effects,
        health: Arc<Health>,
    ) -> (Runner, Handles) {
        let store = store.with_health(health.clone());
        let (status, status_rx) = watch::channel(DrainStatus::from_state(&store.current()));
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let runner = Runner {
            settings,
            store,
            effects: Box::new(effects),
            health,
            status,
            commands: Some(commands),
            boot_id: None,
            beat: None,
        };
        (
            runner,
            Handles {
                status: status_rx,
                commands: commands_tx,
            },
        )
    }

    /// The boot this process runs in (`read_boot_id`): a drain that only a reboot or a stop was for
    /// is undone when `run` finds the state written in another boot.
    pub fn with_boot_id(mut self, boot_id: Option<String>) -> Runner {
        self.boot_id = boot_id;
        self
    }

    /// Runs until `token` is cancelled. Resumes whatever drain the state directory holds. A state
    /// directory that does not work (reported by the store) does not keep it from draining.
    pub async fn run(mut self, notices: mpsc::Receiver<Notice>, token: CancellationToken) {
        let beat = self.health.liveness().register(
            "the drain runner",
            self.settings.check_interval * 2 + RUNNER_SLACK,
        );
        self.beat = Some(beat.clone());
        let store = self.store.clone();
        let prepared = tokio::task::spawn_blocking(move || store.prepare())
            .await
            .unwrap_or_else(|_| self.store.prepare());
        if let Err(e) = prepared {
            tracing::error!(error = %e, "the drain state directory does not work: draining from memory until it does");
        }
        if let Some(boot_id) = self.boot_id.clone() {
            self.apply(Input::Booted { boot_id }).await;
        }
        self.apply(Input::Restarted).await;
        let mut notices = Some(notices);
        let mut commands = self.commands.take();
        let mut ticker = tokio::time::interval(self.settings.check_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            beat.beat();
            tokio::select! {
                biased;
                _ = token.cancelled() => return,
                n = recv(&mut notices) => match n {
                    Some(n) => {
                        tracing::info!(notice = %n.id(), "notice received");
                        self.apply(Input::Notice(n)).await;
                    }
                    None => {
                        tracing::warn!("the notice channel closed: only resuming and finishing drains from now on");
                        notices = None;
                    }
                },
                r = recv(&mut commands) => match r {
                    Some(Request { command, reply }) => {
                        tracing::info!(?command, "command received");
                        let done = self.apply(Input::Command(command)).await;
                        // The sender may have stopped waiting; the command stands either way.
                        let _ = reply.send(done);
                        // Count the tasks now rather than a check interval later.
                        ticker.reset_immediately();
                    }
                    None => commands = None,
                },
                _ = ticker.tick() => self.tick().await,
            }
        }
    }

    /// Counts the remaining tasks when a drain is under way and runs one periodic step.
    pub async fn tick(&self) {
        let counting = matches!(
            self.store.current().phase,
            Phase::Draining(ref d) if d.ecs_draining
        );
        let tasks = if counting {
            match self.effects.remaining_tasks().await {
                Ok(n) => Some(n),
                Err(f) => {
                    self.health.error("drain_count_tasks");
                    tracing::warn!(error = %f.message, "cannot count the remaining tasks; trying again");
                    None
                }
            }
        } else {
            None
        };
        self.apply(Input::Tick { tasks }).await;
    }

    /// Steps the machine with `input` and everything its effects lead to. A step whose state could
    /// not be written is acted on all the same, from memory (the store reports it and writes it
    /// later). Returns the outcomes of the effects performed.
    pub async fn apply(&self, input: Input) -> Vec<Done> {
        let mut performed = Vec::new();
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let (status, effects) = self.step(input).await;
            self.status.send_replace(status);
            for effect in effects {
                if effect == Effect::SetDraining
                    && let Some(before) = self.draining_before().await
                {
                    queue.push_back(Input::Done(before));
                }
                if let Some(done) = self.perform(effect).await {
                    performed.push(done.clone());
                    queue.push_back(Input::Done(done));
                }
                if let Some(beat) = &self.beat {
                    beat.beat();
                }
            }
        }
        performed
    }

    /// One step of the machine, read, changed and written under the store's lock on a blocking
    /// thread: waiting for the lock (bounded by the store) and the fsyncs never hold up the async
    /// workers the notice pollers run on. A write that hangs for good (a dead disk) stalls the
    /// runner; its liveness beat stops and the watchdog has systemd restart the daemon.
    async fn step(&self, input: Input) -> (DrainStatus, Vec<Effect>) {
        let step = |store: &Store, settings: &Settings, input: Input| {
            let now = SystemTime::now();
            match store.update(|state| {
                let (next, effects) = machine::step(state, input, now, settings);
                *state = next;
                (DrainStatus::from_state(state), effects)
            }) {
                Ok(v) | Err(Degraded { value: v, .. }) => v,
            }
        };
        let (store, settings, kept) = (self.store.clone(), self.settings.clone(), input.clone());
        match tokio::task::spawn_blocking(move || step(&store, &settings, input)).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down and runs no more blocking work: step here.
            Err(_) => step(&self.store, &self.settings, kept),
        }
    }

    /// Whether the container instance is DRAINING before the drain sets it, asked only while the
    /// drain does not know (so that undoing the drain leaves someone else's DRAINING alone).
    async fn draining_before(&self) -> Option<Done> {
        let unknown = matches!(
            self.store.load().map(|s| s.phase),
            Ok(Phase::Draining(ref d)) if d.set_by_agent.is_none()
        );
        if !unknown {
            return None;
        }
        let r = self.effects.is_draining().await;
        if r.is_err() {
            self.health.error("drain_read_status");
        }
        Some(Done::DrainingBefore(r))
    }

    async fn perform(&self, effect: Effect) -> Option<Done> {
        let failed = |what: &'static str, r: &Result<(), Failure>| {
            if r.is_err() {
                self.health.error(what);
            }
        };
        match effect {
            Effect::SetDraining => {
                let r = self.effects.set_draining(true).await;
                failed("drain_set_draining", &r);
                if r.is_ok() {
                    tracing::info!("container instance is DRAINING in ECS");
                }
                Some(Done::SetDraining(r))
            }
            Effect::SetActive => {
                let r = self.effects.set_draining(false).await;
                failed("drain_set_active", &r);
                if r.is_ok() {
                    tracing::info!("container instance is ACTIVE in ECS");
                }
                Some(Done::SetActive(r))
            }
            Effect::FindHook => Some(Done::FindHook(self.effects.find_hook().await)),
            Effect::Heartbeat(hook) => {
                let r = self.effects.heartbeat(&hook).await;
                failed("drain_heartbeat", &r);
                Some(Done::Heartbeat(r))
            }
            Effect::Complete(hook, result) => {
                let r = self.effects.complete(&hook, result).await;
                failed("drain_complete", &r);
                Some(Done::Complete(r))
            }
            Effect::StopTasks(scope) => {
                let r = self.effects.stop_tasks(scope).await;
                if r.is_err() {
                    self.health.error("drain_stop_tasks");
                }
                Some(Done::StopTasks(r))
            }
            Effect::Log { level, message } => {
                match level {
                    Level::Info => tracing::info!("{message}"),
                    Level::Warn => tracing::warn!("{message}"),
                    Level::Error => tracing::error!("{message}"),
                }
                None
            }
        }
    }

    /// The current status as recorded on disk (or held in memory while it cannot be written).
    pub fn status(&self) -> Result<DrainStatus, StateError> {
        Ok(DrainStatus::from_state(&self.store.load()?))
    }

    /// Ticks every `check_interval` until the drain is no longer under way or `timeout` passes;
    /// `progress` sees the status after every tick. Returns the last status.
    pub async fn wait_drained(
        &self,
        timeout: Option<Duration>,
        mut progress: impl FnMut(&DrainStatus),
    ) -> DrainStatus {
        let start = Instant::now();
        loop {
            self.tick().await;
            let status = self.status.borrow().clone();
            progress(&status);
            if !matches!(status, DrainStatus::Draining { .. }) {
                return status;
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                return status;
            }
            let nap = match timeout {
                Some(t) => self
                    .settings
                    .check_interval
                    .min(t.saturating_sub(start.elapsed())),
                None => self.settings.check_interval,
            };
            tokio::time::sleep(nap).await;
        }
    }
}

/// The next message; never once the channel is gone (`None` in the slot).
async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Where Linux says which boot this is: a random id, new at every boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The boot id in `path` (`BOOT_ID_PATH`); `None`, with a warning, when it cannot be read: then no
/// drain is undone after a reboot.
pub fn read_boot_id(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "the boot id is empty: a drain for a reboot or a stop is not undone after one");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the boot id: a drain for a reboot or a stop is not undone after one");
            None
        }
    }
}

/// `drain.drain_on_shutdown`: called by the daemon on SIGTERM. When `is_stopping()` says the system
/// is going down, has the running runner drain this instance and waits for its tasks for at most
/// `timeout`. Returns the final status, or `None` when no drain was needed (a plain service stop or
/// restart).
pub async fn drain_before_shutdown(
    drain: &Handles,
    timeout: Duration,
    is_stopping: impl FnOnce() -> bool,
) -> Option<DrainStatus> {
    if !is_stopping() {
        return None;
    }
    tracing::warn!(timeout = ?timeout, "the system is shutting down: draining this instance first");
    let start = Instant::now();
    let mut status = drain.status.clone();
    if drain.command(Command::ShutdownDrain).await.is_none() {
        tracing::error!("the drain runner is not running: shutting down without a drain");
    } else {
        let left = timeout.saturating_sub(start.elapsed());
        // Ends early when the runner stops; the status is then the last one it published.
        let _ = tokio::time::timeout(
            left,
            status.wait_for(|s| !matches!(s, DrainStatus::Draining { .. })),
        )
        .await;
    }
    let status = status.borrow().clone();
    match &status {
        DrainStatus::Draining {
            tasks_remaining, ..
        } => tracing::error!(
            ?tasks_remaining,
            "shutdown drain timed out: shutting down with tasks still running"
        ),
        s => tracing::info!(status = %s.summary(), "shutdown drain finished"),
    }
    Some(status)
}
