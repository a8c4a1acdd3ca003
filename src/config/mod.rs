//! The daemon's configuration: one serde struct, layered from built-in defaults, the ECS agent's own
//! `/etc/ecs/ecs.config`, the TOML file and the environment, validated once at start.
//!
//! Precedence, lowest first: default < ecs.config < config file < environment. Every leaf key can be
//! overridden by an environment variable named `ECS_CAPACITY_AGENT_<SECTION>_<KEY>` in upper case,
//! e.g. `ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN=127.0.0.1:9100`. Lists take a TOML array or a comma
//! separated list. A variable with that prefix that names no key is an error, so a typo is not silently
//! ignored.
//!
//! - [`layers`]: reading and merging the layers, and which layer each value came from;
//! - [`ecs_config`]: the ECS agent's settings this daemon must agree with;
//! - [`validate`]: the bounds of each key, section by section.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
mod ecs_config;
mod layers;
mod validate;

pub use ecs_config::{ECS_DEFAULT_RESERVED_PORTS, parse_ecs_config};
pub use layers::{LoadOptions, env_name, load};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/ecs-capacity-agent/config.toml";
pub const ENV_PREFIX: &str = "ECS_CAPACITY_AGENT_";
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub log: LogConfig,
    pub host: HostConfig,
    pub capacity: CapacityConfig,
    pub sinks: SinksConfig,
    pub prometheus: PrometheusConfig,
    pub cloudwatch: CloudWatchConfig,
    pub imds: ImdsConfig,
    pub drain: DrainConfig,
    pub scale_in: ScaleInConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// ECS cluster this instance belongs to (ECS_CLUSTER in ecs.config; the ECS agent's default is "default").
    pub cluster: String,
    /// Where the ECS agent's own configuration lives.
    pub ecs_config_path: PathBuf,
    /// Where drain progress and caches are persisted.
    pub state_dir: PathBuf,
    /// How often the host is observed and its capacity reported.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// `auto` is `on` on an EC2 instance (told by the DMI/hypervisor files under `host.sysfs_root`,
    /// no network) and `off` elsewhere; `on` requires AWS; `off` never talks to AWS.
    pub aws: Toggle,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter directive (e.g. `info`, `ecs_capacity_agent=debug`); RUST_LOG wins when set.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Root of the cgroup filesystem (ECS_CGROUP_PATH in ecs.config).
    pub cgroup_root: PathBuf,
    /// Memory the ECS agent keeps back from registration (ECS_RESERVED_MEMORY).
    pub reserved_memory_mib: u64,
    /// TCP ports the ECS agent registers as taken (ECS_RESERVED_PORTS).
    pub reserved_ports: Vec<u16>,
    /// UDP ports the ECS agent registers as taken (ECS_RESERVED_PORTS_UDP).
    pub reserved_ports_udp: Vec<u16>,
    /// Docker Engine API socket.
    pub docker_socket: PathBuf,
    /// Full re-listing of containers, besides following the event stream.
    #[serde(with = "humantime_serde")]
    pub docker_resync_interval: Duration,
    /// The ECS agent's introspection API.
    pub ecs_agent_url: String,
    /// sysfs network class directory, to count attached interfaces when IMDS is off.
    pub sysfs_net: PathBuf,
    /// sysfs root whose DMI and hypervisor files (`class/dmi/id/…`, `hypervisor/uuid`) tell
    /// `agent.aws = "auto"` whether this is an EC2 instance, without asking the network.
    pub sysfs_root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Scale out when ContainerCapacity falls below this.
    pub scale_out_threshold: f64,
    /// Take task shapes from the running tasks' task definitions as well as the configured ones.
    pub discover_shapes: bool,
    /// Task shapes to plan for; the largest task takes, per resource, the largest need across them.
    pub task_shapes: Vec<TaskShapeConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskShapeConfig {
    pub name: String,
    #[serde(default)]
    pub cpu_units: u64,
    #[serde(default)]
    pub memory_mib: u64,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub ports_udp: Vec<u16>,
    #[serde(default)]
    pub awsvpc: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Where figures go: any of `stdout`, `prometheus`, `cloudwatch`.
    pub enabled: Vec<SinkKind>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    pub listen: SocketAddr,
    /// Allow a `listen` address other than loopback (the endpoint has no authentication).
    pub allow_non_loopback: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatchConfig {
    /// Custom namespace; names under `AWS/` are reserved by CloudWatch.
    pub namespace: String,
    /// Also publish with the {ClusterName, AutoScalingGroupName} dimensions.
    pub asg_dimension: bool,
    /// Unsent periods kept while CloudWatch is unreachable (oldest dropped first).
    pub buffer_periods: usize,
    /// One datum per host per period: 60 s (standard resolution) or 10 s (high resolution);
    /// `agent.interval` must divide it.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Also publish per host, with the `{ClusterName, InstanceId}` dimensions (each host's metrics
    /// are then custom metrics of their own, billed monthly).
    pub per_instance: bool,
    /// Publish every metric, not only those the alarms and the dashboard read.
    pub all_metrics: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImdsConfig {
    /// How often each notice path is polled.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Session token lifetime asked of IMDSv2.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Fall back to IMDSv1 (no token) when the token endpoint refuses; off by default.
    pub allow_v1: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    pub on_spot: Reaction,
    pub on_autoscaling: Reaction,
    pub on_rebalance: Reaction,
    pub on_maintenance: Reaction,
    /// Drain this long before a scheduled event's NotBefore.
    #[serde(with = "humantime_serde")]
    pub maintenance_lead_time: Duration,
    /// How often remaining tasks are counted while draining.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// What an unrecoverable error does to a pending lifecycle action.
    pub on_failure: FailureAction,
    /// Task families not waited for (daemon services keep running until the instance goes).
    pub ignore_families: Vec<String>,
    /// This instance's EC2 id for `drain` / `activate`; read from IMDS when empty.
    pub instance_id: String,
    /// Auto Scaling group and lifecycle hook; found via the API when empty.
    pub autoscaling_group: String,
    pub lifecycle_hook: String,
    /// On SIGTERM while the system shuts down, drain first, for at most `shutdown_drain_timeout`.
    pub drain_on_shutdown: bool,
    #[serde(with = "humantime_serde")]
    pub shutdown_drain_timeout: Duration,
    /// The bound on every drain: this long after it began, the remaining tasks are stopped
    /// (`stop_remaining`) and the drain ends (a pending lifecycle action completes with CONTINUE).
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// Which remaining tasks are stopped with StopTask as a drain reaches its bound.
    pub stop_remaining: StopRemaining,
    /// Remaining tasks are stopped this long before the bound, so they get their stop timeout
    /// (ECS_CONTAINER_STOP_TIMEOUT, 30 s by default) before the instance goes.
    #[serde(with = "humantime_serde")]
    pub stop_lead: Duration,
}

/// Which tasks a drain stops with StopTask when it reaches its bound (`drain.stop_remaining`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopRemaining {
    /// Tasks no service owns (their group is not `service:…`): nothing else ever moves them.
    Unowned,
    /// Every remaining task that is not of an ignored family.
    All,
    /// None: at the bound the drain ends with the tasks still running.
    None,
}

/// Managed scale-in protection and volunteering (the `protection` module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleInConfig {
    /// `auto`: on when this instance is in an Auto Scaling group; `on`: the group must be found;
    /// `off`: never touch the instance's protection.
    pub protection: Toggle,
    /// An idle host lifts its protection after being idle this long without a break.
    #[serde(with = "humantime_serde")]
    pub idle_grace: Duration,
    /// A host stays protected this long after its launch (system boot), idle or not.
    #[serde(with = "humantime_serde")]
    pub launch_warmup: Duration,
    /// The least-loaded busy host volunteers when the cluster has more than a host's worth idle.
    pub volunteer: bool,
    /// That excess must hold this long (as seen in the cluster view) before a host volunteers.
    #[serde(with = "humantime_serde")]
    pub volunteer_after: Duration,
    /// A volunteer not taken by a scale-in within this protects itself again.
    #[serde(with = "humantime_serde")]
    pub volunteer_timeout: Duration,
    /// How often a busy host reads the cluster view (jittered by ±20 %).
    #[serde(with = "humantime_serde")]
    pub view_interval: Duration,
}

