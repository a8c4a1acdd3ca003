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
use crate::host::Registered;
use crate::metrics::HostFigures;
use crate::observation::Observation;

#[derive(Clone)]
struct Shared {
    observed: watch::Receiver<Option<Arc<Observation>>>,
    health: Arc<Health>,
    interval: Duration,
}

/// Binds now (so a taken port fails start-up) and returns the serving future.
pub async fn serve(
    addr: SocketAddr,
    observed: watch::Receiver<Option<Arc<Observation>>>,
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
            observed,
            health,
            interval,
        });
    let fut = super::listener::serve(listener, app, super::listener::Limits::default(), shutdown);
    Ok((local, fut))
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let observed = s.observed.borrow().clone();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(
            observed.as_ref().map(|o| Exposed {
                figures: o.status.figures.as_ref(),
                registered: &o.status.snapshot.registered,
            }),
            &s.health,
        ),
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

/// What the exposition shows of the host once it has been observed: the figures it publishes and
/// what it registers with ECS.
#[derive(Debug, Clone, Copy)]
pub struct Exposed<'a> {
    pub figures: Option<&'a HostFigures>,
    pub registered: &'a Registered,
}

/// The whole exposition: the host's figures and registration (when observed) and the daemon's own
/// health.
pub fn render(host: Option<Exposed<'_>>, health: &Health) -> String {
    let mut out = String::new();
    if let Some(f) = host.and_then(|h| h.figures) {
        render_figures(&mut out, f);
    }
    if let Some(Exposed {
        registered: reg, ..
    }) = host
    {
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
        &Family {
            name: "ecs_capacity_agent_observations_total",
            help: "Observations of the host since start.",
            kind: "counter",
            samples: vec![(String::new(), health.observations() as f64)],
        },
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
/// gauges named in `figures::METRICS`. Per-resource figures are a family of their own,
/// `<name>_by_resource` with a `resource` label: one label set per family, so `sum()` over a family
/// never adds a total to its parts. Unknown figures are left out. [`render`] puts them first when the
/// daemon has them.
pub fn render_figures(out: &mut String, f: &HostFigures) {
    for m in super::figures::METRICS.iter() {
        if let Some(v) = f.value(m.name) {
            write_family(out, &gauge(m.prometheus, m.help, v));
        }
        let by_resource: Vec<_> = f
            .by_resource(m.name)
            .into_iter()
            .map(|(resource, v)| (format!("resource=\"{resource}\""), v))
            .collect();
        if !by_resource.is_empty() {
            let name = by_resource_name(m.prometheus);
            let help = format!("{} By one resource alone.", m.help);
            write_family(
                out,
                &Family {
                    name: &name,
                    help: &help,
                    kind: "gauge",
                    samples: by_resource,
                },
            );
        }
    }
    if let Some(p) = f.scale_in_protected {
        write_family(
            out,
            &gauge(
                SCALE_IN_PROTECTED,
                "1 while Auto Scaling confirms this instance protected from scale-in, else 0 (absent: no group known).",
                if p { 1.0 } else { 0.0 },
            ),
        );
    }
    for (name, help, v) in [
        (
            CPU_RESERVED_DIFFERENCE,
            "CPU units reserved here as this host counts them, less as ECS counts them (last reconciliation).",
            f.cpu_reserved_difference,
        ),
        (
            MEMORY_RESERVED_DIFFERENCE,
            "Memory (MiB) reserved here as this host counts it, less as ECS counts it (last reconciliation).",
            f.memory_reserved_difference,
        ),
    ] {
        if let Some(v) = v {
            write_family(out, &gauge(name, help, v as f64));
        }
    }
}

/// The Prometheus-only gauges of local − ECS reserved CPU and memory.
pub const CPU_RESERVED_DIFFERENCE: &str = "ecs_capacity_cpu_reserved_difference_units";
pub const MEMORY_RESERVED_DIFFERENCE: &str = "ecs_capacity_memory_reserved_difference_mib";

/// The Prometheus-only gauge of this instance's scale-in protection.
pub const SCALE_IN_PROTECTED: &str = "ecs_capacity_scale_in_protected";

/// The Prometheus family of a metric's per-resource figures.
pub fn by_resource_name(prometheus: &str) -> String {
    format!("{prometheus}_by_resource")
}

#[cfg(test)]
mod figures_tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;

    /// Every family the exposition can hold is in the README's Prometheus table.
    #[test]
    fn the_readme_names_every_prometheus_family() {
        let readme = include_str!("../../README.md");
        let f = HostFigures {
            at: SystemTime::now(),
            cluster: "prod".into(),
            instance_id: "i-1".into(),
            autoscaling_group: None,
            spare_tasks: Some(3),
            spare_tasks_by_resource: BTreeMap::from([("cpu", 3)]),
            idle_fraction: Some(0.5),
            idle_fraction_by_resource: BTreeMap::from([("cpu", 0.5)]),
            cpu_reserved_pct: Some(25.0),
            memory_reserved_pct: Some(25.0),
            cpu_used_pct: Some(1.0),
            memory_used_pct: Some(1.0),
            eni_attached: Some(1),
            eni_limit: Some(3),
            running_tasks: Some(2),
            draining: false,
            placeable: Some(true),
            cpu_reserved_difference: Some(0),
            memory_reserved_difference: Some(0),
            removable: Some(true),
            scale_in_protected: Some(false),
        };
        let mut out = String::new();
        render_figures(&mut out, &f);
        let health = crate::health::Health::default();
        health.error("observation");
        out.push_str(&render(None, &health));
        let families: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(families.len() > 20, "{families:?}");
        let missing: Vec<&&str> = families
            .iter()
            .filter(|name| !readme.contains(&format!("`{name}`")))
            .collect();
        assert!(missing.is_empty(), "not in the README: {missing:?}");
    }

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
            running_tasks: Some(2),
            draining: true,
            placeable: None,
            cpu_reserved_difference: Some(-256),
            memory_reserved_difference: Some(0),
            removable: Some(false),
            scale_in_protected: Some(true),
        };
        let mut out = String::new();
        render_figures(&mut out, &f);
        for line in [
            "# TYPE ecs_capacity_cpu_reserved_difference_units gauge",
            "ecs_capacity_cpu_reserved_difference_units -256",
            "ecs_capacity_memory_reserved_difference_mib 0",
            "# TYPE ecs_capacity_spare_tasks gauge",
            "ecs_capacity_spare_tasks 3",
            "# TYPE ecs_capacity_spare_tasks_by_resource gauge",
            "ecs_capacity_spare_tasks_by_resource{resource=\"memory\"} 7",
            "ecs_capacity_idle_fraction 0.5",
            "ecs_capacity_cpu_reserved_percent 25",
            "ecs_capacity_running_tasks 2",
            "ecs_capacity_draining 1",
            "ecs_capacity_removable 0",
            "# TYPE ecs_capacity_scale_in_protected gauge",
            "ecs_capacity_scale_in_protected 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
        assert!(!out.contains("ecs_capacity_memory_reserved_percent"));
        // One label set per family: no labelled sample in an unlabelled family.
        assert!(!out.contains("ecs_capacity_spare_tasks{"), "{out}");
        assert!(!out.contains("ecs_capacity_enis_attached"));
    }

    /// `(family, type, label names of each sample)` for every family in an exposition.
    fn families(out: &str) -> Vec<(String, String, Vec<String>)> {
        let mut fams: Vec<(String, String, Vec<String>)> = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                fams.push((name.into(), kind.into(), Vec::new()));
            } else if !line.starts_with('#') {
                let head = line.split_once(' ').unwrap().0;
                let (name, labels) = head.split_once('{').unwrap_or((head, ""));
                let keys: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| kv.split_once('=').unwrap().0)
                    .collect();
                let fam = fams.last_mut().unwrap();
                assert_eq!(fam.0, name, "a sample under its own family");
                fam.2.push(keys.join(","));
            }
        }
        fams
    }

    #[test]
    fn every_family_has_one_label_set_and_counters_are_typed_counter() {
        let f = HostFigures {
            at: SystemTime::now(),
            cluster: "prod".into(),
            instance_id: "i-1".into(),
            autoscaling_group: None,
            spare_tasks: Some(3),
            spare_tasks_by_resource: BTreeMap::from([("cpu", 3), ("memory", 7)]),
            idle_fraction: Some(0.5),
            idle_fraction_by_resource: BTreeMap::from([("cpu", 0.5), ("memory", 0.875)]),
            cpu_reserved_pct: Some(25.0),
            memory_reserved_pct: Some(12.5),
            cpu_used_pct: Some(3.0),
            memory_used_pct: Some(4.0),
            eni_attached: Some(1),
            eni_limit: Some(3),
            running_tasks: Some(2),
            draining: false,
            placeable: Some(true),
            cpu_reserved_difference: None,
            memory_reserved_difference: None,
            removable: Some(true),
            scale_in_protected: Some(false),
        };
        let mut out = String::new();
        render_figures(&mut out, &f);
        let health = crate::health::Health::default();
        health.observed();
        health.error("observation");
        health.error("cloudwatch_unsent");
        out.push_str(&render(None, &health));
        let fams = families(&out);
        for (name, kind, label_sets) in &fams {
            assert!(!label_sets.is_empty(), "{name}: no sample");
            assert!(
                label_sets.iter().all(|l| l == &label_sets[0]),
                "{name}: one label set per family: {label_sets:?}"
            );
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: counters (and only they) end in _total and are typed counter"
            );
        }
        let names: Vec<_> = fams.iter().map(|f| f.0.as_str()).collect();
        for name in [
            "ecs_capacity_spare_tasks",
            "ecs_capacity_spare_tasks_by_resource",
            "ecs_capacity_idle_fraction_by_resource",
            "ecs_capacity_agent_observations_total",
            "ecs_capacity_agent_errors_total",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
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
