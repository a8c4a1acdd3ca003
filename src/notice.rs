//! Interruption notices as IMDS serves them, parsed into one type the drain machine consumes.
//! The IMDS pollers (`imds`) produce these; `drain` decides what to do with them.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What IMDS announced. `id()` is stable across polls and restarts, so a notice is acted on once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Notice {
    /// `spot/instance-action`: `{"action":"terminate|stop|hibernate","time":"2017-09-18T08:22:00Z"}`.
    Spot {
        action: SpotAction,
        time: SystemTime,
    },
    /// `autoscaling/target-lifecycle-state` turned `Terminated` (the ASG wants the instance gone).
    /// `seen_at` is when this daemon first saw it (the endpoint carries no time of its own).
    AutoScalingTerminated { seen_at: SystemTime },
    /// `events/recommendations/rebalance`: `{"noticeTime":"2020-11-05T08:22:00Z"}`.
    Rebalance { notice_time: SystemTime },
    /// One entry of `events/maintenance/scheduled`.
    Maintenance(MaintenanceEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpotAction {
    Terminate,
    Stop,
    Hibernate,
}

/// A scheduled event: `{"Code":"system-reboot","Description":"…","EventId":"instance-event-0d59937288b749b32",
/// "NotAfter":"21 Jan 2019 09:17:23 GMT","NotBefore":"21 Jan 2019 09:00:43 GMT","State":"active"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceEvent {
    pub event_id: String,
    pub code: MaintenanceCode,
    pub not_before: SystemTime,
    pub not_after: Option<SystemTime>,
    pub state: MaintenanceState,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaintenanceCode {
    InstanceReboot,
    SystemReboot,
    SystemMaintenance,
    InstanceRetirement,
    InstanceStop,
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaintenanceState {
    Active,
    Canceled,
    Completed,
}

impl Notice {
    /// A stable identifier: the same notice polled again (or after a restart) has the same id.
    pub fn id(&self) -> String {
        match self {
            Notice::Spot { action, time } => format!("spot:{action:?}:{}", unix(*time)),
            // One termination per instance life: the instance does not come back from Terminated.
            Notice::AutoScalingTerminated { .. } => "autoscaling:terminated".to_string(),
            Notice::Rebalance { notice_time } => format!("rebalance:{}", unix(*notice_time)),
            Notice::Maintenance(e) => format!("maintenance:{}", e.event_id),
        }
    }

    /// `id()` plus what may change about the same notice: a maintenance event's State (active →
    /// canceled) and its schedule. The pollers re-send a notice only when its revision changes, so a
    /// consumer can tell "the same notice again" (same revision) from "this notice changed" (same id,
    /// new revision).
    pub fn revision(&self) -> String {
        match self {
            Notice::Maintenance(e) => format!(
                "maintenance:{}:{:?}:{}:{}",
                e.event_id,
                e.state,
                unix(e.not_before),
                e.not_after.map(unix).unwrap_or(0)
            ),
            _ => self.id(),
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
