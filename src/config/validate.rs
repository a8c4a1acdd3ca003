//! The bounds of each key, section by section. Every error names the key, the layer the value came
//! from (the environment variable, the file or the ecs.config line) and what is allowed.
//!
//! Every duration has an upper bound as well as a lower one: a bound of hours or days keeps any
//! `Instant + duration` in the daemon from overflowing, whatever the input (`200000000000y` parses).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Config, ConfigError, SinkKind, Source};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Observation interval: below 1 s the daemon only spins; above 1 h `/healthz` and CloudWatch's
/// one-datum-per-period go meaningless.
pub const AGENT_INTERVAL: (Duration, Duration) = (Duration::from_secs(1), HOUR);
pub const DOCKER_RESYNC_INTERVAL: (Duration, Duration) = (Duration::from_secs(1), DAY);
/// IMDS notice polling: a spot notice comes two minutes ahead, so a poll must come well within that.
pub const IMDS_POLL_INTERVAL: (Duration, Duration) = (Duration::from_millis(100), MINUTE);
/// IMDS answers on the instance itself in a few milliseconds.
pub const IMDS_TIMEOUT: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(30));
/// IMDSv2 accepts token lifetimes of 1 s to 6 h.
pub const IMDS_TOKEN_TTL: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(21_600));
pub const DRAIN_CHECK_INTERVAL: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(600));
/// Scheduled events are announced up to weeks ahead.
pub const MAINTENANCE_LEAD_TIME: (Duration, Duration) =
    (Duration::ZERO, Duration::from_secs(28 * 86_400));
pub const SHUTDOWN_DRAIN_TIMEOUT: (Duration, Duration) =
    (Duration::ZERO, Duration::from_secs(2 * 3600));
/// A drain's bound: at most the 48 h an Auto Scaling lifecycle action can wait.
pub const DRAIN_MAX_DURATION: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(48 * 3600));
pub const DRAIN_STOP_LEAD: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(600));
/// Unsent CloudWatch periods kept: a week of one-minute periods.
pub const BUFFER_PERIODS: (usize, usize) = (1, 10_080);
/// Memory the ECS agent keeps back, MiB (16 TiB: above any instance type).
pub const RESERVED_MEMORY_MIB_MAX: u64 = 16 * 1024 * 1024;
/// A configured task shape's CPU units (ECS tasks take at most 192 vCPU) and memory (MiB).
pub const SHAPE_CPU_UNITS_MAX: u64 = 1024 * 1024;
pub const SHAPE_MEMORY_MIB_MAX: u64 = RESERVED_MEMORY_MIB_MAX;
pub const SCALE_OUT_THRESHOLD_MAX: f64 = 1e9;
/// Scale-in protection: shorter than a minute would flap protection with every short-lived task,
/// or poll the cluster too often.
pub const SCALE_IN_IDLE_GRACE: (Duration, Duration) = (MINUTE, DAY);
pub const SCALE_IN_VIEW_INTERVAL: (Duration, Duration) = (MINUTE, DAY);
pub const SCALE_IN_LAUNCH_WARMUP: (Duration, Duration) = (Duration::ZERO, DAY);
pub const SCALE_IN_VOLUNTEER_AFTER: (Duration, Duration) = (Duration::ZERO, DAY);
pub const SCALE_IN_VOLUNTEER_TIMEOUT: (Duration, Duration) =
    (Duration::ZERO, Duration::from_secs(7 * 86_400));

/// Builds errors that name the key and where its value came from.
struct Check<'a> {
    sources: &'a BTreeMap<String, Source>,
}

impl Check<'_> {
    fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            origin: origin(self.sources, key)
                .map(Source::to_string)
                .unwrap_or_else(|| "configuration".into()),
            key: key.into(),
            message,
        }
    }

    fn duration(
        &self,
        key: &str,
        d: Duration,
        (min, max): (Duration, Duration),
    ) -> Result<(), ConfigError> {
        if d < min || d > max {
            return Err(self.invalid(
                key,
                format!(
                    "{} is not allowed: at least {} and at most {}",
                    human(d),
                    human(min),
                    human(max)
                ),
            ));
        }
        Ok(())
    }

    fn at_most(&self, key: &str, v: u64, max: u64, unit: &str) -> Result<(), ConfigError> {
        if v > max {
            return Err(self.invalid(key, format!("{v} is not allowed: from 0 to {max} {unit}")));
        }
        Ok(())
    }
}

fn human(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Where the value at `key` came from: the key's own layer, else that of the nearest parent that has
/// one (a list element `host.reserved_ports[1]` or a task shape's field was set with its list).
pub(super) fn origin<'a>(sources: &'a BTreeMap<String, Source>, key: &str) -> Option<&'a Source> {
    let mut k = key;
    loop {
        if let Some(s) = sources.get(k) {
            return Some(s);
        }
        k = &k[..k.rfind(['.', '['])?];
    }
}

