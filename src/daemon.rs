//! The daemon: wires the observers, the sinks and the notice watchers together, and ends them all on
//! one cancellation token.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Loaded, SinkKind, Toggle};
use crate::error::Error;
use crate::host::{self, Observer, Snapshot};
use crate::metrics::{self, Health};
use crate::report::Report;

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

pub async fn observe_once(cfg: &Config) -> Result<Report, Error> {
    Ok(Report::assess(observe(cfg).await?, &cfg.capacity))
}

/// Runs until `shutdown` resolves, then lets in-flight work finish and returns.
pub async fn run(loaded: Loaded, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let cfg = Arc::new(loaded.config);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let health = Arc::new(Health::default());
    let (report_tx, report_rx) = watch::channel::<Option<Arc<Report>>>(None);

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
    tracker.spawn(observe_loop(
        cfg.clone(),
        observer,
        health.clone(),
        report_tx,
        token.clone(),
    ));
    tracker.close();

    tracing::info!(cluster = %cfg.agent.cluster, interval = ?cfg.agent.interval, "ecs-capacity-agent running");
    shutdown.await;
    crate::systemd::notify_stopping();
    token.cancel();
    tracker.wait().await;
    tracing::info!("ecs-capacity-agent stopped");
    Ok(())
}

async fn observe_loop(
    cfg: Arc<Config>,
    observer: Observer,
    health: Arc<Health>,
    report_tx: watch::Sender<Option<Arc<Report>>>,
    token: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cfg.agent.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stdout = cfg.sinks.enabled.contains(&SinkKind::Stdout);
    // systemd: WATCHDOG=1 from this loop (a wedged observation stops it), READY=1 after the first
    // successful observation.
    let watchdog = crate::systemd::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut ready = false;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                crate::systemd::notify_watchdog();
                continue;
            }
            _ = ticker.tick() => {}
        }
        match observer.snapshot().await {
            Ok(snapshot) => {
                let report = Report::assess(snapshot, &cfg.capacity);
                health.observed();
                if !ready {
                    crate::systemd::notify_ready();
                    ready = true;
                }
                if stdout {
                    print_report(&report);
                }
                report_tx.send_replace(Some(Arc::new(report)));
            }
            Err(e) => {
                health.error("observation");
                tracing::error!(error = %e, "observation failed; keeping the last report");
            }
        }
    }
}

fn print_report(report: &Report) {
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
