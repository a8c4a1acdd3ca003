//! The daemon: wires the observers, the sinks and the notice watchers together, and ends them all on
//! one cancellation token.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
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
use crate::status::HostStatus;

/// Resolves on SIGTERM or SIGINT.
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

/// What the daemon found it can use at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub aws: bool,
}

/// Decides once whether AWS (IMDS, the instance role) is there. `auto` asks IMDS for a token with a
/// short timeout: a machine that is not an EC2 instance answers nothing and everything that needs AWS
/// is switched off, saying so once.
pub async fn detect_reach(cfg: &Config) -> Reach {
    let aws = match cfg.agent.aws {
        Toggle::On => true,
        Toggle::Off => {
            tracing::info!(
                "AWS features off (agent.aws = \"off\"): no IMDS notices, no CloudWatch, no draining"
            );
            false
        }
        Toggle::Auto => match imds::Client::new(&cfg.imds) {
            Ok(client) => match client.probe().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        endpoint = client.endpoint(),
                        error = %e,
                        "IMDS did not answer: not on EC2, or the hop limit is 1 and this runs in a container. \
                         AWS features are off: no interruption notices, no draining, no CloudWatch; local sinks only"
                    );
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no IMDS client: AWS features are off; local sinks only");
                false
            }
        },
    };
    Reach { aws }
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
    let reach = detect_reach(cfg).await;
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
        Some(c) => tokio::time::timeout(STATUS_AWS_BUDGET, instance_facts(c))
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

/// Runs until `shutdown` resolves, then lets in-flight work finish and returns.
pub async fn run(loaded: Loaded, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let cfg = Arc::new(loaded.config);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let health = Arc::new(Health::default());
    let (report_tx, report_rx) = watch::channel::<Option<Arc<HostStatus>>>(None);
    let (families_tx, families_rx) = watch::channel::<Option<Vec<String>>>(None);
    let (figures_tx, figures_rx) = watch::channel::<Option<Arc<HostFigures>>>(None);
    let publish_now = Arc::new(Notify::new());

    let reach = detect_reach(&cfg).await;
    if !reach.aws && cfg.sinks.enabled.contains(&SinkKind::Cloudwatch) {
        tracing::warn!("sink \"cloudwatch\" is configured but AWS is not reachable: it is off");
    }

    if cfg.sinks.enabled.contains(&SinkKind::Prometheus) {
        let (addr, serving) = metrics::prometheus::serve(
            cfg.prometheus.listen,
            report_rx.clone(),
            health.clone(),
            cfg.agent.interval,
            token.clone(),
        )
        .await?;
        tracing::info!(%addr, "serving /metrics and /healthz");
        tracker.spawn(serving);
    }

    let observer = Observer::start(cfg.clone(), token.clone(), &tracker).await;

    let mut drain = None;
    let (shapes_tx, shapes_rx) = watch::channel::<Option<Arc<ClusterShapes>>>(None);
    let (reading_tx, reading_rx) = watch::channel::<Option<Arc<EcsReading>>>(None);
    let (arn_tx, arn_rx) = watch::channel::<Option<String>>(None);
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
        imds: None,
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
        match imds::Client::new(&cfg.imds) {
            Ok(client) => {
                let client = Arc::new(client);
                ecs_parts.imds = Some(client.clone());
                let facts = instance_facts(&client).await;
                if let Some(id) = &facts.instance_id {
                    tracker.spawn(ecs::instance::follow(
                        ecs_client.clone(),
                        cfg.agent.cluster.clone(),
                        id.to_string(),
                        arn_rx,
                        observer.changes(),
                        reading_tx,
                        token.clone(),
                    ));
                }
                observer
                    .set_instance(facts.clone(), Some(aws_sdk_ec2::Client::new(&sdk)))
                    .await;
                drain = start_drain(
                    &cfg,
                    &sdk,
                    client,
                    facts.instance_id,
                    families_rx,
                    &health,
                    &token,
                    &tracker,
                )?;
            }
            Err(e) => tracing::error!(
                error = %e,
                "cannot build the IMDS client: no interruption notices, no draining"
            ),
        }
        if cfg.sinks.enabled.contains(&SinkKind::Cloudwatch) {
            // Fails fast on a bad region, missing credentials or a denied permission.
            let publisher = metrics::cloudwatch::start(&sdk, &cfg, health.clone()).await?;
            tracker.spawn(publisher.run(figures_rx, publish_now.clone(), token.clone()));
        }
    }

    tracker.spawn(observe_loop(
        cfg.clone(),
        observer,
        ecs_parts,
        health.clone(),
        report_tx,
        families_tx,
        figures_tx,
        drain.as_ref().map(|d| d.status.clone()),
        publish_now,
        token.clone(),
    ));
    tracker.close();

    tracing::info!(cluster = %cfg.agent.cluster, interval = ?cfg.agent.interval, "ecs-capacity-agent running");
    shutdown.await;
    if let Some(d) = drain.as_ref().filter(|_| cfg.drain.drain_on_shutdown) {
        // Everything else keeps running meanwhile: the observer still counts the tasks.
        crate::drain::drain_before_shutdown(
            d,
            cfg.drain.shutdown_drain_timeout,
            crate::drain::system_is_stopping,
        )
        .await;
    }
    crate::systemd::notify_stopping();
    token.cancel();
    tracker.wait().await;
    tracing::info!("ecs-capacity-agent stopped");
    Ok(())
}

