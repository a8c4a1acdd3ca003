//! The AWS CLI's JSON output, read from files: `aws ecs describe-container-instances`,
//! `aws ecs describe-task-definition`, `aws ec2 describe-instance-types`, `aws ecs describe-tasks`.
//!
//! Only the fields the calculator reads are modelled; everything else is ignored. A missing or
//! unreadable file is `Error::NoInput` (exit 66); malformed JSON or a value of the wrong type is
//! `Error::Input` (exit 65) naming the file and the JSON path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{INSTANCE_TYPE_ATTRIBUTE, Inputs, Instance, TRUNK_ATTRIBUTE};
use crate::capacity::{ContainerNeeds, NetworkMode, PortMapping, Quantity, TaskShape};
use crate::error::Error;

/// The offline inputs as paths.
#[derive(Debug, Clone)]
pub struct Paths<'a> {
    pub container_instances: &'a Path,
    pub task_definitions: &'a [std::path::PathBuf],
    pub instance_types: Option<&'a Path>,
    pub tasks: Option<&'a Path>,
}

/// Reads and checks every file.
pub fn load(p: &Paths<'_>) -> Result<Inputs, Error> {
    if p.task_definitions.is_empty() {
        return Err(Error::Input(
            "no task shape to plan for: give at least one --task-definition FILE (output of `aws ecs describe-task-definition`)".into(),
        ));
    }
    let instances = container_instances(p.container_instances)?;
    let shapes = p
        .task_definitions
        .iter()
        .map(|f| task_definition(f))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Inputs {
        instances,
        shapes,
        eni_limits: p.instance_types.map(instance_types).transpose()?,
        awsvpc_tasks: p.tasks.map(tasks).transpose()?,
    })
}

fn read<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::NoInput(format!("{}: cannot read {what}: {e}", path.display())))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." {
            String::new()
        } else {
            format!(" at {at}")
        };
        Error::Input(format!("{}: not {what}{at}: {}", path.display(), e.inner()))
    })
}

fn bad(path: &Path, what: String) -> Error {
    Error::Input(format!("{}: {what}", path.display()))
}

