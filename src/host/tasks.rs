//! Grouping Docker containers into ECS tasks and adding up what they reserve. Pure.
//!
//! What a task reserves follows the ECS scheduler's accounting: CPU units are the containers' `cpu`
//! (which the ECS agent passes to Docker as CpuShares); memory is a container's `memoryReservation`
//! (Docker MemoryReservation) when set, else its `memory` hard limit (Docker Memory) — the ECS
//! ContainerDefinition reference: "If you specify memoryReservation, then that value is subtracted
//! from the available memory resources for the container instance … Otherwise, the value of memory
//! is used." Task-level cpu/memory are not visible in Docker (they live on the task cgroup), nor is a
//! pending task or an exited container: so where its task definition is known, a task reserves what
//! the definition says ([`apply_definitions`]), and Docker's figures are the fallback.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::usage::Usage;
pub use crate::capacity::NetworkMode;
use crate::capacity::{Definition, TaskShape, definition_key};
use crate::docker::{ContainerInfo, PAUSE_CONTAINER_NAME};

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskContainer {
    pub id: String,
    /// The container's name in the task definition.
    pub name: String,
    pub docker_name: String,
    pub cpu_shares: u64,
    pub memory_limit_mib: Option<u64>,
    pub memory_reservation_mib: Option<u64>,
    pub tcp_ports: BTreeSet<u16>,
    pub udp_ports: BTreeSet<u16>,
    pub network_mode: String,
    pub usage: Option<Usage>,
}

/// Where a task's reservation was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservedBy {
    /// Its task definition, by ECS's rules.
    TaskDefinition,
    /// Its running containers' Docker figures (the task definition is unknown).
    #[default]
    Docker,
}

/// The CpuShares the ECS agent gives a container whose `cpu` is 0 (Docker's minimum): ECS counts
/// it as 0 CPU units.
pub const MIN_CPU_SHARES: u64 = 2;

/// One ECS task on this host: running in Docker, or placed by ECS and known to the ECS agent only
/// (PENDING: no container of it runs yet).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    pub arn: String,
    pub family: String,
    pub revision: String,
    pub network_mode: NetworkMode,
    /// CPU units the task reserves on this instance.
    pub cpu_units: u64,
    /// Memory MiB the task reserves on this instance.
    pub memory_mib: u64,
    pub tcp_ports: BTreeSet<u16>,
    pub udp_ports: BTreeSet<u16>,
    pub containers: Vec<TaskContainer>,
    /// From the ECS agent's introspection API; `None` when the agent did not answer.
    pub known_status: Option<String>,
    pub desired_status: Option<String>,
    /// Summed over the task's containers; `None` when no container's cgroup could be read.
    pub usage: Option<Usage>,
    pub reserved_by: ReservedBy,
}

impl Task {
    /// `family:revision` of its task definition.
    pub fn definition_key(&self) -> String {
        definition_key(&self.family, &self.revision)
    }

    /// The task id for display: [`task_id`], else the whole ARN.
    pub fn id(&self) -> &str {
        task_id(&self.arn).unwrap_or(&self.arn)
    }
}

/// The task id an ECS task ARN ends with, for both ARN formats
/// (`arn:aws:ecs:<region>:<account>:task/<cluster>/<id>` and the older `…:task/<id>`); `None` for
/// anything that is not a task ARN or has no id after the last `/`.
pub fn task_id(arn: &str) -> Option<&str> {
    let (_, resource) = arn.split_once(":task/")?;
    let id = resource.rsplit('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// A running container that is not part of an ECS task. Listed, never counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OtherContainer {
    pub id: String,
    pub name: String,
    pub network_mode: String,
    pub tcp_ports: BTreeSet<u16>,
    pub udp_ports: BTreeSet<u16>,
}

/// What the running tasks reserve, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reserved {
    pub cpu_units: u64,
    pub memory_mib: u64,
    pub tcp_ports: BTreeSet<u16>,
    pub udp_ports: BTreeSet<u16>,
    /// One ENI (or branch ENI) each.
    pub awsvpc_tasks: u32,
    /// DAEMON services whose task is not running here yet, reserved ahead (included above).
    pub daemon_overhead: Vec<String>,
}

