//! The daemon's configuration: one serde struct, layered from built-in defaults, the ECS agent's own
//! `/etc/ecs/ecs.config`, the TOML file and the environment, validated once at start.
//!
//! Precedence, lowest first: default < ecs.config < config file < environment. Every leaf key can be
//! overridden by an environment variable named `ECS_CAPACITY_AGENT_<SECTION>_<KEY>` in upper case,
//! e.g. `ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN=127.0.0.1:9100`. Lists take a TOML array or a comma
//! separated list. A variable with that prefix that names no key is an error, so a typo is not silently
//! ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/ecs-capacity-agent/config.toml";
pub const ENV_PREFIX: &str = "ECS_CAPACITY_AGENT_";
/// Environment variables with the prefix that are not config keys.
const ENV_NOT_KEYS: &[&str] = &["ECS_CAPACITY_AGENT_CONFIG"];

/// The ECS agent's default reserved TCP ports on Linux (ECS agent `config_unix.go`:
/// SSH, Docker, Docker TLS, the agent's introspection port and its debug port).
pub const ECS_DEFAULT_RESERVED_PORTS: [u16; 5] = [22, 2375, 2376, 51678, 51679];

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
    /// `auto` probes IMDS once at start and switches AWS features off when it does not answer;
    /// `on` requires AWS; `off` never talks to AWS.
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
        source: std::io::Error,
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
        source: std::io::Error,
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

/// What `load` reads; the environment is passed in so tests need not touch the process's.
pub struct LoadOptions<'a> {
    /// The config file; `None` for the default path, where a missing file means built-in defaults.
    pub path: Option<&'a Path>,
    pub env: Vec<(String, String)>,
}

impl LoadOptions<'_> {
    pub fn from_process(path: Option<&Path>) -> LoadOptions<'_> {
        LoadOptions {
            path,
            env: std::env::vars().collect(),
        }
    }
}

type Table = toml::map::Map<String, toml::Value>;

pub fn load(opts: LoadOptions<'_>) -> Result<Loaded, ConfigError> {
    let defaults = to_table(&Config::default());
    let mut sources = BTreeMap::new();
    for key in leaf_keys(&defaults) {
        sources.insert(key, Source::Default);
    }
    let mut merged = defaults.clone();

    // The file is read first only to learn where ecs.config lives; it is applied after ecs.config.
    let (file_path, file_table) = read_file(opts.path)?;
    let env_table = env_overrides(&defaults, &opts.env)?;

    let ecs_path = lookup_str(&env_table.0, "agent.ecs_config_path")
        .or_else(|| {
            file_table
                .as_ref()
                .and_then(|t| lookup_str(t, "agent.ecs_config_path"))
        })
        .map(PathBuf::from)
        .unwrap_or_else(|| Config::default().agent.ecs_config_path);
    for (key, value, ecs_key) in read_ecs_config(&ecs_path)? {
        set_path(&mut merged, &key, value);
        sources.insert(
            key,
            Source::EcsConfig {
                path: ecs_path.clone(),
                key: ecs_key,
            },
        );
    }

    if let (Some(path), Some(table)) = (&file_path, &file_table) {
        merge(&mut merged, table, "", &mut |key| {
            sources.insert(key, Source::File(path.clone()));
        });
    }
    let (env_table, env_vars) = env_table;
    merge(&mut merged, &env_table, "", &mut |key| {
        let var = env_vars.get(&key).cloned().unwrap_or_default();
        sources.insert(key, Source::Environment(var));
    });

    let config: Config =
        serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let key = e.path().to_string();
            let origin = sources
                .get(&key)
                .map(|s| s.to_string())
                .or_else(|| file_path.as_ref().map(|p| format!("file {}", p.display())))
                .unwrap_or_else(|| "configuration".into());
            ConfigError::Invalid {
                origin,
                key,
                message: e.into_inner().to_string(),
            }
        })?;
    validate(&config, &sources)?;
    // Leaves added by the file inside arrays of tables (task shapes) are reported under their parent.
    Ok(Loaded {
        config,
        sources,
        file: file_path,
    })
}

