//! From one host snapshot to its capacity figures: the snapshot's registered and reserved resources
//! become a `capacity::HostInput`, the cluster's task shapes the shapes to plan for, and what ECS
//! says of this container instance decides whether the host offers room at all and, when the local
//! figures keep disagreeing with ECS's, whose figures count. Pure, so the daemon, `status` and the
//! tests share it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::capacity::{self, Definition, HostCapacity, HostInput, Quantity, TaskShape};
use crate::cluster::{self, Instance};
use crate::config::CapacityConfig;
use crate::ecs::{Agreement, ClusterShapes, EcsReading, EcsView, Placement, difference};
use crate::host::{NetworkMode, Snapshot, Task, tasks};

/// The host as the capacity model sees it. Ports taken are the agent-reserved ones plus those bound by
/// running tasks, as ECS's remainingResources PORTS lists them. The name is the instance id, else the
/// hostname the observer read. ENI slots are unknown (and do not
/// constrain) until the instance type's limit is known.
pub fn host_input(s: &Snapshot) -> HostInput {
    HostInput {
        name: host_name(s),
        cpu_units: Quantity::new(s.registered.cpu_units, s.reserved.cpu_units),
        memory_mib: Quantity::new(s.registered.memory_mib, s.reserved.memory_mib),
        taken_tcp_ports: s
            .registered
            .reserved_tcp_ports
            .union(&s.reserved.tcp_ports)
            .copied()
            .collect(),
        taken_udp_ports: s
            .registered
            .reserved_udp_ports
            .union(&s.reserved.udp_ports)
            .copied()
            .collect(),
        eni: s
            .eni
            .slots
            .map(|slots| Quantity::new(u64::from(slots), u64::from(s.eni.used))),
    }
}

fn host_name(s: &Snapshot) -> String {
    s.ecs
        .instance_id
        .clone()
        .unwrap_or_else(|| s.hostname.clone())
}

/// The host as ECS's DescribeContainerInstances answer shows it, through the `cluster` command's
/// own conversion (so the daemon and `cluster --cluster` compute the same figures from the same
/// ECS state); `None` when `cluster` would not count it (not ACTIVE, agent disconnected).
pub fn ecs_host_input(
    s: &Snapshot,
    instance: &Instance,
    shapes: &[TaskShape],
) -> Option<HostInput> {
    let inputs = cluster::Inputs {
        instances: vec![Instance {
            ec2_instance_id: Some(host_name(s)),
            ..instance.clone()
        }],
        shapes: shapes.to_vec(),
        eni_limits: instance
            .instance_type
            .clone()
            .zip(s.eni.limit)
            .map(|(t, l)| BTreeMap::from([(t, l)])),
        awsvpc_tasks: Some(BTreeMap::from([(instance.arn.clone(), s.eni.used)])),
    };
    cluster::hosts(&inputs).0.into_iter().next()
}

/// A running task's needs as a shape (named by family), from Docker: what a new copy needs, so each
/// container's hard memory limit when set, else its soft reservation (the agent's pause container
/// is not the task's). Only used when no task definition is known.
pub fn shape_of(task: &Task) -> TaskShape {
    let memory_mib = if task.containers.is_empty() {
        task.memory_mib
    } else {
        task.containers
            .iter()
            .filter(|c| c.name != crate::docker::PAUSE_CONTAINER_NAME)
            .map(|c| c.memory_limit_mib.or(c.memory_reservation_mib).unwrap_or(0))
            .sum()
    };
    TaskShape {
        name: task.family.clone(),
        cpu_units: task.cpu_units,
        memory_mib: memory_mib.max(task.memory_mib),
        tcp_ports: task.tcp_ports.clone(),
        udp_ports: task.udp_ports.clone(),
        awsvpc: task.network_mode == NetworkMode::Awsvpc,
    }
}

/// Where the planned-for shapes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeSource {
    /// `capacity.task_shapes`.
    Configured,
    /// The task definitions of the cluster's (non-DAEMON) services: the same set on every host.
    ClusterServices,
    /// The tasks running on this host: the fallback when there is no other source (AWS off).
    RunningTasks,
}

impl ShapeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ShapeSource::Configured => "configured",
            ShapeSource::ClusterServices => "cluster services",
            ShapeSource::RunningTasks => "running tasks",
        }
    }
}

