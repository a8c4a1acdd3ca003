//! Task shapes from where they are defined: the configuration and ECS task definitions (as the SDK
//! returns them, or as the AWS CLI prints them, via [`ContainerNeeds`]).
//!
//! Rules: task-level cpu/memory when set, else the sum over containers (memory: the hard
//! limit if set, else the soft reservation). Static host ports are port mappings with a non-zero
//! host port; in `host` network mode the container port is the host port. An `awsvpc` task binds its
//! ports on its own ENI, not on the host's, so it takes no host ports and needs one ENI instead.
//! Port ranges (`containerPortRange`) are mapped to dynamic host ports and take no static port.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::TaskShape;
use crate::config::TaskShapeConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error(
        "task definition {family}: cpu {value:?} is neither CPU units (\"1024\") nor vCPUs (\"1 vCPU\")"
    )]
    Cpu { family: String, value: String },
    #[error(
        "task definition {family}: memory {value:?} is neither MiB (\"2048\") nor GB (\"2 GB\")"
    )]
    Memory { family: String, value: String },
    #[error(
        "task definition {family}: container {container}: {what} {value} is not a port (0–65535)"
    )]
    Port {
        family: String,
        container: String,
        what: &'static str,
        value: i64,
    },
    #[error("task definition {family}: container {container}: {what} {value} is negative")]
    Negative {
        family: String,
        container: String,
        what: &'static str,
        value: i64,
    },
    #[error("task definition without a family")]
    NoFamily,
}

/// A task's network mode: the task definition's `networkMode`, or what the ECS agent made of it in
/// Docker for a running task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// ECS's default on Linux when the task definition sets none.
    #[default]
    Bridge,
    Host,
    /// The task has its own ENI; in Docker the agent's pause container holds it and the task's
    /// containers join it with `container:<id>`.
    Awsvpc,
    None,
}

impl NetworkMode {
    /// From the API's (or Docker's) string; unknown modes (Windows `nat`, Docker's `default`, a
    /// user-defined Docker network) behave like bridge: only explicit host ports are static.
    pub fn parse(s: Option<&str>) -> NetworkMode {
        match s.map(str::to_ascii_lowercase).as_deref() {
            Some("host") => NetworkMode::Host,
            Some("awsvpc") => NetworkMode::Awsvpc,
            Some("none") => NetworkMode::None,
            _ => NetworkMode::Bridge,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::Awsvpc => "awsvpc",
            NetworkMode::None => "none",
        }
    }
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One port mapping as a task definition states it (values as the API gives them, unchecked).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PortMapping {
    pub container_port: Option<i64>,
    pub host_port: Option<i64>,
    pub udp: bool,
}

/// Which memory figure of a container counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryRule {
    /// What a new copy needs to be sure to fit: the hard limit when set, else the soft reservation.
    NewCopy,
    /// What a placed copy takes from the instance in ECS's accounting: the soft reservation when
    /// set, else the hard limit (ContainerDefinition `memoryReservation`: "that value is subtracted
    /// from the available memory resources for the container instance … Otherwise, the value of
    /// memory is used").
    Reserved,
}

/// What one container definition asks for (values as the API gives them, unchecked).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerNeeds {
    pub name: String,
    pub cpu_units: i64,
    pub memory_hard_mib: Option<i64>,
    pub memory_soft_mib: Option<i64>,
    pub port_mappings: Vec<PortMapping>,
}

/// Task-level cpu: CPU units ("1024") or vCPUs ("1 vCPU", "0.25 vcpu").
pub fn parse_task_cpu(s: &str) -> Option<u64> {
    parse_with_unit(s, &["vcpu"], 1024.0)
}

/// Task-level memory: MiB ("2048") or GB ("2 GB", "0.5GB").
pub fn parse_task_memory(s: &str) -> Option<u64> {
    parse_with_unit(s, &["gb", "gib"], 1024.0)
}

fn parse_with_unit(s: &str, units: &[&str], factor: f64) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    for unit in units {
        if let Some(n) = t.strip_suffix(unit) {
            let v: f64 = n.trim().parse().ok()?;
            if !(v.is_finite() && v >= 0.0) {
                return None;
            }
            return Some((v * factor).round() as u64);
        }
    }
    t.parse().ok()
}