impl Reserved {
    /// Adds what the DAEMON services not running here yet will take.
    pub fn add_overhead(&mut self, overhead: &[TaskShape]) {
        for s in overhead {
            self.cpu_units += s.cpu_units;
            self.memory_mib += s.memory_mib;
            self.tcp_ports.extend(&s.tcp_ports);
            self.udp_ports.extend(&s.udp_ports);
            if s.awsvpc {
                self.awsvpc_tasks += 1;
            }
            self.daemon_overhead.push(s.name.clone());
        }
    }
}

fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

/// Memory a container takes from the instance: the soft reservation when set, else the hard limit.
pub fn container_memory_mib(c: &ContainerInfo) -> u64 {
    c.memory_reservation_bytes
        .or(c.memory_limit_bytes)
        .map(mib_ceil)
        .unwrap_or(0)
}

fn is_pause(c: &ContainerInfo) -> bool {
    c.ecs
        .as_ref()
        .is_some_and(|l| l.container_name == PAUSE_CONTAINER_NAME)
}

fn network_mode(members: &[&ContainerInfo]) -> NetworkMode {
    let ids: BTreeSet<&str> = members.iter().map(|c| c.id.as_str()).collect();
    let joins_member = |c: &&&ContainerInfo| {
        c.network_mode
            .strip_prefix("container:")
            .is_some_and(|target| ids.iter().any(|id| id.starts_with(target) || target == *id))
    };
    if members.iter().any(|c| is_pause(c)) || members.iter().any(|c| joins_member(&c)) {
        return NetworkMode::Awsvpc;
    }
    NetworkMode::parse(
        members
            .iter()
            .map(|c| c.network_mode.as_str())
            .find(|m| !m.starts_with("container:")),
    )
}

/// Groups running containers by task ARN (tasks sorted by ARN, containers by name); containers
/// without the ECS task-ARN label go to the second list.
pub fn group<'a>(
    containers: impl IntoIterator<Item = &'a ContainerInfo>,
) -> (Vec<Task>, Vec<OtherContainer>) {
    let mut by_task: BTreeMap<&str, Vec<&ContainerInfo>> = BTreeMap::new();
    let mut others = Vec::new();
    for c in containers {
        match &c.ecs {
            Some(l) => by_task.entry(l.task_arn.as_str()).or_default().push(c),
            None => others.push(OtherContainer {
                id: c.id.clone(),
                name: c.name.clone(),
                network_mode: c.network_mode.clone(),
                tcp_ports: c.tcp_ports.clone(),
                udp_ports: c.udp_ports.clone(),
            }),
        }
    }
    others.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let tasks = by_task
        .into_iter()
        .map(|(arn, mut members)| {
            members.sort_by(|a, b| {
                let name = |c: &ContainerInfo| c.ecs.as_ref().map(|l| l.container_name.clone());
                name(a).cmp(&name(b)).then(a.id.cmp(&b.id))
            });
            let labels = members[0].ecs.as_ref();
            let mut task = Task {
                arn: arn.to_string(),
                family: labels.map(|l| l.family.clone()).unwrap_or_default(),
                revision: labels.map(|l| l.version.clone()).unwrap_or_default(),
                network_mode: network_mode(&members),
                cpu_units: 0,
                memory_mib: 0,
                tcp_ports: BTreeSet::new(),
                udp_ports: BTreeSet::new(),
                containers: Vec::with_capacity(members.len()),
                known_status: None,
                desired_status: None,
                usage: None,
                reserved_by: ReservedBy::Docker,
            };
            for c in &members {
                // The pause container is the agent's, not part of the task definition: ECS does
                // not count it against the instance.
                if !is_pause(c) {
                    task.cpu_units = task
                        .cpu_units
                        .saturating_add(docker_cpu_units(c.cpu_shares));
                    task.memory_mib = task.memory_mib.saturating_add(container_memory_mib(c));
                }
                task.tcp_ports.extend(&c.tcp_ports);
                task.udp_ports.extend(&c.udp_ports);
                task.containers.push(TaskContainer {
                    id: c.id.clone(),
                    name: c
                        .ecs
                        .as_ref()
                        .map(|l| l.container_name.clone())
                        .unwrap_or_default(),
                    docker_name: c.name.clone(),
                    cpu_shares: c.cpu_shares,
                    memory_limit_mib: c.memory_limit_bytes.map(mib_ceil),
                    memory_reservation_mib: c.memory_reservation_bytes.map(mib_ceil),
                    tcp_ports: c.tcp_ports.clone(),
                    udp_ports: c.udp_ports.clone(),
                    network_mode: c.network_mode.clone(),
                    usage: None,
                });
            }
            task
        })
        .collect();
    (tasks, others)
}

