//! The capacity arithmetic of DESIGN.md ("Capacity model"), as pure functions over plain structs.
//!
//! Per host and per resource (CPU units, memory MiB, static TCP ports, static UDP ports, ENI slots):
//! how many copies of the largest task still fit, how many would fit on the empty host, and the idle
//! fraction between the two. The host's spare tasks are the minimum over resources; the cluster's
//! ContainerCapacity is the sum of the per-host minima, so free CPU on one host and free memory on
//! another never make one task.
//!
//! Decisions where DESIGN.md is silent (also in README.md, "cluster --output json"):
//! - A resource the largest task does not need does not constrain (`fits` is `None`, not infinity).
//! - The largest task needs, per resource, the largest need across shapes; for static ports that is
//!   the union of every shape's ports (each of them has to be free for any shape to be sure to fit).
//! - A static port fits at most once per host, so a host's maximum by ports is 1; the host input
//!   does not tell the agent's reserved ports from ports bound by tasks, so a port the agent reserves
//!   makes that host 0-of-1 idle by ports rather than excluding it.
//! - An unknown ENI picture (`HostInput::eni == None`) does not constrain that host: its ENI `fits`
//!   is `None`, it adds nothing to the cluster's ENI capacity (counted in `unknown_hosts`) and
//!   counts as fully idle (1.0) in the classic per-resource ENI sum.
//! - A host whose maximum by a resource is 0 (the task can never fit there) is 0.0 idle by it.
//! - Scale in needs IdleHostCapacity > 1.0 by more than 1e-9, so float rounding of an exact 1.0
//!   (e.g. ten hosts each 1/10 idle) never scales in.
//! - With no task shape at all there is nothing to plan for: every figure is 0 / `None` and neither
//!   decision is taken.
//! - Sums over hosts saturate at `u64::MAX` instead of wrapping (or panicking in a debug build);
//!   inputs are bounded where they are read, so only absurd inputs get near it.

mod definition;
mod shape;

pub use definition::{Definition, definition_key};
pub use shape::{
    ContainerNeeds, MemoryRule, NetworkMode, PortMapping, ShapeError, parse_task_cpu,
    parse_task_memory,
};

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

/// IdleHostCapacity must exceed 1.0 by more than this to scale in (float rounding guard).
pub const SCALE_IN_EPSILON: f64 = 1e-9;

/// One countable resource of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Quantity {
    pub registered: u64,
    pub reserved: u64,
}

impl Quantity {
    pub fn new(registered: u64, reserved: u64) -> Quantity {
        Quantity {
            registered,
            reserved,
        }
    }

    /// registered − reserved, never below zero (a task may reserve more than the host registered
    /// when the registration changed under it).
    pub fn remaining(&self) -> u64 {
        self.registered.saturating_sub(self.reserved)
    }
}

/// What one container instance has and what its running tasks take.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostInput {
    /// EC2 instance id (or hostname when unknown).
    pub name: String,
    pub cpu_units: Quantity,
    pub memory_mib: Quantity,
    /// Agent-reserved ∪ bound by running tasks.
    pub taken_tcp_ports: BTreeSet<u16>,
    pub taken_udp_ports: BTreeSet<u16>,
    /// ENI slots (instance type's limit − 1, or the trunk's branch limit) / used by awsvpc tasks.
    /// `None` = unknown: does not constrain.
    pub eni: Option<Quantity>,
}

/// What one copy of a task needs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TaskShape {
    pub name: String,
    pub cpu_units: u64,
    pub memory_mib: u64,
    /// Static host ports.
    pub tcp_ports: BTreeSet<u16>,
    pub udp_ports: BTreeSet<u16>,
    /// Needs one ENI of its own.
    pub awsvpc: bool,
}

impl TaskShape {
    fn needs_anything(&self) -> bool {
        self.cpu_units > 0
            || self.memory_mib > 0
            || !self.tcp_ports.is_empty()
            || !self.udp_ports.is_empty()
            || self.awsvpc
    }
}

/// The worst case across shapes: per resource the largest need (ports: the union). `None` without
/// shapes.
pub fn largest_task(shapes: &[TaskShape]) -> Option<TaskShape> {
    let (first, rest) = shapes.split_first()?;
    let mut largest = first.clone();
    for s in rest {
        largest.cpu_units = largest.cpu_units.max(s.cpu_units);
        largest.memory_mib = largest.memory_mib.max(s.memory_mib);
        largest.tcp_ports.extend(&s.tcp_ports);
        largest.udp_ports.extend(&s.udp_ports);
        largest.awsvpc |= s.awsvpc;
    }
    if !rest.is_empty() {
        largest.name = format!("largest of {} shapes", shapes.len());
    }
    Some(largest)
}

