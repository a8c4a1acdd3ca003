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
use super::usage::{CpuRates, Usage, UsageReader};
use super::{Snapshot, registered};
use crate::config::Config;
use crate::docker::{self, ContainerEvent, ContainerInfo};
use crate::ecs_agent::{self, EcsAgentView};
use crate::eni::{self, EniView};
use crate::error::Error;
use crate::instance_id::InstanceId;
use crate::retry::Backoff;

const MEMINFO: &str = "/proc/meminfo";
const AGENT_TIMEOUT: Duration = Duration::from_secs(2);

/// What IMDS knows about this instance; the caller (which owns the IMDS client) passes it in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFacts {
    pub instance_id: Option<InstanceId>,
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

/// What the instance look-ups found.
#[derive(Debug, Clone, Default)]
struct InstanceState {
    facts: InstanceFacts,
    /// MaximumNetworkInterfaces of the instance type.
    limit: Option<u32>,
    /// A trunk ENI is attached; `None` when not looked up or the look-up failed.
    trunk: Option<bool>,
    errors: Vec<String>,
}

/// The ECS agent's introspection answer.
#[derive(Debug, Clone, Default)]
struct AgentReading {
    view: EcsAgentView,
    tasks: Option<ecs_agent::TaskList>,
    error: Option<String>,
}

impl AgentReading {
    async fn read(agent: &ecs_agent::Client) -> AgentReading {
        let (view, tasks, error) = agent.observe().await;
        AgentReading { view, tasks, error }
    }
}

/// Everything one snapshot is composed from, read beforehand: [`compose`] only combines them.
#[derive(Debug, Clone)]
struct Readings {
    taken_at: SystemTime,
    /// When the cgroups were read (the CPU rate's clock).
    read_at: Instant,
    registered: registered::Registered,
    containers: Vec<ContainerInfo>,
    agent: AgentReading,
    instance: InstanceState,
    /// ENIs attached according to sysfs; read only when IMDS gave no MAC list.
    sysfs_attached: Option<Result<u32, String>>,
    /// Each ECS task container's cgroup reading by container id (a container whose cgroup was not
    /// found is absent); `Err` says why usage cannot be read at all.
    usage: Result<HashMap<String, Usage>, String>,
    /// Sources already found unreadable.
    unavailable: Vec<String>,
    /// Docker has been listed: `containers` is the engine's picture, not a guess.
    tasks_known: bool,
    hostname: String,
}

impl Readings {
    /// The readings that need no long-lived state: cgroups (through `reader`) and sysfs.
    fn read(
        cfg: &Config,
        registered: registered::Registered,
        containers: Vec<ContainerInfo>,
        agent: AgentReading,
        instance: InstanceState,
        reader: Result<&dyn UsageReader, String>,
        unavailable: Vec<String>,
    ) -> Readings {
        let sysfs_attached = instance
            .facts
            .macs
            .is_none()
            .then(|| eni::attached_from_sysfs(&cfg.host.sysfs_net).map_err(|e| e.to_string()));
        let usage = reader.map(|r| read_usage(r, &containers));
        Readings {
            hostname: read_hostname(),
            taken_at: SystemTime::now(),
            read_at: Instant::now(),
            registered,
            containers,
            agent,
            instance,
            sysfs_attached,
            usage,
            unavailable,
            tasks_known: true,
        }
    }
}

const HOSTNAME: &str = "/proc/sys/kernel/hostname";

