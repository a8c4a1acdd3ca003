//! The daemon: wires the observers, the sinks and the notice watchers together, and ends them all on
//! one cancellation token.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Loaded, SinkKind, Toggle};
use crate::drain::{self, AwsEffects, DrainStatus, Handles, Runner, Settings, Store, Target};
use crate::ecs::{self, ClusterShapes, Definitions, EcsReading};
use crate::error::Error;
use crate::health::Health;
use crate::host::assess::EcsContext;
use crate::host::{self, InstanceFacts, Observer, Snapshot};
use crate::imds;
use crate::metrics;
use crate::metrics::figures::{HostFacts, HostFigures};
use crate::observation::Observation;
use crate::protection;
use crate::status::HostStatus;

/// Resolves on SIGTERM or SIGINT. The handlers are installed when it is first polled; the daemon
/// polls it before starting anything else.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install SIGTERM/SIGINT handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Signals whose default action would end the process mid-drain (SIGHUP from a closed terminal, a
/// stray SIGUSR1/SIGUSR2, SIGQUIT): each is logged and otherwise ignored until `token` is cancelled.
/// Installed before this returns.
fn ignore_signals(ctx: &Context) {
    use tokio::signal::unix::{SignalKind, signal};
    for (name, kind) in [
        ("SIGHUP", SignalKind::hangup()),
        ("SIGUSR1", SignalKind::user_defined1()),
        ("SIGUSR2", SignalKind::user_defined2()),
        ("SIGQUIT", SignalKind::quit()),
    ] {
        let mut stream = match signal(kind) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(signal = name, error = %e, "cannot install a handler; this signal ends the daemon");
                continue;
            }
        };
        let token = ctx.token.clone();
        ctx.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    got = stream.recv() => {
                        if got.is_none() {
                            return;
                        }
                        tracing::warn!(signal = name, "signal received and ignored (stop with SIGTERM)");
                    }
                }
            }
        });
    }
}

/// What the daemon found it can use at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub aws: bool,
}

/// Decides once, without the network, whether AWS (IMDS, the instance role) is to be used. `auto`
/// means `on` on an EC2 instance, told by the files EC2 exposes under `host.sysfs_root`, and `off`
/// elsewhere; on EC2 an IMDS that does not answer is a fault to retry, not a reason to stop.
pub fn detect_reach(cfg: &Config) -> Reach {
    let aws = match cfg.agent.aws {
        Toggle::On => true,
        Toggle::Off => {
            tracing::info!(
                "AWS features off (agent.aws = \"off\"): no IMDS notices, no CloudWatch, no draining"
            );
            false
        }
        Toggle::Auto => match on_ec2(&cfg.host.sysfs_root) {
            Some(evidence) => {
                tracing::info!(%evidence, "on EC2 (agent.aws = \"auto\"): AWS features on");
                true
            }
            None => {
                tracing::info!(
                    sysfs_root = %cfg.host.sysfs_root.display(),
                    "not an EC2 instance (no EC2 DMI or hypervisor files): AWS features off; local sinks only"
                );
                false
            }
        },
    };
    Reach { aws }
}

/// Which of the files EC2 exposes under `sysfs_root` says this is an EC2 instance; `None` when none
/// does. Nitro instances carry the DMI vendor and asset tag, Xen ones the hypervisor UUID.
pub fn on_ec2(sysfs_root: &std::path::Path) -> Option<String> {
    let read = |rel: &str| {
        std::fs::read_to_string(sysfs_root.join(rel))
            .ok()
            .map(|s| s.trim().to_string())
    };
    type Says = fn(&str) -> bool;
    let checks: [(&str, Says); 4] = [
        ("class/dmi/id/sys_vendor", |v| v == "Amazon EC2"),
        ("class/dmi/id/board_asset_tag", |v| v.starts_with("i-")),
        ("hypervisor/uuid", |v| {
            v.starts_with("ec2") || v.starts_with("EC2")
        }),
        ("class/dmi/id/product_uuid", |v| {
            v.starts_with("ec2") || v.starts_with("EC2")
        }),
    ];
    checks.into_iter().find_map(|(rel, says_ec2)| {
        read(rel)
            .filter(|v| says_ec2(v))
            .map(|v| format!("{rel} = {v}"))
    })
}