/// The five resources, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Cpu,
    Memory,
    Ports,
    PortsUdp,
    Eni,
}

impl Resource {
    pub const ALL: [Resource; 5] = [
        Resource::Cpu,
        Resource::Memory,
        Resource::Ports,
        Resource::PortsUdp,
        Resource::Eni,
    ];

    /// The key used in JSON and metric dimensions.
    pub fn key(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Ports => "ports",
            Resource::PortsUdp => "ports_udp",
            Resource::Eni => "eni",
        }
    }

    /// Whether the shape needs this resource at all.
    pub fn needed_by(self, shape: &TaskShape) -> bool {
        match self {
            Resource::Cpu => shape.cpu_units > 0,
            Resource::Memory => shape.memory_mib > 0,
            Resource::Ports => !shape.tcp_ports.is_empty(),
            Resource::PortsUdp => !shape.udp_ports.is_empty(),
            Resource::Eni => shape.awsvpc,
        }
    }
}

/// `fits_r(h, s)`: how many more copies of `shape` fit on `host` by resource `r` alone; `None` when
/// `r` does not constrain (the shape does not need it, or the host's ENI picture is unknown).
pub fn fits_by(host: &HostInput, shape: &TaskShape, r: Resource) -> Option<u64> {
    if !r.needed_by(shape) {
        return None;
    }
    match r {
        Resource::Cpu => Some(host.cpu_units.remaining() / shape.cpu_units),
        Resource::Memory => Some(host.memory_mib.remaining() / shape.memory_mib),
        Resource::Ports => Some(ports_fit(&host.taken_tcp_ports, &shape.tcp_ports)),
        Resource::PortsUdp => Some(ports_fit(&host.taken_udp_ports, &shape.udp_ports)),
        Resource::Eni => host.eni.map(|q| q.remaining()),
    }
}

/// `floor(registered_r / s_r)`: how many copies the empty host would take by resource `r` alone.
pub fn max_by(host: &HostInput, shape: &TaskShape, r: Resource) -> Option<u64> {
    if !r.needed_by(shape) {
        return None;
    }
    match r {
        Resource::Cpu => Some(host.cpu_units.registered / shape.cpu_units),
        Resource::Memory => Some(host.memory_mib.registered / shape.memory_mib),
        // A static port is bound at most once per host.
        Resource::Ports | Resource::PortsUdp => Some(1),
        Resource::Eni => host.eni.map(|q| q.registered),
    }
}

/// A shape with static ports fits once where all of them are free, else not at all.
fn ports_fit(taken: &BTreeSet<u16>, needed: &BTreeSet<u16>) -> u64 {
    u64::from(taken.is_disjoint(needed))
}

fn idle(fits: u64, max: u64) -> f64 {
    if max == 0 {
        0.0
    } else {
        fits as f64 / max as f64
    }
}

/// `fits(h, s) = min_r fits_r(h, s)`; `None` when no resource constrains.
pub fn fits(host: &HostInput, shape: &TaskShape) -> Option<u64> {
    Resource::ALL
        .iter()
        .filter_map(|&r| fits_by(host, shape, r))
        .min()
}

/// A countable resource of one host, against the largest task.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ResourceFigures {
    pub registered: u64,
    pub reserved: u64,
    pub remaining: u64,
    /// More copies of the largest task by this resource alone; null when it does not constrain.
    pub fits: Option<u64>,
    /// Copies the empty host would take by this resource alone.
    pub max: Option<u64>,
    /// fits / max (0 when max is 0).
    pub idle: Option<f64>,
}

/// Static ports of one host, against the largest task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortFigures {
    pub taken: BTreeSet<u16>,
    /// The largest task's static ports.
    pub needed: BTreeSet<u16>,
    /// Needed ports that are taken here.
    pub conflicts: BTreeSet<u16>,
    pub fits: Option<u64>,
    pub max: Option<u64>,
    pub idle: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostResources {
    pub cpu: ResourceFigures,
    pub memory: ResourceFigures,
    pub ports: PortFigures,
    pub ports_udp: PortFigures,
    /// Null when the host's ENI picture is unknown.
    pub eni: Option<ResourceFigures>,
}

/// How many more copies of one shape fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShapeFit {
    /// Shared by every host's entry for the shape: a cluster of 2,000 hosts and 50 shapes has
    /// 100,000 of them, and one string allocation each was a tenth of `cluster`'s time.
    #[serde(serialize_with = "serialize_name")]
    pub name: Arc<str>,
    /// Null when nothing the shape needs constrains.
    pub fits: Option<u64>,
}

