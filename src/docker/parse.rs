//! Pure mapping from Docker's inspect response to what capacity needs.

use std::collections::{BTreeSet, HashMap};

use bollard::models::ContainerInspectResponse;
use serde::Serialize;

/// The container the ECS agent adds to every awsvpc task to hold its network namespace (agent
/// `api/task`: `PauseContainerName`). It runs with network mode `none` (the ECS CNI plugins then
/// move the task's ENI into its namespace) and the task's other containers join it with
/// `container:<pause id>`.
pub const PAUSE_CONTAINER_NAME: &str = "~internal~ecs~pause";

const LABEL_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
const LABEL_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
const LABEL_FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
const LABEL_VERSION: &str = "com.amazonaws.ecs.task-definition-version";
const LABEL_CLUSTER: &str = "com.amazonaws.ecs.cluster";

/// The labels the ECS agent puts on each container of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EcsLabels {
    pub task_arn: String,
    pub container_name: String,
    pub family: String,
    pub version: String,
    pub cluster: Option<String>,
}

impl EcsLabels {
    /// `Some` only when the task ARN label is there and non-empty: that label is what makes a
    /// container part of an ECS task. The others default to empty when missing.
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<EcsLabels> {
        let get = |k: &str| labels.get(k).map(|v| v.trim().to_string());
        let task_arn = get(LABEL_TASK_ARN).filter(|v| !v.is_empty())?;
        Some(EcsLabels {
            task_arn,
            container_name: get(LABEL_CONTAINER_NAME).unwrap_or_default(),
            family: get(LABEL_FAMILY).unwrap_or_default(),
            version: get(LABEL_VERSION).unwrap_or_default(),
            cluster: get(LABEL_CLUSTER).filter(|v| !v.is_empty()),
        })
    }
}

/// One container, as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    pub id: String,
    /// Docker's name, without the leading `/`.
    pub name: String,
    pub running: bool,
    /// `None`: not an ECS task container (the ECS agent itself, host daemons, anything else).
    pub ecs: Option<EcsLabels>,
    /// HostConfig.CpuShares (the ECS agent sets the container's `cpu` units here; 0 = unset).
    pub cpu_shares: u64,
    /// HostConfig.Memory, the hard limit; `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// HostConfig.MemoryReservation, the soft limit; `None` when unset.
    pub memory_reservation_bytes: Option<u64>,
    /// Static host ports bound (HostConfig.PortBindings with a fixed host port), by protocol.
    pub tcp_ports: BTreeSet<u16>,
    pub udp_ports: BTreeSet<u16>,
    /// HostConfig.NetworkMode as Docker reports it: `bridge`, `default`, `host`, `none`,
    /// `container:<id>`, or a user network name.
    pub network_mode: String,
    /// The cgroup parent the ECS agent set for task cgroups (`/ecs/<task id>`), if any.
    pub cgroup_parent: Option<String>,
}

fn positive(v: Option<i64>) -> Option<u64> {
    v.filter(|n| *n > 0).map(|n| n as u64)
}

