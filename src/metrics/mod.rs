//! Where the figures go: stdout, a Prometheus endpoint on loopback, CloudWatch.

pub mod cloudwatch;
pub mod figures;
pub mod listener;
pub mod prometheus;

pub use figures::{HostFacts, HostFigures};