/// The shapes to plan for: every configured one, then (when `discover_shapes`) the cluster's
/// services' shapes not configured by name; only when there are none of those, one per family
/// running here and not configured, taking per family the largest need across its running copies.
pub fn shapes(
    cfg: &CapacityConfig,
    s: &Snapshot,
    cluster: Option<&ClusterShapes>,
) -> (Vec<TaskShape>, Vec<ShapeSource>) {
    let mut shapes: Vec<TaskShape> = cfg.task_shapes.iter().map(TaskShape::from).collect();
    let mut sources = Vec::new();
    if !shapes.is_empty() {
        sources.push(ShapeSource::Configured);
    }
    if !cfg.discover_shapes {
        return (shapes, sources);
    }
    let from_cluster: Vec<TaskShape> = cluster
        .map(|c| c.shapes().0)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !shapes.iter().any(|s| s.name == c.name))
        .collect();
    if !from_cluster.is_empty() {
        shapes.extend(from_cluster);
        sources.push(ShapeSource::ClusterServices);
        return (shapes, sources);
    }
    if cluster.is_some_and(|c| !c.services.is_empty()) {
        // The cluster's shapes are all configured by name: they are the set.
        return (shapes, sources);
    }
    let mut discovered: BTreeMap<String, TaskShape> = BTreeMap::new();
    for task in &s.tasks {
        if shapes.iter().any(|c| c.name == task.family) {
            continue;
        }
        let shape = shape_of(task);
        discovered
            .entry(task.family.clone())
            .and_modify(|d| {
                d.cpu_units = d.cpu_units.max(shape.cpu_units);
                d.memory_mib = d.memory_mib.max(shape.memory_mib);
                d.tcp_ports.extend(&shape.tcp_ports);
                d.udp_ports.extend(&shape.udp_ports);
                d.awsvpc |= shape.awsvpc;
            })
            .or_insert(shape);
    }
    if !discovered.is_empty() {
        sources.push(ShapeSource::RunningTasks);
    }
    shapes.extend(discovered.into_values());
    (shapes, sources)
}

/// Puts the task definitions' reservations on the snapshot's tasks (see
/// [`tasks::apply_definitions`]), reserves the DAEMON services not running here yet, and sums
/// again.
pub fn apply_definitions(
    s: &mut Snapshot,
    definitions: &BTreeMap<String, Arc<Definition>>,
    daemons: &[Definition],
) {
    let lookup = |key: &str| definitions.get(key).and_then(|d| d.reservation().ok());
    tasks::apply_definitions(&mut s.tasks, &lookup);
    let overhead = tasks::daemon_overhead(&s.tasks, daemons);
    s.reserved = tasks::reserved(&s.tasks);
    s.reserved.add_overhead(&overhead);
    s.eni.used = s.reserved.awsvpc_tasks;
}

/// What ECS has told about this host, for one assessment.
#[derive(Debug, Clone, Default)]
pub struct EcsContext {
    /// AWS is on: the figures wait for ECS's first answer.
    pub aws: bool,
    /// The last successful reconciliation.
    pub reading: Option<Arc<EcsReading>>,
    /// Why the latest reconciliation failed, when it did.
    pub error: Option<String>,
    /// IMDS `autoscaling/target-lifecycle-state`; `None` when there is none.
    pub lifecycle: Option<String>,
    /// The count of disagreements so far.
    pub agreement: Agreement,
}

/// This host's capacity and the decisions around it.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub shapes: Vec<TaskShape>,
    pub shape_sources: Vec<ShapeSource>,
    pub capacity: HostCapacity,
    pub placement: Placement,
    pub ecs: Option<EcsView>,
    pub agreement: Agreement,
    /// Why the capacity figures are not known (then nothing is published for them).
    pub capacity_unknown: Option<String>,
}

