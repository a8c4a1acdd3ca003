//! The protection core's edge: this instance's scale-in protection in Auto Scaling, the group's
//! members, and the cluster view from ECS; and the loop that drives the core with them.
//!
//! API budget, per host: one DescribeAutoScalingInstances at start; SetInstanceProtection only when
//! the wanted state changes (at most one lift per `idle_grace` or volunteering, one protect per
//! busy spell). Only a busy host reads the cluster view: ListContainerInstances (100 per page) +
//! DescribeContainerInstances (100 per call) + one DescribeAutoScalingGroups, i.e.
//! c(N) = 2·⌈N/100⌉ + 1 requests for N instances. It reads it every `view_interval` (default
//! 5 min), stretched to N·c(N) seconds for a large cluster, ±20 % jitter: the whole fleet then
//! makes at most about one such request per second (10 hosts: 0.1/s; 100 hosts: 1/s every 5 min;
//! 1,000 hosts: each host every 5.8 h, 1/s in all), well inside the token buckets ECS throttles
//! an account's requests with (ECS API Reference, "Request throttling").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_smithy_types::error::display::DisplayErrorContext;
use rand::RngExt as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::volunteer::{self, View, ViewHost};
use super::{Decision, Observation, Protection, Reason, Settings};
use crate::capacity::TaskShape;
use crate::cluster::{self, Inputs};

/// Auto Scaling's lifecycle state of an instance that serves (not Pending, Terminating, Warmed…).
pub const IN_SERVICE: &str = "InService";

/// What this host knows about itself, as the observer last saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Local {
    /// Runs a task that is not of a daemon family (`drain.ignore_families`).
    pub busy: bool,
    pub draining: bool,
    /// The shapes of its non-daemon tasks (what a scale-in would move).
    pub tasks: Vec<TaskShape>,
    /// How many tasks of daemon families run here.
    pub daemon_tasks: u64,
    /// The cluster's task shapes (the largest task).
    pub shapes: Vec<TaskShape>,
}

impl Local {
    /// This host's view from one observation: tasks of `daemon_families` (`drain.ignore_families`)
    /// do not make it busy and are not moved by a scale-in.
    pub fn observed(
        tasks: &[crate::host::Task],
        daemon_families: &[String],
        shapes: &[TaskShape],
        draining: bool,
    ) -> Local {
        let (daemon, service): (Vec<_>, Vec<_>) = tasks
            .iter()
            .partition(|t| daemon_families.iter().any(|f| f == &t.family));
        Local {
            busy: !service.is_empty(),
            draining,
            tasks: service
                .into_iter()
                .map(crate::host::assess::shape_of)
                .collect(),
            daemon_tasks: daemon.len() as u64,
            shapes: shapes.to_vec(),
        }
    }
}

/// One instance of the group, as DescribeAutoScalingGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub instance_id: String,
    pub lifecycle_state: String,
    pub protected: bool,
}

/// This instance's protection in its Auto Scaling group.
pub struct Protector {
    autoscaling: aws_sdk_autoscaling::Client,
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    group: String,
    instance_id: String,
}

impl Protector {
    /// Finds the group of `instance_id` (DescribeAutoScalingInstances) and its protection now.
    /// `Ok(None)`: the instance is in no group.
    pub async fn locate(
        sdk: &SdkConfig,
        cluster: &str,
        instance_id: &str,
    ) -> Result<Option<(Protector, Member)>, String> {
        let autoscaling = aws_sdk_autoscaling::Client::new(sdk);
        let out = autoscaling
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| format!("DescribeAutoScalingInstances: {}", DisplayErrorContext(&e)))?;
        let Some(found) = out
            .auto_scaling_instances()
            .iter()
            .find(|i| i.instance_id() == Some(instance_id))
        else {
            return Ok(None);
        };
        let Some(group) = found.auto_scaling_group_name() else {
            return Ok(None);
        };
        let member = Member {
            instance_id: instance_id.to_string(),
            lifecycle_state: found.lifecycle_state().unwrap_or_default().to_string(),
            protected: found.protected_from_scale_in().unwrap_or(false),
        };
        Ok(Some((
            Protector {
                autoscaling,
                ecs: aws_sdk_ecs::Client::new(sdk),
                cluster: cluster.to_string(),
                group: group.to_string(),
                instance_id: instance_id.to_string(),
            },
            member,
        )))
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// SetInstanceProtection for this instance (idempotent).
    pub async fn set(&self, protected: bool) -> Result<(), String> {
        self.autoscaling
            .set_instance_protection()
            .auto_scaling_group_name(&self.group)
            .instance_ids(&self.instance_id)
            .protected_from_scale_in(protected)
            .send()
            .await
            .map_err(|e| format!("SetInstanceProtection: {}", DisplayErrorContext(&e)))?;
        Ok(())
    }

