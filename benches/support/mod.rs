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

/// Prints `label`'s latency summary and whether it meets the drain target (p50 ≤ 0.6 s, p99 ≤ 1.2 s).
pub fn report_latency(label: &str, latencies: &mut [Duration]) {
    let s = summarize(latencies);
    println!(
        "{label}, {} samples: p50 {:.3} s  p90 {:.3} s  p99 {:.3} s  max {:.3} s  mean {:.3} s",
        s.n,
        s.p50.as_secs_f64(),
        s.p90.as_secs_f64(),
        s.p99.as_secs_f64(),
        s.max.as_secs_f64(),
        s.mean.as_secs_f64()
    );
    let ok = s.p50 <= Duration::from_millis(600) && s.p99 <= Duration::from_millis(1200);
    println!(
        "target p50 ≤ 0.600 s, p99 ≤ 1.200 s: {}",
        if ok { "met" } else { "NOT MET" }
    );
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