fn read_file(path: Option<&Path>) -> Result<(Option<PathBuf>, Option<Table>), ConfigError> {
    let (path, must_exist) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            return Ok((None, None));
        }
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let table: Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok((Some(path), Some(table)))
}

fn to_table(config: &Config) -> Table {
    match toml::Value::try_from(config) {
        Ok(toml::Value::Table(t)) => t,
        _ => unreachable!("Config always serializes to a table"),
    }
}

/// Dotted paths of every leaf (scalars and arrays) in a table.
fn leaf_keys(table: &Table) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(t: &Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(inner) => walk(inner, &key, out),
                _ => out.push(key),
            }
        }
    }
    walk(table, "", &mut out);
    out
}

fn lookup<'a>(table: &'a Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for p in parts {
        value = value.as_table()?.get(p)?;
    }
    Some(value)
}

fn lookup_str(table: &Table, dotted: &str) -> Option<String> {
    lookup(table, dotted)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

fn set_path(table: &mut Table, dotted: &str, value: toml::Value) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut t = table;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Table::new()))
            .as_table_mut()
            .expect("intermediate config keys are tables");
    }
    t.insert(last.to_string(), value);
}

/// Overlays `over` onto `base`, calling `touched` with each leaf key written. Unknown keys are kept so
/// that deserialization (deny_unknown_fields) names them.
fn merge(base: &mut Table, over: &Table, prefix: &str, touched: &mut dyn FnMut(String)) {
    for (k, v) in over {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o, &key, touched),
            _ => {
                base.insert(k.clone(), v.clone());
                touched(key);
            }
        }
    }
}

/// Environment variables → a table of overrides, and the variable that set each key.
fn env_overrides(
    defaults: &Table,
    env: &[(String, String)],
) -> Result<(Table, BTreeMap<String, String>), ConfigError> {
    let by_var: BTreeMap<String, String> = leaf_keys(defaults)
        .into_iter()
        .map(|key| (env_name(&key), key))
        .collect();
    let mut table = Table::new();
    let mut vars = BTreeMap::new();
    for (var, raw) in env {
        if !var.starts_with(ENV_PREFIX) || ENV_NOT_KEYS.contains(&var.as_str()) {
            continue;
        }
        let Some(key) = by_var.get(var) else {
            return Err(ConfigError::UnknownEnv { var: var.clone() });
        };
        let is_list = matches!(lookup(defaults, key), Some(toml::Value::Array(_)));
        set_path(&mut table, key, parse_env_value(raw, is_list));
        vars.insert(key.clone(), var.clone());
    }
    Ok((table, vars))
}

/// The variable that overrides a dotted key: `prometheus.listen` → `ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
}

/// A raw environment string as a TOML value: a TOML literal when it parses as one, else a string;
/// for list keys, a comma-separated list of such values.
fn parse_env_value(raw: &str, is_list: bool) -> toml::Value {
    fn scalar(s: &str) -> toml::Value {
        let s = s.trim();
        toml::from_str::<Table>(&format!("v = {s}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(s.to_string()))
    }
    let trimmed = raw.trim();
    if is_list && !trimmed.starts_with('[') {
        if trimmed.is_empty() {
            return toml::Value::Array(Vec::new());
        }
        return toml::Value::Array(trimmed.split(',').map(scalar).collect());
    }
    if is_list {
        return scalar(trimmed);
    }
    // A scalar key keeps strings verbatim unless they are TOML numbers or booleans.
    match scalar(trimmed) {
        v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)) => v,
        _ => toml::Value::String(raw.to_string()),
    }
}

/// The ECS agent's settings this daemon must agree with, as (dotted key, value, ECS variable).
fn read_ecs_config(path: &Path) -> Result<Vec<(String, toml::Value, String)>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::EcsConfigRead {
                path: path.into(),
                source,
            });
        }
    };
    parse_ecs_config(path, &text)
}