impl Default for ScaleInConfig {
    fn default() -> Self {
        ScaleInConfig {
            protection: Toggle::Auto,
            idle_grace: Duration::from_secs(5 * 60),
            launch_warmup: Duration::from_secs(10 * 60),
            volunteer: true,
            volunteer_after: Duration::from_secs(10 * 60),
            volunteer_timeout: Duration::from_secs(30 * 60),
            view_interval: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Toggle {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human on a terminal, JSON lines otherwise.
    Auto,
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    Stdout,
    Prometheus,
    Cloudwatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reaction {
    Drain,
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    Abandon,
    StayDraining,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            cluster: "default".into(),
            ecs_config_path: "/etc/ecs/ecs.config".into(),
            state_dir: "/var/lib/ecs-capacity-agent".into(),
            interval: Duration::from_secs(60),
            aws: Toggle::Auto,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            cgroup_root: "/sys/fs/cgroup".into(),
            reserved_memory_mib: 0,
            reserved_ports: ECS_DEFAULT_RESERVED_PORTS.to_vec(),
            reserved_ports_udp: Vec::new(),
            docker_socket: "/var/run/docker.sock".into(),
            docker_resync_interval: Duration::from_secs(60),
            ecs_agent_url: "http://127.0.0.1:51678".into(),
            sysfs_net: "/sys/class/net".into(),
            sysfs_root: "/sys".into(),
        }
    }
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            scale_out_threshold: 1.0,
            discover_shapes: true,
            task_shapes: Vec::new(),
        }
    }
}

