//! The daemon's own health, shared by all tasks and exposed on /metrics and /healthz.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct Health {
    last_observation_unix: AtomicU64,
    last_publish_unix: AtomicU64,
    observations: AtomicU64,
    imds_poll_micros: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
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

    /// Counts an error by kind (a short static name such as "cloudwatch_throttled").
    pub fn error(&self, kind: &'static str) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(kind).or_default() += 1;
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

    /// Healthy while observations keep coming: none older than three intervals.
    pub fn is_healthy(&self, interval: Duration) -> bool {
        let last = self.last_observation_unix();
        last != 0 && unix_now().saturating_sub(last) <= 3 * interval.as_secs().max(1)
    }
}