/// One observation of the host (for `status`). A source that cannot be read is recorded in
/// `unavailable`; only a failure to read what the host registers is an error.
pub async fn observe(cfg: &Config) -> Result<Snapshot, Error> {
    host::observe_once(cfg).await
}

/// How long `status` waits for AWS (IMDS, ECS) before it reports without it.
const STATUS_AWS_BUDGET: Duration = Duration::from_secs(15);

/// `status`: one observation assessed as the daemon would. With AWS on it asks IMDS for this
/// instance, and ECS for the task definitions (cached in `agent.state_dir`), the cluster's task
/// shapes (the cache when ECS does not answer) and this container instance.
pub async fn observe_once(cfg: &Config) -> Result<HostStatus, Error> {
    let reach = detect_reach(cfg);
    if !reach.aws {
        let mut snapshot = observe(cfg).await?;
        let definitions = Definitions::new(None, &cfg.agent.cluster, &cfg.agent.state_dir);
        ecs::apply_reservations(&mut snapshot, &definitions, &[]).await;
        return Ok(HostStatus::assess(
            snapshot,
            &cfg.capacity,
            None,
            &EcsContext::default(),
        ));
    }
    let sdk = crate::aws::sdk_config().await;
    let client = imds::Client::new(&cfg.imds).ok();
    let facts = match &client {
        Some(c) => tokio::time::timeout(STATUS_AWS_BUDGET, all_instance_facts(c))
            .await
            .unwrap_or_default(),
        None => InstanceFacts::default(),
    };
    let lifecycle = match &client {
        Some(c) => lifecycle_state(c).await,
        None => None,
    };
    let instance_id = facts.instance_id.clone();
    let mut snapshot = host::observe_once_with(cfg, facts).await?;
    let ecs_client = aws_sdk_ecs::Client::new(&sdk);
    let cluster = &cfg.agent.cluster;
    let definitions = Definitions::new(Some(ecs_client.clone()), cluster, &cfg.agent.state_dir);
    let mut ctx = EcsContext {
        aws: true,
        lifecycle,
        ..EcsContext::default()
    };
    let shapes = if cfg.capacity.discover_shapes {
        match tokio::time::timeout(
            STATUS_AWS_BUDGET,
            ecs::shapes::fetch(&ecs_client, &definitions, cluster),
        )
        .await
        {
            Ok(Ok(s)) => {
                ecs::shapes::store(&cfg.agent.state_dir, &s);
                Some(s)
            }
            Ok(Err(e)) => {
                snapshot
                    .unavailable
                    .push(format!("cluster shapes: {e} (cache used)"));
                ecs::shapes::load(&cfg.agent.state_dir, cluster)
            }
            Err(_) => {
                snapshot
                    .unavailable
                    .push("cluster shapes: ECS did not answer in time (cache used)".into());
                ecs::shapes::load(&cfg.agent.state_dir, cluster)
            }
        }
    } else {
        None
    };
    let daemons = shapes
        .as_ref()
        .map(|s| s.daemons.clone())
        .unwrap_or_default();
    ecs::apply_reservations(&mut snapshot, &definitions, &daemons).await;
    match &instance_id {
        Some(id) => {
            let arn = snapshot.ecs.container_instance_arn.clone();
            let read = tokio::time::timeout(
                STATUS_AWS_BUDGET,
                ecs::instance::describe(&ecs_client, cluster, id.as_str(), arn.as_deref()),
            )
            .await
            .unwrap_or_else(|_| Err("ECS did not answer in time".into()));
            match read {
                Ok(instance) => {
                    ctx.reading = Some(Arc::new(EcsReading {
                        seq: 1,
                        at: std::time::SystemTime::now(),
                        instance: Ok(instance),
                    }))
                }
                Err(e) => ctx.error = Some(e),
            }
        }
        None => ctx.error = Some("the instance id is unknown (IMDS did not say)".into()),
    }
    Ok(HostStatus::assess(
        snapshot,
        &cfg.capacity,
        shapes.as_ref(),
        &ctx,
    ))
}

