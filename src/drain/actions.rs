//! The drain's effects on AWS, for this instance only: its ECS container instance state, its task
//! count, and its Auto Scaling lifecycle action.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_sdk_ecs::types::{ContainerInstance, ContainerInstanceStatus, DesiredStatus, Task};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use futures_util::future::BoxFuture;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::Effects;
use super::machine::{Failure, Hook, LifecycleResult};
use crate::aws::{self, Outcome};
use crate::config::StopRemaining;
use crate::retry::Backoff;

/// Auto Scaling's default HeartbeatTimeout when a hook does not say (3600 s).
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3600);
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";
/// The reason StopTask records (at most 255 characters), shown in the console and DescribeTasks.
const STOP_REASON: &str = "ecs-capacity-agent: the instance's drain reached its bound";

/// Which instance the effects act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub cluster: String,
    /// EC2 instance id (`i-…`).
    pub instance_id: String,
    /// Found through ECS (ListContainerInstances by ec2InstanceId) when `None`.
    pub container_instance_arn: Option<String>,
    /// Found through DescribeAutoScalingInstances when `None`.
    pub autoscaling_group: Option<String>,
    /// The terminating hook of the group found through DescribeLifecycleHooks when `None`.
    pub lifecycle_hook: Option<String>,
}

impl Target {
    /// `drain.autoscaling_group` / `drain.lifecycle_hook` with "" meaning "find it".
    pub fn from_config(cfg: &crate::config::Config, instance_id: String) -> Target {
        let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        Target {
            cluster: cfg.agent.cluster.clone(),
            instance_id,
            container_instance_arn: None,
            autoscaling_group: non_empty(&cfg.drain.autoscaling_group),
            lifecycle_hook: non_empty(&cfg.drain.lifecycle_hook),
        }
    }
}

/// The families of the ECS tasks the local Docker engine runs; `None` while unknown.
type LocalTasks = Box<dyn Fn() -> Option<Vec<String>> + Send + Sync>;

pub struct AwsEffects {
    ecs: aws_sdk_ecs::Client,
    autoscaling: aws_sdk_autoscaling::Client,
    target: Target,
    /// This instance's container instance ARN once found; forgotten when ECS no longer knows it
    /// (the ECS agent registered the instance again), so that it is looked up again.
    arn: Mutex<Option<String>>,
    local_tasks: Option<LocalTasks>,
    ignore_families: Vec<String>,
}

impl AwsEffects {
    pub fn new(sdk: &SdkConfig, target: Target) -> AwsEffects {
        let arn = Mutex::new(target.container_instance_arn.clone());
        AwsEffects {
            ecs: aws_sdk_ecs::Client::new(sdk),
            autoscaling: aws_sdk_autoscaling::Client::new(sdk),
            target,
            arn,
            local_tasks: None,
            ignore_families: Vec::new(),
        }
    }

    /// Families of the ECS tasks running per the local Docker engine (`None` = unknown). A drain
    /// ends only when ECS and Docker both say the tasks are gone.
    pub fn with_local_tasks(
        mut self,
        families: impl Fn() -> Option<Vec<String>> + Send + Sync + 'static,
    ) -> AwsEffects {
        self.local_tasks = Some(Box::new(families));
        self
    }

