//! This host's status: what one observation produced (snapshot, shapes, capacity, drain, figures),
//! rendered as the `status` table and JSON, which the stdout sink prints too.

use std::fmt::Write as _;

use serde::Serialize;

use crate::capacity::{HostCapacity, TaskShape};
use crate::config::CapacityConfig;
use crate::drain::DrainStatus;
use crate::ecs::{ClusterShapes, EcsView, Placement};
use crate::host::Snapshot;
use crate::host::assess::{EcsContext, ShapeSource};
use crate::rfc3339;

#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub snapshot: Snapshot,
    /// The shapes planned for.
    pub shapes: Vec<TaskShape>,
    /// Where they came from (configured, the cluster's services, or the running tasks).
    pub shape_sources: Vec<ShapeSource>,
    /// This host against the largest of `shapes`.
    pub capacity: HostCapacity,
    /// Why the capacity figures are unknown (nothing is published for them); `null` when known.
    pub capacity_unknown: Option<String>,
    /// Whether ECS would place a task here, and if not why (then the host offers no room).
    pub placement: Placement,
    /// What ECS said of this container instance at the last reconciliation; `null` with AWS off.
    pub ecs: Option<EcsView>,
    /// The drain's state, where draining is on (the daemon) or its state file was read (`status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
    /// What is published for this host (CloudWatch, Prometheus); set by the daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub figures: Option<crate::metrics::figures::HostFigures>,
    /// The count of disagreements with ECS, carried to the next assessment.
    #[serde(skip)]
    pub agreement: crate::ecs::Agreement,
}