/// IMDS `autoscaling/target-lifecycle-state`: `None` when the instance is in no Auto Scaling group
/// (404) or IMDS did not answer.
async fn lifecycle_state(client: &imds::Client) -> Option<String> {
    match client.get("autoscaling/target-lifecycle-state").await {
        Ok(state) => state
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        Err(e) => {
            tracing::debug!(error = %e, "IMDS: no Auto Scaling lifecycle state");
            None
        }
    }
}

/// What every part of the daemon shares: the configuration, the health record, the one
/// cancellation token and the tracker of its tasks.
#[derive(Clone)]
struct Context {
    cfg: Arc<Config>,
    health: Arc<Health>,
    token: CancellationToken,
    tracker: TaskTracker,
}

/// Health fault kinds the daemon sets while a part it needs is not there yet.
const FAULT_INSTANCE_ID: &str = "instance_id";
const FAULT_CLOUDWATCH: &str = "cloudwatch";

/// Runs until `shutdown` resolves, then lets in-flight work finish and returns.
///
/// Start order: the signal handlers, then the notice pollers and the drain runner, then the rest.
/// Nothing here waits on the network: the instance id, the ENI limits, EC2 and the CloudWatch
/// check are looked up in the background, retried until they answer, and the daemon reports
/// unhealthy with the reason meanwhile.
pub async fn run(loaded: Loaded, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let ctx = Context {
        cfg: Arc::new(loaded.config),
        health: Arc::new(Health::default()),
        token: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };
    // Polled once now so that its handlers are installed before anything else starts.
    let mut shutdown = std::pin::pin!(shutdown);
    let stopped_early = futures_util::poll!(shutdown.as_mut()).is_ready();
    ignore_signals(&ctx);
    let Context {
        cfg,
        health,
        token,
        tracker,
    } = ctx.clone();
    // systemd's watchdog is fed only while the observe loop, the notice pollers and the drain
    // runner all turn (each registers as it starts).
    tracker.spawn(crate::liveness::watch(
        health.clone(),
        crate::systemd::watchdog_interval(),
        crate::systemd::notify_watchdog,
        token.clone(),
    ));
    // The one value every observation publishes; the sinks and the drain read it.
    let (observed_tx, observed) = watch::channel::<Option<Arc<Observation>>>(None);
    // The drain's handles, once its runner has what it needs to act (the instance id).
    let (drain_tx, drain) = watch::channel::<Option<Handles>>(None);

    let reach = detect_reach(&cfg);
    let mut imds_client = None;
    if reach.aws {
        match imds::Client::new(&cfg.imds) {
            Ok(client) => {
                let client = Arc::new(client);
                start_drain(&ctx, client.clone(), &observed, drain_tx);
                imds_client = Some(client);
            }
            Err(e) => {
                health.fault(FAULT_INSTANCE_ID, format!("no IMDS client: {e}"));
                tracing::error!(
                    error = %e,
                    "cannot build the IMDS client: no interruption notices, no draining"
                );
            }
        }
    } else if cfg.sinks.enabled.contains(&SinkKind::Cloudwatch) {
        tracing::warn!("sink \"cloudwatch\" is configured but AWS features are off: it is off");
    }

    if cfg.sinks.enabled.contains(&SinkKind::Prometheus) {
        let (addr, serving) = metrics::prometheus::serve(
            cfg.prometheus.listen,
            observed.clone(),
            health.clone(),
            cfg.agent.interval,
            token.clone(),
        )
        .await?;
        tracing::info!(%addr, "serving /metrics and /healthz");
        tracker.spawn(serving);
    }

    let observer = Observer::start(cfg.clone(), token.clone(), &tracker).await;
    let (shapes_tx, shapes_rx) = watch::channel::<Option<Arc<ClusterShapes>>>(None);
    let (reading_tx, reading_rx) = watch::channel::<Option<Arc<EcsReading>>>(None);
    let (arn_tx, arn_rx) = watch::channel::<Option<String>>(None);
    // The protection loop reads what the observe loop sees of this host and answers with its status.
    let (local_tx, local_rx) = watch::channel::<Option<protection::aws::Local>>(None);
    let (protection_tx, protection_rx) = watch::channel::<Option<protection::aws::Status>>(None);
    let mut ecs_parts = EcsParts {
        aws: reach.aws,
        definitions: Arc::new(Definitions::new(
            None,
            &cfg.agent.cluster,
            &cfg.agent.state_dir,
        )),
        shapes: shapes_rx,
        reading: reading_rx,
        arn: arn_tx,
        imds: imds_client.clone(),
        local: local_tx,
        protection: protection_rx,
    };
    if reach.aws {
        let sdk = crate::aws::sdk_config().await;
        let ecs_client = aws_sdk_ecs::Client::new(&sdk);
        let definitions = Arc::new(Definitions::new(
            Some(ecs_client.clone()),
            &cfg.agent.cluster,
            &cfg.agent.state_dir,
        ));
        ecs_parts.definitions = definitions.clone();
        if cfg.capacity.discover_shapes {
            tracker.spawn(ecs::shapes::follow(
                ecs_client.clone(),
                definitions,
                cfg.agent.cluster.clone(),
                cfg.agent.state_dir.clone(),
                shapes_tx,
                token.clone(),
            ));
        }
        tracker.spawn(start_optional(
            ctx.clone(),
            Optional {
                imds: imds_client,
                sdk,
                ecs: ecs_client,
                observer: observer.clone(),
                observed: observed.clone(),
                arn: arn_rx,
                reading: reading_tx,
                local: local_rx,
                protection: protection_tx,
            },
        ));
    }
    tracker.spawn(observe_loop(
        ctx.clone(),
        observer,
        ecs_parts,
        observed_tx,
        drain.clone(),
    ));

    tracing::info!(cluster = %cfg.agent.cluster, interval = ?cfg.agent.interval, "ecs-capacity-agent running");
    if !stopped_early {
        shutdown.await;
    }
    let handles = drain.borrow().clone();
    if let Some(d) = handles.filter(|_| cfg.drain.drain_on_shutdown) {
        let stopping = system_is_stopping_within(SYSTEMCTL_TIMEOUT).await;
        // Everything else keeps running meanwhile: the observer still counts the tasks.
        crate::drain::drain_before_shutdown(&d, cfg.drain.shutdown_drain_timeout, || stopping)
            .await;
    }
    crate::systemd::notify_stopping();
    token.cancel();
    tracker.close();
    tracker.wait().await;
    tracing::info!("ecs-capacity-agent stopped");
    Ok(())
}