pub fn parse_ecs_config(
    path: &Path,
    text: &str,
) -> Result<Vec<(String, toml::Value, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim().trim_matches('"').trim_matches('\'');
        let bad = |message: String| ConfigError::EcsConfigValue {
            path: path.into(),
            line: i + 1,
            key: key.into(),
            value: value.into(),
            message,
        };
        let entry = match key {
            "ECS_CLUSTER" if !value.is_empty() => {
                Some(("agent.cluster", toml::Value::String(value.into())))
            }
            "ECS_CGROUP_PATH" if !value.is_empty() => {
                Some(("host.cgroup_root", toml::Value::String(value.into())))
            }
            "ECS_RESERVED_MEMORY" => {
                let mib: u64 = value
                    .parse()
                    .map_err(|_| bad("expected a whole number of MiB".into()))?;
                Some(("host.reserved_memory_mib", toml::Value::Integer(mib as i64)))
            }
            "ECS_RESERVED_PORTS" | "ECS_RESERVED_PORTS_UDP" => {
                // The ECS agent takes a JSON array of port numbers, e.g. [22, 2375].
                let ports: Vec<u16> = serde_json::from_str(value).map_err(|e| {
                    bad(format!(
                        "expected a JSON array of ports like [22, 2375]: {e}"
                    ))
                })?;
                let dotted = if key == "ECS_RESERVED_PORTS" {
                    "host.reserved_ports"
                } else {
                    "host.reserved_ports_udp"
                };
                let arr = ports
                    .into_iter()
                    .map(|p| toml::Value::Integer(p.into()))
                    .collect();
                Some((dotted, toml::Value::Array(arr)))
            }
            _ => None,
        };
        if let Some((dotted, v)) = entry {
            out.push((dotted.to_string(), v, key.to_string()));
        }
    }
    Ok(out)
}

fn validate_scale_in(
    s: &ScaleInConfig,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let minute = Duration::from_secs(60);
    // Shorter would flap protection with every short-lived task, or poll the cluster too often.
    for (key, d) in [
        ("scale_in.idle_grace", s.idle_grace),
        ("scale_in.view_interval", s.view_interval),
    ] {
        if d < minute {
            return Err(invalid(
                key,
                format!(
                    "{} is not allowed: at least 1m",
                    humantime::format_duration(d)
                ),
            ));
        }
    }
    if s.volunteer && s.volunteer_timeout <= s.view_interval {
        return Err(invalid(
            "scale_in.volunteer_timeout",
            format!(
                "{} is not allowed: must be longer than scale_in.view_interval ({}), or the other hosts never see the volunteer",
                humantime::format_duration(s.volunteer_timeout),
                humantime::format_duration(s.view_interval)
            ),
        ));
    }
    Ok(())
}

