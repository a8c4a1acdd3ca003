//! `ecs-capacity-agent cluster`: the capacity model over a whole cluster, fed either with the AWS
//! CLI's own JSON output (offline "what if" with data the operator already has) or live from ECS/EC2.
//!
//! Both sources produce the same plain [`Inputs`]; [`hosts`] turns them into capacity host inputs
//! (only ACTIVE instances count) and [`Output`] renders the cluster's capacity as a table or one JSON object.
//!
//! Decisions:
//! - Taken ports are the union of `registeredResources` PORTS (the agent's reserved set) and
//!   `remainingResources` PORTS (which ECS fills with every port taken, reserved ones included).
//! - ENI slots follow [`crate::eni::slots`], as on the host: the instance type's
//!   `MaximumNetworkInterfaces` − 1 (the primary); with awsvpc trunking on (attribute
//!   `ecs.awsvpc-trunk-id`) the branch-ENI limit from the trunking table, and unknown (not
//!   constraining, a note says so) for a type the table lacks.
//! - ENIs in use = tasks with an `ElasticNetworkInterface` attachment not yet DELETED, per instance.
//!   Without `--tasks` that count is known only for an instance running and pending nothing (0);
//!   otherwise that instance's ENI picture is unknown.

pub mod files;
pub mod live;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::capacity::{self, ClusterCapacity, HostInput, Quantity, TaskShape};

/// The ECS status of a container instance that counts.
pub const ACTIVE: &str = "ACTIVE";
/// The attribute ECS sets on an instance with awsvpc trunking on.
pub const TRUNK_ATTRIBUTE: &str = "ecs.awsvpc-trunk-id";
pub const INSTANCE_TYPE_ATTRIBUTE: &str = "ecs.instance-type";
/// The largest CPU-unit or MiB figure taken from an input (2^40: a billion vCPUs, an exbibyte).
/// Anything above is not a real instance or task, and is refused naming where it was, so that the
/// sums over a cluster stay far from overflowing.
pub const QUANTITY_MAX: u64 = 1 << 40;

/// One container instance as DescribeContainerInstances reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instance {
    pub arn: String,
    /// EC2 instance id; `None` for external instances.
    pub ec2_instance_id: Option<String>,
    pub status: String,
    pub instance_type: Option<String>,
    pub cpu_units: Quantity,
    pub memory_mib: Quantity,
    pub taken_tcp_ports: BTreeSet<u16>,
    pub taken_udp_ports: BTreeSet<u16>,
    pub running_tasks: u64,
    pub pending_tasks: u64,
    pub trunk: bool,
    /// `agentConnected`; `None` when the input does not say.
    pub agent_connected: Option<bool>,
}

impl Instance {
    /// Why ECS would place no task here, `None` when it would: only an ACTIVE instance whose agent
    /// is connected takes tasks. The one rule `cluster` and the daemon's own figures share.
    pub fn unplaceable(&self) -> Option<String> {
        if !self.status.eq_ignore_ascii_case(ACTIVE) {
            return Some(self.status.clone());
        }
        (self.agent_connected == Some(false))
            .then(|| format!("{} (agent disconnected)", self.status))
    }

    /// The EC2 instance id, else the last part of the ARN.
    pub fn name(&self) -> String {
        self.ec2_instance_id
            .clone()
            .unwrap_or_else(|| self.arn.rsplit('/').next().unwrap_or(&self.arn).to_string())
    }
}

/// Everything the calculator needs, from files or from AWS.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub instances: Vec<Instance>,
    pub shapes: Vec<TaskShape>,
    /// Instance type → MaximumNetworkInterfaces; `None` when not asked for.
    pub eni_limits: Option<BTreeMap<String, u32>>,
    /// Container instance ARN → ENIs used by its awsvpc tasks; `None` when the tasks are unknown.
    pub awsvpc_tasks: Option<BTreeMap<String, u32>>,
}

/// An instance left out of the figures, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Excluded {
    pub name: String,
    pub status: String,
}

