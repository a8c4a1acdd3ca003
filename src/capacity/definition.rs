//! A task definition as the capacity model reads it: what a new copy needs (a task shape) and what
//! a placed copy reserves on its container instance, by ECS's own accounting. A task definition
//! revision never changes once registered, so one fetched is good for as long as it is used.

use serde::{Deserialize, Serialize};

use super::TaskShape;
use super::shape::{ContainerNeeds, MemoryRule, NetworkMode, PortMapping, ShapeError};

/// One task definition revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub arn: String,
    pub family: String,
    pub revision: i64,
    pub network_mode: NetworkMode,
    /// Task-level `cpu` / `memory` as the API gives them ("1024", "1 vCPU", "2 GB").
    pub task_cpu: Option<String>,
    pub task_memory: Option<String>,
    pub containers: Vec<ContainerNeeds>,
}

/// `family:revision`, how a running task names its task definition (Docker labels
/// `com.amazonaws.ecs.task-definition-family` / `-version`, the ECS agent's `Family` / `Version`)
/// and what DescribeTaskDefinition accepts.
pub fn definition_key(family: &str, revision: &str) -> String {
    format!("{family}:{revision}")
}

impl Definition {
    pub fn key(&self) -> String {
        definition_key(&self.family, &self.revision.to_string())
    }

    fn by(&self, memory: MemoryRule) -> Result<TaskShape, ShapeError> {
        TaskShape::from_definition_by(
            &self.family,
            memory,
            self.network_mode,
            self.task_cpu.as_deref(),
            self.task_memory.as_deref(),
            &self.containers,
        )
    }

    /// What a new copy needs: task-level cpu/memory when set, else the container sums with each
    /// container's hard memory limit when set (a copy placed by its soft figure may grow to it).
    pub fn shape(&self) -> Result<TaskShape, ShapeError> {
        self.by(MemoryRule::NewCopy)
    }

    /// What a placed copy takes from its container instance in ECS's accounting, whatever its
    /// containers are doing (a pending task, an exited non-essential container and a container
    /// given the task's memory limit by the agent all count as the definition says): task-level
    /// cpu/memory when set, else the container sums, memory = the soft reservation else the hard
    /// limit; a container with cpu 0 reserves 0 CPU units (the agent gives it CpuShares 2, which
    /// ECS does not count).
    pub fn reservation(&self) -> Result<TaskShape, ShapeError> {
        self.by(MemoryRule::Reserved)
    }
}

impl TryFrom<&aws_sdk_ecs::types::TaskDefinition> for Definition {
    type Error = ShapeError;

    fn try_from(td: &aws_sdk_ecs::types::TaskDefinition) -> Result<Definition, ShapeError> {
        let family = td.family().ok_or(ShapeError::NoFamily)?;
        let containers = td
            .container_definitions()
            .iter()
            .map(|c| ContainerNeeds {
                name: c.name().unwrap_or("?").to_string(),
                cpu_units: c.cpu().into(),
                memory_hard_mib: c.memory().map(i64::from),
                memory_soft_mib: c.memory_reservation().map(i64::from),
                port_mappings: c
                    .port_mappings()
                    .iter()
                    .map(|m| PortMapping {
                        container_port: m.container_port().map(i64::from),
                        host_port: m.host_port().map(i64::from),
                        udp: m.protocol() == Some(&aws_sdk_ecs::types::TransportProtocol::Udp),
                    })
                    .collect(),
            })
            .collect();
        Ok(Definition {
            arn: td.task_definition_arn().unwrap_or_default().to_string(),
            family: family.to_string(),
            revision: i64::from(td.revision()),
            network_mode: NetworkMode::parse(td.network_mode().map(|m| m.as_str())),
            task_cpu: td.cpu().map(str::to_string),
            task_memory: td.memory().map(str::to_string),
            containers,
        })
    }
}

impl TryFrom<&aws_sdk_ecs::types::TaskDefinition> for TaskShape {
    type Error = ShapeError;

    fn try_from(td: &aws_sdk_ecs::types::TaskDefinition) -> Result<TaskShape, ShapeError> {
        Definition::try_from(td)?.shape()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, cpu: i64, hard: Option<i64>, soft: Option<i64>) -> ContainerNeeds {
        ContainerNeeds {
            name: name.into(),
            cpu_units: cpu,
            memory_hard_mib: hard,
            memory_soft_mib: soft,
            port_mappings: Vec::new(),
        }
    }

    fn definition(
        task: (Option<&str>, Option<&str>),
        containers: Vec<ContainerNeeds>,
    ) -> Definition {
        Definition {
            arn: "arn:aws:ecs:us-east-1:1:task-definition/web:3".into(),
            family: "web".into(),
            revision: 3,
            network_mode: NetworkMode::Bridge,
            task_cpu: task.0.map(str::to_string),
            task_memory: task.1.map(str::to_string),
            containers,
        }
    }

    #[test]
    fn reservations_and_new_copy_needs_follow_ecs_rules() {
        // (case, task cpu/memory, containers, reserved (cpu, MiB), a new copy needs (cpu, MiB))
        let cases = [
            (
                "task level only: the containers say nothing",
                (Some("1 vCPU"), Some("2 GB")),
                vec![container("app", 0, None, None)],
                (1024, 2048),
                (1024, 2048),
            ),
            (
                "task level wins over the container sums",
                (Some("512"), Some("1024")),
                vec![container("app", 128, Some(256), None)],
                (512, 1024),
                (512, 1024),
            ),
            (
                "soft reservation is what a placed copy reserves, the hard limit what a copy needs",
                (None, None),
                vec![container("app", 256, Some(128), Some(32))],
                (256, 32),
                (256, 128),
            ),
            (
                "hard limit alone counts both ways",
                (None, None),
                vec![container("app", 256, Some(512), None)],
                (256, 512),
                (256, 512),
            ),
            (
                "cpu 0 reserves 0; sums over containers",
                (None, None),
                vec![
                    container("app", 0, Some(256), None),
                    container("log", 128, None, Some(64)),
                ],
                (128, 320),
                (128, 320),
            ),
            (
                "task memory only: container limits are not added on top",
                (None, Some("1024")),
                vec![
                    container("a", 100, None, None),
                    container("b", 100, None, None),
                ],
                (200, 1024),
                (200, 1024),
            ),
        ];
        for (case, task, containers, reserved, needs) in cases {
            let d = definition(task, containers);
            let r = d.reservation().unwrap();
            assert_eq!((r.cpu_units, r.memory_mib), reserved, "reserved: {case}");
            let s = d.shape().unwrap();
            assert_eq!((s.cpu_units, s.memory_mib), needs, "new copy: {case}");
            assert_eq!(s.name, "web");
        }
    }

    #[test]
    fn the_key_is_family_colon_revision() {
        let d = definition((None, None), Vec::new());
        assert_eq!(d.key(), "web:3");
        assert_eq!(definition_key("web", "3"), d.key());
    }

    #[test]
    fn a_definition_round_trips_through_its_cache_form() {
        let d = definition(
            (Some("256"), None),
            vec![container("app", 0, Some(64), None)],
        );
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Definition>(&text).unwrap(), d);
    }
}
