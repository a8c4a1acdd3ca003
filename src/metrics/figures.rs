//! One host's published figures, and the table of metrics they become.
//!
//! `HostFigures` is plain data, filled from a `host::Snapshot`, the host's
//! `capacity::HostCapacity` and the drain status (see [`HostFigures::from_host`]); the CloudWatch
//! encoding (`cloudwatch::datums`) and the Prometheus exposition both read only this struct, so the
//! two sinks can never disagree.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

/// The resource keys used in `*_by_resource` maps and in the `Resource` dimension/label.
pub const RESOURCES: [&str; 5] = ["cpu", "memory", "ports", "ports_udp", "eni"];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostFigures {
    #[serde(with = "crate::rfc3339")]
    pub at: SystemTime,
    pub cluster: String,
    pub instance_id: String,
    pub autoscaling_group: Option<String>,
    /// More copies of the largest task that fit here; `None` when unknown (no task shape, or nothing
    /// the shape needs constrains this host). A draining host has 0.
    pub spare_tasks: Option<u64>,
    /// Copies of the largest task by one resource alone (keys from [`RESOURCES`]); only resources
    /// that constrain this host are present.
    pub spare_tasks_by_resource: BTreeMap<&'static str, u64>,
    /// min over the resources the largest task needs of fits / max; a draining host has 0.
    pub idle_fraction: Option<f64>,
    pub idle_fraction_by_resource: BTreeMap<&'static str, f64>,
    pub cpu_reserved_pct: Option<f64>,
    pub memory_reserved_pct: Option<f64>,
    pub cpu_used_pct: Option<f64>,
    pub memory_used_pct: Option<f64>,
    pub eni_attached: Option<u32>,
    pub eni_limit: Option<u32>,
    /// `None` before Docker's first listing (never a guessed 0).
    pub running_tasks: Option<u32>,
    pub draining: bool,
    /// Whether ECS would place a task here (`None`: cannot be told, AWS off). A host that is not
    /// placeable offers no room: spare tasks 0, idle fraction 0.
    pub placeable: Option<bool>,
    /// Local reserved − ECS's reserved at the last reconciliation (CPU units, memory MiB).
    pub cpu_reserved_difference: Option<i64>,
    pub memory_reserved_difference: Option<i64>,
    /// Counts in the scale-in alarm's `RemovableHosts`: unprotected and idle, or the volunteer
    /// (always, 0 while draining, when protection is managed by nobody); `None` when this host is
    /// in no Auto Scaling group (nothing published).
    pub removable: Option<bool>,
    /// This instance's scale-in protection as Auto Scaling last confirmed it (Prometheus only);
    /// `None` when no group is known or before the first answer.
    pub scale_in_protected: Option<bool>,
}

/// What `from_host` needs besides the capacity figures: identity, usage, ENIs, tasks and drain state,
/// taken from the `Snapshot` and the drain's `DrainStatus`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub at: SystemTime,
    pub cluster: String,
    pub instance_id: String,
    pub autoscaling_group: Option<String>,
    /// CPU in use by ECS tasks, in cores (`Snapshot.usage.cpu_cores`).
    pub cpu_used_cores: Option<f64>,
    /// Memory in use by ECS tasks, in bytes (the working set: what the kernel cannot reclaim).
    pub memory_used_bytes: Option<u64>,
    pub eni_attached: Option<u32>,
    pub eni_limit: Option<u32>,
    /// `None` before Docker's first listing (never a guessed 0).
    pub running_tasks: Option<u32>,
    pub draining: bool,
    pub placeable: Option<bool>,
    /// Why the capacity figures are not known: then none is published.
    pub capacity_unknown: Option<String>,
    pub cpu_reserved_difference: Option<i64>,
    pub memory_reserved_difference: Option<i64>,
    pub removable: Option<bool>,
    pub scale_in_protected: Option<bool>,
}

/// A metric as published: CloudWatch name and unit, Prometheus name, what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    /// CloudWatch `StandardUnit` string.
    pub unit: &'static str,
    pub prometheus: &'static str,
    pub help: &'static str,
    /// Also published once per resource with a `Resource` dimension (name + "ByResource").
    pub by_resource: bool,
}