/// Assesses `s` (its task reservations already applied) against the shapes and what ECS says.
pub fn assess(
    s: &mut Snapshot,
    cfg: &CapacityConfig,
    cluster: Option<&ClusterShapes>,
    ctx: &EcsContext,
) -> Assessment {
    let (shapes, shape_sources) = shapes(cfg, s, cluster);
    let largest = capacity::largest_task(&shapes);
    let ecs_instance: Option<Option<&Instance>> = ctx
        .reading
        .as_deref()
        .and_then(|r| r.instance.as_ref().ok())
        .map(Option::as_ref);
    if let Some(Some(i)) = ecs_instance {
        // Trunking as ECS reports it at each reconciliation (the attribute is set once the trunk
        // is attached), through the one ENI-slot rule.
        let (slots, note) =
            crate::eni::slots(s.eni.limit, Some(i.trunk), i.instance_type.as_deref());
        s.eni.trunk = Some(i.trunk);
        s.eni.slots = slots;
        s.eni.note = note;
    }
    let local = host_input(s);
    let mut agreement = ctx.agreement;
    let mut view = None;
    let mut input = local.clone();
    if let (Some(reading), Some(ecs)) = (ctx.reading.as_deref(), ecs_instance) {
        let mut v = EcsView {
            reconciled_at: Some(crate::rfc3339::format(reading.at)),
            registered: Some(ecs.is_some()),
            error: ctx.error.clone(),
            ..EcsView::default()
        };
        if let Some(i) = ecs {
            v.status = Some(i.status.clone());
            v.agent_connected = i.agent_connected;
            v.cpu_units = Some(i.cpu_units);
            v.memory_mib = Some(i.memory_mib);
            v.trunk = Some(i.trunk);
            v.cpu_reserved_difference =
                Some(difference(local.cpu_units.reserved, i.cpu_units.reserved));
            v.memory_reserved_difference =
                Some(difference(local.memory_mib.reserved, i.memory_mib.reserved));
            if s.tasks_known {
                agreement.update(
                    reading.seq,
                    [local.cpu_units, local.memory_mib],
                    [i.cpu_units, i.memory_mib],
                );
            }
            if (agreement.ecs_wins() || !s.tasks_known)
                && let Some(from_ecs) = ecs_host_input(s, i, &shapes)
            {
                input = from_ecs;
                v.figures_from_ecs = true;
            }
        }
        v.disagreements = agreement.disagreements;
        view = Some(v);
    } else if let Some(e) = &ctx.error {
        view = Some(EcsView {
            error: Some(e.clone()),
            ..EcsView::default()
        });
    }
    let placement = crate::ecs::placement(ctx.lifecycle.as_deref(), ecs_instance);
    let ecs_known = ecs_instance.is_some();
    let capacity_unknown = if !s.tasks_known && !ecs_known {
        Some(if ctx.aws {
            "neither Docker has been listed nor ECS has answered yet".to_string()
        } else {
            "Docker has not been listed yet".to_string()
        })
    } else if ctx.aws && !ecs_known {
        Some("waiting for ECS's first answer about this container instance".to_string())
    } else if largest.is_none() {
        Some("no task shape: none configured, no cluster service, no task running".to_string())
    } else {
        None
    };
    let capacity = capacity::host_capacity(&input, largest.as_ref(), &shapes);
    Assessment {
        shapes,
        shape_sources,
        capacity,
        placement,
        ecs: view,
        agreement,
        capacity_unknown,
    }
}

