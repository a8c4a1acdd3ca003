//! From one host snapshot to its capacity figures: the snapshot's registered and reserved resources
//! become a `capacity::HostInput`, the configured and discovered task shapes the shapes to plan for.
//! Pure, so the daemon, `status` and the tests share it.

use std::collections::BTreeMap;

use crate::capacity::{self, HostCapacity, HostInput, Quantity, TaskShape};
use crate::config::CapacityConfig;
use crate::host::{NetworkMode, Snapshot, Task};

/// The host as the capacity model sees it. Ports taken are the agent-reserved ones plus those bound by
/// running tasks, as ECS's remainingResources PORTS lists them. The name is the instance id, else the
/// hostname the observer read. ENI slots are unknown (and do not
/// constrain) until the instance type's limit is known.
pub fn host_input(s: &Snapshot) -> HostInput {
    let name = s
        .ecs
        .instance_id
        .clone()
        .unwrap_or_else(|| s.hostname.clone());
    HostInput {
        name,
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

/// A running task's needs as a shape (named by family). The Docker view knows the containers'
/// reservations, not the task definition's task-level values; for bridge and host tasks those are
/// the same figures ECS reserved.
pub fn shape_of(task: &Task) -> TaskShape {
    TaskShape {
        name: task.family.clone(),
        cpu_units: task.cpu_units,
        memory_mib: task.memory_mib,
        tcp_ports: task.tcp_ports.clone(),
        udp_ports: task.udp_ports.clone(),
        awsvpc: task.network_mode == NetworkMode::Awsvpc,
    }
}

/// The shapes to plan for: every configured one, then (when `discover_shapes`) one per family running
/// here and not configured, taking per family the largest need across its running copies.
pub fn shapes(cfg: &CapacityConfig, s: &Snapshot) -> Vec<TaskShape> {
    let mut shapes: Vec<TaskShape> = cfg.task_shapes.iter().map(TaskShape::from).collect();
    if cfg.discover_shapes {
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
        shapes.extend(discovered.into_values());
    }
    shapes
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
        let shapes = shapes(&cfg, &s);
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
        assert!(shapes(&cfg, &s).is_empty());
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