    /// The group's instances with their protection (DescribeAutoScalingGroups).
    pub async fn members(&self) -> Result<Vec<Member>, String> {
        let out = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.group)
            .send()
            .await
            .map_err(|e| format!("DescribeAutoScalingGroups: {}", DisplayErrorContext(&e)))?;
        Ok(out
            .auto_scaling_groups()
            .iter()
            .flat_map(|g| g.instances())
            .map(|i| Member {
                instance_id: i.instance_id().unwrap_or_default().to_string(),
                lifecycle_state: i
                    .lifecycle_state()
                    .map(|s| s.as_str())
                    .unwrap_or_default()
                    .to_string(),
                protected: i.protected_from_scale_in().unwrap_or(false),
            })
            .collect())
    }

    /// The cluster's ACTIVE container instances joined with the group's members.
    pub async fn view(&self) -> Result<Vec<ViewHost>, String> {
        let instances = cluster::live::container_instances(&self.ecs, &self.cluster)
            .await
            .map_err(|e| e.to_string())?;
        let members = self.members().await?;
        Ok(join_view(instances, &members))
    }
}

/// ECS's container instances (only ACTIVE ones count) with the group's view of each.
pub fn join_view(instances: Vec<cluster::Instance>, members: &[Member]) -> Vec<ViewHost> {
    let tasks: BTreeMap<String, u64> = instances
        .iter()
        .map(|i| (i.name(), i.running_tasks + i.pending_tasks))
        .collect();
    let (inputs, _, _) = cluster::hosts(&Inputs {
        instances,
        ..Inputs::default()
    });
    inputs
        .into_iter()
        .map(|input| {
            let member = members.iter().find(|m| m.instance_id == input.name);
            ViewHost {
                instance_id: input.name.clone(),
                tasks: tasks.get(&input.name).copied().unwrap_or(0),
                in_service: member.is_some_and(|m| m.lifecycle_state == IN_SERVICE),
                protected: member.is_some_and(|m| m.protected),
                input,
            }
        })
        .collect()
}

/// How the loop runs.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// How often the core is asked (besides every change of `Local`).
    pub tick: Duration,
    pub view_interval: Duration,
    /// How long ago the instance launched when the loop starts.
    pub launched_ago: Duration,
    pub scale_out_threshold: f64,
}

/// What the loop reports: the last decision and whether the host counts in `RemovableHosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The protection last confirmed by AWS; `None` before the first answer.
    pub protected: Option<bool>,
    pub removable: bool,
    pub reason: Reason,
}

