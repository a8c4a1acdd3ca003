//! Actual use of containers, from their cgroups, and the CPU rate between two observations.
//! The cgroup files are read by `crate::cgroup`; this is the seam the observer reads through, so
//! the observer does not depend on the cgroup layout (and tests can feed it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Actual use of one container (or summed over a task / the host), from its cgroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Cumulative CPU time, µs.
    pub cpu_usage_usec: Option<u64>,
    /// CPU in use between the previous observation and this one, in cores (1.0 = one CPU busy).
    pub cpu_cores: Option<f64>,
    /// Memory charged to the cgroup, including page cache.
    pub memory_bytes: Option<u64>,
    /// Memory minus inactive file cache (what `docker stats` and the kubelet call working set).
    pub working_set_bytes: Option<u64>,
    /// Cumulative time throttled by a CPU quota, µs.
    pub throttled_usec: Option<u64>,
}

impl Usage {
    /// Adds `other` field by field; a field stays `None` only when neither side has it.
    pub fn add(&mut self, other: &Usage) {
        fn sum_u(a: &mut Option<u64>, b: Option<u64>) {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0).saturating_add(b));
            }
        }
        sum_u(&mut self.cpu_usage_usec, other.cpu_usage_usec);
        sum_u(&mut self.memory_bytes, other.memory_bytes);
        sum_u(&mut self.working_set_bytes, other.working_set_bytes);
        sum_u(&mut self.throttled_usec, other.throttled_usec);
        if let Some(b) = other.cpu_cores {
            self.cpu_cores = Some(self.cpu_cores.unwrap_or(0.0) + b);
        }
    }
}

impl From<crate::cgroup::Usage> for Usage {
    /// One cgroup reading; the CPU rate needs two, so `cpu_cores` is left to [`CpuRates`].
    fn from(u: crate::cgroup::Usage) -> Usage {
        Usage {
            cpu_usage_usec: u.cpu_usage_usec,
            cpu_cores: None,
            memory_bytes: u.memory_current_bytes,
            working_set_bytes: u.memory_working_set_bytes,
            throttled_usec: u.cpu_throttled_usec,
        }
    }
}

/// Cores in use over an interval, from two readings of a cumulative CPU-time counter: 1.0 is one
/// core busy the whole interval. `None` when the counter went backwards (the container restarted or
/// its cgroup was recreated: what it used in that interval is unknown) or the interval is empty.
pub fn cpu_cores(prev_usec: u64, now_usec: u64, elapsed: Duration) -> Option<f64> {
    let elapsed_usec = elapsed.as_secs_f64() * 1e6;
    if now_usec < prev_usec || elapsed_usec <= 0.0 {
        return None;
    }
    Some((now_usec - prev_usec) as f64 / elapsed_usec)
}

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
        cpu_cores(prev_usec, usage_usec, now.checked_duration_since(prev_at)?)
    }

    /// Forgets containers not in `live`.
    pub fn retain(&mut self, live: &std::collections::HashSet<&str>) {
        self.prev.retain(|id, _| live.contains(id.as_str()));
    }
}

/// Reads containers' cgroups through `crate::cgroup` (hierarchy detected once, at construction).
pub struct CgroupReader {
    cgroups: crate::cgroup::Cgroups,
}

impl UsageReader for CgroupReader {
    fn read(&self, container_id: &str, task_id: Option<&str>) -> Option<Usage> {
        Some(self.cgroups.container(container_id, task_id)?.read().into())
    }
}

/// The reader for this host's cgroups under `host.cgroup_root`.
pub fn default_reader(cfg: &crate::config::Config) -> Result<Box<dyn UsageReader>, String> {
    crate::cgroup::Cgroups::detect(&cfg.host.cgroup_root)
        .map(|cgroups| Box::new(CgroupReader { cgroups }) as Box<dyn UsageReader>)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_cores_is_cores_over_the_interval_and_unknown_when_the_counter_went_back() {
        let cases = [
            // (prev, now, elapsed, cores)
            (0, 1_000_000, Duration::from_secs(1), Some(1.0)),
            (5_000_000, 6_000_000, Duration::from_secs(2), Some(0.5)),
            (0, 3_000_000, Duration::from_millis(1500), Some(2.0)),
            (1_000, 1_000, Duration::from_secs(1), Some(0.0)),
            // the container restarted or its cgroup was recreated
            (9_000_000, 1_000, Duration::from_secs(1), None),
            // empty interval
            (0, 1_000, Duration::ZERO, None),
        ];
        for (prev, now, elapsed, want) in cases {
            let got = cpu_cores(prev, now, elapsed);
            let close = match (got, want) {
                (Some(g), Some(w)) => (g - w).abs() < 1e-9,
                (g, w) => g == w,
            };
            assert!(
                close,
                "cpu_cores({prev}, {now}, {elapsed:?}) = {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn a_cgroup_reading_maps_field_by_field_without_a_rate() {
        let reading = crate::cgroup::Usage {
            cpu_usage_usec: Some(1),
            memory_current_bytes: Some(2),
            memory_working_set_bytes: Some(3),
            cpu_nr_periods: Some(4),
            cpu_nr_throttled: Some(5),
            cpu_throttled_usec: Some(6),
        };
        assert_eq!(
            Usage::from(reading),
            Usage {
                cpu_usage_usec: Some(1),
                cpu_cores: None,
                memory_bytes: Some(2),
                working_set_bytes: Some(3),
                throttled_usec: Some(6),
            }
        );
    }

    #[test]
    fn usage_adds_fields_present_on_either_side() {
        let mut u = Usage::default();
        u.add(&Usage {
            cpu_usage_usec: Some(10),
            cpu_cores: Some(0.5),
            ..Default::default()
        });
        u.add(&Usage {
            cpu_usage_usec: Some(5),
            memory_bytes: Some(100),
            ..Default::default()
        });
        assert_eq!(u.cpu_usage_usec, Some(15));
        assert_eq!(u.cpu_cores, Some(0.5));
        assert_eq!(u.memory_bytes, Some(100));
        assert_eq!(u.working_set_bytes, None);
        u.add(&Usage {
            memory_bytes: Some(u64::MAX),
            ..Default::default()
        });
        assert_eq!(u.memory_bytes, Some(u64::MAX));
    }

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
