//! What ECS says about this host and its cluster, and the decisions taken on it: the cluster's
//! task shapes ([`shapes`]), the task definitions that say what a task reserves ([`definitions`]),
//! this container instance's own figures and state ([`instance`]); whether ECS would place a task
//! here ([`placement`]) and when ECS's figures replace the local ones ([`Agreement`]).

pub mod definitions;
pub mod instance;
pub mod shapes;

use serde::Serialize;

use crate::capacity::Quantity;
use crate::cluster::Instance;

pub use definitions::Definitions;
pub use instance::EcsReading;
pub use shapes::ClusterShapes;

/// The Auto Scaling lifecycle state (IMDS `autoscaling/target-lifecycle-state`) of a host that
/// takes tasks.
pub const IN_SERVICE: &str = "InService";

/// After this many consecutive reconciliations that disagree with the local figures, ECS's win.
pub const ECS_WINS_AFTER: u32 = 3;

/// Whether ECS would place a task on this host, and if not, why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// `None` when it cannot be told (AWS off, or ECS not asked yet).
    pub placeable: Option<bool>,
    pub why_not: Vec<String>,
}

/// The placeability rule: a host takes tasks only when it is InService in its Auto Scaling group
/// (a `Warmed:*` warm-pool instance or one `Pending:Wait` does not; an instance outside any group
/// has no lifecycle state), registered in the cluster, ACTIVE, and its ECS agent is connected.
/// `lifecycle` is IMDS's answer (`None` when there is none); `ecs` the last reconciliation
/// (`None` when ECS has not answered yet, `Some(None)` when it has no container instance for this
/// EC2 instance).
pub fn placement(lifecycle: Option<&str>, ecs: Option<Option<&Instance>>) -> Placement {
    let mut why_not = Vec::new();
    if let Some(state) = lifecycle.map(str::trim).filter(|s| *s != IN_SERVICE) {
        why_not.push(format!("Auto Scaling lifecycle state {state}"));
    }
    let ecs_known = match ecs {
        None => false,
        Some(None) => {
            why_not.push("not registered in the ECS cluster".into());
            true
        }
        Some(Some(i)) => {
            if let Some(status) = i.unplaceable() {
                why_not.push(format!("container instance {status}"));
            }
            true
        }
    };
    let placeable = if !why_not.is_empty() {
        Some(false)
    } else {
        ecs_known.then_some(true)
    };
    Placement { placeable, why_not }
}

/// Counts consecutive reconciliations whose figures differ from the local ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Agreement {
    /// The last reconciliation counted.
    pub seq: u64,
    /// Consecutive reconciliations that disagreed.
    pub disagreements: u32,
}

impl Agreement {
    /// Counts reconciliation `seq` once: whether ECS's CPU and memory (registered, reserved) are the
    /// local ones.
    pub fn update(&mut self, seq: u64, local: [Quantity; 2], ecs: [Quantity; 2]) {
        if seq == self.seq {
            return;
        }
        self.seq = seq;
        if local == ecs {
            self.disagreements = 0;
        } else {
            self.disagreements = self.disagreements.saturating_add(1);
        }
    }

    /// ECS's figures replace the local ones once they have kept disagreeing.
    pub fn ecs_wins(&self) -> bool {
        self.disagreements >= ECS_WINS_AFTER
    }
}

/// What `status` shows of ECS's view of this host.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EcsView {
    /// When ECS last answered (RFC 3339); `None` before the first answer.
    pub reconciled_at: Option<String>,
    /// Registered in the cluster (a container instance exists for this EC2 instance).
    pub registered: Option<bool>,
    pub status: Option<String>,
    pub agent_connected: Option<bool>,
    /// ECS's registered / reserved (registered − remaining) CPU units and memory MiB.
    pub cpu_units: Option<Quantity>,
    pub memory_mib: Option<Quantity>,
    /// The `ecs.awsvpc-trunk-id` attribute is set.
    pub trunk: Option<bool>,
    /// Local reserved − ECS reserved (CPU units, memory MiB).
    pub cpu_reserved_difference: Option<i64>,
    pub memory_reserved_difference: Option<i64>,
    /// Consecutive reconciliations that disagreed with the local figures.
    pub disagreements: u32,
    /// The capacity figures are ECS's (they kept disagreeing, or Docker is not readable).
    pub figures_from_ecs: bool,
    /// Why the last reconciliation failed, if it did.
    pub error: Option<String>,
}

