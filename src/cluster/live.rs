//! The calculator's inputs read live from ECS and EC2 for one cluster.
//!
//! ListContainerInstances + DescribeContainerInstances (100 per call, the API's limit); the task
//! shapes of the cluster's services (ListServices + DescribeServices, 10 per call) or of the given
//! families (DescribeTaskDefinition); ListTasks + DescribeTasks (100 per call) for the ENIs held by
//! awsvpc tasks; DescribeInstanceTypes (100 per call) for ENI limits. Retries are the SDK's
//! (crate::aws::sdk_config); an API failure ends the command with the operation and the SDK's error.

use std::collections::{BTreeMap, BTreeSet};

use aws_config::SdkConfig;
use aws_smithy_types::error::display::DisplayErrorContext;

use super::files::{RawResource, holds_eni, instance_from_resources};
use super::{INSTANCE_TYPE_ATTRIBUTE, Inputs, Instance, TRUNK_ATTRIBUTE};
use crate::capacity::{Definition, TaskShape};
use crate::error::Error;

/// The APIs' batch limits.
const DESCRIBE_CONTAINER_INSTANCES_MAX: usize = 100;
const DESCRIBE_SERVICES_MAX: usize = 10;
const DESCRIBE_TASKS_MAX: usize = 100;
const DESCRIBE_INSTANCE_TYPES_MAX: usize = 100;

fn failed<E: std::error::Error>(op: &str, cluster: &str, e: E) -> Error {
    Error::Unavailable(format!(
        "{op} (cluster {cluster}): {}",
        DisplayErrorContext(&e)
    ))
}

/// Everything the calculator needs for `cluster`. `families` empty = the services' task definitions.
pub async fn fetch(sdk: &SdkConfig, cluster: &str, families: &[String]) -> Result<Inputs, Error> {
    let ecs = aws_sdk_ecs::Client::new(sdk);
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let instances = container_instances(&ecs, cluster).await?;
    let shapes = shapes(&ecs, cluster, families).await?;
    let awsvpc_tasks = awsvpc_tasks(&ecs, cluster).await?;
    let types: BTreeSet<String> = instances
        .iter()
        .filter_map(|i| i.instance_type.clone())
        .collect();
    let eni_limits = eni_limits(&ec2, cluster, &types).await?;
    Ok(Inputs {
        instances,
        shapes,
        eni_limits: Some(eni_limits),
        awsvpc_tasks: Some(awsvpc_tasks),
    })
}

pub async fn container_instances(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
) -> Result<Vec<Instance>, Error> {
    let mut arns = Vec::new();
    let mut pages = ecs
        .list_container_instances()
        .cluster(cluster)
        .max_results(DESCRIBE_CONTAINER_INSTANCES_MAX as i32)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| failed("ECS ListContainerInstances", cluster, e))?;
        arns.extend(page.container_instance_arns().iter().cloned());
    }
    let mut out = Vec::with_capacity(arns.len());
    for chunk in arns.chunks(DESCRIBE_CONTAINER_INSTANCES_MAX) {
        let resp = ecs
            .describe_container_instances()
            .cluster(cluster)
            .set_container_instances(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| failed("ECS DescribeContainerInstances", cluster, e))?;
        for ci in resp.container_instances() {
            out.push(instance(ci).map_err(|what| {
                Error::Unavailable(format!(
                    "ECS DescribeContainerInstances (cluster {cluster}): {}: {what}",
                    ci.container_instance_arn().unwrap_or("?")
                ))
            })?);
        }
    }
    Ok(out)
}

fn raw(list: &[aws_sdk_ecs::types::Resource]) -> Vec<RawResource<'_, String>> {
    list.iter()
        .map(|r| RawResource {
            name: r.name().unwrap_or_default(),
            integer_value: r.integer_value().into(),
            long_value: r.long_value(),
            string_set_value: r.string_set_value(),
        })
        .collect()
}

/// One container instance as the calculator reads it; `status` and the daemon's reconciliation
/// both go through here.
pub fn instance(ci: &aws_sdk_ecs::types::ContainerInstance) -> Result<Instance, String> {
    let attribute = |name: &str| {
        ci.attributes()
            .iter()
            .find(|a| a.name() == name)
            .map(|a| a.value().unwrap_or_default().to_string())
    };
    let base = Instance {
        arn: ci.container_instance_arn().unwrap_or_default().to_string(),
        ec2_instance_id: ci.ec2_instance_id().map(str::to_string),
        status: ci.status().unwrap_or_default().to_string(),
        instance_type: attribute(INSTANCE_TYPE_ATTRIBUTE),
        running_tasks: u64::try_from(ci.running_tasks_count()).unwrap_or(0),
        pending_tasks: u64::try_from(ci.pending_tasks_count()).unwrap_or(0),
        trunk: attribute(TRUNK_ATTRIBUTE).is_some(),
        agent_connected: Some(ci.agent_connected()),
        ..Instance::default()
    };
    instance_from_resources(
        base,
        &raw(ci.registered_resources()),
        &raw(ci.remaining_resources()),
    )
}