    /// Task families not waited for (`drain.ignore_families`: daemon services).
    pub fn with_ignored_families(mut self, families: Vec<String>) -> AwsEffects {
        self.ignore_families = families;
        self
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// This instance's container instance ARN, looked up when not known (yet, or any more).
    pub async fn container_instance_arn(&self) -> Result<String, Failure> {
        let mut arn = self.arn.lock().await;
        if let Some(a) = arn.as_ref() {
            return Ok(a.clone());
        }
        let found = self.find_container_instance().await?;
        *arn = Some(found.clone());
        Ok(found)
    }

    /// ECS answered that `stale` is missing: forget it, and fail the call as one to retry, which
    /// looks the ARN up again. After the ECS agent registers the instance again (a new ARN), the
    /// old one is MISSING: that is not the permanent refusal it reads as.
    async fn stale_arn(&self, stale: &str, what: String) -> Failure {
        let mut arn = self.arn.lock().await;
        if arn.as_deref() == Some(stale) {
            *arn = None;
        }
        tracing::warn!(container_instance = %stale, "{what}: looking this instance up in ECS again");
        Failure::new(
            Outcome::NotApplied,
            format!("{what} (looking the container instance up again)"),
        )
    }

    /// Looks up this instance's container instance ARN before any notice arrives, so that starting a
    /// drain costs one request (UpdateContainerInstancesState) instead of three. Tries again with
    /// backoff (5 s up to 5 min) until found or `token` is cancelled: at boot the ECS agent may
    /// register this instance after the daemon starts. A drain that begins first looks it up itself.
    pub async fn resolve_ahead(&self, token: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
        loop {
            // Cancellable mid-request too: a slow ECS must not hold up the daemon's shutdown.
            let found = tokio::select! {
                _ = token.cancelled() => return,
                found = self.container_instance_arn() => found,
            };
            match found {
                Ok(_) => return,
                Err(f) if backoff.attempts() == 0 => {
                    tracing::info!(reason = %f.message, "container instance not found yet; looking again with backoff");
                }
                Err(f) => {
                    tracing::debug!(reason = %f.message, "container instance still not found")
                }
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn find_container_instance(&self) -> Result<String, Failure> {
        let t = &self.target;
        let mut arns = Vec::new();
        let mut pages = self
            .ecs
            .list_container_instances()
            .cluster(&t.cluster)
            .filter(format!("ec2InstanceId == {}", t.instance_id))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| failure("ListContainerInstances", &e))?;
            arns.extend(page.container_instance_arns.unwrap_or_default());
        }
        // The filter is applied by ECS; confirming the instance id guards against an endpoint that
        // ignores it (and costs one call, once).
        for chunk in arns.chunks(100) {
            let out = self
                .ecs
                .describe_container_instances()
                .cluster(&t.cluster)
                .set_container_instances(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| failure("DescribeContainerInstances", &e))?;
            for ci in out.container_instances.unwrap_or_default() {
                if ci.ec2_instance_id.as_deref() == Some(t.instance_id.as_str())
                    && let Some(arn) = ci.container_instance_arn
                {
                    tracing::info!(container_instance = %arn, instance_id = %t.instance_id, "found this instance in ECS");
                    return Ok(arn);
                }
            }
        }
        Err(Failure::new(
            Outcome::Rejected,
            format!(
                "no container instance for EC2 instance {} in cluster {:?} (is the ECS agent registered to this cluster?)",
                t.instance_id, t.cluster
            ),
        ))
    }

    /// This instance's container instance as ECS describes it now.
    async fn describe_this(&self) -> Result<ContainerInstance, Failure> {
        let arn = self.container_instance_arn().await?;
        let cluster = &self.target.cluster;
        let out = self
            .ecs
            .describe_container_instances()
            .cluster(cluster)
            .container_instances(&arn)
            .send()
            .await
            .map_err(|e| failure("DescribeContainerInstances", &e))?;
        match out
            .container_instances
            .unwrap_or_default()
            .into_iter()
            .next()
        {
            Some(ci) => Ok(ci),
            None => Err(self
                .stale_arn(
                    &arn,
                    format!("container instance {arn} is not in cluster {cluster:?}"),
                )
                .await),
        }
    }

    async fn ecs_remaining(&self) -> Result<u32, Failure> {
        if self.ignore_families.is_empty() {
            let ci = self.describe_this().await?;
            return Ok((ci.running_tasks_count + ci.pending_tasks_count).max(0) as u32);
        }
        // Ignored families need the tasks themselves, not only the count.
        Ok(self.tasks_here(None).await?.len() as u32)
    }

    /// The tasks ECS has on this container instance that have not stopped, ignored families left
    /// out; only those desired `desired` when given.
    async fn tasks_here(&self, desired: Option<DesiredStatus>) -> Result<Vec<Task>, Failure> {
        let arn = self.container_instance_arn().await?;
        let cluster = &self.target.cluster;
        let mut task_arns = Vec::new();
        let mut pages = self
            .ecs
            .list_tasks()
            .cluster(cluster)
            .container_instance(&arn)
            .set_desired_status(desired)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| failure("ListTasks", &e))?;
            task_arns.extend(page.task_arns.unwrap_or_default());
        }
        let mut tasks = Vec::new();
        for chunk in task_arns.chunks(100) {
            let out = self
                .ecs
                .describe_tasks()
                .cluster(cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| failure("DescribeTasks", &e))?;
            tasks.extend(
                out.tasks
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| t.last_status.as_deref() != Some("STOPPED"))
                    .filter(|t| {
                        let family = t.task_definition_arn.as_deref().map(family_of);
                        !family.is_some_and(|f| self.ignored(f))
                    }),
            );
        }
        Ok(tasks)
    }

    /// StopTask for each task still meant to run here in `scope`. Every task is tried; the first
    /// failure is returned after the others were tried.
    async fn stop_tasks_inner(&self, scope: StopRemaining) -> Result<u32, Failure> {
        if scope == StopRemaining::None {
            return Ok(0);
        }
        let tasks = self.tasks_here(Some(DesiredStatus::Running)).await?;
        let mut stopped = 0;
        let mut first_failure = None;
        for t in tasks {
            let owned = t
                .group
                .as_deref()
                .is_some_and(|g| g.starts_with("service:"));
            if scope == StopRemaining::Unowned && owned {
                continue;
            }
            let Some(task) = t.task_arn else { continue };
            let sent = self
                .ecs
                .stop_task()
                .cluster(&self.target.cluster)
                .task(&task)
                .reason(STOP_REASON)
                .send()
                .await;
            match sent {
                Ok(_) => {
                    tracing::warn!(%task, group = t.group.as_deref().unwrap_or(""), "told the task to stop: the drain's bound is near");
                    stopped += 1;
                }
                Err(e) => {
                    let f = failure("StopTask", &e);
                    tracing::warn!(%task, error = %f.message, "cannot stop the task");
                    first_failure.get_or_insert(f);
                }
            }
        }
        match first_failure {
            Some(f) => Err(f),
            None => Ok(stopped),
        }
    }

    fn ignored(&self, family: &str) -> bool {
        self.ignore_families.iter().any(|f| f == family)
    }

    /// Tasks the local Docker engine still runs, not counting ignored families; `None` when unknown.
    fn local_remaining(&self) -> Option<u32> {
        let families = (self.local_tasks.as_ref()?)()?;
        Some(families.iter().filter(|f| !self.ignored(f)).count() as u32)
    }

    /// The Auto Scaling group of this instance: configured, else looked up; `None` when it is in none.
    async fn group(&self) -> Result<Option<String>, Failure> {
        let t = &self.target;
        if let Some(g) = &t.autoscaling_group {
            return Ok(Some(g.clone()));
        }
        let out = self
            .autoscaling
            .describe_auto_scaling_instances()
            .instance_ids(&t.instance_id)
            .send()
            .await
            .map_err(|e| failure("DescribeAutoScalingInstances", &e))?;
        let group = out
            .auto_scaling_instances
            .unwrap_or_default()
            .into_iter()
            .find(|i| i.instance_id.as_deref() == Some(t.instance_id.as_str()))
            .and_then(|i| i.auto_scaling_group_name);
        if group.is_none() {
            tracing::warn!(instance_id = %t.instance_id, "this instance is in no Auto Scaling group");
        }
        Ok(group)
    }

    async fn find_hook_inner(&self) -> Result<Option<Hook>, Failure> {
        let t = &self.target;
        let Some(group) = self.group().await? else {
            return Ok(None);
        };
        let mut req = self
            .autoscaling
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(&group);
        if let Some(h) = &t.lifecycle_hook {
            req = req.lifecycle_hook_names(h);
        }
        let out = req
            .send()
            .await
            .map_err(|e| failure("DescribeLifecycleHooks", &e))?;
        let hooks: Vec<_> = out
            .lifecycle_hooks
            .unwrap_or_default()
            .into_iter()
            .filter(|h| h.lifecycle_transition.as_deref() == Some(TERMINATING))
            .collect();
        if hooks.len() > 1 {
            tracing::warn!(
                group,
                count = hooks.len(),
                "several terminating hooks: using the first; set drain.lifecycle_hook to choose"
            );
        }
        let Some(h) = hooks.into_iter().next() else {
            if let Some(name) = &t.lifecycle_hook {
                return Err(Failure::new(
                    Outcome::Rejected,
                    format!(
                        "group {group} has no terminating lifecycle hook named {name:?} (drain.lifecycle_hook)"
                    ),
                ));
            }
            return Ok(None);
        };
        Ok(Some(Hook {
            group,
            name: h.lifecycle_hook_name.unwrap_or_default(),
            heartbeat_timeout: h
                .heartbeat_timeout
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64))
                .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT),
        }))
    }
}