/// One host's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostCapacity {
    pub name: String,
    /// More copies of the largest task that fit here (min over resources); null without a shape or
    /// when nothing the largest task needs constrains this host.
    pub spare_tasks: Option<u64>,
    /// Min over the resources the largest task needs of fits / max.
    pub idle_fraction: Option<f64>,
    pub per_resource: HostResources,
    pub shapes: Vec<ShapeFit>,
}

/// One resource's figures as the metrics want them: only resources that constrain this host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourceFit {
    pub resource: Resource,
    pub fits: u64,
    pub idle: f64,
}

impl HostCapacity {
    /// `(resource, fits, idle)` for every resource that constrains this host, in `Resource::ALL`
    /// order.
    pub fn by_resource(&self) -> Vec<ResourceFit> {
        let p = &self.per_resource;
        let pairs = [
            (Resource::Cpu, p.cpu.fits, p.cpu.idle),
            (Resource::Memory, p.memory.fits, p.memory.idle),
            (Resource::Ports, p.ports.fits, p.ports.idle),
            (Resource::PortsUdp, p.ports_udp.fits, p.ports_udp.idle),
            (
                Resource::Eni,
                p.eni.and_then(|e| e.fits),
                p.eni.and_then(|e| e.idle),
            ),
        ];
        pairs
            .into_iter()
            .filter_map(|(resource, fits, idle)| {
                Some(ResourceFit {
                    resource,
                    fits: fits?,
                    idle: idle?,
                })
            })
            .collect()
    }
}

/// The cluster's figures for one resource alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ResourceTotal {
    /// Σ_h fits_r(h, largest): copies of the largest task by this resource alone.
    pub capacity: u64,
    /// Σ_h idle_r(h).
    pub idle_hosts: f64,
    /// Hosts this resource could not be judged on (ENI picture unknown); always 0 for the others.
    pub unknown_hosts: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterResources {
    pub cpu: Option<ResourceTotal>,
    pub memory: Option<ResourceTotal>,
    pub ports: Option<ResourceTotal>,
    pub ports_udp: Option<ResourceTotal>,
    pub eni: Option<ResourceTotal>,
}

impl ClusterResources {
    pub fn get(&self, r: Resource) -> Option<&ResourceTotal> {
        match r {
            Resource::Cpu => self.cpu.as_ref(),
            Resource::Memory => self.memory.as_ref(),
            Resource::Ports => self.ports.as_ref(),
            Resource::PortsUdp => self.ports_udp.as_ref(),
            Resource::Eni => self.eni.as_ref(),
        }
    }
}

/// The figures and decisions over a set of hosts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterCapacity {
    /// Σ_h spare tasks.
    pub container_capacity: u64,
    /// min_r Σ_h idle_r(h) (the classic formula).
    pub idle_host_capacity: f64,
    /// Σ_h min_r idle_r(h): never above the classic one.
    pub idle_host_capacity_conservative: f64,
    /// ContainerCapacity < threshold.
    pub scale_out: bool,
    /// IdleHostCapacity > 1.0, strictly.
    pub scale_in: bool,
    pub scale_out_threshold: f64,
    pub largest_task: Option<TaskShape>,
    pub per_resource: ClusterResources,
    pub shapes: Vec<ShapeFit>,
    pub hosts: Vec<HostCapacity>,
}

fn resource_figures(
    q: Quantity,
    host: &HostInput,
    largest: Option<&TaskShape>,
    r: Resource,
) -> ResourceFigures {
    let (fits, max) = match largest {
        Some(l) => (fits_by(host, l, r), max_by(host, l, r)),
        None => (None, None),
    };
    ResourceFigures {
        registered: q.registered,
        reserved: q.reserved,
        remaining: q.remaining(),
        fits,
        max,
        idle: fits.zip(max).map(|(f, m)| idle(f, m)),
    }
}

fn port_figures(
    taken: &BTreeSet<u16>,
    host: &HostInput,
    largest: Option<&TaskShape>,
    r: Resource,
) -> PortFigures {
    let needed = match (largest, r) {
        (Some(l), Resource::Ports) => l.tcp_ports.clone(),
        (Some(l), _) => l.udp_ports.clone(),
        (None, _) => BTreeSet::new(),
    };
    let (fits, max) = match largest {
        Some(l) => (fits_by(host, l, r), max_by(host, l, r)),
        None => (None, None),
    };
    PortFigures {
        taken: taken.clone(),
        conflicts: taken.intersection(&needed).copied().collect(),
        needed,
        fits,
        max,
        idle: fits.zip(max).map(|(f, m)| idle(f, m)),
    }
}

fn serialize_name<S: serde::Serializer>(name: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name)
}

fn shape_names(shapes: &[TaskShape]) -> Vec<Arc<str>> {
    shapes.iter().map(|s| Arc::from(s.name.as_str())).collect()
}