/// A service's current task definition, and whether ECS runs it as a DAEMON (one task on every
/// instance: per-host overhead, not a shape to plan for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDefinition {
    pub task_definition: String,
    pub daemon: bool,
}

/// The task definitions of the cluster's services (ListServices + DescribeServices).
pub async fn services(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
) -> Result<Vec<ServiceDefinition>, Error> {
    let mut services = Vec::new();
    let mut pages = ecs.list_services().cluster(cluster).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| failed("ECS ListServices", cluster, e))?;
        services.extend(page.service_arns().iter().cloned());
    }
    let mut out = BTreeSet::new();
    for chunk in services.chunks(DESCRIBE_SERVICES_MAX) {
        let resp = ecs
            .describe_services()
            .cluster(cluster)
            .set_services(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| failed("ECS DescribeServices", cluster, e))?;
        for s in resp.services() {
            let Some(td) = s.task_definition() else {
                continue;
            };
            let daemon =
                s.scheduling_strategy() == Some(&aws_sdk_ecs::types::SchedulingStrategy::Daemon);
            out.insert((td.to_string(), daemon));
        }
    }
    Ok(out
        .into_iter()
        .map(|(task_definition, daemon)| ServiceDefinition {
            task_definition,
            daemon,
        })
        .collect())
}

/// One task definition (DescribeTaskDefinition), by family, `family:revision` or ARN.
pub async fn definition(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    name: &str,
) -> Result<Definition, Error> {
    let resp = ecs
        .describe_task_definition()
        .task_definition(name)
        .send()
        .await
        .map_err(|e| failed(&format!("ECS DescribeTaskDefinition {name}"), cluster, e))?;
    let td = resp.task_definition().ok_or_else(|| {
        Error::Unavailable(format!(
            "ECS DescribeTaskDefinition {name}: no task definition in the answer"
        ))
    })?;
    Definition::try_from(td).map_err(|e| Error::Input(e.to_string()))
}

/// The shapes to plan for: the given families, else the task definitions of the cluster's
/// services that are not DAEMON services (those run on every instance: overhead, not a shape).
async fn shapes(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    families: &[String],
) -> Result<Vec<TaskShape>, Error> {
    let mut definitions: BTreeSet<String> = families.iter().cloned().collect();
    if definitions.is_empty() {
        definitions.extend(
            services(ecs, cluster)
                .await?
                .into_iter()
                .filter(|s| !s.daemon)
                .map(|s| s.task_definition),
        );
        if definitions.is_empty() {
            return Err(Error::Input(format!(
                "cluster {cluster} has no (non-DAEMON) services to take task shapes from: give --task-definition-family"
            )));
        }
    }
    let mut shapes = Vec::with_capacity(definitions.len());
    for d in &definitions {
        let shape = definition(ecs, cluster, d)
            .await?
            .shape()
            .map_err(|e| Error::Input(e.to_string()))?;
        shapes.push(shape);
    }
    Ok(shapes)
}

async fn awsvpc_tasks(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
) -> Result<BTreeMap<String, u32>, Error> {
    let mut arns = Vec::new();
    let mut pages = ecs
        .list_tasks()
        .cluster(cluster)
        .max_results(DESCRIBE_TASKS_MAX as i32)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| failed("ECS ListTasks", cluster, e))?;
        arns.extend(page.task_arns().iter().cloned());
    }
    let mut used = BTreeMap::new();
    for chunk in arns.chunks(DESCRIBE_TASKS_MAX) {
        let resp = ecs
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| failed("ECS DescribeTasks", cluster, e))?;
        for t in resp.tasks() {
            let Some(arn) = t.container_instance_arn() else {
                continue; // Fargate
            };
            let attachments = t.attachments().iter().map(|a| (a.r#type(), a.status()));
            if holds_eni(t.last_status(), attachments) {
                *used.entry(arn.to_string()).or_insert(0) += 1;
            }
        }
    }
    Ok(used)
}

async fn eni_limits(
    ec2: &aws_sdk_ec2::Client,
    cluster: &str,
    types: &BTreeSet<String>,
) -> Result<BTreeMap<String, u32>, Error> {
    let types: Vec<String> = types.iter().cloned().collect();
    let mut limits = BTreeMap::new();
    for chunk in types.chunks(DESCRIBE_INSTANCE_TYPES_MAX) {
        let resp = ec2
            .describe_instance_types()
            .set_instance_types(Some(
                chunk
                    .iter()
                    .map(|t| aws_sdk_ec2::types::InstanceType::from(t.as_str()))
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| failed("EC2 DescribeInstanceTypes", cluster, e))?;
        for t in resp.instance_types() {
            let (Some(name), Some(max)) = (
                t.instance_type(),
                t.network_info()
                    .and_then(|n| n.maximum_network_interfaces()),
            ) else {
                continue;
            };
            if let Ok(max) = u32::try_from(max) {
                limits.insert(name.as_str().to_string(), max);
            }
        }
    }
    Ok(limits)
}
