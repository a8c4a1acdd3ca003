//! The daemon: wires the observers, the sinks and the notice watchers together, and ends them all on
//! one cancellation token.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Loaded, SinkKind, Toggle};
use crate::drain::{AwsEffects, DrainStatus, Runner, Settings, Store, Target};
use crate::error::Error;
use crate::health::Health;
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
        Toggle::Auto => {
            let endpoint = crate::aws::imds_endpoint();
            let ok = probe_imds(&endpoint, cfg.imds.timeout).await;
            if !ok {
                tracing::warn!(
                    endpoint,
                    "IMDS did not answer: not on EC2, or the hop limit is 1 and this runs in a container. \
                     AWS features are off: no interruption notices, no draining, no CloudWatch; local sinks only"
                );
            }
            ok
        }
    };
    Reach { aws }
}

async fn probe_imds(endpoint: &str, timeout: Duration) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
    else {
        return false;
    };
    client
        .put(format!("{endpoint}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

/// One observation of the host (for `status`). A source that cannot be read is recorded in
/// `unavailable`; only a failure to read what the host registers is an error.
pub async fn observe(cfg: &Config) -> Result<Snapshot, Error> {
    host::observe_once(cfg).await
}

pub async fn observe_once(cfg: &Config) -> Result<HostStatus, Error> {
    Ok(HostStatus::assess(observe(cfg).await?, &cfg.capacity))
}

/// What the drain side hands the rest of the daemon.
struct DrainParts {
    status: watch::Receiver<DrainStatus>,
    /// A second runner on the same state, for the drain before a system shutdown (`run` consumes the
    /// first one).
    shutdown: Runner,
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
    if reach.aws {
        let sdk = crate::aws::sdk_config().await;
        match imds::Client::new(&cfg.imds) {
            Ok(client) => {
                let client = Arc::new(client);
                let facts = instance_facts(&client).await;
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
            &d.shutdown,
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
) -> Result<Option<DrainParts>, Error> {
    let Some(instance_id) = instance_id else {
        tracing::error!("the instance id is unknown: no interruption notices, no draining");
        return Ok(None);
    };
    // Not opened here: a state directory that does not work is reported, and the drain goes on from
    // memory. Both runners share what the store holds in memory.
    let store = Store::new(&cfg.agent.state_dir);
    let effects = Arc::new(
        AwsEffects::new(sdk, Target::from_config(cfg, instance_id.into()))
            .with_local_tasks(families)
            .with_ignored_families(cfg.drain.ignore_families.clone()),
    );
    let settings = Settings::from_config(&cfg.drain);
    let (runner, handles) = Runner::new(
        settings.clone(),
        store.clone(),
        effects.clone(),
        health.clone(),
    );
    let (shutdown, _) = Runner::new(settings, store, effects.clone(), health.clone());
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
    Ok(Some(DrainParts {
        status: handles.status,
        shutdown,
    }))
}

#[allow(clippy::too_many_arguments)]
async fn observe_loop(
    cfg: Arc<Config>,
    observer: Observer,
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
        };
        match observer.snapshot().await {
            Ok(snapshot) => {
                families_tx.send_replace(Some(snapshot.task_families()));
                let mut report = HostStatus::assess(snapshot, &cfg.capacity);
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