/// Every metric this daemon publishes. README.md "Metrics" documents the same table.
pub const METRICS: [MetricDef; 14] = [
    MetricDef {
        name: "ContainerCapacity",
        unit: "Count",
        prometheus: "ecs_capacity_spare_tasks",
        help: "More copies of the largest task that fit on this host (Sum over {ClusterName} = the cluster's ContainerCapacity).",
        by_resource: true,
    },
    MetricDef {
        name: "IdleHostCapacity",
        unit: "None",
        prometheus: "ecs_capacity_idle_fraction",
        help: "Fraction of this host that is idle for the largest task (min over resources of fits/max; Sum over {ClusterName} = hosts that could go).",
        by_resource: true,
    },
    MetricDef {
        name: "CPUReservation",
        unit: "Percent",
        prometheus: "ecs_capacity_cpu_reserved_percent",
        help: "CPU units reserved by running tasks, percent of registered.",
        by_resource: false,
    },
    MetricDef {
        name: "MemoryReservation",
        unit: "Percent",
        prometheus: "ecs_capacity_memory_reserved_percent",
        help: "Memory reserved by running tasks, percent of registered.",
        by_resource: false,
    },
    MetricDef {
        name: "CPUUtilization",
        unit: "Percent",
        prometheus: "ecs_capacity_cpu_used_percent",
        help: "CPU used by running tasks (cgroups), percent of registered.",
        by_resource: false,
    },
    MetricDef {
        name: "MemoryUtilization",
        unit: "Percent",
        prometheus: "ecs_capacity_memory_used_percent",
        help: "Memory working set of running tasks (cgroups), percent of registered.",
        by_resource: false,
    },
    MetricDef {
        name: "ENIsAttached",
        unit: "Count",
        prometheus: "ecs_capacity_enis_attached",
        help: "Network interfaces attached to this instance.",
        by_resource: false,
    },
    MetricDef {
        name: "ENILimit",
        unit: "Count",
        prometheus: "ecs_capacity_eni_limit",
        help: "Network interfaces this instance type can attach.",
        by_resource: false,
    },
    MetricDef {
        name: "RunningTasks",
        unit: "Count",
        prometheus: "ecs_capacity_running_tasks",
        help: "ECS tasks running on this host.",
        by_resource: false,
    },
    MetricDef {
        name: "Draining",
        unit: "Count",
        prometheus: "ecs_capacity_draining",
        help: "1 while this host is draining, else 0.",
        by_resource: false,
    },
    MetricDef {
        name: "Placeable",
        unit: "Count",
        prometheus: "ecs_capacity_placeable",
        help: "1 when ECS would place a task on this host (InService, registered, ACTIVE, agent connected), else 0.",
        by_resource: false,
    },
    MetricDef {
        name: "RemovableHosts",
        unit: "Count",
        prometheus: "ecs_capacity_removable",
        help: "1 while Auto Scaling may take this host without moving tasks it should keep (unprotected and idle, or the scale-in volunteer), else 0 (Sum over {ClusterName} gates the scale-in alarm).",
        by_resource: false,
    },
    MetricDef {
        name: "Hosts",
        unit: "Count",
        prometheus: "ecs_capacity_hosts",
        help: "Always 1: Sum over {ClusterName} counts the hosts that published (a missing host shows here).",
        by_resource: false,
    },
    MetricDef {
        name: "AgentStarts",
        unit: "Count",
        prometheus: "ecs_capacity_agent_starts",
        help: "1 when the daemon starts (sent by the CloudWatch startup check, never by a period).",
        by_resource: false,
    },
];

/// The definition of a metric by CloudWatch name.
pub fn metric(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|m| m.name == name)
}

/// The value of each metric for this host, `None` when unknown (then nothing is published for it).
/// Per-resource values are in [`HostFigures::by_resource`].
impl HostFigures {
    pub fn value(&self, name: &str) -> Option<f64> {
        match name {
            "ContainerCapacity" => self.spare_tasks.map(|v| v as f64),
            "IdleHostCapacity" => self.idle_fraction,
            "CPUReservation" => self.cpu_reserved_pct,
            "MemoryReservation" => self.memory_reserved_pct,
            "CPUUtilization" => self.cpu_used_pct,
            "MemoryUtilization" => self.memory_used_pct,
            "ENIsAttached" => self.eni_attached.map(f64::from),
            "ENILimit" => self.eni_limit.map(f64::from),
            "RunningTasks" => self.running_tasks.map(f64::from),
            "Draining" => Some(if self.draining { 1.0 } else { 0.0 }),
            "Placeable" => self.placeable.map(|p| if p { 1.0 } else { 0.0 }),
            "RemovableHosts" => self.removable.map(|r| if r { 1.0 } else { 0.0 }),
            "Hosts" => Some(1.0),
            _ => None,
        }
    }