/// How long `systemctl is-system-running` may take before it is given up on.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether systemd says the system is stopping, asked off the async workers and given up on
/// after `limit` (the child is killed). A `systemctl` that does not answer in time counts as
/// stopping: the shutdown drain is bounded, a missed drain is not.
async fn system_is_stopping_within(limit: Duration) -> bool {
    let asked = tokio::task::spawn_blocking(move || {
        use std::process::{Command, Stdio};
        let mut child = match Command::new("systemctl")
            .arg("is-system-running")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(_) => return Some(false),
        };
        let deadline = std::time::Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            use std::io::Read;
            let _ = stdout.read_to_string(&mut out);
        }
        Some(out.trim() == "stopping")
    })
    .await;
    match asked {
        Ok(Some(stopping)) => stopping,
        Ok(None) | Err(_) => {
            tracing::warn!(
                timeout = ?limit,
                "systemctl is-system-running did not answer: draining as if the system were stopping"
            );
            true
        }
    }
}

/// Retries `attempt` with backoff until it succeeds or the daemon stops; the health fault `kind`
/// holds the last error meanwhile. The first failure is logged as a warning, later ones once a
/// minute with their count.
async fn until_known<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    ctx: &Context,
    kind: &'static str,
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut failures = 0u64;
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let result = tokio::select! {
            _ = ctx.token.cancelled() => return None,
            r = attempt() => r,
        };
        match result {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(failures, "{what}: known now");
                }
                ctx.health.clear_fault(kind);
                return Some(v);
            }
            Err(e) => {
                failures += 1;
                ctx.health.error(kind);
                ctx.health.fault(kind, format!("{what}: {e} (retrying)"));
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(failures, error = %e, "{what}: retrying with backoff");
                    last_warned = Some(tokio::time::Instant::now());
                }
            }
        }
        tokio::select! {
            _ = ctx.token.cancelled() => return None,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// The notice pollers at once (they need only IMDS), and the drain runner as soon as the instance
/// id is known: notices found before that wait in the channel and are acted on then.
fn start_drain(
    ctx: &Context,
    client: Arc<imds::Client>,
    observed: &watch::Receiver<Option<Arc<Observation>>>,
    handles_tx: watch::Sender<Option<Handles>>,
) {
    // Bounded: the pollers send a notice once when it appears and again only when it changes.
    let (tx, rx) = mpsc::channel(32);
    imds::spawn_pollers(
        client.clone(),
        &ctx.cfg.imds,
        tx,
        ctx.token.clone(),
        &ctx.tracker,
        ctx.health.clone(),
    );
    ctx.health
        .fault(FAULT_INSTANCE_ID, "not known yet: no drain can be acted on");
    let ctx = ctx.clone();
    let observed = observed.clone();
    ctx.tracker.clone().spawn(async move {
        let Some(instance_id) = until_known(&ctx, FAULT_INSTANCE_ID, "IMDS instance id", || {
            client.instance_id()
        })
        .await
        else {
            return;
        };
        let cfg = &ctx.cfg;
        // Not opened here: the runner tests the directory when it starts, and a state directory
        // that does not work is reported while the drain goes on from memory.
        let store = Store::new(&cfg.agent.state_dir);
        let sdk = crate::aws::sdk_config().await;
        let effects = Arc::new(
            AwsEffects::new(&sdk, Target::from_config(cfg, instance_id.into()))
                .with_local_tasks(move || {
                    observed
                        .borrow()
                        .as_deref()
                        .and_then(Observation::task_families)
                })
                .with_ignored_families(cfg.drain.ignore_families.clone()),
        );
        // The one runner over the state: notices come on `rx`, the shutdown drain through `handles`.
        let (runner, handles) = Runner::new(
            Settings::from_config(&cfg.drain),
            store,
            effects.clone(),
            ctx.health.clone(),
        );
        let runner = runner.with_boot_id(drain::read_boot_id(Path::new(drain::BOOT_ID_PATH)));
        handles_tx.send_replace(Some(handles));
        let resolving = ctx.token.clone();
        ctx.tracker
            .spawn(async move { effects.resolve_ahead(&resolving).await });
        runner.run(rx, ctx.token.clone()).await;
    });
}

/// What the look-ups after the drain's start work with.
struct Optional {
    imds: Option<Arc<imds::Client>>,
    sdk: aws_config::SdkConfig,
    ecs: aws_sdk_ecs::Client,
    observer: Observer,
    observed: watch::Receiver<Option<Arc<Observation>>>,
    /// The container instance ARN the observe loop learns, and this instance's ECS readings.
    arn: watch::Receiver<Option<String>>,
    reading: watch::Sender<Option<Arc<EcsReading>>>,
    /// The protection loop's input (from the observe loop) and its status (to the figures).
    local: watch::Receiver<Option<protection::aws::Local>>,
    protection: watch::Sender<Option<protection::aws::Status>>,
}

/// What only the capacity figures, scale-in protection and the CloudWatch sink need, after the
/// drain has started: the instance's facts (ENI limits, EC2, this container instance in ECS), the
/// instance's Auto Scaling group and the CloudWatch check. Each is retried until it answers; none
/// of them failing stops the daemon.
async fn start_optional(ctx: Context, o: Optional) {
    if let Some(client) = o.imds.clone() {
        let ctx = ctx.clone();
        let (sdk, ecs, observer) = (o.sdk.clone(), o.ecs.clone(), o.observer.clone());
        let (arn, reading) = (o.arn, o.reading);
        let (local, protection) = (o.local, o.protection);
        ctx.tracker.clone().spawn(async move {
            let Some(instance_id) = until_known(&ctx, "instance_facts", "IMDS instance id", || {
                client.instance_id()
            })
            .await
            else {
                return;
            };
            protection::aws::start(
                &ctx.cfg,
                &sdk,
                instance_id.to_string(),
                local,
                protection,
                &ctx.token,
                &ctx.tracker,
            );
            ctx.tracker.spawn(ecs::instance::follow(
                ecs,
                ctx.cfg.agent.cluster.clone(),
                instance_id.to_string(),
                arn,
                observer.changes(),
                reading,
                ctx.token.clone(),
            ));
            let facts = instance_facts(&client, instance_id).await;
            observer
                .set_instance(facts, Some(aws_sdk_ec2::Client::new(&sdk)))
                .await;
        });
    }
    if ctx.cfg.sinks.enabled.contains(&SinkKind::Cloudwatch) {
        // A bad region, missing credentials or a denied permission: said, reported unhealthy and
        // retried; the drain goes on meanwhile.
        let health = ctx.health.clone();
        let Some(publisher) = until_known(&ctx, FAULT_CLOUDWATCH, "CloudWatch check", || {
            metrics::cloudwatch::start(&o.sdk, &ctx.cfg, health.clone())
        })
        .await
        else {
            return;
        };
        publisher.run(o.observed, ctx.token.clone()).await;
    }
}

/// Everything IMDS says about this instance (for `status`); each look-up that fails is logged and
/// left unknown.
async fn all_instance_facts(client: &imds::Client) -> InstanceFacts {
    match client.instance_id().await {
        Ok(id) => instance_facts(client, id).await,
        Err(e) => {
            tracing::error!(error = %e, "IMDS: no instance id");
            InstanceFacts::default()
        }
    }
}

/// What IMDS says about this instance besides its id; each look-up that fails is logged and left
/// unknown.
async fn instance_facts(
    client: &imds::Client,
    instance_id: crate::instance_id::InstanceId,
) -> InstanceFacts {
    let instance_type = client
        .instance_type()
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "IMDS: no instance type; ENI limit unknown"))
        .ok();
    let macs = client
        .mac_addresses()
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "IMDS: no MAC list; ENIs counted from sysfs"))
        .ok();
    InstanceFacts {
        instance_id: Some(instance_id),
        instance_type,
        macs,
    }
}