/// Capacity host inputs for the ACTIVE instances, the instances left out, and notes on what could
/// not be judged.
pub fn hosts(inputs: &Inputs) -> (Vec<HostInput>, Vec<Excluded>, Vec<String>) {
    let mut hosts = Vec::new();
    let mut excluded = Vec::new();
    let mut notes = Vec::new();
    let needs_eni = inputs.shapes.iter().any(|s| s.awsvpc);
    let mut no_limit_types = BTreeSet::new();
    for i in &inputs.instances {
        let name = i.name();
        if let Some(status) = i.unplaceable() {
            excluded.push(Excluded { name, status });
            continue;
        }
        let eni = eni_slots(i, inputs, needs_eni, &mut notes, &mut no_limit_types);
        hosts.push(HostInput {
            name,
            cpu_units: i.cpu_units,
            memory_mib: i.memory_mib,
            taken_tcp_ports: i.taken_tcp_ports.clone(),
            taken_udp_ports: i.taken_udp_ports.clone(),
            eni,
        });
    }
    if needs_eni && inputs.eni_limits.is_none() {
        notes.push(
            "ENI limits unknown (no --instance-types): ENIs do not constrain awsvpc tasks".into(),
        );
    }
    if !no_limit_types.is_empty() {
        notes.push(format!(
            "no ENI limit for instance type(s) {}: ENIs do not constrain there",
            no_limit_types.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    (hosts, excluded, notes)
}

fn eni_slots(
    i: &Instance,
    inputs: &Inputs,
    needs_eni: bool,
    notes: &mut Vec<String>,
    no_limit_types: &mut BTreeSet<String>,
) -> Option<Quantity> {
    let limit = i
        .instance_type
        .as_ref()
        .and_then(|t| inputs.eni_limits.as_ref()?.get(t))
        .copied();
    let (slots, note) = crate::eni::slots(limit, Some(i.trunk), i.instance_type.as_deref());
    if let (Some(note), true) = (note, needs_eni) {
        notes.push(format!("{}: {note}", i.name()));
    }
    let Some(slots) = slots else {
        if !i.trunk && inputs.eni_limits.is_some() {
            no_limit_types.insert(i.instance_type.clone().unwrap_or_else(|| "(none)".into()));
        }
        return None;
    };
    let slots = u64::from(slots);
    let used = match &inputs.awsvpc_tasks {
        Some(by_arn) => u64::from(by_arn.get(&i.arn).copied().unwrap_or(0)),
        None if i.running_tasks == 0 && i.pending_tasks == 0 => 0,
        None => {
            if needs_eni {
                notes.push(format!(
                    "{}: runs tasks and no --tasks file tells which use an ENI: ENIs do not constrain it",
                    i.name()
                ));
            }
            return None;
        }
    };
    Some(Quantity::new(slots, used))
}

/// The `cluster` command's result: the cluster's capacity plus what was left out and why.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    #[serde(flatten)]
    pub capacity: ClusterCapacity,
    /// Instances present but not counted (not ACTIVE).
    pub excluded: Vec<Excluded>,
    pub notes: Vec<String>,
}

/// The whole calculation over `inputs`.
pub fn calculate(inputs: &Inputs, scale_out_threshold: f64) -> Output {
    let (hosts, excluded, notes) = hosts(inputs);
    Output {
        capacity: capacity::compute(&hosts, &inputs.shapes, scale_out_threshold),
        excluded,
        notes,
    }
}

impl Output {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The JSON object on one line, streamed (thousands of hosts make megabytes).
    pub fn write_json<W: std::io::Write>(&self, mut w: W) -> std::io::Result<()> {
        serde_json::to_writer(&mut w, self)?;
        w.write_all(b"\n")
    }

    pub fn to_table(&self) -> String {
        let r = &self.capacity;
        let mut out = String::new();
        let yes = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "{} ACTIVE container instance(s) counted, {} excluded",
            r.hosts.len(),
            self.excluded.len()
        );
        if let Some(l) = &r.largest_task {
            let _ = writeln!(out, "largest task: {}", describe_shape(l));
        }
        let _ = writeln!(
            out,
            "ContainerCapacity                {:>8}   scale out: {} (below {})",
            r.container_capacity,
            yes(r.scale_out),
            r.scale_out_threshold
        );
        let _ = writeln!(
            out,
            "IdleHostCapacity                 {:>8.2}   scale in: {} (above 1.0)",
            r.idle_host_capacity,
            yes(r.scale_in)
        );
        let _ = writeln!(
            out,
            "IdleHostCapacity (conservative)  {:>8.2}",
            r.idle_host_capacity_conservative
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<10} {:>10} {:>11}",
            "resource", "capacity", "idle hosts"
        );
        for res in capacity::Resource::ALL {
            match r.per_resource.get(res) {
                Some(t) => {
                    let _ = writeln!(
                        out,
                        "{:<10} {:>10} {:>11.2}",
                        res.key(),
                        t.capacity,
                        t.idle_hosts
                    );
                }
                None => {
                    let _ = writeln!(out, "{:<10} {:>10} {:>11}", res.key(), "-", "-");
                }
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<22} {:>6} {:>6} {:>16} {:>16} {:>6} {:>6} {:>8}",
            "host", "spare", "idle", "cpu free/fits", "mem free/fits", "tcp", "udp", "eni"
        );
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        for h in &r.hosts {
            let p = &h.per_resource;
            let _ = writeln!(
                out,
                "{:<22} {:>6} {:>6} {:>16} {:>16} {:>6} {:>6} {:>8}",
                h.name,
                opt(h.spare_tasks),
                h.idle_fraction.map_or("-".into(), |i| format!("{i:.2}")),
                format!("{}/{}", p.cpu.remaining, opt(p.cpu.fits)),
                format!("{}/{}", p.memory.remaining, opt(p.memory.fits)),
                opt(p.ports.fits),
                opt(p.ports_udp.fits),
                p.eni
                    .map_or("?".into(), |e| format!("{}/{}", e.remaining, opt(e.fits))),
            );
        }
        if !r.shapes.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "{:<30} {:>10}", "task shape", "more fit");
            for s in &r.shapes {
                let _ = writeln!(out, "{:<30} {:>10}", s.name, opt(s.fits));
            }
        }
        for e in &self.excluded {
            let _ = writeln!(out, "excluded: {} ({})", e.name, e.status);
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

fn describe_shape(s: &TaskShape) -> String {
    let mut parts = vec![
        format!("{} CPU units", s.cpu_units),
        format!("{} MiB", s.memory_mib),
    ];
    let list = |p: &BTreeSet<u16>| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    if !s.tcp_ports.is_empty() {
        parts.push(format!("tcp {}", list(&s.tcp_ports)));
    }
    if !s.udp_ports.is_empty() {
        parts.push(format!("udp {}", list(&s.udp_ports)));
    }
    if s.awsvpc {
        parts.push("1 ENI".into());
    }
    format!("{} ({})", s.name, parts.join(", "))
}

#[cfg(test)]
mod tests;