    /// `(resource, value)` for a per-resource metric, in [`RESOURCES`] order.
    pub fn by_resource(&self, name: &str) -> Vec<(&'static str, f64)> {
        match name {
            "ContainerCapacity" => RESOURCES
                .iter()
                .filter_map(|r| self.spare_tasks_by_resource.get(r).map(|v| (*r, *v as f64)))
                .collect(),
            "IdleHostCapacity" => RESOURCES
                .iter()
                .filter_map(|r| self.idle_fraction_by_resource.get(r).map(|v| (*r, *v)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn pct(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0 && part.is_finite()).then(|| part / whole * 100.0)
}

const MIB: f64 = 1024.0 * 1024.0;

impl HostFigures {
    /// The mapping from one host's capacity figures and facts to what is published.
    ///
    /// A draining host publishes 0 spare tasks and 0 idle fraction: ECS places nothing on a
    /// DRAINING instance, so its room is not the cluster's, and it is already leaving, so counting it
    /// idle would let the scale-in alarm remove a second host for the same room. The same holds for
    /// any host ECS would not place on (`placeable` false): 0 and 0, still one datum each, so the
    /// cluster's Sum counts the host. With `capacity_unknown` set no capacity figure is published.
    pub fn from_host(facts: HostFacts, capacity: &crate::capacity::HostCapacity) -> HostFigures {
        let mut spare_tasks_by_resource = BTreeMap::new();
        let mut idle_fraction_by_resource = BTreeMap::new();
        let no_room = facts.draining || facts.placeable == Some(false);
        let known = facts.capacity_unknown.is_none();
        for fit in capacity.by_resource().into_iter().filter(|_| known) {
            let key = fit.resource.key();
            let (fits, idle) = if no_room {
                (0, 0.0)
            } else {
                (fit.fits, fit.idle)
            };
            spare_tasks_by_resource.insert(key, fits);
            idle_fraction_by_resource.insert(key, idle);
        }
        let (spare_tasks, idle_fraction) = if !known {
            (None, None)
        } else if no_room {
            (Some(0), Some(0.0))
        } else {
            (capacity.spare_tasks, capacity.idle_fraction)
        };
        let cpu = &capacity.per_resource.cpu;
        let memory = &capacity.per_resource.memory;
        // Neither Docker listed nor ECS answered: what is reserved is not known, not 0.
        let reserved_known = known || facts.running_tasks.is_some();
        let reserved_pct = |reserved: u64, registered: u64| {
            pct(reserved as f64, registered as f64).filter(|_| reserved_known)
        };
        HostFigures {
            at: facts.at,
            cluster: facts.cluster,
            instance_id: facts.instance_id,
            autoscaling_group: facts.autoscaling_group,
            spare_tasks,
            spare_tasks_by_resource,
            idle_fraction,
            idle_fraction_by_resource,
            cpu_reserved_pct: reserved_pct(cpu.reserved, cpu.registered),
            memory_reserved_pct: reserved_pct(memory.reserved, memory.registered),
            cpu_used_pct: facts
                .cpu_used_cores
                .and_then(|cores| pct(cores * 1024.0, cpu.registered as f64)),
            memory_used_pct: facts
                .memory_used_bytes
                .and_then(|b| pct(b as f64 / MIB, memory.registered as f64)),
            eni_attached: facts.eni_attached,
            eni_limit: facts.eni_limit,
            running_tasks: facts.running_tasks,
            draining: facts.draining,
            placeable: facts.placeable,
            cpu_reserved_difference: facts.cpu_reserved_difference,
            memory_reserved_difference: facts.memory_reserved_difference,
            removable: facts.removable.map(|r| r && !facts.draining),
            scale_in_protected: facts.scale_in_protected,
        }
    }
}
