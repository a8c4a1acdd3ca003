//! Prometheus text exposition (format 0.0.4) on a loopback address: `/metrics` and `/healthz`,
//! served by [`listener`](super::listener).

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

use crate::health::Health;
use crate::status::HostStatus;

#[derive(Clone)]
struct Shared {
    report: watch::Receiver<Option<Arc<HostStatus>>>,
    health: Arc<Health>,
    interval: Duration,
}

/// Binds now (so a taken port fails start-up) and returns the serving future.
pub async fn serve(
    addr: SocketAddr,
    report: watch::Receiver<Option<Arc<HostStatus>>>,
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
    let fut = super::listener::serve(listener, app, super::listener::Limits::default(), shutdown);
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
    let reasons = s.health.unhealthy_reasons(s.interval);
    if reasons.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            reasons.iter().map(|r| format!("{r}\n")).collect(),
        )
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
pub fn render(report: Option<&HostStatus>, health: &Health) -> String {
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
    write_family(
        &mut out,
        &Family {
            name: "ecs_capacity_agent_state_write_errors_total",
            help: "Failed writes of the drain state since start (the drain goes on from memory).",
            kind: "counter",
            samples: vec![(String::new(), health.state_write_errors() as f64)],
        },
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

/// This host's published figures (the same [`HostFigures`](super::HostFigures) CloudWatch gets), as
/// gauges named in `figures::METRICS`; per-resource figures carry a `resource` label. Unknown figures
/// are left out. [`render`] puts them first when the daemon has them.
pub fn render_figures(out: &mut String, f: &super::HostFigures) {
    for m in super::figures::METRICS.iter() {
        let mut samples = Vec::new();
        if let Some(v) = f.value(m.name) {
            samples.push((String::new(), v));
        }
        for (resource, v) in f.by_resource(m.name) {
            samples.push((format!("resource=\"{resource}\""), v));
        }
        if samples.is_empty() {
            continue;
        }
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

#[cfg(test)]
mod figures_tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::metrics::HostFigures;

    #[test]
    fn figures_render_as_gauges_with_resource_labels_and_unknowns_left_out() {
        let f = HostFigures {
            at: SystemTime::now(),
            cluster: "prod".into(),
            instance_id: "i-1".into(),
            autoscaling_group: None,
            spare_tasks: Some(3),
            spare_tasks_by_resource: BTreeMap::from([("cpu", 3), ("memory", 7)]),
            idle_fraction: Some(0.5),
            idle_fraction_by_resource: BTreeMap::new(),
            cpu_reserved_pct: Some(25.0),
            memory_reserved_pct: None,
            cpu_used_pct: None,
            memory_used_pct: None,
            eni_attached: None,
            eni_limit: None,
            running_tasks: 2,
            draining: true,
            placeable: None,
            cpu_reserved_difference: None,
            memory_reserved_difference: None,
            removable: Some(false),
        };
        let mut out = String::new();
        render_figures(&mut out, &f);
        for line in [
            "# TYPE ecs_capacity_spare_tasks gauge",
            "ecs_capacity_spare_tasks 3",
            "ecs_capacity_spare_tasks{resource=\"memory\"} 7",
            "ecs_capacity_idle_fraction 0.5",
            "ecs_capacity_cpu_reserved_percent 25",
            "ecs_capacity_running_tasks 2",
            "ecs_capacity_draining 1",
            "ecs_capacity_removable 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
        assert!(!out.contains("ecs_capacity_memory_reserved_percent"));
        assert!(!out.contains("ecs_capacity_enis_attached"));
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn state_write_errors_are_a_typed_counter() {
        let health = Health::default();
        health.state_write_error();
        health.state_write_error();
        let out = render(None, &health);
        for line in [
            "# TYPE ecs_capacity_agent_state_write_errors_total counter",
            "ecs_capacity_agent_state_write_errors_total 2",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }
}