/// The kernel's hostname, "localhost" when it cannot be read.
fn read_hostname() -> String {
    std::fs::read_to_string(HOSTNAME)
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Reads the cgroup of every ECS task container.
fn read_usage(reader: &dyn UsageReader, containers: &[ContainerInfo]) -> HashMap<String, Usage> {
    containers
        .iter()
        .filter_map(|c| {
            let labels = c.ecs.as_ref()?;
            let usage = reader.read(&c.id, task_id(&labels.task_arn))?;
            Some((c.id.clone(), usage))
        })
        .collect()
}

struct Shared {
    cfg: Arc<Config>,
    docker: Mutex<DockerState>,
    changes: watch::Sender<u64>,
    cpu: Mutex<CpuRates>,
    agent: ecs_agent::Client,
    instance: Mutex<InstanceState>,
    /// The cgroup reader, or why there is none.
    usage: Result<Box<dyn UsageReader>, String>,
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
        let usage = super::usage::default_reader(&cfg);
        if let Err(e) = &usage {
            tracing::warn!(error = %e, "actual usage (cgroups) unavailable");
        }
        let (changes, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            agent: ecs_agent::Client::new(&cfg.host.ecs_agent_url, AGENT_TIMEOUT),
            cfg,
            docker: Mutex::new(DockerState::default()),
            changes,
            cpu: Mutex::new(CpuRates::default()),
            instance: Mutex::new(InstanceState::default()),
            usage,
        });
        tracker.spawn(follow_docker(shared.clone(), token));
        Observer { shared }
    }

    /// Bumps whenever an ECS task container starts or stops (a material change for capacity).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Tells the observer what IMDS knows and, with an EC2 client, looks up the instance type's ENI
    /// limit (cached on disk). Whether awsvpc trunking is on is ECS's to say (the container
    /// instance's `ecs.awsvpc-trunk-id` attribute, read at each reconciliation): until then it is
    /// unknown. Errors go to `unavailable`.
    pub async fn set_instance(&self, facts: InstanceFacts, ec2: Option<aws_sdk_ec2::Client>) {
        let mut errors = Vec::new();
        let state_dir = &self.shared.cfg.agent.state_dir;
        let mut limit = facts
            .instance_type
            .as_deref()
            .and_then(|t| eni::cached_limit(state_dir, t));
        if let (Some(ec2), None, Some(t)) = (&ec2, limit, facts.instance_type.as_deref()) {
            match eni::max_interfaces(ec2, t, state_dir).await {
                Ok(l) => limit = Some(l),
                Err(e) => errors.push(format!("eni limit: {e}")),
            }
        }
        for e in &errors {
            tracing::warn!(error = %e, "ENI information incomplete");
        }
        *lock(&self.shared.instance) = InstanceState {
            facts,
            limit,
            trunk: None,
            errors,
        };
    }

    /// The host now. Only unreadable registered resources (/proc/meminfo) are an error; every other
    /// missing source is listed in `unavailable`. While Docker is unreachable the tasks are the
    /// last ones seen (an empty list would look like an idle host and invite a scale-in).
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        let s = &self.shared;
        let registered = read_registered(&s.cfg)?;
        let (containers, docker_note, tasks_known) = {
            let d = lock(&s.docker);
            let note = match (&d.error, d.synced) {
                (None, true) => None,
                (Some(e), true) => Some(format!("docker: {e} (tasks as last seen)")),
                (Some(e), false) => Some(format!("docker: {e}")),
                (None, false) => Some("docker: not listed yet".to_string()),
            };
            (
                d.containers.values().cloned().collect::<Vec<_>>(),
                note,
                d.synced,
            )
        };
        let agent = AgentReading::read(&s.agent).await;
        let instance = lock(&s.instance).clone();
        let readings = Readings::read(
            &s.cfg,
            registered,
            containers,
            agent,
            instance,
            s.usage.as_deref().map_err(String::clone),
            docker_note.into_iter().collect(),
        );
        let readings = Readings {
            tasks_known,
            ..readings
        };
        Ok(compose(readings, Some(&mut lock(&s.cpu))))
    }
}

fn read_registered(cfg: &Config) -> Result<registered::Registered, Error> {
    registered::read(&cfg.host, Path::new(MEMINFO))
        .map_err(|e| Error::Unavailable(format!("host resources: {e}")))
}

