//! Observation of this host: what it registers with ECS, what its tasks reserve and use.
//! Produces the `Snapshot` that capacity, metrics and draining read.

pub mod registered;

use std::time::SystemTime;

use serde::Serialize;

pub use registered::Registered;

/// Everything observed about the host at one instant. Fields a source could not supply are `None`
/// (or empty) and the reason is in `unavailable`, so one missing source never fails the snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(with = "crate::report::rfc3339")]
    pub taken_at: SystemTime,
    pub registered: Registered,
    /// Sources that could not be read this time, with why (e.g. "docker: socket not found").
    pub unavailable: Vec<String>,
}