fn port(family: &str, container: &str, what: &'static str, v: i64) -> Result<u16, ShapeError> {
    u16::try_from(v).map_err(|_| ShapeError::Port {
        family: family.into(),
        container: container.into(),
        what,
        value: v,
    })
}

fn non_negative(
    family: &str,
    container: &str,
    what: &'static str,
    v: i64,
) -> Result<u64, ShapeError> {
    u64::try_from(v).map_err(|_| ShapeError::Negative {
        family: family.into(),
        container: container.into(),
        what,
        value: v,
    })
}

impl TaskShape {
    /// What a new copy of a task definition needs. `name` is the family.
    pub fn from_definition(
        name: &str,
        network_mode: NetworkMode,
        task_cpu: Option<&str>,
        task_memory: Option<&str>,
        containers: &[ContainerNeeds],
    ) -> Result<TaskShape, ShapeError> {
        TaskShape::from_definition_by(
            name,
            MemoryRule::NewCopy,
            network_mode,
            task_cpu,
            task_memory,
            containers,
        )
    }

    /// A shape from a task definition's parts: task-level cpu/memory when set, else the sums over
    /// the containers, where `memory` says which of a container's two memory figures counts.
    pub fn from_definition_by(
        name: &str,
        memory: MemoryRule,
        network_mode: NetworkMode,
        task_cpu: Option<&str>,
        task_memory: Option<&str>,
        containers: &[ContainerNeeds],
    ) -> Result<TaskShape, ShapeError> {
        let mut cpu_sum = 0u64;
        let mut memory_sum = 0u64;
        let mut tcp_ports = BTreeSet::new();
        let mut udp_ports = BTreeSet::new();
        for c in containers {
            cpu_sum = cpu_sum.saturating_add(non_negative(name, &c.name, "cpu", c.cpu_units)?);
            let container_memory = match memory {
                MemoryRule::NewCopy => c.memory_hard_mib.or(c.memory_soft_mib),
                MemoryRule::Reserved => c.memory_soft_mib.or(c.memory_hard_mib),
            };
            memory_sum = memory_sum.saturating_add(non_negative(
                name,
                &c.name,
                "memory",
                container_memory.unwrap_or(0),
            )?);
            if network_mode == NetworkMode::Awsvpc {
                continue;
            }
            for m in &c.port_mappings {
                let host_port = match network_mode {
                    NetworkMode::Host => m.host_port.filter(|&p| p != 0).or(m.container_port),
                    _ => m.host_port,
                };
                let Some(p) = host_port.filter(|&p| p != 0) else {
                    continue; // dynamic host port: no static port taken
                };
                let p = port(name, &c.name, "hostPort", p)?;
                if m.udp {
                    udp_ports.insert(p);
                } else {
                    tcp_ports.insert(p);
                }
            }
        }
        let cpu_units = match task_cpu.filter(|s| !s.trim().is_empty()) {
            Some(s) => parse_task_cpu(s).ok_or_else(|| ShapeError::Cpu {
                family: name.into(),
                value: s.into(),
            })?,
            None => cpu_sum,
        };
        let memory_mib = match task_memory.filter(|s| !s.trim().is_empty()) {
            Some(s) => parse_task_memory(s).ok_or_else(|| ShapeError::Memory {
                family: name.into(),
                value: s.into(),
            })?,
            None => memory_sum,
        };
        Ok(TaskShape {
            name: name.into(),
            cpu_units,
            memory_mib,
            tcp_ports,
            udp_ports,
            awsvpc: network_mode == NetworkMode::Awsvpc,
        })
    }
}

impl From<&TaskShapeConfig> for TaskShape {
    /// Configured shapes are taken as written: the operator states the static ports and the ENI.
    fn from(c: &TaskShapeConfig) -> TaskShape {
        TaskShape {
            name: c.name.clone(),
            cpu_units: c.cpu_units,
            memory_mib: c.memory_mib,
            tcp_ports: c.ports.iter().copied().collect(),
            udp_ports: c.ports_udp.iter().copied().collect(),
            awsvpc: c.awsvpc,
        }
    }
}