/// Puts the task definitions' reservations on the snapshot's tasks (fetching each revision not
/// known yet, once) and reserves the DAEMON services not running here yet; a definition that cannot
/// be had leaves its task on Docker's figures and is named in `unavailable`.
pub async fn apply_reservations(
    s: &mut crate::host::Snapshot,
    definitions: &Definitions,
    daemons: &[crate::capacity::Definition],
) {
    let keys: Vec<String> = s
        .tasks
        .iter()
        .filter(|t| !t.family.is_empty() && !t.revision.is_empty())
        .map(|t| t.definition_key())
        .collect();
    let (found, errors) = definitions.get_all(keys.iter().map(String::as_str)).await;
    let found = found.into_iter().collect();
    crate::host::assess::apply_definitions(s, &found, daemons);
    s.unavailable.extend(
        errors
            .into_iter()
            .map(|e| format!("reservation by Docker's figures: {e}")),
    );
}

/// `a − b` as a signed figure.
pub fn difference(a: u64, b: u64) -> i64 {
    if a >= b {
        i64::try_from(a - b).unwrap_or(i64::MAX)
    } else {
        -i64::try_from(b - a).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ACTIVE;

    fn instance(status: &str, connected: Option<bool>) -> Instance {
        Instance {
            arn: "arn:aws:ecs:us-east-1:1:container-instance/c/1".into(),
            status: status.into(),
            agent_connected: connected,
            ..Instance::default()
        }
    }

    #[test]
    fn only_an_in_service_registered_active_connected_host_is_placeable() {
        let active = instance(ACTIVE, Some(true));
        let draining = instance("DRAINING", Some(true));
        let disconnected = instance(ACTIVE, Some(false));
        let cases = [
            // (case, lifecycle, ecs, placeable)
            (
                "in service, active",
                Some("InService"),
                Some(Some(&active)),
                Some(true),
            ),
            (
                "no Auto Scaling group",
                None,
                Some(Some(&active)),
                Some(true),
            ),
            (
                "warm pool",
                Some("Warmed:Pending"),
                Some(Some(&active)),
                Some(false),
            ),
            (
                "warm pool, ECS unknown",
                Some("Warmed:Stopped"),
                None,
                Some(false),
            ),
            ("not registered", Some("InService"), Some(None), Some(false)),
            ("draining", None, Some(Some(&draining)), Some(false)),
            (
                "agent disconnected",
                None,
                Some(Some(&disconnected)),
                Some(false),
            ),
            ("ECS not asked yet", Some("InService"), None, None),
        ];
        for (case, lifecycle, ecs, want) in cases {
            let p = placement(lifecycle, ecs);
            assert_eq!(p.placeable, want, "{case}: {p:?}");
            assert_eq!(p.why_not.is_empty(), want != Some(false), "{case}: {p:?}");
        }
    }

    #[test]
    fn ecs_wins_after_three_disagreeing_reconciliations_each_counted_once() {
        let local = [Quantity::new(2048, 512), Quantity::new(3800, 1024)];
        let ecs = [Quantity::new(2048, 768), Quantity::new(3800, 1024)];
        let mut a = Agreement::default();
        a.update(1, local, ecs);
        a.update(1, local, ecs);
        a.update(2, local, ecs);
        assert!(!a.ecs_wins(), "{a:?}");
        a.update(3, local, ecs);
        assert!(a.ecs_wins(), "{a:?}");
        a.update(4, local, local);
        assert_eq!(a.disagreements, 0);
        assert!(!a.ecs_wins());
        assert_eq!(difference(512, 768), -256);
        assert_eq!(difference(768, 512), 256);
    }
}