// ---- describe-container-instances ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeContainerInstances {
    container_instances: Vec<ContainerInstanceJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerInstanceJson {
    container_instance_arn: String,
    ec2_instance_id: Option<String>,
    status: String,
    #[serde(default)]
    registered_resources: Vec<ResourceJson>,
    #[serde(default)]
    remaining_resources: Vec<ResourceJson>,
    #[serde(default)]
    attributes: Vec<AttributeJson>,
    #[serde(default)]
    running_tasks_count: u64,
    #[serde(default)]
    pending_tasks_count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceJson {
    name: String,
    #[serde(default)]
    integer_value: i64,
    #[serde(default)]
    long_value: i64,
    #[serde(default)]
    string_set_value: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct AttributeJson {
    name: String,
    value: Option<String>,
}

/// A resource as the API reports it, shared with the live path.
pub(crate) struct RawResource<'a> {
    pub name: &'a str,
    pub integer_value: i64,
    pub long_value: i64,
    pub string_set_value: &'a [String],
}

/// Builds an `Instance` from the API's resource lists; `Err` says what is wrong (without the source).
pub(crate) fn instance_from_resources(
    mut instance: Instance,
    registered: &[RawResource<'_>],
    remaining: &[RawResource<'_>],
) -> Result<Instance, String> {
    let find = |list: &[RawResource<'_>], name: &str| -> Option<usize> {
        list.iter().position(|r| r.name == name)
    };
    let number = |list: &[RawResource<'_>], which: &str, name: &str| -> Result<u64, String> {
        let r = &list[find(list, name).ok_or_else(|| format!("no {name} in {which}"))?];
        // ECS reports CPU and MEMORY as integerValue; longValue is accepted for hand-made files.
        let v = if r.integer_value != 0 {
            r.integer_value
        } else {
            r.long_value
        };
        u64::try_from(v).map_err(|_| format!("{which} {name} is negative ({v})"))
    };
    let ports = |name: &str| -> Result<BTreeSet<u16>, String> {
        let mut set = BTreeSet::new();
        for list in [registered, remaining] {
            if let Some(i) = find(list, name) {
                for p in list[i].string_set_value {
                    set.insert(
                        p.trim()
                            .parse::<u16>()
                            .map_err(|_| format!("{name} lists {p:?}, which is not a port"))?,
                    );
                }
            }
        }
        Ok(set)
    };
    let cpu_registered = number(registered, "registeredResources", "CPU")?;
    let cpu_remaining = number(remaining, "remainingResources", "CPU")?;
    let mem_registered = number(registered, "registeredResources", "MEMORY")?;
    let mem_remaining = number(remaining, "remainingResources", "MEMORY")?;
    instance.cpu_units =
        Quantity::new(cpu_registered, cpu_registered.saturating_sub(cpu_remaining));
    instance.memory_mib =
        Quantity::new(mem_registered, mem_registered.saturating_sub(mem_remaining));
    instance.taken_tcp_ports = ports("PORTS")?;
    instance.taken_udp_ports = ports("PORTS_UDP")?;
    Ok(instance)
}

fn raw(list: &[ResourceJson]) -> Vec<RawResource<'_>> {
    list.iter()
        .map(|r| RawResource {
            name: &r.name,
            integer_value: r.integer_value,
            long_value: r.long_value,
            string_set_value: &r.string_set_value,
        })
        .collect()
}

/// `aws ecs describe-container-instances` output.
pub fn container_instances(path: &Path) -> Result<Vec<Instance>, Error> {
    let doc: DescribeContainerInstances =
        read(path, "output of `aws ecs describe-container-instances`")?;
    doc.container_instances
        .into_iter()
        .enumerate()
        .map(|(i, ci)| {
            let attribute = |name: &str| {
                ci.attributes
                    .iter()
                    .find(|a| a.name == name)
                    .map(|a| a.value.clone().unwrap_or_default())
            };
            let base = Instance {
                arn: ci.container_instance_arn.clone(),
                ec2_instance_id: ci.ec2_instance_id.clone(),
                status: ci.status.clone(),
                instance_type: attribute(INSTANCE_TYPE_ATTRIBUTE),
                running_tasks: ci.running_tasks_count,
                pending_tasks: ci.pending_tasks_count,
                trunk: attribute(TRUNK_ATTRIBUTE).is_some(),
                ..Instance::default()
            };
            instance_from_resources(
                base,
                &raw(&ci.registered_resources),
                &raw(&ci.remaining_resources),
            )
            .map_err(|what| {
                bad(
                    path,
                    format!(
                        "containerInstances[{i}] ({}): {what}",
                        ci.ec2_instance_id
                            .as_deref()
                            .unwrap_or(&ci.container_instance_arn)
                    ),
                )
            })
        })
        .collect()
}

// ---- describe-task-definition ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskDefinitionJson {
    family: String,
    network_mode: Option<String>,
    cpu: Option<String>,
    memory: Option<String>,
    container_definitions: Vec<ContainerDefinitionJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerDefinitionJson {
    #[serde(default)]
    name: String,
    #[serde(default)]
    cpu: i64,
    memory: Option<i64>,
    memory_reservation: Option<i64>,
    #[serde(default)]
    port_mappings: Vec<PortMappingJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortMappingJson {
    container_port: Option<i64>,
    host_port: Option<i64>,
    protocol: Option<String>,
}

/// `aws ecs describe-task-definition` output (or the bare `taskDefinition` object).
pub fn task_definition(path: &Path) -> Result<TaskShape, Error> {
    let what = "output of `aws ecs describe-task-definition`";
    // Accept the CLI's `{"taskDefinition": {...}}` and the bare object.
    let value: serde_json::Value = read(path, what)?;
    let (inner, prefix) = match value {
        serde_json::Value::Object(mut m) if m.contains_key("taskDefinition") => (
            m.remove("taskDefinition").unwrap_or_default(),
            "taskDefinition.",
        ),
        other => (other, ""),
    };
    let td: TaskDefinitionJson = serde_path_to_error::deserialize(inner).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." {
            prefix.trim_end_matches('.').to_string()
        } else {
            format!("{prefix}{at}")
        };
        let at = if at.is_empty() {
            String::new()
        } else {
            format!(" at {at}")
        };
        Error::Input(format!("{}: not {what}{at}: {}", path.display(), e.inner()))
    })?;
    let containers: Vec<ContainerNeeds> = td
        .container_definitions
        .iter()
        .map(|c| ContainerNeeds {
            name: c.name.clone(),
            cpu_units: c.cpu,
            memory_hard_mib: c.memory,
            memory_soft_mib: c.memory_reservation,
            port_mappings: c
                .port_mappings
                .iter()
                .map(|m| PortMapping {
                    container_port: m.container_port,
                    host_port: m.host_port,
                    udp: m
                        .protocol
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case("udp")),
                })
                .collect(),
        })
        .collect();
    TaskShape::from_definition(
        &td.family,
        NetworkMode::parse(td.network_mode.as_deref()),
        td.cpu.as_deref(),
        td.memory.as_deref(),
        &containers,
    )
    .map_err(|e| bad(path, e.to_string()))
}