impl HostStatus {
    /// Assesses a snapshot (its reservations already applied) against the shapes to plan for and
    /// what ECS says of this host.
    pub fn assess(
        mut snapshot: Snapshot,
        cfg: &CapacityConfig,
        cluster: Option<&ClusterShapes>,
        ctx: &EcsContext,
    ) -> HostStatus {
        let a = crate::host::assess::assess(&mut snapshot, cfg, cluster, ctx);
        HostStatus {
            snapshot,
            shapes: a.shapes,
            shape_sources: a.shape_sources,
            capacity: a.capacity,
            capacity_unknown: a.capacity_unknown,
            placement: a.placement,
            ecs: a.ecs,
            drain: None,
            figures: None,
            agreement: a.agreement,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let s = &self.snapshot;
        let mut out = String::new();
        let ports = |set: &std::collections::BTreeSet<u16>| {
            if set.is_empty() {
                "-".to_string()
            } else {
                set.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
            }
        };
        let opt = |v: Option<u32>| v.map_or("?".to_string(), |n| n.to_string());
        let _ = writeln!(out, "observed at {}", rfc3339::format(s.taken_at));
        let ecs = &s.ecs;
        let _ = writeln!(
            out,
            "cluster {}  container instance {}  instance {}",
            ecs.cluster.as_deref().unwrap_or("?"),
            ecs.container_instance_arn.as_deref().unwrap_or("?"),
            ecs.instance_id.as_deref().unwrap_or("?"),
        );
        let _ = writeln!(
            out,
            "\n{:<12} {:>12} {:>12} {:>12}",
            "resource", "registered", "reserved", "remaining"
        );
        let _ = writeln!(
            out,
            "{:<12} {:>12} {:>12} {:>12}",
            "cpu units",
            s.registered.cpu_units,
            s.reserved.cpu_units,
            s.remaining_cpu_units()
        );
        let _ = writeln!(
            out,
            "{:<12} {:>12} {:>12} {:>12}",
            "memory MiB",
            s.registered.memory_mib,
            s.reserved.memory_mib,
            s.remaining_memory_mib()
        );
        let eni_remaining = s.eni.slots.map(|n| n.saturating_sub(s.eni.used));
        let _ = writeln!(
            out,
            "{:<12} {:>12} {:>12} {:>12}",
            "eni slots",
            opt(s.eni.slots),
            s.eni.used,
            opt(eni_remaining)
        );
        let _ = writeln!(
            out,
            "tcp ports    agent {}  tasks {}",
            ports(&s.registered.reserved_tcp_ports),
            ports(&s.reserved.tcp_ports)
        );
        let _ = writeln!(
            out,
            "udp ports    agent {}  tasks {}",
            ports(&s.registered.reserved_udp_ports),
            ports(&s.reserved.udp_ports)
        );
        let _ = writeln!(
            out,
            "enis         attached {}  limit {}  trunk {}{}",
            opt(s.eni.attached),
            opt(s.eni.limit),
            match s.eni.trunk {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            s.eni
                .note
                .as_deref()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default()
        );
        if let Some(u) = &s.usage {
            let _ = writeln!(
                out,
                "usage        cpu {} cores  memory {}  working set {}",
                fmt_cores(u.cpu_cores),
                fmt_mib(u.memory_bytes),
                fmt_mib(u.working_set_bytes)
            );
        }
        let _ = writeln!(
            out,
            "\n{} task(s)\n{:<28} {:<8} {:>6} {:>8} {:<14} {:>7} {:>9} {:<10}",
            s.tasks.len(),
            "task",
            "network",
            "cpu",
            "mem MiB",
            "ports",
            "cores",
            "mem used",
            "status"
        );
        for t in &s.tasks {
            let mut p = t
                .tcp_ports
                .iter()
                .map(|p| format!("{p}/tcp"))
                .collect::<Vec<_>>();
            p.extend(t.udp_ports.iter().map(|p| format!("{p}/udp")));
            let name = format!("{}:{} {}", t.family, t.revision, short(t.id()));
            let _ = writeln!(
                out,
                "{:<28} {:<8} {:>6} {:>8} {:<14} {:>7} {:>9} {:<10}",
                name,
                t.network_mode.to_string(),
                t.cpu_units,
                t.memory_mib,
                if p.is_empty() {
                    "-".into()
                } else {
                    p.join(",")
                },
                fmt_cores(t.usage.as_ref().and_then(|u| u.cpu_cores)),
                fmt_mib(t.usage.as_ref().and_then(|u| u.memory_bytes)),
                t.known_status.as_deref().unwrap_or("?"),
            );
        }
        if !s.others.is_empty() {
            let _ = writeln!(out, "\nnot ECS tasks (not counted):");
            for o in &s.others {
                let _ = writeln!(out, "  {} ({})", o.name, short(&o.id));
            }
        }
        self.capacity_table(&mut out);
        if let Some(d) = &self.drain {
            let _ = writeln!(out, "\ndrain: {}", d.summary());
        }
        for u in &s.unavailable {
            let _ = writeln!(out, "unavailable: {u}");
        }
        out
    }

    fn capacity_table(&self, out: &mut String) {
        let c = &self.capacity;
        let count = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
        let frac = |v: Option<f64>| v.map_or("-".to_string(), |f| format!("{f:.2}"));
        let sources = self
            .shape_sources
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" + ");
        if let Some(e) = &self.ecs {
            let _ = writeln!(
                out,
                "\necs          {}  agent connected {}  reconciled {}{}{}",
                e.status
                    .as_deref()
                    .unwrap_or(if e.registered == Some(false) {
                        "not registered"
                    } else {
                        "?"
                    }),
                e.agent_connected
                    .map_or("?", |c| if c { "yes" } else { "no" }),
                e.reconciled_at.as_deref().unwrap_or("never"),
                match (e.cpu_reserved_difference, e.memory_reserved_difference) {
                    (Some(c), Some(m)) => format!(
                        "  local - ECS reserved: cpu {c:+} memory {m:+} ({} in a row){}",
                        e.disagreements,
                        if e.figures_from_ecs {
                            ", ECS's figures used"
                        } else {
                            ""
                        }
                    ),
                    _ => String::new(),
                },
                e.error
                    .as_deref()
                    .map(|e| format!("  (last error: {e})"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "placeable    {}{}",
            match self.placement.placeable {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            if self.placement.why_not.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.placement.why_not.join("; "))
            }
        );
        if let Some(why) = &self.capacity_unknown {
            let _ = writeln!(out, "\ncapacity: unknown: {why}");
        }
        let Some(largest) = crate::capacity::largest_task(&self.shapes) else {
            let _ = writeln!(
                out,
                "\ncapacity: no task shape: none configured ([capacity] task_shapes), no service in the cluster, no task running"
            );
            return;
        };
        let _ = writeln!(out, "shapes from {sources}");
        let _ = writeln!(
            out,
            "\ncapacity against the largest task ({}: {} cpu units, {} MiB{}{}{})",
            largest.name,
            largest.cpu_units,
            largest.memory_mib,
            if largest.tcp_ports.is_empty() {
                String::new()
            } else {
                format!(", tcp {:?}", largest.tcp_ports)
            },
            if largest.udp_ports.is_empty() {
                String::new()
            } else {
                format!(", udp {:?}", largest.udp_ports)
            },
            if largest.awsvpc { ", awsvpc" } else { "" },
        );
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>8} {:>8}",
            "resource", "fits", "max", "idle"
        );
        let p = &c.per_resource;
        let rows = [
            ("cpu", p.cpu.fits, p.cpu.max, p.cpu.idle),
            ("memory", p.memory.fits, p.memory.max, p.memory.idle),
            ("tcp ports", p.ports.fits, p.ports.max, p.ports.idle),
            (
                "udp ports",
                p.ports_udp.fits,
                p.ports_udp.max,
                p.ports_udp.idle,
            ),
            (
                "eni",
                p.eni.and_then(|e| e.fits),
                p.eni.and_then(|e| e.max),
                p.eni.and_then(|e| e.idle),
            ),
        ];
        for (name, fits, max, idle) in rows {
            let _ = writeln!(
                out,
                "{:<12} {:>8} {:>8} {:>8}",
                name,
                count(fits),
                count(max),
                frac(idle)
            );
        }
        let _ = writeln!(
            out,
            "spare tasks {}  idle host fraction {}",
            count(c.spare_tasks),
            frac(c.idle_fraction)
        );
        for s in &c.shapes {
            let _ = writeln!(out, "  {:<30} {:>6} more fit", s.name, count(s.fits));
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn fmt_cores(v: Option<f64>) -> String {
    v.map_or("-".into(), |c| format!("{c:.2}"))
}

fn fmt_mib(v: Option<u64>) -> String {
    v.map_or("-".into(), |b| format!("{:.1}M", b as f64 / 1048576.0))
}
