//! Where the figures go: stdout, a Prometheus endpoint on loopback, CloudWatch.

pub mod health;
pub mod prometheus;

pub use health::Health;