/// Drives the core: on every change of `local` and every tick, decide, and call
/// SetInstanceProtection when the wanted state differs from the confirmed one. Ends on `token`.
pub async fn run(
    protector: Arc<Protector>,
    confirmed: Member,
    settings: Settings,
    cadence: Cadence,
    mut local: watch::Receiver<Option<Local>>,
    status: watch::Sender<Option<Status>>,
    token: CancellationToken,
) {
    let origin = Instant::now();
    let at = || origin.elapsed() + cadence.launched_ago;
    let mut core = Protection::new(settings, Duration::ZERO);
    let mut protected = Some(confirmed.protected);
    let mut ticker = tokio::time::interval(cadence.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_view = Instant::now() + jittered(cadence.view_interval);
    tracing::info!(group = %protector.group, protected = confirmed.protected, "managing this instance's scale-in protection");
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
            r = local.changed() => if r.is_err() { return },
        }
        let Some(now) = local.borrow_and_update().clone() else {
            continue;
        };
        if settings.volunteer && now.busy && !now.draining && Instant::now() >= next_view {
            next_view = Instant::now() + jittered(cadence.view_interval);
            match protector.view().await {
                Ok(hosts) => {
                    next_view = Instant::now()
                        + jittered(view_interval(cadence.view_interval, hosts.len()));
                    let verdict = volunteer::judge(&View {
                        me: &protector.instance_id,
                        hosts: &hosts,
                        my_tasks: &now.tasks,
                        shapes: &now.shapes,
                        scale_out_threshold: cadence.scale_out_threshold,
                        daemon_tasks: now.daemon_tasks,
                    });
                    tracing::debug!(?verdict, hosts = hosts.len(), "cluster view judged");
                    core.on_verdict(at(), &verdict);
                }
                Err(e) => tracing::warn!(error = %e, "cluster view unavailable; not volunteering"),
            }
        }
        let d: Decision = core.decide(Observation {
            at: at(),
            busy: Some(now.busy),
            draining: now.draining,
        });
        if let Some(want) = d.protect
            && protected != Some(want)
        {
            match protector.set(want).await {
                Ok(()) => {
                    tracing::info!(protected = want, reason = ?d.reason, "scale-in protection changed");
                    protected = Some(want);
                }
                Err(e) => {
                    tracing::warn!(error = %e, protected = want, "cannot change scale-in protection; trying again");
                }
            }
        }
        status.send_replace(Some(Status {
            protected,
            removable: d.removable && protected == Some(false),
            reason: d.reason,
        }));
    }
}

/// Starts what `scale_in.protection` asks for, in the background: finds this instance's group
/// (again with backoff while Auto Scaling does not answer), then runs [`run`] (`auto`, `on`), or
/// only reports the host as removable (`off`). `status` stays `None` while the group is unknown
/// and when the instance is in none.
pub fn start(
    cfg: &crate::config::Config,
    sdk: &SdkConfig,
    instance_id: String,
    local: watch::Receiver<Option<Local>>,
    status: watch::Sender<Option<Status>>,
    token: &CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    use crate::config::Toggle;
    let mode = cfg.scale_in.protection;
    let settings = Settings::from_config(&cfg.scale_in);
    let cadence = Cadence {
        tick: cfg.agent.interval,
        view_interval: cfg.scale_in.view_interval,
        launched_ago: uptime().unwrap_or(Duration::ZERO),
        scale_out_threshold: cfg.capacity.scale_out_threshold,
    };
    let cluster = cfg.agent.cluster.clone();
    let sdk = sdk.clone();
    let token = token.clone();
    tracker.spawn(async move {
        let mut backoff = crate::retry::Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
        let found = loop {
            let found = tokio::select! {
                _ = token.cancelled() => return,
                found = Protector::locate(&sdk, &cluster, &instance_id) => found,
            };
            match found {
                Ok(found) => break found,
                Err(e) => tracing::warn!(error = %e, "cannot find this instance's Auto Scaling group yet; trying again"),
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        };
        let Some((protector, member)) = found else {
            if mode == Toggle::On {
                tracing::error!(%instance_id, "scale_in.protection = \"on\" but this instance is in no Auto Scaling group: nothing to protect");
            } else {
                tracing::info!(%instance_id, "this instance is in no Auto Scaling group: scale-in protection is not managed");
            }
            return;
        };
        if mode == Toggle::Off {
            tracing::info!(group = %protector.group, "scale_in.protection = \"off\": protection left alone, this host counts as removable");
            status.send_replace(Some(Status {
                protected: Some(member.protected),
                removable: true,
                reason: Reason::Unmanaged,
            }));
            return;
        }
        run(Arc::new(protector), member, settings, cadence, local, status, token).await;
    });
}

/// Time since boot (`/proc/uptime`): on EC2, about the time since launch.
pub fn uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// `configured`, or N·c(N) seconds for a cluster of N instances whose view costs c(N) requests,
/// whichever is longer: about one view request per second for the whole fleet at most.
pub fn view_interval(configured: Duration, instances: usize) -> Duration {
    let n = instances as u64;
    let requests = 2 * n.div_ceil(100) + 1;
    configured.max(Duration::from_secs(n * requests))
}

/// `d` ± 20 %, so hosts started together do not read the cluster view together.
fn jittered(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.8..=1.2);
    d.mul_f64(f)
}