fn validate(c: &Config, sources: &BTreeMap<String, Source>) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        origin: sources
            .get(key)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "configuration".into()),
        key: key.into(),
        message,
    };
    let positive = [
        ("agent.interval", c.agent.interval),
        ("host.docker_resync_interval", c.host.docker_resync_interval),
        ("imds.poll_interval", c.imds.poll_interval),
        ("imds.timeout", c.imds.timeout),
        ("drain.check_interval", c.drain.check_interval),
    ];
    for (key, d) in positive {
        if d.is_zero() {
            return Err(invalid(key, "must be longer than 0s".into()));
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        return Err(invalid(
            "log.level",
            format!(
                "{:?} is not a log filter ({e}); use e.g. \"info\", \"debug\" or \"ecs_capacity_agent=debug,info\"",
                c.log.level
            ),
        ));
    }
    if c.agent.cluster.trim().is_empty() {
        return Err(invalid("agent.cluster", "must not be empty".into()));
    }
    let ns = &c.cloudwatch.namespace;
    if ns.is_empty() || ns.len() > 255 || ns.starts_with("AWS/") || ns.starts_with(':') {
        return Err(invalid(
            "cloudwatch.namespace",
            format!(
                "{ns:?} is not allowed: 1-255 characters, not starting with \"AWS/\" (reserved by CloudWatch) or ':'"
            ),
        ));
    }
    if c.sinks.enabled.contains(&SinkKind::Cloudwatch)
        && let Err((key, message)) =
            crate::metrics::cloudwatch::check_period(c.cloudwatch.period, c.agent.interval)
    {
        return Err(invalid(key, message));
    }
    if c.cloudwatch.buffer_periods == 0 {
        return Err(invalid(
            "cloudwatch.buffer_periods",
            "must be at least 1".into(),
        ));
    }
    if !(c.capacity.scale_out_threshold.is_finite() && c.capacity.scale_out_threshold > 0.0) {
        return Err(invalid(
            "capacity.scale_out_threshold",
            format!(
                "{} is not allowed: a number above 0",
                c.capacity.scale_out_threshold
            ),
        ));
    }
    let ttl = c.imds.token_ttl.as_secs();
    if !(1..=21600).contains(&ttl) {
        return Err(invalid(
            "imds.token_ttl",
            format!("{ttl}s is not allowed: IMDSv2 accepts 1s to 6h"),
        ));
    }
    let id = c.drain.instance_id.trim();
    if !id.is_empty() {
        id.parse::<crate::instance_id::InstanceId>()
            .map_err(|e| invalid("drain.instance_id", e.to_string()))?;
    }
    validate_scale_in(&c.scale_in, &invalid)?;
    if c.drain.drain_on_shutdown && c.drain.shutdown_drain_timeout.is_zero() {
        return Err(invalid(
            "drain.shutdown_drain_timeout",
            "must be longer than 0s when drain.drain_on_shutdown is on".into(),
        ));
    }
    if c.drain.ignore_families.iter().any(|f| f.trim().is_empty()) {
        return Err(invalid(
            "drain.ignore_families",
            "lists an empty family name".into(),
        ));
    }
    if !c.agent.state_dir.is_absolute() {
        return Err(invalid(
            "agent.state_dir",
            format!(
                "{} is not allowed: an absolute path",
                c.agent.state_dir.display()
            ),
        ));
    }
    if !(c.host.ecs_agent_url.starts_with("http://")
        || c.host.ecs_agent_url.starts_with("https://"))
    {
        return Err(invalid(
            "host.ecs_agent_url",
            format!("{:?} is not allowed: an http:// URL", c.host.ecs_agent_url),
        ));
    }
    for (i, shape) in c.capacity.task_shapes.iter().enumerate() {
        if shape.name.trim().is_empty() {
            return Err(invalid(
                &format!("capacity.task_shapes[{i}].name"),
                "must not be empty".into(),
            ));
        }
        if shape.cpu_units == 0
            && shape.memory_mib == 0
            && shape.ports.is_empty()
            && shape.ports_udp.is_empty()
            && !shape.awsvpc
        {
            return Err(invalid(
                &format!("capacity.task_shapes[{i}]"),
                format!(
                    "shape {:?} needs nothing: set cpu_units, memory_mib, ports, ports_udp or awsvpc",
                    shape.name
                ),
            ));
        }
    }
    let mut kinds = c.sinks.enabled.clone();
    kinds.sort();
    kinds.dedup();
    if kinds.len() != c.sinks.enabled.len() {
        return Err(invalid("sinks.enabled", "lists a sink twice".into()));
    }
    Ok(())
}