/// Maps an inspect response; `None` when it has no id (never for a real engine).
pub fn from_inspect(resp: &ContainerInspectResponse) -> Option<ContainerInfo> {
    let id = resp.id.clone()?;
    let name = resp
        .name
        .as_deref()
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let running = resp.state.as_ref().and_then(|s| s.running).unwrap_or(false);
    let ecs = resp
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(EcsLabels::from_labels);
    let hc = resp.host_config.as_ref();
    let network_mode = hc
        .and_then(|h| h.network_mode.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "default".into());
    let host_mode = network_mode == "host";
    let mut tcp_ports = BTreeSet::new();
    let mut udp_ports = BTreeSet::new();
    if let Some(bindings) = hc.and_then(|h| h.port_bindings.as_ref()) {
        for (key, list) in bindings {
            let Some((container_port, proto)) = parse_port_key(key) else {
                continue;
            };
            for b in list.iter().flatten() {
                let host_port = b
                    .host_port
                    .as_deref()
                    .and_then(|p| p.trim().parse::<u16>().ok())
                    .filter(|p| *p != 0);
                // Bridge: an empty or 0 host port is a dynamic port (not static, not reserved by
                // ECS). Host mode: Docker keeps the bindings but the process binds the container
                // port on the host, which is what ECS reserves.
                let port = match (host_port, host_mode) {
                    (Some(p), _) => p,
                    (None, true) => container_port,
                    (None, false) => continue,
                };
                match proto {
                    Proto::Tcp => tcp_ports.insert(port),
                    Proto::Udp => udp_ports.insert(port),
                };
            }
        }
    }
    Some(ContainerInfo {
        id,
        name,
        running,
        ecs,
        cpu_shares: positive(hc.and_then(|h| h.cpu_shares)).unwrap_or(0),
        memory_limit_bytes: positive(hc.and_then(|h| h.memory)),
        memory_reservation_bytes: positive(hc.and_then(|h| h.memory_reservation)),
        tcp_ports,
        udp_ports,
        network_mode,
        cgroup_parent: hc
            .and_then(|h| h.cgroup_parent.clone())
            .filter(|p| !p.is_empty()),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// `"8080/tcp"` → (8080, Tcp); a port without protocol is TCP (Docker's default). SCTP is not a
/// resource ECS accounts for and is skipped.
fn parse_port_key(key: &str) -> Option<(u16, Proto)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    Some((port.trim().parse().ok()?, proto))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerState, HostConfig, PortBinding};

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn binding(host_port: &str) -> Option<Vec<PortBinding>> {
        Some(vec![PortBinding {
            host_ip: Some("0.0.0.0".into()),
            host_port: Some(host_port.into()),
        }])
    }

    fn inspect(mode: &str, bindings: Vec<(&str, &str)>) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("abc".into()),
            name: Some("/ecs-web-1-app-deadbeef".into()),
            state: Some(ContainerState {
                running: Some(true),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                labels: Some(labels(&[
                    (LABEL_TASK_ARN, "arn:aws:ecs:eu-west-1:1:task/c/0123"),
                    (LABEL_CONTAINER_NAME, "app"),
                    (LABEL_FAMILY, "web"),
                    (LABEL_VERSION, "7"),
                    (LABEL_CLUSTER, "prod"),
                ])),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                cpu_shares: Some(256),
                memory: Some(512 << 20),
                memory_reservation: Some(0),
                network_mode: Some(mode.into()),
                port_bindings: Some(
                    bindings
                        .into_iter()
                        .map(|(k, h)| (k.to_string(), binding(h)))
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ecs_labels_need_a_task_arn() {
        assert_eq!(
            EcsLabels::from_labels(&labels(&[(LABEL_FAMILY, "web")])),
            None
        );
        assert_eq!(
            EcsLabels::from_labels(&labels(&[(LABEL_TASK_ARN, " ")])),
            None
        );
        let l = EcsLabels::from_labels(&labels(&[(LABEL_TASK_ARN, "arn:t")])).unwrap();
        assert_eq!(l.task_arn, "arn:t");
        assert_eq!(l.family, "");
        assert_eq!(l.cluster, None);
    }

    #[test]
    fn bridge_counts_static_host_ports_only() {
        let c = from_inspect(&inspect(
            "bridge",
            vec![
                ("80/tcp", "8080"),
                ("81/tcp", ""),
                ("82/tcp", "0"),
                ("53/udp", "5353"),
            ],
        ))
        .unwrap();
        assert_eq!(c.tcp_ports, BTreeSet::from([8080]));
        assert_eq!(c.udp_ports, BTreeSet::from([5353]));
        assert_eq!(c.name, "ecs-web-1-app-deadbeef");
        assert_eq!(c.cpu_shares, 256);
        assert_eq!(c.memory_limit_bytes, Some(512 << 20));
        assert_eq!(c.memory_reservation_bytes, None);
        let ecs = c.ecs.unwrap();
        assert_eq!((ecs.family.as_str(), ecs.version.as_str()), ("web", "7"));
        assert_eq!(ecs.cluster.as_deref(), Some("prod"));
    }

    #[test]
    fn host_mode_binds_the_container_port_when_no_host_port_is_given() {
        let c = from_inspect(&inspect(
            "host",
            vec![("9000/tcp", ""), ("9001/udp", "9001")],
        ))
        .unwrap();
        assert_eq!(c.tcp_ports, BTreeSet::from([9000]));
        assert_eq!(c.udp_ports, BTreeSet::from([9001]));
    }

    #[test]
    fn garbage_port_keys_are_skipped() {
        let c = from_inspect(&inspect(
            "bridge",
            vec![
                ("x/tcp", "1"),
                ("80/sctp", "80"),
                ("81", "8181"),
                ("82/tcp", "99999"),
            ],
        ))
        .unwrap();
        assert_eq!(c.tcp_ports, BTreeSet::from([8181]));
    }
}