/// This host's capacity against `shapes`.
pub fn host_capacity(s: &Snapshot, shapes: &[TaskShape]) -> HostCapacity {
    let host = host_input(s);
    let largest = capacity::largest_task(shapes);
    capacity::host_capacity(&host, largest.as_ref(), shapes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::SystemTime;

    use super::*;
    use crate::config::TaskShapeConfig;
    use crate::host::Registered;

    fn snapshot(tasks: Vec<Task>, eni_slots: Option<u32>) -> Snapshot {
        let reserved = crate::host::tasks::reserved(&tasks);
        Snapshot {
            taken_at: SystemTime::UNIX_EPOCH,
            registered: Registered {
                cpu_units: 2048,
                memory_mib: 3800,
                reserved_tcp_ports: [22, 2375, 2376, 51678, 51679].into(),
                reserved_udp_ports: BTreeSet::new(),
            },
            tasks_known: true,
            tasks,
            others: Vec::new(),
            reserved,
            usage: None,
            eni: crate::host::EniView {
                slots: eni_slots,
                used: 0,
                ..Default::default()
            },
            ecs: crate::host::EcsAgentView {
                instance_id: Some("i-0123456789abcdef0".into()),
                ..Default::default()
            },
            unavailable: Vec::new(),
            hostname: "ip-10-0-0-1".into(),
        }
    }

    fn task(family: &str, cpu: u64, mem: u64, tcp: &[u16]) -> Task {
        Task {
            arn: format!("arn:aws:ecs:us-east-1:123456789012:task/c/{family}{cpu}"),
            family: family.into(),
            revision: "1".into(),
            network_mode: NetworkMode::Bridge,
            cpu_units: cpu,
            memory_mib: mem,
            tcp_ports: tcp.iter().copied().collect(),
            udp_ports: BTreeSet::new(),
            containers: Vec::new(),
            known_status: None,
            desired_status: None,
            usage: None,
            reserved_by: crate::host::ReservedBy::Docker,
        }
    }

    #[test]
    fn ports_taken_are_the_agent_reserved_ones_plus_those_tasks_bind() {
        let s = snapshot(vec![task("web", 256, 512, &[8080])], None);
        let host = host_input(&s);
        assert_eq!(
            host.taken_tcp_ports,
            [22, 2375, 2376, 8080, 51678, 51679].into()
        );
        assert_eq!(host.cpu_units, Quantity::new(2048, 256));
        assert_eq!(host.memory_mib, Quantity::new(3800, 512));
        assert_eq!(host.name, "i-0123456789abcdef0");
    }

    fn reading(instance: Option<Instance>) -> Arc<EcsReading> {
        Arc::new(EcsReading {
            seq: 1,
            at: SystemTime::UNIX_EPOCH,
            instance: Ok(instance),
        })
    }

    fn ecs_instance(trunk: bool, cpu_reserved: u64) -> Instance {
        Instance {
            arn: "arn:aws:ecs:us-east-1:1:container-instance/c/1".into(),
            ec2_instance_id: Some("i-0123456789abcdef0".into()),
            status: "ACTIVE".into(),
            instance_type: Some("c5.large".into()),
            cpu_units: Quantity::new(2048, cpu_reserved),
            memory_mib: Quantity::new(3800, 0),
            agent_connected: Some(true),
            trunk,
            ..Instance::default()
        }
    }

    fn big() -> CapacityConfig {
        CapacityConfig {
            task_shapes: vec![TaskShapeConfig {
                name: "big".into(),
                cpu_units: 512,
                memory_mib: 512,
                ports: vec![],
                ports_udp: vec![],
                awsvpc: true,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn trunking_comes_from_the_ecs_attribute_at_each_reconciliation() {
        let mut s = snapshot(vec![], None);
        s.eni.limit = Some(3);
        let ctx = |trunk| EcsContext {
            aws: true,
            reading: Some(reading(Some(ecs_instance(trunk, 0)))),
            ..EcsContext::default()
        };
        assess(&mut s, &big(), None, &ctx(true));
        assert_eq!((s.eni.trunk, s.eni.slots), (Some(true), Some(10)));
        assess(&mut s, &big(), None, &ctx(false));
        assert_eq!((s.eni.trunk, s.eni.slots), (Some(false), Some(2)));
    }

    #[test]
    fn no_figure_before_docker_and_ecs_have_answered_and_an_idle_host_offers_all() {
        let ctx = EcsContext {
            aws: true,
            ..EcsContext::default()
        };
        let mut s = snapshot(vec![], None);
        s.tasks_known = false;
        let a = assess(&mut s, &big(), None, &ctx);
        assert!(a.capacity_unknown.is_some(), "{a:?}");
        // Docker listed, ECS not asked yet: still unknown with AWS on.
        let mut s = snapshot(vec![], None);
        let a = assess(&mut s, &big(), None, &ctx);
        assert!(a.capacity_unknown.is_some(), "{a:?}");
        // Both known, idle: the full host.
        let ctx = EcsContext {
            reading: Some(reading(Some(ecs_instance(false, 0)))),
            ..ctx
        };
        let a = assess(&mut s, &big(), None, &ctx);
        assert_eq!(a.capacity_unknown, None);
        assert_eq!(a.placement.placeable, Some(true));
        assert_eq!(a.capacity.spare_tasks, Some(4));
        assert_eq!(a.capacity.idle_fraction, Some(1.0));
    }

    #[test]
    fn ecs_figures_win_after_three_disagreements_and_when_docker_is_unknown() {
        let mut s = snapshot(vec![], None);
        let mut ctx = EcsContext {
            aws: true,
            ..EcsContext::default()
        };
        for seq in 1..=3 {
            ctx.reading = Some(Arc::new(EcsReading {
                seq,
                at: SystemTime::UNIX_EPOCH,
                instance: Ok(Some(ecs_instance(false, 1536))),
            }));
            let a = assess(&mut s, &big(), None, &ctx);
            ctx.agreement = a.agreement;
            let from_ecs = a.ecs.as_ref().unwrap().figures_from_ecs;
            assert_eq!(from_ecs, seq == 3, "reconciliation {seq}: {a:?}");
            assert_eq!(a.capacity.spare_tasks, Some(if seq == 3 { 1 } else { 4 }));
            assert_eq!(a.ecs.unwrap().cpu_reserved_difference, Some(-1536));
        }
        // Docker not listed (a restart with tasks running): ECS's figures, never an empty host.
        let mut fresh = snapshot(vec![], None);
        fresh.tasks_known = false;
        let ctx = EcsContext {
            aws: true,
            reading: Some(reading(Some(ecs_instance(false, 1536)))),
            ..EcsContext::default()
        };
        let a = assess(&mut fresh, &big(), None, &ctx);
        assert_eq!(a.capacity_unknown, None);
        assert_eq!(a.capacity.spare_tasks, Some(1));
    }

    #[test]
    fn a_discovered_shape_needs_each_containers_hard_limit() {
        let mut t = task("web", 256, 32, &[]);
        t.containers = vec![crate::host::TaskContainer {
            id: "c".into(),
            name: "app".into(),
            docker_name: "ecs-web-1-app".into(),
            cpu_shares: 256,
            memory_limit_mib: Some(128),
            memory_reservation_mib: Some(32),
            tcp_ports: BTreeSet::new(),
            udp_ports: BTreeSet::new(),
            network_mode: "bridge".into(),
            usage: None,
        }];
        assert_eq!(shape_of(&t).memory_mib, 128);
    }

    #[test]
    fn without_an_instance_id_the_host_goes_by_its_hostname() {
        let mut s = snapshot(vec![], None);
        s.ecs.instance_id = None;
        assert_eq!(host_input(&s).name, "ip-10-0-0-1");
    }

    #[test]
    fn unknown_eni_slots_do_not_constrain() {
        assert_eq!(host_input(&snapshot(vec![], None)).eni, None);
        assert_eq!(
            host_input(&snapshot(vec![], Some(2))).eni,
            Some(Quantity::new(2, 0))
        );
    }

    #[test]
    fn discovered_shapes_take_each_familys_largest_need_and_configured_ones_win() {
        let cfg = CapacityConfig {
            discover_shapes: true,
            task_shapes: vec![TaskShapeConfig {
                name: "api".into(),
                cpu_units: 1024,
                memory_mib: 2048,
                ports: vec![],
                ports_udp: vec![],
                awsvpc: false,
            }],
            ..Default::default()
        };
        let s = snapshot(
            vec![
                task("web", 256, 512, &[8080]),
                task("web", 512, 256, &[]),
                task("api", 10, 10, &[]),
            ],
            None,
        );
        let (shapes, sources) = shapes(&cfg, &s, None);
        assert_eq!(
            sources,
            [ShapeSource::Configured, ShapeSource::RunningTasks]
        );
        assert_eq!(shapes.len(), 2);
        assert_eq!(
            (shapes[0].name.as_str(), shapes[0].cpu_units),
            ("api", 1024)
        );
        assert_eq!(shapes[1].name, "web");
        assert_eq!((shapes[1].cpu_units, shapes[1].memory_mib), (512, 512));
        assert_eq!(shapes[1].tcp_ports, [8080].into());
    }

    #[test]
    fn without_discovery_only_configured_shapes_count() {
        let cfg = CapacityConfig {
            discover_shapes: false,
            ..Default::default()
        };
        let s = snapshot(vec![task("web", 256, 512, &[])], None);
        assert!(shapes(&cfg, &s, None).0.is_empty());
        assert_eq!(host_capacity(&s, &[]).spare_tasks, None);
    }

    #[test]
    fn spare_tasks_follow_the_tightest_resource() {
        // 2048 − 512 = 1536 CPU units → 3 of 512; 3800 − 1024 = 2776 MiB → 2 of 1024.
        let s = snapshot(
            vec![task("web", 256, 512, &[]), task("web", 256, 512, &[])],
            None,
        );
        let shape = TaskShape {
            name: "big".into(),
            cpu_units: 512,
            memory_mib: 1024,
            ..Default::default()
        };
        let r = host_capacity(&s, &[shape]);
        assert_eq!(r.spare_tasks, Some(2));
    }
}
