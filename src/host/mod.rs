//! Observation of this host: what it registers with ECS, what its tasks reserve and use.
//! Produces the `Snapshot` that capacity, metrics and draining read.

pub mod assess;
pub mod observer;
pub mod registered;
pub mod tasks;
pub mod usage;

use std::time::SystemTime;

use serde::Serialize;

pub use crate::ecs_agent::EcsAgentView;
pub use crate::eni::EniView;
pub use observer::{InstanceFacts, Observer, observe_once, observe_once_with};
pub use registered::Registered;
pub use tasks::{NetworkMode, OtherContainer, Reserved, ReservedBy, Task, TaskContainer};
pub use usage::Usage;

/// Actual use summed over the ECS tasks (unlabelled containers are not included).
pub type HostUsage = Usage;

/// Everything observed about the host at one instant. Fields a source could not supply are `None`
/// (or empty) and the reason is in `unavailable`, so one missing source never fails the snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(with = "crate::rfc3339")]
    pub taken_at: SystemTime,
    pub registered: Registered,
    /// Docker has been listed since start: `tasks` is what runs, not a guess (before the first
    /// listing it is empty whatever runs).
    pub tasks_known: bool,
    /// ECS tasks (containers with the ECS task-ARN label) grouped by task ARN, and the tasks the ECS
    /// agent knows that Docker does not run yet.
    pub tasks: Vec<Task>,
    /// Running containers that are not ECS tasks: listed, never counted.
    pub others: Vec<OtherContainer>,
    /// What the tasks reserve, summed.
    pub reserved: Reserved,
    /// Actual use summed over the tasks; `None` when no cgroup could be read.
    pub usage: Option<HostUsage>,
    pub eni: EniView,
    pub ecs: EcsAgentView,
    /// Sources that could not be read this time, with why (e.g. "docker: socket not found").
    pub unavailable: Vec<String>,
    /// The kernel's hostname: this host's name in its capacity figures while the instance id is
    /// unknown.
    #[serde(skip)]
    pub hostname: String,
}

impl Snapshot {
    /// Remaining = registered − reserved (saturating), for CPU units and memory MiB.
    pub fn remaining_cpu_units(&self) -> u64 {
        self.registered
            .cpu_units
            .saturating_sub(self.reserved.cpu_units)
    }

    pub fn remaining_memory_mib(&self) -> u64 {
        self.registered
            .memory_mib
            .saturating_sub(self.reserved.memory_mib)
    }

    /// The ECS task families running here (for the drain's local confirmation); `None` before
    /// Docker's first listing, when an empty list would claim the host runs nothing.
    pub fn task_families(&self) -> Option<Vec<String>> {
        self.tasks_known
            .then(|| self.tasks.iter().map(|t| t.family.clone()).collect())
    }
}
