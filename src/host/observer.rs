//! The observer: a long-lived task that follows Docker's event stream (so a task starting or
//! stopping shows within a second), re-lists everything every `host.docker_resync_interval`, and
//! reconnects with backoff when the Docker daemon restarts. `snapshot()` composes the current
//! picture with what the cgroups, the ECS agent and the ENI sources say at that moment.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tasks::{self, task_id};
use super::usage::{CpuRates, UsageReader};
use super::{Snapshot, registered};
use crate::config::Config;
use crate::docker::{self, ContainerEvent, ContainerInfo};
use crate::ecs_agent::{self, EcsAgentView};
use crate::eni::{self, EniView};
use crate::error::Error;
use crate::retry::Backoff;

const MEMINFO: &str = "/proc/meminfo";
const AGENT_TIMEOUT: Duration = Duration::from_secs(2);

/// What IMDS knows about this instance; the caller (which owns the IMDS client) passes it in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFacts {
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    /// `network/interfaces/macs/`: one per attached ENI.
    pub macs: Option<Vec<String>>,
}

#[derive(Debug, Default)]
struct DockerState {
    containers: HashMap<String, ContainerInfo>,
    /// At least one full listing succeeded since start.
    synced: bool,
    /// Why the engine cannot be followed right now.
    error: Option<String>,
}

#[derive(Debug, Default)]
struct InstanceState {
    facts: InstanceFacts,
    limit: Option<u32>,
    trunk: bool,
    errors: Vec<String>,
}

struct Shared {
    cfg: Arc<Config>,
    docker: Mutex<DockerState>,
    changes: watch::Sender<u64>,
    cpu: Mutex<CpuRates>,
    agent: ecs_agent::Client,
    instance: Mutex<InstanceState>,
    usage: Option<Box<dyn UsageReader>>,
    usage_error: Option<String>,
}

/// Follows the host. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a harmful way.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Observer {
    /// Starts following Docker on `tracker`; ends when `token` is cancelled.
    pub async fn start(
        cfg: Arc<Config>,
        token: CancellationToken,
        tracker: &TaskTracker,
    ) -> Observer {
        let (usage, usage_error) = match super::usage::default_reader(&cfg) {
            Ok(r) => (Some(r), None),
            Err(e) => {
                tracing::warn!(error = %e, "actual usage (cgroups) unavailable");
                (None, Some(e))
            }
        };
        let (changes, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            agent: ecs_agent::Client::new(&cfg.host.ecs_agent_url, AGENT_TIMEOUT),
            cfg,
            docker: Mutex::new(DockerState::default()),
            changes,
            cpu: Mutex::new(CpuRates::default()),
            instance: Mutex::new(InstanceState::default()),
            usage,
            usage_error,
        });
        tracker.spawn(follow_docker(shared.clone(), token));
        Observer { shared }
    }

    /// Bumps whenever an ECS task container starts or stops (a material change for capacity).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Tells the observer what IMDS knows and, with an EC2 client, looks up the instance type's ENI
    /// limit (cached on disk) and whether a trunk ENI is attached. Errors go to `unavailable`.
    pub async fn set_instance(&self, facts: InstanceFacts, ec2: Option<aws_sdk_ec2::Client>) {
        let mut errors = Vec::new();
        let state_dir = &self.shared.cfg.agent.state_dir;
        let mut limit = facts
            .instance_type
            .as_deref()
            .and_then(|t| eni::cached_limit(state_dir, t));
        let mut trunk = false;
        if let Some(ec2) = &ec2 {
            if let (None, Some(t)) = (limit, facts.instance_type.as_deref()) {
                match eni::max_interfaces(ec2, t, state_dir).await {
                    Ok(l) => limit = Some(l),
                    Err(e) => errors.push(format!("eni limit: {e}")),
                }
            }
            if let Some(id) = facts.instance_id.as_deref() {
                match eni::trunk_attached(ec2, id).await {
                    Ok(t) => trunk = t,
                    Err(e) => errors.push(format!("eni trunk: {e}")),
                }
            }
        }
        for e in &errors {
            tracing::warn!(error = %e, "ENI information incomplete");
        }
        *lock(&self.shared.instance) = InstanceState {
            facts,
            limit,
            trunk,
            errors,
        };
    }

    /// The host now. Only unreadable registered resources (/proc/meminfo) are an error; every other
    /// missing source is listed in `unavailable`. While Docker is unreachable the tasks are the
    /// last ones seen (an empty list would look like an idle host and invite a scale-in).
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        let s = &self.shared;
        let registered = read_registered(&s.cfg)?;
        let (containers, docker_note) = {
            let d = lock(&s.docker);
            let note = match (&d.error, d.synced) {
                (None, true) => None,
                (Some(e), true) => Some(format!("docker: {e} (tasks as last seen)")),
                (Some(e), false) => Some(format!("docker: {e}")),
                (None, false) => Some("docker: not listed yet".to_string()),
            };
            (d.containers.values().cloned().collect::<Vec<_>>(), note)
        };
        let agent = s.agent.observe().await;
        let instance = {
            let i = lock(&s.instance);
            (i.facts.clone(), i.limit, i.trunk, i.errors.clone())
        };
        let mut unavailable: Vec<String> = docker_note.into_iter().collect();
        let mut cpu = lock(&s.cpu);
        let usage = match &s.usage {
            Some(r) => Some((r.as_ref(), Some(&mut *cpu))),
            None => {
                unavailable.extend(s.usage_error.iter().map(|e| format!("usage: {e}")));
                None
            }
        };
        Ok(compose(
            &s.cfg,
            registered,
            &containers,
            agent,
            instance,
            usage,
            unavailable,
        ))
    }
}

