//! Actual use of containers, from their cgroups, and the CPU rate between two observations.
//! The cgroup files are read by `crate::cgroup`; this is the seam the observer reads through, so
//! the observer does not depend on the cgroup layout (and tests can feed it).

use std::collections::HashMap;
use std::time::Instant;

use super::tasks::Usage;

/// Cumulative figures of one container, read now.
pub trait UsageReader: Send + Sync + 'static {
    /// `None` when the container's cgroup was not found (e.g. it exited mid-read).
    fn read(&self, container_id: &str, task_id: Option<&str>) -> Option<Usage>;
}

/// CPU rate between observations: remembers each container's last cumulative CPU time.
#[derive(Debug, Default)]
pub struct CpuRates {
    prev: HashMap<String, (u64, Instant)>,
}

impl CpuRates {
    /// Cores in use since the previous sample of `id`; `None` on the first sample or when the
    /// counter went backwards (a container restarted under the same id).
    pub fn rate(&mut self, id: &str, usage_usec: u64, now: Instant) -> Option<f64> {
        let prev = self.prev.insert(id.to_string(), (usage_usec, now));
        let (prev_usec, prev_at) = prev?;
        let elapsed = now.checked_duration_since(prev_at)?.as_secs_f64();
        if elapsed <= 0.0 || usage_usec < prev_usec {
            return None;
        }
        Some((usage_usec - prev_usec) as f64 / 1e6 / elapsed)
    }

    /// Forgets containers not in `live`.
    pub fn retain(&mut self, live: &std::collections::HashSet<&str>) {
        self.prev.retain(|id, _| live.contains(id.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_is_cores_between_two_samples() {
        let mut r = CpuRates::default();
        let t0 = Instant::now();
        assert_eq!(r.rate("a", 1_000_000, t0), None);
        let rate = r.rate("a", 3_000_000, t0 + Duration::from_secs(4)).unwrap();
        assert!((rate - 0.5).abs() < 1e-9);
        assert_eq!(r.rate("a", 10, t0 + Duration::from_secs(5)), None);
        r.retain(&Default::default());
        assert_eq!(r.rate("a", 20, t0 + Duration::from_secs(6)), None);
    }
}

/// Reads containers' cgroups through `crate::cgroup` (hierarchy detected once, at construction).
pub struct CgroupReader {
    cgroups: crate::cgroup::Cgroups,
}

impl UsageReader for CgroupReader {
    fn read(&self, container_id: &str, task_id: Option<&str>) -> Option<Usage> {
        let u = self.cgroups.container(container_id, task_id)?.read();
        Some(Usage {
            cpu_usage_usec: u.cpu_usage_usec,
            cpu_cores: None,
            memory_bytes: u.memory_current_bytes,
            working_set_bytes: u.memory_working_set_bytes,
            throttled_usec: u.cpu_throttled_usec,
        })
    }
}

/// The reader for this host's cgroups under `host.cgroup_root`.
pub fn default_reader(cfg: &crate::config::Config) -> Result<Box<dyn UsageReader>, String> {
    crate::cgroup::Cgroups::detect(&cfg.host.cgroup_root)
        .map(|cgroups| Box::new(CgroupReader { cgroups }) as Box<dyn UsageReader>)
        .map_err(|e| e.to_string())
}
