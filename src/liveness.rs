//! Whether the daemon's vital loops still turn. The observe loop, each notice poller and the drain
//! runner register with a bound and beat at every turn; systemd's watchdog (`WATCHDOG=1`) is fed
//! only while every registered loop has beaten within its bound. A loop that wedges (a state write
//! that never returns, a lost task, a full notice channel behind a wedged runner) stops the feed,
//! `/healthz` reports the fault `stalled` naming it, and systemd restarts the daemon after
//! `WatchdogSec=`; a drain under way resumes from its state file.
//!
//! A loop that has not registered yet (the runner waits for the instance id) is not waited for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// The health fault set while a loop is stalled.
pub const FAULT_STALLED: &str = "stalled";

/// How often [`watch`] looks (at most; more often when the watchdog wants it).
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// The registered loops.
#[derive(Debug, Default)]
pub struct Liveness {
    loops: Mutex<Vec<Arc<Loop>>>,
}

#[derive(Debug)]
struct Loop {
    name: String,
    bound: Duration,
    last: Mutex<Instant>,
}

/// A registered loop's handle: [`Beat::beat`] at every turn. Dropping it does not unregister the
/// loop: a loop that ends while the daemon runs is a stalled loop.
#[derive(Debug, Clone)]
pub struct Beat(Arc<Loop>);

impl Beat {
    pub fn beat(&self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

/// A loop that has not beaten within its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub name: String,
    pub silent_for: Duration,
    pub bound: Duration,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has not turned for {}s (bound {}s)",
            self.name,
            self.silent_for.as_secs(),
            self.bound.as_secs()
        )
    }
}

impl Liveness {
    /// Registers a loop that must beat at least every `bound`; it counts as having beaten now.
    pub fn register(&self, name: impl Into<String>, bound: Duration) -> Beat {
        let part = Arc::new(Loop {
            name: name.into(),
            bound,
            last: Mutex::new(Instant::now()),
        });
        self.loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(part.clone());
        Beat(part)
    }

    /// The loops silent for longer than their bound, in registration order.
    pub fn stalled(&self) -> Vec<Stalled> {
        let now = Instant::now();
        self.loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|l| {
                let last = *l.last.lock().unwrap_or_else(|p| p.into_inner());
                let silent_for = now.saturating_duration_since(last);
                (silent_for > l.bound).then(|| Stalled {
                    name: l.name.clone(),
                    silent_for,
                    bound: l.bound,
                })
            })
            .collect()
    }
}

/// Until `token` is cancelled: every `watchdog` (systemd's interval, see
/// [`crate::systemd::watchdog_interval`]) or [`LOOK_EVERY`], whichever is shorter, calls `feed`
/// when no loop is stalled; otherwise sets the fault [`FAULT_STALLED`] (cleared when they turn
/// again) and logs an ERROR when the set of stalled loops changes.
pub async fn watch(
    health: Arc<Health>,
    watchdog: Option<Duration>,
    mut feed: impl FnMut(),
    token: CancellationToken,
) {
    let every = watchdog.map_or(LOOK_EVERY, |w| w.min(LOOK_EVERY));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let stalled = health.liveness().stalled();
        let names: Vec<String> = stalled.iter().map(|s| s.name.clone()).collect();
        if stalled.is_empty() {
            if health.clear_fault(FAULT_STALLED) {
                tracing::info!("every vital loop turns again");
            }
            if watchdog.is_some() {
                feed();
            }
        } else {
            let what = stalled
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            if names != reported {
                tracing::error!(
                    stalled = %what,
                    "a vital loop is stalled: no longer feeding the systemd watchdog, which restarts the daemon"
                );
            }
            health.fault(FAULT_STALLED, what);
        }
        reported = names;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_loop_silent_past_its_bound_is_stalled_and_one_that_beats_is_not() {
        let liveness = Liveness::default();
        let runner = liveness.register("drain runner", Duration::from_secs(10));
        let _poller = liveness.register("IMDS poller", Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(9)).await;
        runner.beat();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(liveness.stalled(), vec![]);
        tokio::time::advance(Duration::from_secs(13)).await;
        assert_eq!(
            liveness.stalled(),
            vec![
                Stalled {
                    name: "drain runner".into(),
                    silent_for: Duration::from_secs(22),
                    bound: Duration::from_secs(10),
                },
                Stalled {
                    name: "IMDS poller".into(),
                    silent_for: Duration::from_secs(31),
                    bound: Duration::from_secs(30),
                },
            ]
        );
        assert_eq!(
            liveness.stalled()[0].to_string(),
            "drain runner has not turned for 22s (bound 10s)"
        );
    }

    /// The watchdog is fed while every loop turns, not while one is stalled (the fault says which),
    /// and again once it turns.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_fed_only_while_every_loop_turns() {
        let health = Arc::new(Health::default());
        let observe = health
            .liveness()
            .register("observe loop", Duration::from_secs(3));
        let runner = health
            .liveness()
            .register("drain runner", Duration::from_secs(3));
        let feeds = Arc::new(AtomicU32::new(0));
        let token = CancellationToken::new();
        let counted = feeds.clone();
        let task = tokio::spawn(watch(
            health.clone(),
            Some(Duration::from_secs(1)),
            move || {
                counted.fetch_add(1, Ordering::Relaxed);
            },
            token.clone(),
        ));
        // Both beat for 10 s: fed every second.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            observe.beat();
            runner.beat();
        }
        let fed = feeds.load(Ordering::Relaxed);
        assert!((10..=11).contains(&fed), "fed {fed} times in 10 s");
        assert!(health.faults().is_empty());

        // The runner wedges: fed for its bound, then not at all.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            observe.beat();
        }
        let wedged = feeds.load(Ordering::Relaxed) - fed;
        assert!((2..=4).contains(&wedged), "fed {wedged} times while wedged");
        let fault = health.faults().get(FAULT_STALLED).cloned().unwrap();
        assert!(
            fault.starts_with("drain runner has not turned for"),
            "{fault}"
        );
        assert!(!fault.contains("observe loop"), "{fault}");

        // It turns again: the fault clears and the feed resumes.
        let before = feeds.load(Ordering::Relaxed);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            observe.beat();
            runner.beat();
        }
        assert!(feeds.load(Ordering::Relaxed) - before >= 4);
        assert!(health.faults().is_empty(), "{:?}", health.faults());
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_systemd_watchdog_nothing_is_fed_but_a_stall_is_still_a_fault() {
        let health = Arc::new(Health::default());
        let _observe = health
            .liveness()
            .register("observe loop", Duration::from_secs(3));
        let token = CancellationToken::new();
        let task = tokio::spawn(watch(
            health.clone(),
            None,
            || panic!("fed without a watchdog"),
            token.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(health.faults().contains_key(FAULT_STALLED));
        token.cancel();
        task.await.unwrap();
    }
}
