//! The AWS CLI's JSON output, read from files: `aws ecs describe-container-instances`,
//! `aws ecs describe-task-definition`, `aws ec2 describe-instance-types`, `aws ecs describe-tasks`.
//!
//! Only the fields the calculator reads are modelled; everything else is ignored. A missing or
//! unreadable file is `Error::NoInput` (exit 66); malformed JSON or a value of the wrong type is
//! `Error::Input` (exit 65) naming the file and the JSON path.

use std::borrow::Cow;
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
    let text = read_text(path, what)?;
    parse(path, what, &text)
}

/// The file's text: a regular file of at most `bounded::CLUSTER_FILE_MAX_BYTES`. A file that is not
/// there or cannot be read is `NoInput`; one that is too large or not UTF-8 is malformed (`Input`).
fn read_text(path: &Path, what: &str) -> Result<String, Error> {
    crate::bounded::read_text(path, crate::bounded::CLUSTER_FILE_MAX_BYTES).map_err(|e| {
        let message = format!("{}: cannot read {what}: {e}", path.display());
        if e.is_malformed() {
            Error::Input(message)
        } else {
            Error::NoInput(message)
        }
    })
}

/// Parses `text`: one JSON document and nothing after it but whitespace. The fast path is plain
/// serde_json; only a document that fails is parsed again with `serde_path_to_error`, to say where:
/// tracking the path of every value is work only a failure needs (a 2,000-instance
/// describe-container-instances is 5 MB).
fn parse<'de, T: Deserialize<'de>>(path: &Path, what: &str, text: &'de str) -> Result<T, Error> {
    if let Ok(v) = serde_json::from_str(text) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize(&mut *de) {
        // The document itself was fine: what failed is what follows it (a second document, say).
        Ok(v) => match de.end() {
            Ok(()) => Ok(v),
            Err(e) => Err(Error::Input(format!(
                "{}: not {what}: {e} after the JSON document (one document per file)",
                path.display()
            ))),
        },
        Err(e) => {
            let at = e.path().to_string();
            let at = if at == "." {
                String::new()
            } else {
                format!(" at {at}")
            };
            Err(Error::Input(format!(
                "{}: not {what}{at}: {}",
                path.display(),
                e.inner()
            )))
        }
    }
}

fn bad(path: &Path, what: String) -> Error {
    Error::Input(format!("{}: {what}", path.display()))
}

// ---- describe-container-instances ----

// Strings borrow from the file's text where they can (no escapes): a 2,000-instance file holds
// ~100,000 of them, and allocating each one was a good part of the whole command's time.

/// A string borrowed from the JSON text, or owned when it had escapes. (serde's own `Cow<str>`
/// borrows only as a direct field, not inside `Vec` or `Option`.)
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeContainerInstances<'a> {
    #[serde(borrow)]
    container_instances: Vec<ContainerInstanceJson<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerInstanceJson<'a> {
    #[serde(borrow)]
    container_instance_arn: Text<'a>,
    #[serde(borrow)]
    ec2_instance_id: Option<Text<'a>>,
    #[serde(borrow)]
    status: Text<'a>,
    #[serde(default, borrow)]
    registered_resources: Vec<ResourceJson<'a>>,
    #[serde(default, borrow)]
    remaining_resources: Vec<ResourceJson<'a>>,
    #[serde(default, borrow)]
    attributes: Vec<AttributeJson<'a>>,
    #[serde(default)]
    running_tasks_count: u64,
    #[serde(default)]
    pending_tasks_count: u64,
    #[serde(default)]
    agent_connected: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceJson<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(default)]
    integer_value: i64,
    #[serde(default)]
    long_value: i64,
    #[serde(default, borrow)]
    string_set_value: Vec<Text<'a>>,
}

#[derive(Debug, Deserialize)]
struct AttributeJson<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    value: Option<Text<'a>>,
}