/// The snapshot from `r`, with CPU rates against the previous readings in `rates` (none without).
fn compose(r: Readings, rates: Option<&mut CpuRates>) -> Snapshot {
    let mut unavailable = r.unavailable;
    let instance = r.instance;
    let agent = r.agent;
    let (mut tasks, others) = tasks::group(&r.containers);

    let mut ecs = agent.view;
    ecs.instance_id = instance
        .facts
        .instance_id
        .as_ref()
        .map(InstanceId::to_string);
    if let Some(e) = agent.error {
        unavailable.push(format!("ecs agent: {e}"));
    }
    if let Some(list) = agent.tasks {
        let by_arn: HashMap<&str, &ecs_agent::AgentTask> =
            list.tasks.iter().map(|t| (t.arn.as_str(), t)).collect();
        for t in &mut tasks {
            if let Some(a) = by_arn.get(t.arn.as_str()) {
                t.known_status = a.known_status.clone();
                t.desired_status = a.desired_status.clone();
            }
        }
        // Tasks ECS placed here that Docker does not run (yet): they hold their reservation
        // until the agent has seen them STOPPED.
        for a in &list.tasks {
            let stopped = a.known_status.as_deref() == Some("STOPPED");
            if stopped || tasks.iter().any(|t| t.arn == a.arn) {
                continue;
            }
            let (Some(family), Some(version)) = (&a.family, &a.version) else {
                continue;
            };
            let mut t = tasks::agent_only(&a.arn, family, version, a.known_status.as_deref());
            t.desired_status = a.desired_status.clone();
            tasks.push(t);
        }
    }

    let host_usage = match r.usage {
        Ok(readings) => {
            let host = task_usage(&mut tasks, &readings, rates, r.read_at);
            if host.is_none() {
                unavailable.push("usage: no task container's cgroup was found".into());
            }
            host
        }
        Err(e) => {
            unavailable.push(format!("usage: {e}"));
            None
        }
    };

    let reserved = tasks::reserved(&tasks);
    let attached = match (&instance.facts.macs, r.sysfs_attached) {
        (Some(m), _) => Some(m.len() as u32),
        (None, Some(Ok(n))) => Some(n),
        (None, Some(Err(e))) => {
            unavailable.push(format!("eni attached: {e}"));
            None
        }
        (None, None) => None,
    };
    let InstanceState {
        facts,
        limit,
        trunk,
        errors,
    } = instance;
    if limit.is_none() {
        unavailable.push(match &facts.instance_type {
            Some(t) => format!("eni limit: unknown for {t}"),
            None => "eni limit: instance type unknown (no IMDS)".into(),
        });
    }
    unavailable.extend(errors);
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
        taken_at: r.taken_at,
        registered: r.registered,
        tasks_known: r.tasks_known,
        tasks,
        others,
        reserved,
        usage: host_usage,
        eni,
        ecs,
        unavailable,
        hostname: r.hostname,
    }
}