impl Loaded {
    /// `key = value  # source` for every leaf, in key order.
    pub fn describe(&self) -> String {
        let table = to_table(&self.config);
        let mut out = String::new();
        for key in leaf_keys(&table) {
            let value = lookup(&table, &key)
                .map(|v| v.to_string())
                .unwrap_or_default();
            let source = self.sources.get(&key).cloned().unwrap_or(Source::Default);
            out.push_str(&format!("{key} = {value}  # {source}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = format!(
            "[agent]\necs_config_path = \"{}\"\n{text}",
            dir.path().join("ecs.config").display()
        );
        std::fs::write(&path, text).unwrap();
        load(LoadOptions {
            path: Some(&path),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn defaults_are_valid_and_local() {
        let loaded = load_text("", &[]).unwrap();
        assert_eq!(
            loaded.config.sinks.enabled,
            vec![SinkKind::Stdout, SinkKind::Prometheus]
        );
        assert_eq!(loaded.sources["prometheus.listen"], Source::Default);
        assert!(
            loaded
                .describe()
                .contains("prometheus.listen = \"127.0.0.1:9779\"  # default")
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_text("[prometheus]\nlisten_addr = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_addr"), "{err}");
    }

    #[test]
    fn bad_value_names_key_value_and_allowed() {
        let err = load_text("[sinks]\nenabled = [\"stdout\", \"graphite\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.enabled"), "{err}");
        assert!(
            err.contains("graphite") && err.contains("cloudwatch"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_points_at_line_and_column() {
        let err = load_text("[host]\nreserved_memory_mib = = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4") && err.contains("column 23"), "{err}");
    }

    #[test]
    fn environment_overrides_file_and_says_so() {
        let loaded = load_text(
            "[prometheus]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN", "127.0.0.1:2"),
                ("ECS_CAPACITY_AGENT_HOST_RESERVED_PORTS_UDP", "53, 123"),
                ("ECS_CAPACITY_AGENT_AGENT_INTERVAL", "5s"),
            ],
        )
        .unwrap();
        assert_eq!(loaded.config.prometheus.listen.port(), 2);
        assert_eq!(loaded.config.host.reserved_ports_udp, vec![53, 123]);
        assert_eq!(loaded.config.agent.interval, Duration::from_secs(5));
        assert_eq!(
            loaded.sources["prometheus.listen"],
            Source::Environment("ECS_CAPACITY_AGENT_PROMETHEUS_LISTEN".into())
        );
    }

    #[test]
    fn unknown_environment_variable_is_an_error() {
        let err = load_text("", &[("ECS_CAPACITY_AGENT_PROMETHEUS_LISTN", "x")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("ECS_CAPACITY_AGENT_PROMETHEUS_LISTN")
        );
    }

    #[test]
    fn bad_duration_from_environment_names_variable() {
        let err = load_text("", &[("ECS_CAPACITY_AGENT_AGENT_INTERVAL", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("agent.interval") && err.contains("ECS_CAPACITY_AGENT_AGENT_INTERVAL"),
            "{err}"
        );
    }

    #[test]
    fn ecs_config_is_read_and_file_wins_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let ecs = dir.path().join("ecs.config");
        std::fs::write(
            &ecs,
            "ECS_CLUSTER=prod\nECS_RESERVED_MEMORY=256\nECS_RESERVED_PORTS=[22, 8080]\n# c\nECS_RESERVED_PORTS_UDP=[53]\nECS_CGROUP_PATH=/cg\nECS_OTHER=1\n",
        )
        .unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "[agent]\necs_config_path = \"{}\"\n[host]\nreserved_ports_udp = []\n",
                ecs.display()
            ),
        )
        .unwrap();
        let loaded = load(LoadOptions {
            path: Some(&path),
            env: vec![],
        })
        .unwrap();
        let c = &loaded.config;
        assert_eq!(c.agent.cluster, "prod");
        assert_eq!(c.host.reserved_memory_mib, 256);
        assert_eq!(c.host.reserved_ports, vec![22, 8080]);
        assert_eq!(c.host.reserved_ports_udp, Vec::<u16>::new());
        assert_eq!(c.host.cgroup_root, PathBuf::from("/cg"));
        assert!(
            matches!(&loaded.sources["agent.cluster"], Source::EcsConfig { key, .. } if key == "ECS_CLUSTER")
        );
        assert_eq!(
            loaded.sources["host.reserved_ports_udp"],
            Source::File(path)
        );
    }

    #[test]
    fn cloudwatch_period_must_be_10s_or_60s_and_divided_by_the_interval() {
        let cw = "[sinks]\nenabled = [\"cloudwatch\"]\n";
        // The text goes on under load_text's own [agent] header.
        let err = load_text(&format!("interval = \"45s\"\n{cw}"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("agent.interval") && err.contains("cloudwatch.period"),
            "{err}"
        );
        let err = load_text(&format!("{cw}[cloudwatch]\nperiod = \"30s\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cloudwatch.period") && err.contains("10s"),
            "{err}"
        );
        let ok = load_text(
            &format!("interval = \"5s\"\n{cw}[cloudwatch]\nperiod = \"10s\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(ok.config.cloudwatch.period, Duration::from_secs(10));
        // Without the CloudWatch sink the interval is free.
        assert!(load_text("interval = \"45s\"\n", &[]).is_ok());
    }

    #[test]
    fn bad_ecs_config_names_line_and_key() {
        let err = parse_ecs_config(Path::new("/e"), "ECS_CLUSTER=a\nECS_RESERVED_MEMORY=lots\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("ECS_RESERVED_MEMORY"),
            "{err}"
        );
    }

    #[test]
    fn reserved_namespace_is_refused() {
        let err = load_text("[cloudwatch]\nnamespace = \"AWS/ECS\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cloudwatch.namespace") && err.contains("AWS/"),
            "{err}"
        );
    }

    #[test]
    fn scale_in_keys_are_validated_by_name() {
        let ok = load_text("", &[]).unwrap();
        assert_eq!(ok.config.scale_in.protection, Toggle::Auto);
        assert_eq!(ok.config.scale_in.idle_grace, Duration::from_secs(300));
        let cases = [
            (
                "[scale_in]\nprotection = \"maybe\"\n",
                "scale_in.protection",
                "maybe",
            ),
            (
                "[scale_in]\nidle_grace = \"10s\"\n",
                "scale_in.idle_grace",
                "at least 1m",
            ),
            (
                "[scale_in]\nview_interval = \"5s\"\n",
                "scale_in.view_interval",
                "at least 1m",
            ),
            (
                "[scale_in]\nvolunteer_timeout = \"5m\"\n",
                "scale_in.volunteer_timeout",
                "scale_in.view_interval",
            ),
        ];
        for (text, key, says) in cases {
            let err = load_text(text, &[]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
        }
        let env = load_text("", &[("ECS_CAPACITY_AGENT_SCALE_IN_PROTECTION", "off")]).unwrap();
        assert_eq!(env.config.scale_in.protection, Toggle::Off);
        // Without volunteering the timeout does not matter.
        load_text(
            "[scale_in]\nvolunteer = false\nvolunteer_timeout = \"1m\"\n",
            &[],
        )
        .unwrap();
    }

    #[test]
    fn drain_keys_are_validated_by_name() {
        let err = load_text("[drain]\ninstance_id = \"web-1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("drain.instance_id") && err.contains("web-1"),
            "{err}"
        );
        let ok = load_text("[drain]\ninstance_id = \"i-0abc1234def567890\"\n", &[]).unwrap();
        assert_eq!(ok.config.drain.instance_id, "i-0abc1234def567890");
        let err = load_text(
            "[drain]\ndrain_on_shutdown = true\nshutdown_drain_timeout = \"0s\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("drain.shutdown_drain_timeout"), "{err}");
        let err = load_text("[drain]\non_spot = \"ignore\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("on_spot") || err.contains("ignore"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
        let err = load(LoadOptions {
            path: Some(Path::new("/nonexistent/c.toml")),
            env: vec![],
        });
        assert!(matches!(err, Err(ConfigError::Read { .. })));
    }
}
