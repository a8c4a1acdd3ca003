//! The notice pollers: one task per IMDS path, each polling at `imds.poll_interval` (1 s by default,
//! as the ECS agent polls spot), sending a `Notice` when it first appears and again only when it
//! changes (`Notice::revision`).
//!
//! A 404 is "no notice". Content that is not the documented shape is logged (path and an excerpt,
//! once per distinct content) and ignored. An IMDS error backs that poller off with jitter and is
//! counted in `Health` by kind; polling never stops until the token is cancelled or nobody listens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{Client, Error};
use super::parse::{self, Parsed};
use crate::config::ImdsConfig;
use crate::health::Health;
use crate::notice::{LifecycleState, Notice};
use crate::retry::Backoff;

/// The notice paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Spot,
    Lifecycle,
    Rebalance,
    Maintenance,
    /// Completed and canceled maintenance events move here from `scheduled`.
    MaintenanceHistory,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::Spot,
        Source::Lifecycle,
        Source::Rebalance,
        Source::Maintenance,
        Source::MaintenanceHistory,
    ];

    /// The path under `latest/meta-data/`.
    pub fn path(self) -> &'static str {
        match self {
            Source::Spot => "spot/instance-action",
            Source::Lifecycle => "autoscaling/target-lifecycle-state",
            Source::Rebalance => "events/recommendations/rebalance",
            Source::Maintenance => "events/maintenance/scheduled",
            Source::MaintenanceHistory => "events/maintenance/history",
        }
    }

    /// What a 200 on this path announces. `now` stamps notices that carry no time of their own.
    pub fn parse(self, body: &str, now: SystemTime) -> Parsed {
        match self {
            Source::Spot => Parsed::one(parse::spot(body)),
            Source::Lifecycle => parse::lifecycle(body, now),
            Source::Rebalance => Parsed::one(parse::rebalance(body)),
            Source::Maintenance => parse::maintenance(body),
            Source::MaintenanceHistory => parse::maintenance_history(body),
        }
    }
}

/// One path's answers turned into notices: what each answer says (`Source::parse`), plus what only
/// the sequence of answers tells: a lifecycle state's change, and which scheduled events are listed
/// now (so that one that vanishes is seen to). Pure, so it is tested without a server.
#[derive(Debug)]
pub struct Reader {
    source: Source,
    /// The lifecycle state the last answered poll read.
    lifecycle: Option<LifecycleState>,
}

impl Reader {
    pub fn new(source: Source) -> Reader {
        Reader {
            source,
            lifecycle: None,
        }
    }

    /// `body` is the answer; `None` for a 404.
    pub fn read(&mut self, body: Option<&str>, now: SystemTime) -> Parsed {
        match (self.source, body) {
            (Source::Lifecycle, None) => {
                // Not (or no longer) in an Auto Scaling group.
                self.lifecycle = None;
                Parsed::default()
            }
            (Source::Lifecycle, Some(body)) => {
                let mut parsed = self.source.parse(body, now);
                if let Ok(state) = parse::lifecycle_state(body) {
                    parsed.notices.extend(parse::lifecycle_change(
                        self.lifecycle.as_ref(),
                        &state,
                        now,
                    ));
                    self.lifecycle = Some(state);
                }
                parsed
            }
            (Source::Maintenance, body) => {
                // A 404 lists no events, as `[]` does.
                let body = body.unwrap_or("");
                let mut parsed = self.source.parse(body, now);
                parsed.notices.extend(parse::maintenance_listed(body));
                parsed
            }
            (_, Some(body)) => self.source.parse(body, now),
            (_, None) => Parsed::default(),
        }
    }
}

/// What one path has sent so far: notice id → revision last sent. Pure, so the "once, and again
/// only when it changed" rule is tested without a server.
#[derive(Debug, Default)]
pub struct Sent {
    revisions: HashMap<String, String>,
}