/// CPU units a container reserves, from its CpuShares: the agent's minimum stands for `cpu` 0.
fn docker_cpu_units(cpu_shares: u64) -> u64 {
    if cpu_shares <= MIN_CPU_SHARES {
        0
    } else {
        cpu_shares
    }
}

/// A task the ECS agent knows and Docker does not run (PENDING, or all its containers gone before
/// the agent saw it stop): it reserves as its task definition says, once that is known.
pub fn agent_only(arn: &str, family: &str, revision: &str, known: Option<&str>) -> Task {
    Task {
        arn: arn.to_string(),
        family: family.to_string(),
        revision: revision.to_string(),
        network_mode: NetworkMode::default(),
        cpu_units: 0,
        memory_mib: 0,
        tcp_ports: BTreeSet::new(),
        udp_ports: BTreeSet::new(),
        containers: Vec::new(),
        known_status: known.map(str::to_string),
        desired_status: None,
        usage: None,
        reserved_by: ReservedBy::Docker,
    }
}

/// Sets each task's reservation from its task definition where `definitions` (by
/// `family:revision`) has it: task-level cpu/memory, else the container sums with memory = the
/// soft reservation else the hard limit; the static ports of the definition as well as those
/// Docker shows bound. Tasks whose definition is unknown keep Docker's figures.
pub fn apply_definitions(tasks: &mut [Task], definitions: &dyn Fn(&str) -> Option<TaskShape>) {
    for t in tasks {
        let Some(r) = definitions(&t.definition_key()) else {
            continue;
        };
        t.cpu_units = r.cpu_units;
        t.memory_mib = r.memory_mib;
        t.tcp_ports.extend(&r.tcp_ports);
        t.udp_ports.extend(&r.udp_ports);
        if r.awsvpc {
            t.network_mode = NetworkMode::Awsvpc;
        }
        t.reserved_by = ReservedBy::TaskDefinition;
    }
}

/// The DAEMON services' tasks not running here yet: ECS will place one on this host, so its
/// reservation is spoken for.
pub fn daemon_overhead(tasks: &[Task], daemons: &[Definition]) -> Vec<TaskShape> {
    daemons
        .iter()
        .filter(|d| !tasks.iter().any(|t| t.family == d.family))
        .filter_map(|d| d.reservation().ok())
        .collect()
}