/// What IMDS says about this instance; each look-up that fails is logged and left unknown.
async fn instance_facts(client: &imds::Client) -> InstanceFacts {
    let instance_id = client
        .instance_id()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "IMDS: no instance id"))
        .ok();
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
        instance_id,
        instance_type,
        macs,
    }
}

/// The notice pollers and the drain runner. Without an instance id there is nothing to drain.
#[allow(clippy::too_many_arguments)]
fn start_drain(
    cfg: &Arc<Config>,
    sdk: &aws_config::SdkConfig,
    client: Arc<imds::Client>,
    instance_id: Option<crate::instance_id::InstanceId>,
    families: watch::Receiver<Option<Vec<String>>>,
    health: &Arc<Health>,
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Option<Handles>, Error> {
    let Some(instance_id) = instance_id else {
        tracing::error!("the instance id is unknown: no interruption notices, no draining");
        return Ok(None);
    };
    // Not opened here: the runner tests the directory when it starts, and a state directory that
    // does not work is reported while the drain goes on from memory.
    let store = Store::new(&cfg.agent.state_dir);
    let effects = Arc::new(
        AwsEffects::new(sdk, Target::from_config(cfg, instance_id.into()))
            .with_local_tasks(families)
            .with_ignored_families(cfg.drain.ignore_families.clone()),
    );
    // The one runner over the state: notices come on `rx`, the shutdown drain through `handles`.
    let (runner, handles) = Runner::new(
        Settings::from_config(&cfg.drain),
        store,
        effects.clone(),
        health.clone(),
    );
    let runner = runner.with_boot_id(drain::read_boot_id(Path::new(drain::BOOT_ID_PATH)));
    // Bounded: the pollers send a notice once when it appears and again only when it changes.
    let (tx, rx) = mpsc::channel(32);
    imds::spawn_pollers(
        client,
        &cfg.imds,
        tx,
        token.clone(),
        tracker,
        health.clone(),
    );
    tracker.spawn(runner.run(rx, token.clone()));
    let resolving = token.clone();
    tracker.spawn(async move { effects.resolve_ahead(&resolving).await });
    Ok(Some(handles))
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
}

#[allow(clippy::too_many_arguments)]
async fn observe_loop(
    cfg: Arc<Config>,
    observer: Observer,
    mut ecs_parts: EcsParts,
    health: Arc<Health>,
    report_tx: watch::Sender<Option<Arc<HostStatus>>>,
    families_tx: watch::Sender<Option<Vec<String>>>,
    figures_tx: watch::Sender<Option<Arc<HostFigures>>>,
    mut drain: Option<watch::Receiver<DrainStatus>>,
    publish_now: Arc<Notify>,
    token: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cfg.agent.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stdout = cfg.sinks.enabled.contains(&SinkKind::Stdout);
    let mut changes = observer.changes();
    // systemd: WATCHDOG=1 from this loop (a wedged observation stops it), READY=1 after the first
    // successful observation.
    let watchdog = crate::systemd::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut ready = false;
    let mut agreement = ecs::Agreement::default();
    let mut last_ok: Option<Arc<EcsReading>> = None;
    loop {
        // A task that starts or stops is a material change: observe (and publish) at once.
        let material = tokio::select! {
            _ = token.cancelled() => return,
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                crate::systemd::notify_watchdog();
                continue;
            }
            _ = ticker.tick() => false,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                true
            }
            // A drain that starts or ends is one too: the figures must say so before they go out.
            Some(()) = drain_changed(drain.as_mut()) => true,
            // So is what ECS says of this host (DRAINING set by someone else, the agent gone).
            Ok(()) = ecs_parts.reading.changed() => true,
            Ok(()) = ecs_parts.shapes.changed() => false,
        };
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
                families_tx.send_replace(Some(snapshot.task_families()));
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
                let figures = Arc::new(figures_of(&cfg, &report));
                report.figures = Some((*figures).clone());
                figures_tx.send_replace(Some(figures));
                health.observed();
                if !ready {
                    crate::systemd::notify_ready();
                    ready = true;
                }
                if stdout {
                    print_report(&report);
                }
                report_tx.send_replace(Some(Arc::new(report)));
                if material {
                    publish_now.notify_one();
                }
            }
            Err(e) => {
                health.error("observation");
                tracing::error!(error = %e, "observation failed; keeping the last report");
            }
        }
    }
}

/// Resolves when the drain status changes; never without a drain (or once its runner is gone).
async fn drain_changed(drain: Option<&mut watch::Receiver<DrainStatus>>) -> Option<()> {
    match drain {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// This host's published figures: its capacity report plus identity, usage, ENIs, tasks, drain.
fn figures_of(cfg: &Config, report: &HostStatus) -> HostFigures {
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
        running_tasks: u32::try_from(s.tasks.len()).unwrap_or(u32::MAX),
        draining: report.drain.as_ref().is_some_and(DrainStatus::is_draining),
        placeable: report.placement.placeable,
        capacity_unknown: report.capacity_unknown.clone(),
        cpu_reserved_difference: report.ecs.as_ref().and_then(|e| e.cpu_reserved_difference),
        memory_reserved_difference: report
            .ecs
            .as_ref()
            .and_then(|e| e.memory_reserved_difference),
        removable: None,
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