fn read_registered(cfg: &Config) -> Result<registered::Registered, Error> {
    registered::read(&cfg.host, Path::new(MEMINFO))
        .map_err(|e| Error::Unavailable(format!("host resources: {e}")))
}

type Instance = (InstanceFacts, Option<u32>, bool, Vec<String>);

fn compose(
    cfg: &Config,
    registered: registered::Registered,
    containers: &[ContainerInfo],
    agent: (EcsAgentView, Option<ecs_agent::TaskList>, Option<String>),
    (facts, limit, trunk, instance_errors): Instance,
    usage: Option<(&dyn UsageReader, Option<&mut CpuRates>)>,
    mut unavailable: Vec<String>,
) -> Snapshot {
    let (mut tasks, others) = tasks::group(containers);

    let (mut ecs, agent_tasks, agent_err) = agent;
    ecs.instance_id = facts.instance_id.clone();
    if let Some(e) = agent_err {
        unavailable.push(format!("ecs agent: {e}"));
    }
    if let Some(list) = agent_tasks {
        let by_arn: HashMap<&str, &ecs_agent::AgentTask> =
            list.tasks.iter().map(|t| (t.arn.as_str(), t)).collect();
        for t in &mut tasks {
            if let Some(a) = by_arn.get(t.arn.as_str()) {
                t.known_status = a.known_status.clone();
                t.desired_status = a.desired_status.clone();
            }
        }
    }

    let mut host_usage = None;
    if let Some((reader, mut rates)) = usage {
        let now = Instant::now();
        let mut live = HashSet::new();
        let mut total = tasks::Usage::default();
        let mut any = false;
        for t in &mut tasks {
            let tid = task_id(&t.arn).to_string();
            let mut sum = tasks::Usage::default();
            let mut task_any = false;
            for c in &mut t.containers {
                live.insert(c.id.as_str());
                let Some(mut u) = reader.read(&c.id, Some(&tid)) else {
                    continue;
                };
                if let (Some(rates), Some(usec)) = (rates.as_deref_mut(), u.cpu_usage_usec) {
                    u.cpu_cores = rates.rate(&c.id, usec, now);
                }
                sum.add(&u);
                c.usage = Some(u);
                task_any = true;
            }
            if task_any {
                total.add(&sum);
                t.usage = Some(sum);
                any = true;
            }
        }
        if let Some(rates) = rates {
            rates.retain(&live);
        }
        if any || tasks.is_empty() {
            host_usage = Some(total);
        } else {
            unavailable.push("usage: no task container's cgroup was found".into());
        }
    }

    let reserved = tasks::reserved(&tasks);
    let attached = match &facts.macs {
        Some(m) => Some(m.len() as u32),
        None => match eni::attached_from_sysfs(&cfg.host.sysfs_net) {
            Ok(n) => Some(n),
            Err(e) => {
                unavailable.push(format!("eni attached: {e}"));
                None
            }
        },
    };
    if limit.is_none() {
        unavailable.push(match &facts.instance_type {
            Some(t) => format!("eni limit: unknown for {t}"),
            None => "eni limit: instance type unknown (no IMDS)".into(),
        });
    }
    unavailable.extend(instance_errors);
    let (slots, note) = eni::slots(limit, trunk, facts.instance_type.as_deref());
    let eni = EniView {
        attached,
        limit,
        trunk,
        slots,
        used: reserved.awsvpc_tasks,
        note,
    };
    Snapshot {
        taken_at: SystemTime::now(),
        registered,
        tasks,
        others,
        reserved,
        usage: host_usage,
        eni,
        ecs,
        unavailable,
    }
}

/// One observation without a long-lived observer, for `status`: lists Docker once, reads the
/// cgroups once (no CPU rate: that needs two observations).
pub async fn observe_once(cfg: &Config) -> Result<Snapshot, Error> {
    observe_once_with(cfg, InstanceFacts::default()).await
}

pub async fn observe_once_with(cfg: &Config, facts: InstanceFacts) -> Result<Snapshot, Error> {
    let registered = read_registered(cfg)?;
    let mut unavailable = Vec::new();
    let containers = match list_once(&cfg.host.docker_socket).await {
        Ok(c) => c,
        Err(e) => {
            unavailable.push(format!("docker: {e}"));
            Vec::new()
        }
    };
    let agent = ecs_agent::Client::new(&cfg.host.ecs_agent_url, AGENT_TIMEOUT)
        .observe()
        .await;
    let limit = facts
        .instance_type
        .as_deref()
        .and_then(|t| eni::cached_limit(&cfg.agent.state_dir, t));
    let reader = super::usage::default_reader(cfg);
    let usage = match &reader {
        Ok(r) => Some((r.as_ref(), None)),
        Err(e) => {
            unavailable.push(format!("usage: {e}"));
            None
        }
    };
    Ok(compose(
        cfg,
        registered,
        &containers,
        agent,
        (facts, limit, false, Vec::new()),
        usage,
        unavailable,
    ))
}