/// Sums the tasks' reservations (saturating: Docker reports whatever a container was given).
pub fn reserved(tasks: &[Task]) -> Reserved {
    let mut r = Reserved::default();
    for t in tasks {
        r.cpu_units = r.cpu_units.saturating_add(t.cpu_units);
        r.memory_mib = r.memory_mib.saturating_add(t.memory_mib);
        r.tcp_ports.extend(&t.tcp_ports);
        r.udp_ports.extend(&t.udp_ports);
        if t.network_mode == NetworkMode::Awsvpc {
            r.awsvpc_tasks += 1;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::EcsLabels;

    fn container(id: &str, task: Option<(&str, &str)>, mode: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: format!("docker-{id}"),
            running: true,
            ecs: task.map(|(arn, name)| EcsLabels {
                task_arn: arn.into(),
                container_name: name.into(),
                family: "web".into(),
                version: "3".into(),
                cluster: Some("prod".into()),
            }),
            cpu_shares: 0,
            memory_limit_bytes: None,
            memory_reservation_bytes: None,
            tcp_ports: BTreeSet::new(),
            udp_ports: BTreeSet::new(),
            network_mode: mode.into(),
            cgroup_parent: None,
        }
    }

    #[test]
    fn soft_reservation_wins_over_hard_limit_and_bytes_round_up_to_mib() {
        let mut c = container("a", Some(("t1", "app")), "bridge");
        c.memory_limit_bytes = Some(512 * MIB);
        c.memory_reservation_bytes = Some(128 * MIB);
        assert_eq!(container_memory_mib(&c), 128);
        c.memory_reservation_bytes = None;
        assert_eq!(container_memory_mib(&c), 512);
        c.memory_limit_bytes = Some(MIB + 1);
        assert_eq!(container_memory_mib(&c), 2);
        c.memory_limit_bytes = None;
        assert_eq!(container_memory_mib(&c), 0);
    }

    #[test]
    fn containers_group_by_task_arn_and_unlabelled_ones_are_never_counted() {
        let mut a = container("a", Some(("arn:task/c/t1", "app")), "bridge");
        a.cpu_shares = 256;
        a.memory_limit_bytes = Some(256 * MIB);
        a.tcp_ports = BTreeSet::from([8080]);
        let mut b = container("b", Some(("arn:task/c/t1", "sidecar")), "bridge");
        b.cpu_shares = 128;
        b.memory_reservation_bytes = Some(64 * MIB);
        b.udp_ports = BTreeSet::from([5353]);
        let mut h = container("h", Some(("arn:task/c/t2", "app")), "host");
        h.cpu_shares = 512;
        h.tcp_ports = BTreeSet::from([9000]);
        let mut other = container("x", None, "host");
        other.cpu_shares = 4096;
        other.tcp_ports = BTreeSet::from([22]);
        let (tasks, others) = group([&h, &b, &other, &a]);
        assert_eq!(tasks.len(), 2);
        let t1 = &tasks[0];
        assert_eq!(t1.arn, "arn:task/c/t1");
        assert_eq!(t1.id(), "t1");
        assert_eq!((t1.cpu_units, t1.memory_mib), (384, 320));
        assert_eq!(t1.network_mode, NetworkMode::Bridge);
        assert_eq!(
            t1.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["app", "sidecar"]
        );
        assert_eq!(tasks[1].network_mode, NetworkMode::Host);
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].id, "x");
        let r = reserved(&tasks);
        assert_eq!((r.cpu_units, r.memory_mib), (896, 320));
        assert_eq!(r.tcp_ports, BTreeSet::from([8080, 9000]));
        assert_eq!(r.udp_ports, BTreeSet::from([5353]));
        assert_eq!(r.awsvpc_tasks, 0);
    }

    #[test]
    fn awsvpc_is_the_pause_container_and_the_others_joining_it() {
        let mut pause = container(
            "pause0123",
            Some(("arn:task/c/v", PAUSE_CONTAINER_NAME)),
            "none",
        );
        pause.cpu_shares = 2;
        pause.memory_limit_bytes = Some(64 * MIB);
        let mut app = container("app1", Some(("arn:task/c/v", "app")), "container:pause0123");
        app.cpu_shares = 256;
        let (tasks, _) = group([&pause, &app]);
        assert_eq!(tasks[0].network_mode, NetworkMode::Awsvpc);
        assert_eq!((tasks[0].cpu_units, tasks[0].memory_mib), (256, 0));
        assert_eq!(reserved(&tasks).awsvpc_tasks, 1);

        // Without the pause label (an unusual agent), joining another container of the same task
        // still marks it awsvpc.
        let ns = container("ns", Some(("arn:task/c/w", "holder")), "none");
        let joiner = container("j", Some(("arn:task/c/w", "app")), "container:ns");
        let (tasks, _) = group([&ns, &joiner]);
        assert_eq!(tasks[0].network_mode, NetworkMode::Awsvpc);

        let none = container("n", Some(("arn:task/c/n", "app")), "none");
        let (tasks, _) = group([&none]);
        assert_eq!(tasks[0].network_mode, NetworkMode::None);
    }

    #[test]
    fn docker_network_modes_read_as_the_task_definition_modes() {
        let cases = [
            ("bridge", NetworkMode::Bridge),
            ("default", NetworkMode::Bridge),
            ("host", NetworkMode::Host),
            ("none", NetworkMode::None),
            // A user-defined network is not an ECS mode: its ports count as in bridge mode.
            ("my-net", NetworkMode::Bridge),
        ];
        for (docker, want) in cases {
            let c = container("c", Some(("arn:task/c/m", "app")), docker);
            let (tasks, _) = group([&c]);
            assert_eq!(tasks[0].network_mode, want, "{docker}");
        }
    }

    #[test]
    fn cpu_shares_two_is_the_agents_mark_of_cpu_zero_and_reserves_nothing() {
        let mut a = container("a", Some(("arn:task/c/t", "app")), "bridge");
        a.cpu_shares = 2;
        let mut b = container("b", Some(("arn:task/c/t", "log")), "bridge");
        b.cpu_shares = 128;
        let (tasks, _) = group([&a, &b]);
        assert_eq!(tasks[0].cpu_units, 128);
    }

    fn definition(family: &str, cpu: &str, memory: &str) -> Definition {
        Definition {
            arn: format!("arn:aws:ecs:us-east-1:1:task-definition/{family}:3"),
            family: family.into(),
            revision: 3,
            network_mode: NetworkMode::Bridge,
            task_cpu: Some(cpu.into()),
            task_memory: Some(memory.into()),
            containers: Vec::new(),
        }
    }

    #[test]
    fn a_known_definition_replaces_dockers_figures_pending_tasks_included() {
        // Task-level sizes only: Docker shows CpuShares 2 and no memory at all; each container
        // carries the task's memory limit (propagated), which must not be counted per container.
        let mut a = container("a", Some(("arn:task/c/t1", "app")), "bridge");
        a.cpu_shares = 2;
        a.memory_limit_bytes = Some(1024 * MIB);
        let mut b = container("b", Some(("arn:task/c/t1", "side")), "bridge");
        b.cpu_shares = 2;
        b.memory_limit_bytes = Some(1024 * MIB);
        let (mut tasks, _) = group([&a, &b]);
        assert_eq!((tasks[0].cpu_units, tasks[0].memory_mib), (0, 2048));
        tasks.push(agent_only("arn:task/c/t2", "web", "3", Some("PENDING")));
        tasks.push(agent_only("arn:task/c/t3", "other", "1", Some("PENDING")));
        let web = definition("web", "512", "1024");
        let lookup = |key: &str| (key == "web:3").then(|| web.reservation().unwrap());
        apply_definitions(&mut tasks, &lookup);
        let by = |arn: &str| tasks.iter().find(|t| t.arn == arn).unwrap();
        assert_eq!(
            (
                by("arn:task/c/t1").cpu_units,
                by("arn:task/c/t1").memory_mib
            ),
            (512, 1024)
        );
        assert_eq!(by("arn:task/c/t1").reserved_by, ReservedBy::TaskDefinition);
        assert_eq!(
            (
                by("arn:task/c/t2").cpu_units,
                by("arn:task/c/t2").memory_mib
            ),
            (512, 1024)
        );
        // Unknown definition: Docker's figures (none for a pending task).
        assert_eq!(by("arn:task/c/t3").reserved_by, ReservedBy::Docker);
        let r = reserved(&tasks);
        assert_eq!((r.cpu_units, r.memory_mib), (1024, 2048));
    }

    #[test]
    fn a_daemon_service_is_reserved_where_its_task_does_not_run_yet() {
        let agent = definition("log-agent", "128", "256");
        let none: Vec<Task> = Vec::new();
        let overhead = daemon_overhead(&none, std::slice::from_ref(&agent));
        let mut r = reserved(&none);
        r.add_overhead(&overhead);
        assert_eq!((r.cpu_units, r.memory_mib), (128, 256));
        assert_eq!(r.daemon_overhead, ["log-agent"]);
        let running = vec![agent_only(
            "arn:task/c/d",
            "log-agent",
            "3",
            Some("RUNNING"),
        )];
        assert!(daemon_overhead(&running, &[agent]).is_empty());
    }

    #[test]
    fn task_id_comes_from_both_task_arn_formats_and_nothing_else() {
        let cases = [
            (
                "arn:aws:ecs:eu-west-1:123456789012:task/prod/0123456789abcdef0123456789abcdef",
                Some("0123456789abcdef0123456789abcdef"),
            ),
            (
                "arn:aws:ecs:us-east-1:123456789012:task/c5d6e7f8-1111-2222-3333-444455556666",
                Some("c5d6e7f8-1111-2222-3333-444455556666"),
            ),
            ("arn:aws:ecs:us-east-1:123456789012:cluster/prod", None),
            ("arn:aws:ecs:us-east-1:1:task/prod/", None),
            ("not-an-arn", None),
        ];
        for (arn, want) in cases {
            assert_eq!(task_id(arn), want, "{arn}");
        }
    }
}
