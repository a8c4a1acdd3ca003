//! Interruption notices as IMDS serves them, parsed into one type the drain machine consumes.
//! The IMDS pollers (`imds`) produce these; `drain` decides what to do with them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
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
    /// `autoscaling/target-lifecycle-state` went from `InService` to `Warmed:*`: the group returns
    /// the instance to its warm pool on scale in (ReuseOnScaleIn) instead of terminating it. Only
    /// that change is a notice: an instance that starts in the warm pool and goes into service is not.
    /// `seen_at` is when this daemon saw the change; it tells one return to the pool from the next.
    AutoScalingWarmed {
        target: LifecycleState,
        seen_at: SystemTime,
    },
    /// `events/recommendations/rebalance`: `{"noticeTime":"2020-11-05T08:22:00Z"}`.
    Rebalance { notice_time: SystemTime },
    /// One entry of `events/maintenance/scheduled`, or a canceled or completed one of
    /// `events/maintenance/history`.
    Maintenance(MaintenanceEvent),
    /// The ids `events/maintenance/scheduled` lists now (a 404 lists none): an event that was listed
    /// and is not any more was withdrawn, or has passed.
    MaintenanceListed { event_ids: BTreeSet<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpotAction {
    Terminate,
    Stop,
    Hibernate,
}

impl SpotAction {
    /// The word IMDS uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SpotAction::Terminate => "terminate",
            SpotAction::Stop => "stop",
            SpotAction::Hibernate => "hibernate",
        }
    }

    /// The instance is stopped (hibernation is a stop), not terminated: it can start again.
    pub fn is_stop(self) -> bool {
        matches!(self, SpotAction::Stop | SpotAction::Hibernate)
    }
}

impl FromStr for SpotAction {
    type Err = String;

    fn from_str(s: &str) -> Result<SpotAction, String> {
        [
            SpotAction::Terminate,
            SpotAction::Stop,
            SpotAction::Hibernate,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| format!("unknown spot action {s:?} (expected terminate, stop or hibernate)"))
    }
}

impl fmt::Display for SpotAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Auto Scaling target lifecycle state (`autoscaling/target-lifecycle-state`), in IMDS's words.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum LifecycleState {
    InService,
    #[default]
    Terminated,
    Detached,
    Standby,
    /// `Warmed:Hibernated`, `Warmed:Running`, `Warmed:Stopped`, `Warmed:Terminated` (warm pool):
    /// the part after `Warmed:`.
    Warmed(String),
}

impl LifecycleState {
    pub fn is_terminated(&self) -> bool {
        *self == LifecycleState::Terminated
    }

    /// Into a warm pool stopped or hibernated: the instance can start again.
    pub fn is_stop(&self) -> bool {
        matches!(self, LifecycleState::Warmed(s) if s == "Stopped" || s == "Hibernated")
    }
}

impl FromStr for LifecycleState {
    type Err = String;

    fn from_str(s: &str) -> Result<LifecycleState, String> {
        match s {
            "InService" => Ok(LifecycleState::InService),
            "Terminated" => Ok(LifecycleState::Terminated),
            "Detached" => Ok(LifecycleState::Detached),
            "Standby" => Ok(LifecycleState::Standby),
            _ => match s.strip_prefix("Warmed:") {
                Some(rest) if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphabetic()) => {
                    Ok(LifecycleState::Warmed(rest.to_string()))
                }
                _ => Err(format!(
                    "unknown target lifecycle state {s:?} (expected InService, Terminated, \
                     Detached, Standby or Warmed:*)"
                )),
            },
        }
    }
}

impl TryFrom<String> for LifecycleState {
    type Error = String;

    fn try_from(s: String) -> Result<LifecycleState, String> {
        s.parse()
    }
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LifecycleState::InService => f.write_str("InService"),
            LifecycleState::Terminated => f.write_str("Terminated"),
            LifecycleState::Detached => f.write_str("Detached"),
            LifecycleState::Standby => f.write_str("Standby"),
            LifecycleState::Warmed(s) => write!(f, "Warmed:{s}"),
        }
    }
}

impl From<LifecycleState> for String {
    fn from(s: LifecycleState) -> String {
        s.to_string()
    }
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

/// A scheduled event's `Code`; serialized as that code, so an unknown one round-trips as itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum MaintenanceCode {
    InstanceReboot,
    SystemReboot,
    SystemMaintenance,
    InstanceRetirement,
    InstanceStop,
    Other(String),
}