impl Default for SinksConfig {
    fn default() -> Self {
        SinksConfig {
            enabled: vec![SinkKind::Stdout, SinkKind::Prometheus],
        }
    }
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9779)),
            allow_non_loopback: false,
        }
    }
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        CloudWatchConfig {
            namespace: "ECS/CapacityAgent".into(),
            asg_dimension: false,
            buffer_periods: 60,
            period: Duration::from_secs(60),
            per_instance: false,
            all_metrics: false,
        }
    }
}

impl Default for ImdsConfig {
    fn default() -> Self {
        ImdsConfig {
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            token_ttl: Duration::from_secs(6 * 3600),
            allow_v1: false,
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            on_spot: Reaction::Drain,
            on_autoscaling: Reaction::Drain,
            on_rebalance: Reaction::Report,
            on_maintenance: Reaction::Drain,
            maintenance_lead_time: Duration::from_secs(15 * 60),
            check_interval: Duration::from_secs(5),
            on_failure: FailureAction::Abandon,
            ignore_families: Vec::new(),
            instance_id: String::new(),
            autoscaling_group: String::new(),
            lifecycle_hook: String::new(),
            drain_on_shutdown: false,
            shutdown_drain_timeout: Duration::from_secs(300),
            max_duration: Duration::from_secs(3600),
            stop_remaining: StopRemaining::Unowned,
            stop_lead: Duration::from_secs(45),
        }
    }
}

/// Durations as human strings ("60s", "15m") in TOML and the environment.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); use e.g. \"500ms\", \"60s\", \"15m\""
            ))
        })
    }
}
/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    EcsConfig { path: PathBuf, key: String },
    File(PathBuf),
    Environment(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::EcsConfig { path, key } => write!(f, "ecs.config {key} ({})", path.display()),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Environment(var) => write!(f, "environment {var}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: crate::bounded::FileError,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    #[error(
        "environment variable {var} names no configuration key (keys: see `ecs-capacity-agent check-config`)"
    )]
    UnknownEnv { var: String },
    #[error("cannot read ECS agent config {path}: {source}")]
    EcsConfigRead {
        path: PathBuf,
        source: crate::bounded::FileError,
    },
    #[error("ECS agent config {path} line {line}: {key}={value:?}: {message}")]
    EcsConfigValue {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        message: String,
    },
}
/// The effective configuration and where each leaf value came from (dotted key → source).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub sources: BTreeMap<String, Source>,
    pub file: Option<PathBuf>,
}

impl Loaded {
    /// `key = value  # source` for every leaf, in key order.
    pub fn describe(&self) -> String {
        let table = layers::to_table(&self.config);
        let mut out = String::new();
        for key in layers::leaf_keys(&table) {
            let value = layers::lookup(&table, &key)
                .map(|v| v.to_string())
                .unwrap_or_default();
            let source = self.sources.get(&key).cloned().unwrap_or(Source::Default);
            out.push_str(&format!("{key} = {value}  # {source}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests;