/// `arn:aws:ecs:…:task-definition/web:3` → `web`.
fn family_of(task_definition_arn: &str) -> &str {
    let name = task_definition_arn
        .rsplit_once('/')
        .map(|(_, n)| n)
        .unwrap_or(task_definition_arn);
    name.split_once(':').map(|(f, _)| f).unwrap_or(name)
}

impl Effects for AwsEffects {
    fn set_draining(&self, draining: bool) -> BoxFuture<'_, Result<(), Failure>> {
        Box::pin(async move {
            let arn = self.container_instance_arn().await?;
            let status = if draining {
                ContainerInstanceStatus::Draining
            } else {
                ContainerInstanceStatus::Active
            };
            let out = self
                .ecs
                .update_container_instances_state()
                .cluster(&self.target.cluster)
                .container_instances(&arn)
                .status(status)
                .send()
                .await
                .map_err(|e| failure("UpdateContainerInstancesState", &e))?;
            if let Some(f) = out.failures.unwrap_or_default().into_iter().next() {
                if f.reason.as_deref() == Some("MISSING") {
                    let what = format!("UpdateContainerInstancesState {arn}: MISSING");
                    return Err(self.stale_arn(&arn, what).await);
                }
                return Err(Failure::new(
                    Outcome::Rejected,
                    format!(
                        "UpdateContainerInstancesState {arn}: {} {}",
                        f.reason.unwrap_or_default(),
                        f.detail.unwrap_or_default()
                    ),
                ));
            }
            Ok(())
        })
    }

    fn is_draining(&self) -> BoxFuture<'_, Result<bool, Failure>> {
        Box::pin(async move {
            let ci = self.describe_this().await?;
            Ok(ci.status.as_deref() == Some("DRAINING"))
        })
    }

    fn remaining_tasks(&self) -> BoxFuture<'_, Result<u32, Failure>> {
        Box::pin(async move {
            let ecs = self.ecs_remaining().await?;
            let local = self.local_remaining();
            if let Some(local) = local
                && local != ecs
            {
                tracing::debug!(
                    ecs,
                    local,
                    "ECS and Docker disagree on the remaining tasks: waiting for both"
                );
            }
            Ok(ecs.max(local.unwrap_or(0)))
        })
    }

    fn find_hook(&self) -> BoxFuture<'_, Result<Option<Hook>, Failure>> {
        Box::pin(self.find_hook_inner())
    }

    fn stop_tasks(&self, scope: StopRemaining) -> BoxFuture<'_, Result<u32, Failure>> {
        Box::pin(self.stop_tasks_inner(scope))
    }

    fn heartbeat<'a>(&'a self, hook: &'a Hook) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.autoscaling
                .record_lifecycle_action_heartbeat()
                .auto_scaling_group_name(&hook.group)
                .lifecycle_hook_name(&hook.name)
                .instance_id(&self.target.instance_id)
                .send()
                .await
                .map_err(|e| failure("RecordLifecycleActionHeartbeat", &e))?;
            tracing::debug!(hook = %hook.name, "lifecycle heartbeat recorded");
            Ok(())
        })
    }

    fn complete<'a>(
        &'a self,
        hook: &'a Hook,
        result: LifecycleResult,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.autoscaling
                .complete_lifecycle_action()
                .auto_scaling_group_name(&hook.group)
                .lifecycle_hook_name(&hook.name)
                .instance_id(&self.target.instance_id)
                .lifecycle_action_result(result.as_str())
                .customize()
                // At most once: a retried attempt could complete the action a second time.
                .config_override(
                    aws_sdk_autoscaling::config::Builder::default()
                        .retry_config(RetryConfig::disabled()),
                )
                .send()
                .await
                .map_err(|e| failure("CompleteLifecycleAction", &e))?;
            Ok(())
        })
    }
}

/// An SDK error as the drain's failure: what the call means for a retry ([`aws::classify`]) and the
/// error with its whole chain. Whether a call is repeated is the machine's choice: every one that was
/// not rejected, except CompleteLifecycleAction, repeated only when it was certainly not applied.
fn failure<E>(op: &str, e: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    Failure::new(
        aws::classify(e),
        format!("{op}: {}", DisplayErrorContext(e)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_is_the_name_before_the_revision() {
        assert_eq!(
            family_of("arn:aws:ecs:us-east-1:123456789012:task-definition/web:3"),
            "web"
        );
        assert_eq!(family_of("web:3"), "web");
        assert_eq!(family_of("web"), "web");
    }

    #[test]
    fn global_timeout_is_100_heartbeats_or_48_hours() {
        let hook = |s| Hook {
            group: "g".into(),
            name: "h".into(),
            heartbeat_timeout: Duration::from_secs(s),
        };
        assert_eq!(hook(300).global_timeout(), Duration::from_secs(30_000));
        assert_eq!(hook(7200).global_timeout(), Duration::from_secs(48 * 3600));
    }
}