/// Puts each container's reading (with its CPU rate) on the tasks and sums them per task and for
/// the host. The host sum is `None` when tasks run but none of their cgroups was read.
fn task_usage(
    tasks: &mut [tasks::Task],
    readings: &HashMap<String, Usage>,
    mut rates: Option<&mut CpuRates>,
    now: Instant,
) -> Option<Usage> {
    let mut live = HashSet::new();
    let mut total = Usage::default();
    let mut any = false;
    for t in tasks.iter_mut() {
        let mut sum = Usage::default();
        let mut task_any = false;
        for c in &mut t.containers {
            live.insert(c.id.as_str());
            let Some(mut u) = readings.get(&c.id).cloned() else {
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
    (any || tasks.is_empty()).then_some(total)
}

/// One observation without a long-lived observer, for `status`: lists Docker once, reads the
/// cgroups once (no CPU rate: that needs two observations).
pub async fn observe_once(cfg: &Config) -> Result<Snapshot, Error> {
    observe_once_with(cfg, InstanceFacts::default()).await
}

pub async fn observe_once_with(cfg: &Config, facts: InstanceFacts) -> Result<Snapshot, Error> {
    let registered = read_registered(cfg)?;
    let mut unavailable = Vec::new();
    let (containers, tasks_known) = match list_once(&cfg.host.docker_socket).await {
        Ok(c) => (c, true),
        Err(e) => {
            unavailable.push(format!("docker: {e}"));
            (Vec::new(), false)
        }
    };
    let agent = AgentReading::read(&ecs_agent::Client::new(
        &cfg.host.ecs_agent_url,
        AGENT_TIMEOUT,
    ))
    .await;
    let limit = facts
        .instance_type
        .as_deref()
        .and_then(|t| eni::cached_limit(&cfg.agent.state_dir, t));
    let instance = InstanceState {
        facts,
        limit,
        trunk: None,
        errors: Vec::new(),
    };
    let reader = super::usage::default_reader(cfg);
    let readings = Readings::read(
        cfg,
        registered,
        containers,
        agent,
        instance,
        reader.as_deref().map_err(String::clone),
        unavailable,
    );
    Ok(compose(
        Readings {
            tasks_known,
            ..readings
        },
        None,
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
    // Events are asked for from a time taken before the listing: the engine replays what happened
    // since, so a container that starts between the listing and the events request is still seen.
    let since = SystemTime::now();
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
    let mut events = Box::pin(client.events(since));
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
        if (full || !known.contains(id))
            && let Some(info) = client.inspect(id).await?
        {
            fresh.push(info);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::docker::EcsLabels;

    const ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/prod/0123abcd";

    fn container(id: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: format!("ecs-web-{id}"),
            running: true,
            ecs: Some(EcsLabels {
                task_arn: ARN.into(),
                container_name: format!("app-{id}"),
                family: "web".into(),
                version: "1".into(),
                cluster: Some("prod".into()),
            }),
            cpu_shares: 256,
            memory_limit_bytes: None,
            memory_reservation_bytes: None,
            tcp_ports: BTreeSet::new(),
            udp_ports: BTreeSet::new(),
            network_mode: "bridge".into(),
            cgroup_parent: None,
        }
    }

    fn readings(
        containers: Vec<ContainerInfo>,
        usage: &[(&str, u64)],
        read_at: Instant,
        instance: InstanceState,
    ) -> Readings {
        Readings {
            taken_at: SystemTime::UNIX_EPOCH,
            read_at,
            registered: registered::Registered {
                cpu_units: 2048,
                memory_mib: 3800,
                reserved_tcp_ports: BTreeSet::new(),
                reserved_udp_ports: BTreeSet::new(),
            },
            containers,
            agent: AgentReading::default(),
            instance,
            sysfs_attached: None,
            hostname: "ip-10-0-0-1".into(),
            usage: Ok(usage
                .iter()
                .map(|(id, usec)| {
                    let u = Usage {
                        cpu_usage_usec: Some(*usec),
                        ..Usage::default()
                    };
                    (id.to_string(), u)
                })
                .collect()),
            unavailable: Vec::new(),
            tasks_known: true,
        }
    }

    fn instance(limit: Option<u32>, trunk: Option<bool>, ty: &str) -> InstanceState {
        InstanceState {
            facts: InstanceFacts {
                instance_id: Some("i-0123456789abcdef0".parse().unwrap()),
                instance_type: Some(ty.into()),
                macs: Some(vec!["0e:00:00:00:00:01".into()]),
            },
            limit,
            trunk,
            errors: Vec::new(),
        }
    }

    #[test]
    fn a_cpu_counter_that_went_back_gives_no_rate_for_that_interval() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        let t2 = t1 + Duration::from_secs(10);
        let both = || vec![container("a"), container("b")];
        let inst = || instance(Some(3), Some(false), "c5.large");
        let mut rates = CpuRates::default();
        let first = compose(
            readings(both(), &[("a", 1_000_000), ("b", 0)], t0, inst()),
            Some(&mut rates),
        );
        assert_eq!(first.usage.as_ref().unwrap().cpu_cores, None);

        let second = compose(
            readings(both(), &[("a", 6_000_000), ("b", 10_000_000)], t1, inst()),
            Some(&mut rates),
        );
        let cores = second.usage.as_ref().unwrap().cpu_cores.unwrap();
        assert!((cores - 1.5).abs() < 1e-9, "{cores}");

        // `b` restarted: its counter is back near 0. Its rate is unknown, never 0.0; the host's
        // figure sums what is known.
        let third = compose(
            readings(both(), &[("a", 8_000_000), ("b", 1_000)], t2, inst()),
            Some(&mut rates),
        );
        let task = &third.tasks[0];
        assert_eq!(
            task.containers[0].usage.as_ref().unwrap().cpu_cores,
            Some(0.2)
        );
        assert_eq!(task.containers[1].usage.as_ref().unwrap().cpu_cores, None);
        let host = third.usage.as_ref().unwrap().cpu_cores.unwrap();
        assert!((host - 0.2).abs() < 1e-9, "{host}");

        // Alone, a restarted container leaves the host's CPU figure unknown.
        let only_b = compose(
            readings(
                vec![container("b")],
                &[("b", 500)],
                t2 + Duration::from_secs(10),
                inst(),
            ),
            Some(&mut rates),
        );
        assert_eq!(only_b.usage.as_ref().unwrap().cpu_cores, None);
    }

    #[test]
    fn tasks_whose_cgroups_were_not_found_leave_host_usage_unknown() {
        let s = compose(
            readings(
                vec![container("a")],
                &[],
                Instant::now(),
                InstanceState::default(),
            ),
            None,
        );
        assert_eq!(s.usage, None);
        assert!(
            s.unavailable.iter().any(|u| u.contains("cgroup")),
            "{:?}",
            s.unavailable
        );
        let idle = compose(
            readings(Vec::new(), &[], Instant::now(), InstanceState::default()),
            None,
        );
        assert_eq!(idle.usage, Some(Usage::default()));
    }

    #[test]
    fn eni_slots_agree_with_the_cluster_command_trunk_known_and_unknown() {
        use crate::capacity::Quantity;
        use crate::cluster::{self, Inputs};
        let cases = [
            // (limit, trunk, type, slots)
            (Some(3), Some(false), "c5.large", Some(2)),
            (Some(3), Some(true), "c5.large", Some(10)),
            (Some(8), Some(true), "x9.huge", None),
            // Trunking unknown (look-up failed): unknown, never limit − 1.
            (Some(3), None, "c5.large", None),
        ];
        for (limit, trunk, ty, want) in cases {
            let s = compose(
                readings(Vec::new(), &[], Instant::now(), instance(limit, trunk, ty)),
                None,
            );
            let case = format!("{limit:?} {trunk:?} {ty}: {:?}", s.eni);
            assert_eq!(s.eni.slots, want, "{case}");
            assert_eq!(s.eni.trunk, trunk, "{case}");
            if want.is_none() {
                assert!(s.eni.note.is_some(), "{case}");
            }
            let Some(trunk) = trunk else { continue };
            let inputs = Inputs {
                instances: vec![cluster::Instance {
                    arn: "arn:aws:ecs:us-east-1:1:container-instance/prod/1".into(),
                    status: cluster::ACTIVE.into(),
                    instance_type: Some(ty.into()),
                    trunk,
                    ..cluster::Instance::default()
                }],
                eni_limits: limit.map(|l| [(ty.to_string(), l)].into()),
                awsvpc_tasks: Some(Default::default()),
                ..Inputs::default()
            };
            let (hosts, _, _) = cluster::hosts(&inputs);
            let from_cluster = hosts[0].eni.map(|q: Quantity| q.registered);
            assert_eq!(
                from_cluster,
                want.map(u64::from),
                "cluster disagrees: {case}"
            );
        }
    }
}
