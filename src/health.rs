//! The daemon's own health, shared by all tasks and exposed on /metrics and /healthz.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::liveness::Liveness;

#[derive(Debug, Default)]
pub struct Health {
    last_observation_unix: AtomicU64,
    last_publish_unix: AtomicU64,
    observations: AtomicU64,
    imds_poll_micros: AtomicU64,
    state_write_errors: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Conditions that make the daemon unhealthy until cleared, by kind, with the reason.
    faults: Mutex<BTreeMap<&'static str, String>>,
    /// The vital loops and when each last turned (what the systemd watchdog is fed on).
    liveness: Liveness,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Health {
    pub fn observed(&self) {
        self.last_observation_unix
            .store(unix_now(), Ordering::Relaxed);
        self.observations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn published(&self) {
        self.last_publish_unix.store(unix_now(), Ordering::Relaxed);
    }

    pub fn imds_poll_latency(&self, d: Duration) {
        self.imds_poll_micros
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The vital loops' registry ([`crate::liveness`]).
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// Counts an error by kind (a short static name such as "cloudwatch_throttled").
    pub fn error(&self, kind: &'static str) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(kind).or_default() += 1;
    }

    /// Counts a failed write of the drain state (each attempt).
    pub fn state_write_error(&self) {
        self.state_write_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn state_write_errors(&self) -> u64 {
        self.state_write_errors.load(Ordering::Relaxed)
    }

    /// Marks the daemon unhealthy for `kind` (a short static name such as "drain_state") until
    /// [`Health::clear_fault`]; a later call replaces the reason.
    pub fn fault(&self, kind: &'static str, reason: impl Into<String>) {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        faults.insert(kind, reason.into());
    }

    /// Ends the fault `kind`; returns whether there was one.
    pub fn clear_fault(&self, kind: &'static str) -> bool {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        faults.remove(kind).is_some()
    }

    /// The current faults, by kind, with their reasons.
    pub fn faults(&self) -> BTreeMap<&'static str, String> {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn last_observation_unix(&self) -> u64 {
        self.last_observation_unix.load(Ordering::Relaxed)
    }

    pub fn last_publish_unix(&self) -> u64 {
        self.last_publish_unix.load(Ordering::Relaxed)
    }

    pub fn observations(&self) -> u64 {
        self.observations.load(Ordering::Relaxed)
    }

    pub fn imds_poll_seconds(&self) -> f64 {
        self.imds_poll_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Healthy while observations keep coming (none older than three intervals) and no fault is set.
    pub fn is_healthy(&self, interval: Duration) -> bool {
        self.unhealthy_reasons(interval).is_empty()
    }

    /// Why the daemon is unhealthy, one line per reason; empty when it is healthy.
    pub fn unhealthy_reasons(&self, interval: Duration) -> Vec<String> {
        let last = self.last_observation_unix();
        let mut reasons = Vec::new();
        if last == 0 || unix_now().saturating_sub(last) > 3 * interval.as_secs().max(1) {
            reasons.push("no recent observation".to_string());
        }
        reasons.extend(
            self.faults()
                .into_iter()
                .map(|(kind, reason)| format!("{kind}: {reason}")),
        );
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_makes_it_unhealthy_with_its_reason_until_cleared() {
        let h = Health::default();
        h.observed();
        let interval = Duration::from_secs(10);
        assert!(h.is_healthy(interval));
        h.fault(
            "drain_state",
            "cannot write /x/drain.json: No space left on device",
        );
        assert!(!h.is_healthy(interval));
        assert_eq!(
            h.unhealthy_reasons(interval),
            ["drain_state: cannot write /x/drain.json: No space left on device"]
        );
        assert!(h.clear_fault("drain_state"));
        assert!(!h.clear_fault("drain_state"));
        assert!(h.is_healthy(interval));
        assert_eq!(
            Health::default().unhealthy_reasons(interval),
            ["no recent observation"]
        );
    }
}
