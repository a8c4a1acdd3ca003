//! Prometheus text exposition (format 0.0.4) on a loopback address: `/metrics` and `/healthz`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Health;
use crate::report::Report;

#[derive(Clone)]
struct Shared {
    report: watch::Receiver<Option<Arc<Report>>>,
    health: Arc<Health>,
    interval: Duration,
}

/// Binds now (so a taken port fails start-up) and returns the serving future.
pub async fn serve(
    addr: SocketAddr,
    report: watch::Receiver<Option<Arc<Report>>>,
    health: Arc<Health>,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = ()>), crate::Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::Error::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| crate::Error::Listen { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(Shared {
            report,
            health,
            interval,
        });
    let fut = async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "Prometheus endpoint stopped");
        }
    };
    Ok((local, fut))
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let report = s.report.borrow().clone();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(report.as_deref(), &s.health),
    )
}

async fn healthz(State(s): State<Shared>) -> impl IntoResponse {
    if s.health.is_healthy(s.interval) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no recent observation\n")
    }
}

/// One gauge or counter family in the exposition.
pub struct Family<'a> {
    pub name: &'a str,
    pub help: &'a str,
    pub kind: &'a str,
    /// (labels as `k="v"` pairs, value)
    pub samples: Vec<(String, f64)>,
}

pub fn write_family(out: &mut String, f: &Family<'_>) {
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
    for (labels, v) in &f.samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{} {}", f.name, v);
        } else {
            let _ = writeln!(out, "{}{{{}}} {}", f.name, labels, v);
        }
    }
}

fn gauge<'a>(name: &'a str, help: &'a str, v: f64) -> Family<'a> {
    Family {
        name,
        help,
        kind: "gauge",
        samples: vec![(String::new(), v)],
    }
}

/// The whole exposition: the host's figures (when observed) and the daemon's own health.
pub fn render(report: Option<&Report>, health: &Health) -> String {
    let mut out = String::new();
    if let Some(f) = report.and_then(|r| r.figures.as_ref()) {
        render_figures(&mut out, f);
    }
    if let Some(r) = report {
        let reg = &r.snapshot.registered;
        write_family(
            &mut out,
            &gauge(
                "ecs_capacity_registered_cpu_units",
                "CPU units this instance registers with ECS.",
                reg.cpu_units as f64,
            ),
        );
        write_family(
            &mut out,
            &gauge(
                "ecs_capacity_registered_memory_mib",
                "Memory (MiB) this instance registers with ECS.",
                reg.memory_mib as f64,
            ),
        );
    }
    write_family(
        &mut out,
        &gauge(
            "ecs_capacity_agent_observations_total",
            "Observations of the host since start.",
            health.observations() as f64,
        ),
    );
    write_family(
        &mut out,
        &gauge(
            "ecs_capacity_agent_last_observation_timestamp_seconds",
            "Unix time of the last observation.",
            health.last_observation_unix() as f64,
        ),
    );
    write_family(
        &mut out,
        &gauge(
            "ecs_capacity_agent_last_publish_timestamp_seconds",
            "Unix time of the last successful CloudWatch publish (0: never).",
            health.last_publish_unix() as f64,
        ),
    );
    write_family(
        &mut out,
        &gauge(
            "ecs_capacity_agent_imds_poll_seconds",
            "Latency of the last IMDS notice poll.",
            health.imds_poll_seconds(),
        ),
    );
    let errors = health.errors();
    write_family(
        &mut out,
        &Family {
            name: "ecs_capacity_agent_errors_total",
            help: "Errors by kind since start.",
            kind: "counter",
            samples: errors
                .iter()
                .map(|(k, v)| (format!("kind=\"{k}\""), *v as f64))
                .collect(),
        },
    );
    out
}

/// The published figures under their Prometheus names (the same table CloudWatch gets); per-resource
/// values carry a `resource` label.
fn render_figures(out: &mut String, f: &crate::metrics::figures::HostFigures) {
    for m in crate::metrics::figures::METRICS.iter() {
        let mut samples = Vec::new();
        if let Some(v) = f.value(m.name) {
            samples.push((String::new(), v));
        }
        for (resource, v) in f.by_resource(m.name) {
            samples.push((format!("resource=\"{resource}\""), v));
        }
        if !samples.is_empty() {
            write_family(
                out,
                &Family {
                    name: m.prometheus,
                    help: m.help,
                    kind: "gauge",
                    samples,
                },
            );
        }
    }
}