/// A resource as the API reports it, shared with the live path (`S`: the SDK's `String` there,
/// `Text` borrowed from the file here).
pub(crate) struct RawResource<'a, S> {
    pub name: &'a str,
    pub integer_value: i64,
    pub long_value: i64,
    pub string_set_value: &'a [S],
}

/// Builds an `Instance` from the API's resource lists; `Err` says what is wrong (without the source).
pub(crate) fn instance_from_resources<S: AsRef<str>>(
    mut instance: Instance,
    registered: &[RawResource<'_, S>],
    remaining: &[RawResource<'_, S>],
) -> Result<Instance, String> {
    let find = |list: &[RawResource<'_, S>], name: &str| -> Option<usize> {
        list.iter().position(|r| r.name == name)
    };
    let number = |list: &[RawResource<'_, S>], which: &str, name: &str| -> Result<u64, String> {
        let i = find(list, name).ok_or_else(|| format!("no {name} in {which}"))?;
        let r = &list[i];
        // ECS reports CPU and MEMORY as integerValue; longValue is accepted for hand-made files.
        let (field, v) = if r.integer_value != 0 {
            ("integerValue", r.integer_value)
        } else {
            ("longValue", r.long_value)
        };
        let at = format!("{which}[{i}].{field} ({name})");
        let v = u64::try_from(v).map_err(|_| format!("{at} is negative ({v})"))?;
        if v > super::QUANTITY_MAX {
            return Err(format!(
                "{at} is {v}, above {} (not a real instance)",
                super::QUANTITY_MAX
            ));
        }
        Ok(v)
    };
    let ports = |name: &str| -> Result<BTreeSet<u16>, String> {
        let mut set = BTreeSet::new();
        for list in [registered, remaining] {
            if let Some(i) = find(list, name) {
                for p in list[i].string_set_value {
                    let p = p.as_ref();
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

fn raw<'a, 'de>(list: &'a [ResourceJson<'de>]) -> Vec<RawResource<'a, Text<'de>>> {
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
    let what = "output of `aws ecs describe-container-instances`";
    let text = read_text(path, what)?;
    let doc: DescribeContainerInstances = parse(path, what, &text)?;
    doc.container_instances
        .into_iter()
        .enumerate()
        .map(|(i, ci)| {
            let attribute = |name: &str| {
                ci.attributes
                    .iter()
                    .find(|a| &*a.name == name)
                    .map(|a| a.value.as_deref().unwrap_or_default().to_string())
            };
            let base = Instance {
                arn: ci.container_instance_arn.to_string(),
                ec2_instance_id: ci.ec2_instance_id.as_deref().map(str::to_string),
                status: ci.status.to_string(),
                instance_type: attribute(INSTANCE_TYPE_ATTRIBUTE),
                running_tasks: ci.running_tasks_count,
                pending_tasks: ci.pending_tasks_count,
                agent_connected: ci.agent_connected,
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
    let absurd = |at: String, v: i64| {
        bad(
            path,
            format!(
                "{prefix}{at} is {v}, above {} (not a real task)",
                super::QUANTITY_MAX
            ),
        )
    };
    for (i, c) in td.container_definitions.iter().enumerate() {
        for (field, v) in [
            ("cpu", Some(c.cpu)),
            ("memory", c.memory),
            ("memoryReservation", c.memory_reservation),
        ] {
            if let Some(v) = v.filter(|&v| v > 0 && v as u64 > super::QUANTITY_MAX) {
                return Err(absurd(format!("containerDefinitions[{i}].{field}"), v));
            }
        }
    }
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
    let shape = TaskShape::from_definition(
        &td.family,
        NetworkMode::parse(td.network_mode.as_deref()),
        td.cpu.as_deref(),
        td.memory.as_deref(),
        &containers,
    )
    .map_err(|e| bad(path, e.to_string()))?;
    for (field, v, given) in [
        ("cpu", shape.cpu_units, &td.cpu),
        ("memory", shape.memory_mib, &td.memory),
    ] {
        if v > super::QUANTITY_MAX {
            return Err(bad(
                path,
                format!(
                    "{prefix}{} is {v}, above {} (not a real task)",
                    match given {
                        Some(g) => format!("{field} {g:?}"),
                        None => format!("the sum of containerDefinitions[*].{field}"),
                    },
                    super::QUANTITY_MAX
                ),
            ));
        }
    }
    Ok(shape)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn instances_from(text: &str) -> Result<Vec<Instance>, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ci.json");
        std::fs::write(&path, text).unwrap();
        container_instances(&path)
    }

    const PLAIN: &str = r#"{"containerInstances": [{
        "containerInstanceArn": "arn:aws:ecs:us-east-1:1:container-instance/c/1",
        "ec2InstanceId": "i-01", "status": "ACTIVE",
        "registeredResources": [
            {"name": "CPU", "integerValue": 2048}, {"name": "MEMORY", "integerValue": 3763},
            {"name": "PORTS", "stringSetValue": ["22", "2375"]}],
        "remainingResources": [
            {"name": "CPU", "integerValue": 1024}, {"name": "MEMORY", "integerValue": 3000},
            {"name": "PORTS", "stringSetValue": ["22", "2375", "8080"]}],
        "attributes": [{"name": "ecs.instance-type", "value": "c5.large"}]}]}"#;

    /// Strings are borrowed from the text when they can be; escaped ones (legal JSON the CLI never
    /// writes, but a hand-edited file may) must read the same.
    #[test]
    fn escaped_strings_read_the_same_as_plain_ones() {
        let escaped = PLAIN
            .replace("\"i-01\"", r#""i-\u00301""#)
            .replace("\"8080\"", r#""80\u00380""#)
            .replace("\"c5.large\"", r#""c5\u002elarge""#)
            .replace("\"ACTIVE\"", r#""\u0041CTIVE""#)
            .replace("\"PORTS\"", r#""PORT\u0053""#);
        assert_ne!(escaped, PLAIN);
        let plain = instances_from(PLAIN).unwrap();
        let escaped = instances_from(&escaped).unwrap();
        assert_eq!(plain, escaped);
        let i = &plain[0];
        assert_eq!(i.ec2_instance_id.as_deref(), Some("i-01"));
        assert_eq!(i.instance_type.as_deref(), Some("c5.large"));
        assert_eq!(i.cpu_units, Quantity::new(2048, 1024));
        assert!(i.taken_tcp_ports.contains(&8080));
    }

    #[test]
    fn data_after_the_document_is_refused() {
        for tail in [PLAIN, "\nx", "{}"] {
            let err = instances_from(&format!("{PLAIN}{tail}")).unwrap_err();
            assert!(
                matches!(&err, Error::Input(m) if m.contains("trailing")),
                "{err}"
            );
        }
        assert_eq!(instances_from(&format!("{PLAIN}\n\n")).unwrap().len(), 1);
    }

    #[test]
    fn an_absurd_quantity_is_named_by_its_path() {
        let bad = PLAIN.replace(
            r#""integerValue": 2048"#,
            r#""integerValue": 9223372036854775807"#,
        );
        let err = instances_from(&bad).unwrap_err().to_string();
        assert!(
            err.contains("containerInstances[0]")
                && err.contains("registeredResources[0].integerValue (CPU)"),
            "{err}"
        );
    }

    /// The fast parse and the path-tracking one agree: a bad value is still named by its path.
    #[test]
    fn a_wrong_type_is_named_by_its_path() {
        let bad = PLAIN.replace(r#""integerValue": 1024"#, r#""integerValue": "many""#);
        let err = instances_from(&bad).unwrap_err().to_string();
        assert!(
            err.contains("containerInstances[0].remainingResources[0].integerValue"),
            "{err}"
        );
    }
}