// ---- ec2 describe-instance-types ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeInstanceTypes {
    instance_types: Vec<InstanceTypeJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InstanceTypeJson {
    instance_type: String,
    network_info: Option<NetworkInfoJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkInfoJson {
    maximum_network_interfaces: Option<u32>,
}

/// `aws ec2 describe-instance-types` output: instance type → MaximumNetworkInterfaces.
pub fn instance_types(path: &Path) -> Result<BTreeMap<String, u32>, Error> {
    let doc: DescribeInstanceTypes = read(path, "output of `aws ec2 describe-instance-types`")?;
    Ok(doc
        .instance_types
        .into_iter()
        .filter_map(|t| {
            let max = t.network_info?.maximum_network_interfaces?;
            Some((t.instance_type, max))
        })
        .collect())
}

// ---- describe-tasks ----

#[derive(Debug, Deserialize)]
struct DescribeTasks {
    tasks: Vec<TaskJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskJson {
    container_instance_arn: Option<String>,
    last_status: Option<String>,
    #[serde(default)]
    attachments: Vec<AttachmentJson>,
}

#[derive(Debug, Deserialize)]
struct AttachmentJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<String>,
}

/// Whether a task holds an ENI of its own (awsvpc): an `ElasticNetworkInterface` attachment that is
/// not detached, deleted or failed, on a task that has not stopped.
pub(crate) fn holds_eni<'a>(
    last_status: Option<&str>,
    attachments: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> bool {
    if last_status.is_some_and(|s| s.eq_ignore_ascii_case("STOPPED")) {
        return false;
    }
    attachments.into_iter().any(|(kind, status)| {
        kind == Some("ElasticNetworkInterface")
            && !matches!(
                status.map(str::to_ascii_uppercase).as_deref(),
                Some("DETACHED" | "DELETED" | "FAILED")
            )
    })
}

/// `aws ecs describe-tasks` output: container instance ARN → ENIs its awsvpc tasks hold.
pub fn tasks(path: &Path) -> Result<BTreeMap<String, u32>, Error> {
    let doc: DescribeTasks = read(path, "output of `aws ecs describe-tasks`")?;
    let mut used = BTreeMap::new();
    for t in &doc.tasks {
        let Some(arn) = &t.container_instance_arn else {
            continue; // Fargate
        };
        let attachments = t
            .attachments
            .iter()
            .map(|a| (a.kind.as_deref(), a.status.as_deref()));
        if holds_eni(t.last_status.as_deref(), attachments) {
            *used.entry(arn.clone()).or_insert(0) += 1;
        }
    }
    Ok(used)
}