impl Sent {
    /// The notices among `found` to send now: new ids, and known ids whose revision changed.
    /// A notice that disappears and comes back unchanged is not sent again, except a scheduled
    /// maintenance event: one that is no longer listed is forgotten, and sent again if it returns.
    pub fn fresh(&mut self, found: Vec<Notice>) -> Vec<Notice> {
        if found
            .iter()
            .any(|n| matches!(n, Notice::MaintenanceListed { .. }))
        {
            let listed: std::collections::HashSet<String> = found.iter().map(Notice::id).collect();
            self.revisions.retain(|id, _| listed.contains(id));
        }
        found
            .into_iter()
            .filter(|n| {
                let revision = n.revision();
                if self.revisions.get(&n.id()) == Some(&revision) {
                    return false;
                }
                self.revisions.insert(n.id(), revision);
                true
            })
            .collect()
    }
}

/// The longest pause between polls after errors, unless the poll interval is longer.
const BACKOFF_CAP: Duration = Duration::from_millis(1250);

/// Polling cadence: `interval` normally; after an error, jittered backoff from `interval` up to `cap`.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub interval: Duration,
    pub backoff_cap: Duration,
}

impl Cadence {
    /// Backs off to ten polls' worth, at most 1.25 s (never below the interval): a notice that
    /// appears as IMDS recovers is seen within about 1.5 s.
    pub fn from_config(cfg: &ImdsConfig) -> Cadence {
        let interval = cfg.poll_interval.max(Duration::from_millis(10));
        Cadence {
            interval,
            backoff_cap: (interval * 10).min(BACKOFF_CAP).max(interval),
        }
    }
}

/// Starts one poller per notice path on `tracker`; they end when `token` is cancelled or `tx` closes.
pub fn spawn_pollers(
    client: Arc<Client>,
    cfg: &ImdsConfig,
    tx: mpsc::Sender<Notice>,
    token: CancellationToken,
    tracker: &TaskTracker,
    health: Arc<Health>,
) {
    let cadence = Cadence::from_config(cfg);
    for source in Source::ALL {
        tracker.spawn(poll(
            source,
            client.clone(),
            cadence,
            tx.clone(),
            token.clone(),
            health.clone(),
        ));
    }
}

/// Polls one path until `token` is cancelled or the receiver is gone.
pub async fn poll(
    source: Source,
    client: Arc<Client>,
    cadence: Cadence,
    tx: mpsc::Sender<Notice>,
    token: CancellationToken,
    health: Arc<Health>,
) {
    let path = source.path();
    let mut sent = Sent::default();
    let mut reader = Reader::new(source);
    let mut backoff = Backoff::new(cadence.interval, cadence.backoff_cap);
    let mut failures: u64 = 0;
    let mut last_malformed: Option<String> = None;
    let mut malformed_warnings = WarnLimit::new(MALFORMED_WARN_EVERY);
    let mut next = Instant::now();
    // Each poll is bounded by imds.timeout (at most the interval) and the wait by the backoff cap;
    // a poller silent far beyond both (or stuck handing a notice to a wedged runner) is stalled.
    let beat = health.liveness().register(
        format!("the IMDS poller of {path}"),
        cadence.backoff_cap * 2 + POLLER_SLACK,
    );
    tracing::debug!(path, interval = ?cadence.interval, "polling IMDS for notices");
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        beat.beat();
        let started = Instant::now();
        let result = tokio::select! {
            _ = token.cancelled() => return,
            r = client.get(path) => r,
        };
        health.imds_poll_latency(started.elapsed());
        let body = match result {
            Ok(body) => body,
            Err(e) => {
                failures += 1;
                health.error(e.kind());
                log_failure(path, &e, failures);
                next = Instant::now() + backoff.next_delay();
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(path, failures, "IMDS answers this path again");
            failures = 0;
        }
        backoff.reset();
        // Fixed cadence from the start of this poll; a poll slower than the interval starts the next
        // one right away rather than piling up.
        next = (started + cadence.interval).max(Instant::now());

        let parsed = reader.read(body.as_deref(), SystemTime::now());
        let body = body.unwrap_or_default();
        if parsed.problems.is_empty() {
            last_malformed = None;
        } else {
            for _ in &parsed.problems {
                health.error("imds_malformed");
            }
            // Once per distinct content, and at most once a minute: neither a stuck garbage answer
            // nor one that changes at every poll is logged every second.
            if last_malformed.as_deref() != Some(body.as_str())
                && let Some(suppressed) = malformed_warnings.allow(Instant::now())
            {
                for problem in &parsed.problems {
                    tracing::warn!(
                        path,
                        content = %parse::excerpt(&body),
                        suppressed,
                        "ignoring malformed IMDS content: {problem}"
                    );
                }
                last_malformed = Some(body.clone());
            }
        }
        for notice in sent.fresh(parsed.notices) {
            tracing::info!(path, id = %notice.id(), revision = %notice.revision(), "IMDS notice");
            tokio::select! {
                _ = token.cancelled() => return,
                r = tx.send(notice) => {
                    if r.is_err() {
                        tracing::debug!(path, "notice receiver gone; poller stops");
                        return;
                    }
                }
            }
        }
    }
}

