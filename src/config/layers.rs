//! The layers and their merge: built-in defaults < ecs.config < the TOML file < the environment,
//! remembering which layer set each leaf.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    Config, ConfigError, DEFAULT_CONFIG_PATH, ENV_PREFIX, Loaded, Source, ecs_config, validate,
};

/// Environment variables with the prefix that are not config keys.
const ENV_NOT_KEYS: &[&str] = &["ECS_CAPACITY_AGENT_CONFIG"];

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

pub(super) type Table = toml::map::Map<String, toml::Value>;

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
    for (key, value, ecs_key) in ecs_config::read(&ecs_path)? {
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
            let origin = validate::origin(&sources, &key)
                .map(|s| s.to_string())
                .or_else(|| file_path.as_ref().map(|p| format!("file {}", p.display())))
                .unwrap_or_else(|| "configuration".into());
            ConfigError::Invalid {
                origin,
                key,
                message: e.into_inner().to_string(),
            }
        })?;
    validate::validate(&config, &sources)?;
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
    let text = match crate::bounded::read_text(&path, crate::bounded::CONFIG_FILE_MAX_BYTES) {
        Ok(t) => t,
        Err(e) if e.is_not_found() && !must_exist => return Ok((None, None)),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let table: Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok((Some(path), Some(table)))
}

pub(super) fn to_table(config: &Config) -> Table {
    match toml::Value::try_from(config) {
        Ok(toml::Value::Table(t)) => t,
        _ => unreachable!("Config always serializes to a table"),
    }
}

/// Dotted paths of every leaf (scalars and arrays) in a table.
pub(super) fn leaf_keys(table: &Table) -> Vec<String> {
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

pub(super) fn lookup<'a>(table: &'a Table, dotted: &str) -> Option<&'a toml::Value> {
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

pub(super) fn set_path(table: &mut Table, dotted: &str, value: toml::Value) {
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