/// One host against the largest task and every shape.
pub fn host_capacity(
    host: &HostInput,
    largest: Option<&TaskShape>,
    shapes: &[TaskShape],
) -> HostCapacity {
    host_capacity_named(host, largest, shapes, &shape_names(shapes))
}

/// `host_capacity` with the shapes' names made once for all hosts.
fn host_capacity_named(
    host: &HostInput,
    largest: Option<&TaskShape>,
    shapes: &[TaskShape],
    names: &[Arc<str>],
) -> HostCapacity {
    let per_resource = HostResources {
        cpu: resource_figures(host.cpu_units, host, largest, Resource::Cpu),
        memory: resource_figures(host.memory_mib, host, largest, Resource::Memory),
        ports: port_figures(&host.taken_tcp_ports, host, largest, Resource::Ports),
        ports_udp: port_figures(&host.taken_udp_ports, host, largest, Resource::PortsUdp),
        eni: host
            .eni
            .map(|q| resource_figures(q, host, largest, Resource::Eni)),
    };
    let mut capacity = HostCapacity {
        name: host.name.clone(),
        spare_tasks: None,
        idle_fraction: None,
        per_resource,
        shapes: shapes
            .iter()
            .zip(names)
            .map(|(s, name)| ShapeFit {
                name: name.clone(),
                fits: fits(host, s),
            })
            .collect(),
    };
    let constraining = capacity.by_resource();
    capacity.spare_tasks = constraining.iter().map(|f| f.fits).min();
    capacity.idle_fraction = constraining.iter().map(|f| f.idle).reduce(f64::min);
    capacity
}

/// The whole model over a set of hosts. The largest task is taken across `shapes`; shapes that need
/// nothing at all are ignored.
pub fn compute(
    hosts: &[HostInput],
    shapes: &[TaskShape],
    scale_out_threshold: f64,
) -> ClusterCapacity {
    let shapes: Vec<TaskShape> = shapes
        .iter()
        .filter(|s| s.needs_anything())
        .cloned()
        .collect();
    let largest = largest_task(&shapes);
    let names = shape_names(&shapes);
    let host_capacities: Vec<HostCapacity> = hosts
        .iter()
        .map(|h| host_capacity_named(h, largest.as_ref(), &shapes, &names))
        .collect();

    let total = |r: Resource| -> Option<ResourceTotal> {
        let l = largest.as_ref()?;
        if !r.needed_by(l) {
            return None;
        }
        let mut t = ResourceTotal {
            capacity: 0,
            idle_hosts: 0.0,
            unknown_hosts: 0,
        };
        for h in hosts {
            match fits_by(h, l, r).zip(max_by(h, l, r)) {
                Some((f, m)) => {
                    t.capacity = t.capacity.saturating_add(f);
                    t.idle_hosts += idle(f, m);
                }
                None => {
                    // Only an unknown ENI picture gets here: it does not constrain the host.
                    t.unknown_hosts += 1;
                    t.idle_hosts += 1.0;
                }
            }
        }
        if t.unknown_hosts == hosts.len() as u64 && !hosts.is_empty() {
            return None;
        }
        Some(t)
    };
    let per_resource = ClusterResources {
        cpu: total(Resource::Cpu),
        memory: total(Resource::Memory),
        ports: total(Resource::Ports),
        ports_udp: total(Resource::PortsUdp),
        eni: total(Resource::Eni),
    };

    let container_capacity = host_capacities
        .iter()
        .filter_map(|h| h.spare_tasks)
        .fold(0u64, u64::saturating_add);
    let idle_host_capacity = Resource::ALL
        .iter()
        .filter_map(|&r| per_resource.get(r).map(|t| t.idle_hosts))
        .reduce(f64::min)
        .unwrap_or(0.0);
    let idle_host_capacity_conservative =
        host_capacities.iter().filter_map(|h| h.idle_fraction).sum();
    let shape_totals = names
        .iter()
        .enumerate()
        .map(|(i, name)| ShapeFit {
            name: name.clone(),
            fits: host_capacities
                .iter()
                .filter_map(|h| h.shapes[i].fits)
                .reduce(u64::saturating_add),
        })
        .collect();

    let planned = largest.is_some();
    ClusterCapacity {
        container_capacity,
        idle_host_capacity,
        idle_host_capacity_conservative,
        scale_out: planned && (container_capacity as f64) < scale_out_threshold,
        scale_in: planned && idle_host_capacity > 1.0 + SCALE_IN_EPSILON,
        scale_out_threshold,
        largest_task: largest,
        per_resource,
        shapes: shape_totals,
        hosts: host_capacities,
    }
}

#[cfg(test)]
mod tests;