async fn list_once(socket: &Path) -> Result<Vec<ContainerInfo>, docker::DockerError> {
    let client = docker::Client::connect(socket).await?;
    client.running().await
}

/// Connect, list, follow events; on any failure reconnect with backoff. Ends on `token`.
async fn follow_docker(shared: Arc<Shared>, token: CancellationToken) {
    let socket = shared.cfg.host.docker_socket.clone();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let failure = tokio::select! {
            _ = token.cancelled() => return,
            r = follow_once(&shared, &socket, &mut backoff) => r,
        };
        let first = {
            let mut d = lock(&shared.docker);
            let first = d.error.is_none();
            d.error = Some(failure.clone());
            first
        };
        if first {
            tracing::warn!(error = %failure, "lost the Docker engine; reconnecting with backoff (tasks kept as last seen)");
        } else {
            tracing::debug!(error = %failure, "Docker engine still unreachable");
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs until the connection fails; returns why.
async fn follow_once(shared: &Shared, socket: &Path, backoff: &mut Backoff) -> String {
    let client = match docker::Client::connect(socket).await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let mut events = Box::pin(client.events());
    // Poll the stream once so the events request is on the wire before the listing: a container
    // that starts between the two is then seen by one or the other.
    let early = tokio::time::timeout(Duration::from_millis(100), events.next()).await;
    if let Err(e) = resync(shared, &client, true).await {
        return e.to_string();
    }
    {
        let mut d = lock(&shared.docker);
        if d.error.take().is_some() {
            tracing::info!(socket = %socket.display(), "Docker engine reachable again; resynced");
        }
    }
    backoff.reset();
    match early {
        Ok(Some(Ok(ev))) => {
            if let Err(e) = apply(shared, &client, ev).await {
                return e.to_string();
            }
        }
        Ok(Some(Err(e))) => return e.to_string(),
        Ok(None) => return "docker event stream ended".into(),
        Err(_) => {}
    }
    let mut resync_every = tokio::time::interval(shared.cfg.host.docker_resync_interval);
    resync_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync_every.tick().await;
    loop {
        tokio::select! {
            _ = resync_every.tick() => {
                if let Err(e) = resync(shared, &client, false).await {
                    return e.to_string();
                }
            }
            ev = events.next() => match ev {
                Some(Ok(ev)) => {
                    if let Err(e) = apply(shared, &client, ev).await {
                        return e.to_string();
                    }
                }
                Some(Err(e)) => return e.to_string(),
                None => return "docker event stream ended".into(),
            },
        }
    }
}

fn bump(shared: &Shared) {
    shared.changes.send_modify(|n| *n = n.wrapping_add(1));
}

/// Re-lists running containers. `full` re-inspects every one (after a reconnect, when updates may
/// have been missed); otherwise only containers not yet known are inspected.
async fn resync(
    shared: &Shared,
    client: &docker::Client,
    full: bool,
) -> Result<(), docker::DockerError> {
    let ids = client.running_ids().await?;
    let known: HashSet<String> = lock(&shared.docker).containers.keys().cloned().collect();
    let mut fresh = Vec::new();
    for id in &ids {
        if full || !known.contains(id) {
            if let Some(info) = client.inspect(id).await? {
                fresh.push(info);
            }
        }
    }
    let live: HashSet<&String> = ids.iter().collect();
    let changed = {
        let mut d = lock(&shared.docker);
        let mut changed = false;
        d.containers.retain(|id, c| {
            let keep = live.contains(id);
            changed |= !keep && c.ecs.is_some();
            keep
        });
        for info in fresh {
            let is_ecs = info.ecs.is_some();
            let prev = d.containers.insert(info.id.clone(), info.clone());
            changed |= is_ecs && prev.as_ref() != Some(&info);
        }
        d.synced = true;
        changed
    };
    if changed {
        bump(shared);
    }
    Ok(())
}

async fn apply(
    shared: &Shared,
    client: &docker::Client,
    ev: ContainerEvent,
) -> Result<(), docker::DockerError> {
    let changed = match ev {
        ContainerEvent::Changed(id) => {
            let info = client.inspect(&id).await?;
            let mut d = lock(&shared.docker);
            match info {
                Some(info) => {
                    let is_ecs = info.ecs.is_some();
                    let prev = d.containers.insert(id, info.clone());
                    is_ecs && prev.as_ref() != Some(&info)
                }
                None => d.containers.remove(&id).is_some_and(|c| c.ecs.is_some()),
            }
        }
        ContainerEvent::Gone(id) => lock(&shared.docker)
            .containers
            .remove(&id)
            .is_some_and(|c| c.ecs.is_some()),
    };
    if changed {
        bump(shared);
    }
    Ok(())
}