pub(super) fn validate(c: &Config, sources: &BTreeMap<String, Source>) -> Result<(), ConfigError> {
    let check = Check { sources };
    agent(c, &check)?;
    log(c, &check)?;
    host(c, &check)?;
    capacity(c, &check)?;
    sinks(c, &check)?;
    prometheus(c, &check)?;
    cloudwatch(c, &check)?;
    imds(c, &check)?;
    drain(c, &check)?;
    scale_in(c, &check)
}

fn agent(c: &Config, check: &Check<'_>) -> Result<(), ConfigError> {
    check.duration("agent.interval", c.agent.interval, AGENT_INTERVAL)?;
    if c.agent.cluster.trim().is_empty() {
        return Err(check.invalid("agent.cluster", "must not be empty".into()));
    }
    if !c.agent.state_dir.is_absolute() {
        return Err(check.invalid(
            "agent.state_dir",
            format!(
                "{} is not allowed: an absolute path",
                c.agent.state_dir.display()
            ),
        ));
    }
    Ok(())
}

fn log(c: &Config, check: &Check<'_>) -> Result<(), ConfigError> {
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        return Err(check.invalid(
            "log.level",
            format!(
                "{:?} is not a log filter ({e}); use e.g. \"info\", \"debug\" or \"ecs_capacity_agent=debug,info\"",
                c.log.level
            ),
        ));
    }
    Ok(())
}

fn host(c: &Config, check: &Check<'_>) -> Result<(), ConfigError> {
    check.duration(
        "host.docker_resync_interval",
        c.host.docker_resync_interval,
        DOCKER_RESYNC_INTERVAL,
    )?;
    check.at_most(
        "host.reserved_memory_mib",
        c.host.reserved_memory_mib,
        RESERVED_MEMORY_MIB_MAX,
        "MiB",
    )?;
    if !(c.host.ecs_agent_url.starts_with("http://")
        || c.host.ecs_agent_url.starts_with("https://"))
    {
        return Err(check.invalid(
            "host.ecs_agent_url",
            format!("{:?} is not allowed: an http:// URL", c.host.ecs_agent_url),
        ));
    }
    Ok(())
}

fn capacity(c: &Config, check: &Check<'_>) -> Result<(), ConfigError> {
    let t = c.capacity.scale_out_threshold;
    if !(t.is_finite() && t > 0.0 && t <= SCALE_OUT_THRESHOLD_MAX) {
        return Err(check.invalid(
            "capacity.scale_out_threshold",
            format!("{t} is not allowed: a number above 0, at most {SCALE_OUT_THRESHOLD_MAX}"),
        ));
    }
    for (i, shape) in c.capacity.task_shapes.iter().enumerate() {
        let key = format!("capacity.task_shapes[{i}]");
        if shape.name.trim().is_empty() {
            return Err(check.invalid(&format!("{key}.name"), "must not be empty".into()));
        }
        check.at_most(
            &format!("{key}.cpu_units"),
            shape.cpu_units,
            SHAPE_CPU_UNITS_MAX,
            "CPU units",
        )?;
        check.at_most(
            &format!("{key}.memory_mib"),
            shape.memory_mib,
            SHAPE_MEMORY_MIB_MAX,
            "MiB",
        )?;
        if shape.cpu_units == 0
            && shape.memory_mib == 0
            && shape.ports.is_empty()
            && shape.ports_udp.is_empty()
            && !shape.awsvpc
        {
            return Err(check.invalid(
                &key,
                format!(
                    "shape {:?} needs nothing: set cpu_units, memory_mib, ports, ports_udp or awsvpc",
                    shape.name
                ),
            ));
        }
    }
    Ok(())
}

fn sinks(c: &Config, check: &Check<'_>) -> Result<(), ConfigError> {
    let mut kinds = c.sinks.enabled.clone();
    kinds.sort();
    kinds.dedup();
    if kinds.len() != c.sinks.enabled.len() {
        return Err(check.invalid("sinks.enabled", "lists a sink twice".into()));
    }
    Ok(())
}

fn prometheus(c: &Config, check: &Check<'_>) -> Result<(), ConfigError> {
    if !c.prometheus.listen.ip().is_loopback() && !c.prometheus.allow_non_loopback {
        return Err(check.invalid(
            "prometheus.listen",
            format!(
                "{} is not a loopback address and the endpoint has no authentication: use 127.0.0.1 or ::1, or set prometheus.allow_non_loopback = true to serve it beyond this host",
                c.prometheus.listen
            ),
        ));
    }
    Ok(())
}