/// How long a poller may stay silent beyond twice its backoff cap before it counts as stalled.
const POLLER_SLACK: Duration = Duration::from_secs(60);

/// How often a poller warns of malformed content at most (the health counter counts every one).
const MALFORMED_WARN_EVERY: Duration = Duration::from_secs(60);

/// At most one warning per `every`; counts the ones held back. (Hand-written: the tracing crates
/// have no rate limit of their own, and this is the whole of it.)
#[derive(Debug)]
struct WarnLimit {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl WarnLimit {
    fn new(every: Duration) -> WarnLimit {
        WarnLimit {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(held back since the last one)` when a warning may go out at `now`.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now < last + self.every) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// The first failure of a streak is a warning; the rest are debug (the client already says once that
/// IMDS is unreachable, so that case stays at debug here).
fn log_failure(path: &str, e: &Error, failures: u64) {
    if failures == 1 && !matches!(e, Error::Unreachable { .. }) {
        tracing::warn!(path, "IMDS poll failed, backing off: {e}");
    } else {
        tracing::debug!(path, failures, "IMDS poll failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_content_is_warned_of_once_a_minute_with_the_count_held_back() {
        let mut w = WarnLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(w.allow(t0), Some(0));
        // Four polls a second of ever-different garbage for a minute: held back.
        for i in 1..240u64 {
            assert_eq!(w.allow(t0 + Duration::from_millis(250 * i)), None);
        }
        assert_eq!(w.allow(t0 + Duration::from_secs(60)), Some(239));
        assert_eq!(w.allow(t0 + Duration::from_secs(61)), None);
    }
    use crate::notice::{MaintenanceCode, MaintenanceEvent, MaintenanceState, SpotAction};

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    fn event(state: MaintenanceState) -> Notice {
        Notice::Maintenance(MaintenanceEvent {
            event_id: "instance-event-1".into(),
            code: MaintenanceCode::SystemReboot,
            not_before: at(1_548_061_243),
            not_after: None,
            state,
            description: "scheduled reboot".into(),
        })
    }

    #[test]
    fn a_notice_is_sent_once_however_often_it_is_polled() {
        let spot = Notice::Spot {
            action: SpotAction::Terminate,
            time: at(1_505_722_920),
        };
        let mut sent = Sent::default();
        assert_eq!(sent.fresh(vec![spot.clone()]), vec![spot.clone()]);
        for _ in 0..10 {
            assert!(sent.fresh(vec![spot.clone()]).is_empty());
        }
        // Gone (404) and back unchanged: still not sent again.
        assert!(sent.fresh(vec![]).is_empty());
        assert!(sent.fresh(vec![spot]).is_empty());
    }

    #[test]
    fn a_changed_spot_time_is_a_new_notice() {
        let mut sent = Sent::default();
        let first = Notice::Spot {
            action: SpotAction::Stop,
            time: at(100),
        };
        let second = Notice::Spot {
            action: SpotAction::Terminate,
            time: at(200),
        };
        assert_eq!(sent.fresh(vec![first]).len(), 1);
        assert_eq!(sent.fresh(vec![second.clone()]), vec![second]);
    }

    #[test]
    fn lifecycle_terminated_is_sent_once_though_seen_at_differs() {
        let mut sent = Sent::default();
        assert_eq!(
            sent.fresh(vec![Notice::AutoScalingTerminated { seen_at: at(1) }])
                .len(),
            1
        );
        assert!(
            sent.fresh(vec![Notice::AutoScalingTerminated { seen_at: at(2) }])
                .is_empty()
        );
    }

    #[test]
    fn maintenance_canceled_is_sent_again_then_not_repeated() {
        let mut sent = Sent::default();
        assert_eq!(sent.fresh(vec![event(MaintenanceState::Active)]).len(), 1);
        assert!(sent.fresh(vec![event(MaintenanceState::Active)]).is_empty());
        assert_eq!(
            sent.fresh(vec![event(MaintenanceState::Canceled)]),
            vec![event(MaintenanceState::Canceled)]
        );
        assert!(
            sent.fresh(vec![event(MaintenanceState::Canceled)])
                .is_empty()
        );
    }

    #[test]
    fn the_lifecycle_reader_announces_in_service_to_warmed_once_per_return() {
        let mut r = Reader::new(Source::Lifecycle);
        let warmed = |at_secs| Notice::AutoScalingWarmed {
            target: LifecycleState::Warmed("Stopped".into()),
            seen_at: at(at_secs),
        };
        // Started in the warm pool, then put in service: nothing.
        assert!(r.read(Some("Warmed:Stopped"), at(1)).notices.is_empty());
        assert!(r.read(Some("InService"), at(2)).notices.is_empty());
        assert_eq!(
            r.read(Some("Warmed:Stopped"), at(3)).notices,
            vec![warmed(3)]
        );
        assert!(r.read(Some("Warmed:Stopped"), at(4)).notices.is_empty());
        // Garbage does not forget the state read before it.
        assert_eq!(r.read(Some("InService"), at(5)).notices, vec![]);
        assert_eq!(r.read(Some("garbage"), at(6)).problems.len(), 1);
        assert_eq!(
            r.read(Some("Warmed:Stopped"), at(7)).notices,
            vec![warmed(7)]
        );
        // A 404 (out of the group) forgets it.
        assert!(r.read(Some("InService"), at(8)).notices.is_empty());
        assert!(r.read(None, at(9)).notices.is_empty());
        assert!(r.read(Some("Warmed:Stopped"), at(10)).notices.is_empty());
    }

    #[test]
    fn the_scheduled_reader_lists_events_and_a_404_lists_none() {
        let mut r = Reader::new(Source::Maintenance);
        let listing = |ids: &[&str]| Notice::MaintenanceListed {
            event_ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(r.read(None, at(1)).notices, vec![listing(&[])]);
        let body = r#"[{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot",
            "EventId":"instance-event-1","State":"active"}]"#;
        let notices = r.read(Some(body), at(2)).notices;
        assert_eq!(notices.len(), 2);
        assert_eq!(notices[1], listing(&["instance-event-1"]));
    }

    #[test]
    fn an_event_no_longer_listed_is_sent_again_when_listed_again() {
        let listing = |ids: &[&str]| Notice::MaintenanceListed {
            event_ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        let mut sent = Sent::default();
        let ev = event(MaintenanceState::Active);
        let with = vec![ev.clone(), listing(&["instance-event-1"])];
        assert_eq!(sent.fresh(with.clone()), with);
        assert!(sent.fresh(with.clone()).is_empty());
        assert_eq!(sent.fresh(vec![listing(&[])]), vec![listing(&[])]);
        assert_eq!(sent.fresh(with.clone()), with);
    }

    #[test]
    fn every_source_has_its_documented_path() {
        let paths: Vec<_> = Source::ALL.iter().map(|s| s.path()).collect();
        assert_eq!(
            paths,
            [
                "spot/instance-action",
                "autoscaling/target-lifecycle-state",
                "events/recommendations/rebalance",
                "events/maintenance/scheduled",
                "events/maintenance/history"
            ]
        );
    }

    #[test]
    fn cadence_backs_off_at_most_ten_polls_and_a_second_and_a_quarter() {
        let c = Cadence::from_config(&ImdsConfig::default());
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.backoff_cap, Duration::from_millis(1250));
        let c = Cadence::from_config(&ImdsConfig {
            poll_interval: Duration::from_millis(100),
            ..ImdsConfig::default()
        });
        assert_eq!(c.backoff_cap, Duration::from_secs(1));
        let c = Cadence::from_config(&ImdsConfig {
            poll_interval: Duration::from_secs(30),
            ..ImdsConfig::default()
        });
        assert_eq!(c.backoff_cap, Duration::from_secs(30));
    }
}
