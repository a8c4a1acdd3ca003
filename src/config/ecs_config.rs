//! The ECS agent's own `/etc/ecs/ecs.config`: the settings this daemon must agree with about what the
//! instance registers.

use std::path::Path;

use super::ConfigError;

/// The ECS agent's default reserved TCP ports on Linux (ECS agent `config_unix.go`:
/// SSH, Docker, Docker TLS, the agent's introspection port and its debug port).
pub const ECS_DEFAULT_RESERVED_PORTS: [u16; 5] = [22, 2375, 2376, 51678, 51679];

/// The ECS agent's settings this daemon must agree with, as (dotted key, value, ECS variable).
pub(super) fn read(path: &Path) -> Result<Vec<(String, toml::Value, String)>, ConfigError> {
    let text = match crate::bounded::read_text(path, crate::bounded::CONFIG_FILE_MAX_BYTES) {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
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
                let max = super::validate::RESERVED_MEMORY_MIB_MAX;
                let mib = value
                    .parse::<u64>()
                    .ok()
                    .filter(|&mib| mib <= max)
                    .ok_or_else(|| {
                        bad(format!("expected a whole number of MiB from 0 to {max}"))
                    })?;
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