fn cloudwatch(c: &Config, check: &Check<'_>) -> Result<(), ConfigError> {
    let ns = &c.cloudwatch.namespace;
    if ns.is_empty() || ns.len() > 255 || ns.starts_with("AWS/") || ns.starts_with(':') {
        return Err(check.invalid(
            "cloudwatch.namespace",
            format!(
                "{ns:?} is not allowed: 1-255 characters, not starting with \"AWS/\" (reserved by CloudWatch) or ':'"
            ),
        ));
    }
    let n = c.cloudwatch.buffer_periods;
    let (min, max) = BUFFER_PERIODS;
    if !(min..=max).contains(&n) {
        return Err(check.invalid(
            "cloudwatch.buffer_periods",
            format!("{n} is not allowed: from {min} to {max}"),
        ));
    }
    if c.sinks.enabled.contains(&SinkKind::Cloudwatch)
        && let Err((key, message)) =
            crate::metrics::cloudwatch::check_period(c.cloudwatch.period, c.agent.interval)
    {
        return Err(check.invalid(key, message));
    }
    Ok(())
}

fn imds(c: &Config, check: &Check<'_>) -> Result<(), ConfigError> {
    check.duration(
        "imds.poll_interval",
        c.imds.poll_interval,
        IMDS_POLL_INTERVAL,
    )?;
    check.duration("imds.timeout", c.imds.timeout, IMDS_TIMEOUT)?;
    check.duration("imds.token_ttl", c.imds.token_ttl, IMDS_TOKEN_TTL)?;
    // Each path is polled by one loop: a request that may outlast the interval delays every later
    // poll.
    if c.imds.timeout > c.imds.poll_interval {
        return Err(check.invalid(
            "imds.timeout",
            format!(
                "{} is not allowed: at most imds.poll_interval ({})",
                human(c.imds.timeout),
                human(c.imds.poll_interval)
            ),
        ));
    }
    Ok(())
}

fn drain(c: &Config, check: &Check<'_>) -> Result<(), ConfigError> {
    let d = &c.drain;
    check.duration(
        "drain.check_interval",
        d.check_interval,
        DRAIN_CHECK_INTERVAL,
    )?;
    check.duration(
        "drain.maintenance_lead_time",
        d.maintenance_lead_time,
        MAINTENANCE_LEAD_TIME,
    )?;
    check.duration(
        "drain.shutdown_drain_timeout",
        d.shutdown_drain_timeout,
        SHUTDOWN_DRAIN_TIMEOUT,
    )?;
    check.duration("drain.max_duration", d.max_duration, DRAIN_MAX_DURATION)?;
    check.duration("drain.stop_lead", d.stop_lead, DRAIN_STOP_LEAD)?;
    if d.stop_lead >= d.max_duration {
        return Err(check.invalid(
            "drain.stop_lead",
            format!(
                "{} is not allowed: below drain.max_duration ({})",
                human(d.stop_lead),
                human(d.max_duration)
            ),
        ));
    }
    let id = d.instance_id.trim();
    if !id.is_empty() {
        id.parse::<crate::instance_id::InstanceId>()
            .map_err(|e| check.invalid("drain.instance_id", e.to_string()))?;
    }
    if d.drain_on_shutdown && d.shutdown_drain_timeout.is_zero() {
        return Err(check.invalid(
            "drain.shutdown_drain_timeout",
            "must be longer than 0s when drain.drain_on_shutdown is on".into(),
        ));
    }
    if d.ignore_families.iter().any(|f| f.trim().is_empty()) {
        return Err(check.invalid("drain.ignore_families", "lists an empty family name".into()));
    }
    Ok(())
}

fn scale_in(c: &Config, check: &Check<'_>) -> Result<(), ConfigError> {
    let s = &c.scale_in;
    check.duration("scale_in.idle_grace", s.idle_grace, SCALE_IN_IDLE_GRACE)?;
    check.duration(
        "scale_in.view_interval",
        s.view_interval,
        SCALE_IN_VIEW_INTERVAL,
    )?;
    check.duration(
        "scale_in.launch_warmup",
        s.launch_warmup,
        SCALE_IN_LAUNCH_WARMUP,
    )?;
    check.duration(
        "scale_in.volunteer_after",
        s.volunteer_after,
        SCALE_IN_VOLUNTEER_AFTER,
    )?;
    check.duration(
        "scale_in.volunteer_timeout",
        s.volunteer_timeout,
        SCALE_IN_VOLUNTEER_TIMEOUT,
    )?;
    if s.volunteer && s.volunteer_timeout <= s.view_interval {
        return Err(check.invalid(
            "scale_in.volunteer_timeout",
            format!(
                "{} is not allowed: must be longer than scale_in.view_interval ({}), or the other hosts never see the volunteer",
                human(s.volunteer_timeout),
                human(s.view_interval)
            ),
        ));
    }
    Ok(())
}
