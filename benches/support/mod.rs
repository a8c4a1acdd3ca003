//! Shared by the benchmarks: the fake IMDSv2 server (the same one the integration tests use) and
//! latency summaries.

#![allow(dead_code)]

#[path = "../../tests/it/support/imds.rs"]
pub mod imds;

use std::time::Duration;

/// Nearest-rank percentiles of `samples` (sorted in place).
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

pub fn summarize(samples: &mut [Duration]) -> Summary {
    assert!(!samples.is_empty(), "no samples");
    samples.sort();
    let rank = |p: f64| {
        let i = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[i.clamp(1, samples.len()) - 1]
    };
    let total: Duration = samples.iter().sum();
    Summary {
        n: samples.len(),
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max: samples[samples.len() - 1],
        mean: total / samples.len() as u32,
    }
}

/// A positive number from the environment, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name}={v:?}: expected a positive whole number")),
        Err(_) => default,
    }
}