impl MaintenanceCode {
    pub fn as_str(&self) -> &str {
        match self {
            MaintenanceCode::InstanceReboot => "instance-reboot",
            MaintenanceCode::SystemReboot => "system-reboot",
            MaintenanceCode::SystemMaintenance => "system-maintenance",
            MaintenanceCode::InstanceRetirement => "instance-retirement",
            MaintenanceCode::InstanceStop => "instance-stop",
            MaintenanceCode::Other(s) => s,
        }
    }

    /// The instance is rebooted or stopped, and starts again. Not `instance-retirement`: EC2 stops
    /// an EBS-backed instance for it but terminates one backed by instance store ("Instance
    /// retirement", Amazon EC2 User Guide).
    pub fn is_reboot_or_stop(&self) -> bool {
        matches!(
            self,
            MaintenanceCode::SystemReboot
                | MaintenanceCode::InstanceReboot
                | MaintenanceCode::InstanceStop
        )
    }
}

impl From<&str> for MaintenanceCode {
    fn from(code: &str) -> MaintenanceCode {
        match code {
            "instance-reboot" => MaintenanceCode::InstanceReboot,
            "system-reboot" => MaintenanceCode::SystemReboot,
            "system-maintenance" => MaintenanceCode::SystemMaintenance,
            "instance-retirement" => MaintenanceCode::InstanceRetirement,
            "instance-stop" => MaintenanceCode::InstanceStop,
            other => MaintenanceCode::Other(other.to_string()),
        }
    }
}

impl From<String> for MaintenanceCode {
    fn from(code: String) -> MaintenanceCode {
        MaintenanceCode::from(code.as_str())
    }
}

impl From<MaintenanceCode> for String {
    fn from(code: MaintenanceCode) -> String {
        code.to_string()
    }
}

impl fmt::Display for MaintenanceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
            // An instance can go back to its warm pool many times in its life: one notice each.
            Notice::AutoScalingWarmed { target, seen_at } => {
                format!("autoscaling:{target}:{}", unix(*seen_at))
            }
            Notice::Rebalance { notice_time } => format!("rebalance:{}", unix(*notice_time)),
            Notice::Maintenance(e) => format!("maintenance:{}", e.event_id),
            Notice::MaintenanceListed { .. } => "maintenance:listed".to_string(),
        }
    }

    /// `id()` plus what may change about the same notice and matters to the drain: a maintenance
    /// event's State (active → canceled) and its NotBefore. The one de-duplication key: the pollers
    /// re-send a notice only when its revision changes, and the drain acts on each revision once
    /// (recording it in its persisted state, so the format stays as it is). A maintenance listing
    /// is compared every time it changes, never recorded.
    pub fn revision(&self) -> String {
        match self {
            Notice::Maintenance(e) => {
                format!("{}:{:?}:{}", self.id(), e.state, unix(e.not_before))
            }
            Notice::MaintenanceListed { event_ids } => format!(
                "{}:{}",
                self.id(),
                event_ids
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            _ => self.id(),
        }
    }

    /// Whether `revision` (of `revision()`) is one of maintenance event `event_id`'s.
    pub fn is_revision_of_event(revision: &str, event_id: &str) -> bool {
        revision
            .strip_prefix("maintenance:")
            .and_then(|rest| rest.strip_prefix(event_id))
            .is_some_and(|rest| rest.starts_with(':'))
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_codes_read_and_write_as_the_code_ec2_gives() {
        for (text, code) in [
            ("instance-reboot", MaintenanceCode::InstanceReboot),
            ("system-reboot", MaintenanceCode::SystemReboot),
            ("system-maintenance", MaintenanceCode::SystemMaintenance),
            ("instance-retirement", MaintenanceCode::InstanceRetirement),
            ("instance-stop", MaintenanceCode::InstanceStop),
            (
                "fleet-shuffle",
                MaintenanceCode::Other("fleet-shuffle".into()),
            ),
        ] {
            assert_eq!(MaintenanceCode::from(text), code);
            assert_eq!(code.to_string(), text);
            let json = serde_json::to_value(&code).unwrap();
            assert_eq!(json, serde_json::Value::from(text));
            assert_eq!(
                serde_json::from_value::<MaintenanceCode>(json).unwrap(),
                code
            );
        }
    }

    #[test]
    fn a_maintenance_revision_is_its_id_state_and_not_before() {
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let n = Notice::Maintenance(MaintenanceEvent {
            event_id: "ev-1".into(),
            code: MaintenanceCode::InstanceStop,
            not_before: at(3600),
            not_after: Some(at(4600)),
            state: MaintenanceState::Canceled,
            description: String::new(),
        });
        assert_eq!(n.revision(), "maintenance:ev-1:Canceled:3600");
    }
}
