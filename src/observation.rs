//! What the daemon's observe loop publishes after every pass: one value on one `watch` channel that
//! the sinks and the drain read.

use crate::metrics::Observed;
use crate::metrics::figures::HostFigures;
use crate::status::HostStatus;

#[derive(Debug, Clone)]
pub struct Observation {
    /// The host's status as observed (snapshot, capacity, drain, figures).
    pub status: HostStatus,
    /// How many observations so far were taken at once because something material changed (a task
    /// started or stopped, the drain moved).
    pub material_changes: u64,
}

impl Observation {
    /// The families of the ECS tasks the local Docker engine runs; `None` before its first listing.
    pub fn task_families(&self) -> Option<Vec<String>> {
        self.status.snapshot.task_families()
    }
}

impl Observed for Observation {
    fn figures(&self) -> Option<&HostFigures> {
        self.status.figures.as_ref()
    }

    fn material_changes(&self) -> u64 {
        self.material_changes
    }
}