/// What the observe loop needs of ECS: the task definitions, the cluster's shapes, this container
/// instance's reconciliations, and IMDS for the lifecycle state.
struct EcsParts {
    aws: bool,
    definitions: Arc<Definitions>,
    shapes: watch::Receiver<Option<Arc<ClusterShapes>>>,
    reading: watch::Receiver<Option<Arc<EcsReading>>>,
    /// The container instance ARN, once the ECS agent has told it.
    arn: watch::Sender<Option<String>>,
    imds: Option<Arc<imds::Client>>,
    /// What the protection loop decides on (sent after each observation with a task listing), and
    /// its answer (whether this host counts in `RemovableHosts`).
    local: watch::Sender<Option<protection::aws::Local>>,
    protection: watch::Receiver<Option<protection::aws::Status>>,
}

/// Observes every `agent.interval` and at once on a material change (a task started or stopped,
/// the drain status changed, ECS said something new of this host), and publishes each observation
/// as the one value everyone reads.
async fn observe_loop(
    ctx: Context,
    observer: Observer,
    mut ecs_parts: EcsParts,
    observed: watch::Sender<Option<Arc<Observation>>>,
    mut handles: watch::Receiver<Option<Handles>>,
) {
    let Context {
        cfg, health, token, ..
    } = ctx;
    let mut material_changes = 0u64;
    // The drain's status, once its runner runs.
    let mut drain: Option<watch::Receiver<DrainStatus>> = None;
    let mut handles_open = true;
    let mut ticker = tokio::time::interval(cfg.agent.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stdout = cfg.sinks.enabled.contains(&SinkKind::Stdout);
    let mut changes = observer.changes();
    // systemd: READY=1 after the first successful observation; the watchdog is fed while this
    // loop (among others) turns at least every two intervals and a minute.
    let beat = health
        .liveness()
        .register("the observe loop", cfg.agent.interval * 2 + OBSERVE_SLACK);
    let mut ready = false;
    let mut agreement = ecs::Agreement::default();
    let mut last_ok: Option<Arc<EcsReading>> = None;
    loop {
        // A task that starts or stops is a material change: observe (and publish) at once.
        let material = tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => false,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                true
            }
            // A drain that starts or ends is one too: the figures must say so before they go out.
            Some(()) = drain_changed(drain.as_mut()) => true,
            r = handles.changed(), if drain.is_none() && handles_open => {
                if r.is_err() {
                    handles_open = false;
                    continue;
                }
                drain = handles.borrow_and_update().as_ref().map(|h| h.status.clone());
                true
            }
            // So is what ECS says of this host (DRAINING set by someone else, the agent gone).
            Ok(()) = ecs_parts.reading.changed() => true,
            Ok(()) = ecs_parts.shapes.changed() => false,
        };
        beat.beat();
        let reading = ecs_parts.reading.borrow_and_update().clone();
        let error = match reading.as_deref().map(|r| &r.instance) {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        };
        if reading.as_deref().is_some_and(|r| r.instance.is_ok()) {
            last_ok = reading;
        }
        let cluster_shapes = ecs_parts.shapes.borrow_and_update().clone();
        match observer.snapshot().await {
            Ok(mut snapshot) => {
                if let Some(arn) = &snapshot.ecs.container_instance_arn {
                    ecs_parts.arn.send_if_modified(|old| {
                        let changed = old.as_ref() != Some(arn);
                        *old = Some(arn.clone());
                        changed
                    });
                }
                let daemons = cluster_shapes
                    .as_deref()
                    .map(|c| c.daemons.as_slice())
                    .unwrap_or_default();
                ecs::apply_reservations(&mut snapshot, &ecs_parts.definitions, daemons).await;
                let lifecycle = match &ecs_parts.imds {
                    Some(client) => lifecycle_state(client).await,
                    None => None,
                };
                let ctx = EcsContext {
                    aws: ecs_parts.aws,
                    reading: last_ok.clone(),
                    error: error.clone(),
                    lifecycle,
                    agreement,
                };
                let mut report =
                    HostStatus::assess(snapshot, &cfg.capacity, cluster_shapes.as_deref(), &ctx);
                agreement = report.agreement;
                report.drain = drain
                    .as_mut()
                    .map(|status| status.borrow_and_update().clone());
                let scale_in = *ecs_parts.protection.borrow();
                report.figures = Some(figures_of(&cfg, &report, scale_in));
                if report.snapshot.tasks_known {
                    let local = protection::aws::Local::observed(
                        &report.snapshot.tasks,
                        &cfg.drain.ignore_families,
                        &report.shapes,
                        report.drain.as_ref().is_some_and(DrainStatus::is_draining),
                    );
                    ecs_parts.local.send_if_modified(|old| {
                        let changed = old.as_ref() != Some(&local);
                        *old = Some(local);
                        changed
                    });
                }
                health.observed();
                if !ready {
                    crate::systemd::notify_ready();
                    ready = true;
                }
                if stdout {
                    print_report(&report);
                }
                if material {
                    material_changes += 1;
                }
                observed.send_replace(Some(Arc::new(Observation {
                    status: report,
                    material_changes,
                })));
            }
            Err(e) => {
                health.error("observation");
                tracing::error!(error = %e, "observation failed; keeping the last report");
            }
        }
    }
}

