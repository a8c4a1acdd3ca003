//! This host's container instance as ECS sees it (DescribeContainerInstances): registered and
//! remaining CPU, MEMORY, PORTS, PORTS_UDP, `status`, `agentConnected` and the attributes (the
//! `ecs.awsvpc-trunk-id` attribute says awsvpc trunking is on). Read at a low rate: once after
//! start, after local changes (debounced) and every few minutes, jittered.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::Instance;
use aws_smithy_types::error::display::DisplayErrorContext;

/// The regular reconciliation interval (jittered by ±20 %).
pub const EVERY: Duration = Duration::from_secs(300);
/// A local change is reconciled this long after the last change of a burst.
pub const DEBOUNCE: Duration = Duration::from_secs(5);
/// After a failed look-up, sooner.
const RETRY: Duration = Duration::from_secs(30);

/// One reconciliation's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct EcsReading {
    /// Numbers the readings, so a consumer counts each one once.
    pub seq: u64,
    pub at: SystemTime,
    /// `Ok(None)`: ECS has no container instance for this EC2 instance in the cluster (not
    /// registered yet, or deregistered); `Err`: ECS could not be asked.
    pub instance: Result<Option<Instance>, String>,
}

/// DescribeContainerInstances for this EC2 instance: by its ARN when known (one call), else found
/// with ListContainerInstances `ec2InstanceId ==` and confirmed by the instance id.
pub async fn describe(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    instance_id: &str,
    arn: Option<&str>,
) -> Result<Option<Instance>, String> {
    let arns = match arn {
        Some(a) => vec![a.to_string()],
        None => {
            let mut arns = Vec::new();
            let mut pages = ecs
                .list_container_instances()
                .cluster(cluster)
                .filter(format!("ec2InstanceId == {instance_id}"))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| {
                    format!("ECS ListContainerInstances: {}", DisplayErrorContext(&e))
                })?;
                arns.extend(page.container_instance_arns().iter().cloned());
            }
            arns
        }
    };
    for chunk in arns.chunks(100) {
        let out = ecs
            .describe_container_instances()
            .cluster(cluster)
            .set_container_instances(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "ECS DescribeContainerInstances: {}",
                    DisplayErrorContext(&e)
                )
            })?;
        for ci in out.container_instances() {
            if ci.ec2_instance_id() == Some(instance_id) {
                return crate::cluster::live::instance(ci).map(Some);
            }
        }
    }
    Ok(None)
}

/// Reconciles now, after each burst of `changes` (debounced) and every [`EVERY`]; publishes each
/// answer on `tx`. `arn` gives the container instance ARN when the ECS agent has told it. Ends on
/// `token`.
pub async fn follow(
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    instance_id: String,
    arn: watch::Receiver<Option<String>>,
    mut changes: watch::Receiver<u64>,
    tx: watch::Sender<Option<Arc<EcsReading>>>,
    token: CancellationToken,
) {
    let mut seq = 0;
    loop {
        let known_arn = arn.borrow().clone();
        let instance = describe(&ecs, &cluster, &instance_id, known_arn.as_deref()).await;
        if let Err(e) = &instance {
            tracing::warn!(error = %e, "cannot reconcile with ECS; its figures are as last read");
        }
        let wait = if instance.is_ok() {
            crate::retry::jittered(EVERY)
        } else {
            crate::retry::jittered(RETRY)
        };
        seq += 1;
        tx.send_replace(Some(Arc::new(EcsReading {
            seq,
            at: SystemTime::now(),
            instance,
        })));
        changes.mark_unchanged();
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                // Debounce: wait until the changes stop for DEBOUNCE.
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                        r = changes.changed() => if r.is_err() { return; },
                    }
                }
            }
        }
    }
}
