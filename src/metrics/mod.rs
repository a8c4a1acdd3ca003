//! Where the figures go: stdout, a Prometheus endpoint on loopback, CloudWatch.

pub mod cloudwatch;
pub mod figures;
pub mod listener;
pub mod prometheus;

pub use figures::{HostFacts, HostFigures};

/// What the sinks read from the observation the daemon publishes after every pass.
pub trait Observed: Send + Sync + 'static {
    /// This host's figures; `None` before they are known.
    fn figures(&self) -> Option<&HostFigures>;
    /// How many observations so far were taken at once because something material changed (a task
    /// started or stopped, the drain moved). A sink that sees this grow publishes without waiting
    /// for its next period; a count, not a flag, so that one lost between two reads still counts.
    fn material_changes(&self) -> u64;
}