/// What one observation may take beyond the loop's own cadence before the loop counts as
/// stalled (the Docker, ECS agent and IMDS requests in it have their own timeouts, far below).
const OBSERVE_SLACK: Duration = Duration::from_secs(60);

/// Resolves when the drain status changes; never without a drain (or once its runner is gone).
async fn drain_changed(drain: Option<&mut watch::Receiver<DrainStatus>>) -> Option<()> {
    match drain {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// This host's published figures: its capacity report plus identity, usage, ENIs, tasks, drain.
/// `scale_in` is the protection loop's last status (`None`: no Auto Scaling group known).
fn figures_of(
    cfg: &Config,
    report: &HostStatus,
    scale_in: Option<protection::aws::Status>,
) -> HostFigures {
    let s = &report.snapshot;
    let non_empty = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_string());
    let facts = HostFacts {
        at: s.taken_at,
        cluster: s
            .ecs
            .cluster
            .clone()
            .unwrap_or_else(|| cfg.agent.cluster.clone()),
        instance_id: report.capacity.name.clone(),
        autoscaling_group: non_empty(&cfg.drain.autoscaling_group),
        cpu_used_cores: s.usage.as_ref().and_then(|u| u.cpu_cores),
        memory_used_bytes: s.usage.as_ref().and_then(|u| u.working_set_bytes),
        eni_attached: s.eni.attached,
        eni_limit: s.eni.limit,
        running_tasks: s
            .tasks_known
            .then(|| u32::try_from(s.tasks.len()).unwrap_or(u32::MAX)),
        draining: report.drain.as_ref().is_some_and(DrainStatus::is_draining),
        placeable: report.placement.placeable,
        capacity_unknown: report.capacity_unknown.clone(),
        cpu_reserved_difference: report.ecs.as_ref().and_then(|e| e.cpu_reserved_difference),
        memory_reserved_difference: report
            .ecs
            .as_ref()
            .and_then(|e| e.memory_reserved_difference),
        removable: scale_in.map(|s| s.removable),
        scale_in_protected: scale_in.and_then(|s| s.protected),
    };
    HostFigures::from_host(facts, &report.capacity)
}

fn print_report(report: &HostStatus) {
    use std::io::{IsTerminal, Write};
    let mut out = std::io::stdout().lock();
    let text = if out.is_terminal() {
        report.to_table()
    } else {
        format!("{}\n", report.to_json())
    };
    // A closed stdout (e.g. piped into `head`) must not end the daemon.
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysfs(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (rel, body) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        dir
    }

    #[test]
    fn ec2_is_told_by_the_dmi_and_hypervisor_files() {
        for (files, ec2) in [
            (vec![("class/dmi/id/sys_vendor", "Amazon EC2\n")], true),
            (
                vec![("class/dmi/id/board_asset_tag", "i-0123456789abcdef0\n")],
                true,
            ),
            (
                vec![("hypervisor/uuid", "ec2e1916-9099-7caf-fd21-012345abcdef\n")],
                true,
            ),
            (
                vec![(
                    "class/dmi/id/product_uuid",
                    "EC2E1916-9099-7CAF-FD21-012345ABCDEF\n",
                )],
                true,
            ),
            (vec![("class/dmi/id/sys_vendor", "QEMU\n")], false),
            (
                vec![("class/dmi/id/product_uuid", "4c4c4544-0042-3510\n")],
                false,
            ),
            (vec![], false),
        ] {
            let dir = sysfs(&files);
            assert_eq!(on_ec2(dir.path()).is_some(), ec2, "{files:?}");
        }
    }
}
