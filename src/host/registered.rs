//! What the ECS agent registers for this instance: CPU units, memory, reserved ports.
//! Mirrors the ECS agent's own arithmetic (agent `api/ecsclient` `getCpuAndMemory`): CPU units are
//! online CPUs × 1024; memory is MemTotal in MiB minus ECS_RESERVED_MEMORY.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::HostConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registered {
    pub cpu_units: u64,
    pub memory_mib: u64,
    /// TCP ports no task can bind (the agent's reserved set).
    pub reserved_tcp_ports: BTreeSet<u16>,
    pub reserved_udp_ports: BTreeSet<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisteredError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no MemTotal line in kB")]
    NoMemTotal { path: PathBuf },
    #[error("ECS_RESERVED_MEMORY {reserved_mib} MiB is more than MemTotal {total_mib} MiB")]
    ReservedTooLarge { reserved_mib: u64, total_mib: u64 },
}

/// Parses `MemTotal:  16314112 kB` out of /proc/meminfo, in KiB.
pub fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let mut parts = rest.split_whitespace();
        let n = parts.next()?.parse().ok()?;
        (parts.next()? == "kB").then_some(n)
    })
}

pub fn read(cfg: &HostConfig, meminfo: &Path) -> Result<Registered, RegisteredError> {
    let text = std::fs::read_to_string(meminfo).map_err(|source| RegisteredError::Read {
        path: meminfo.into(),
        source,
    })?;
    let total_kib = parse_mem_total_kib(&text).ok_or_else(|| RegisteredError::NoMemTotal {
        path: meminfo.into(),
    })?;
    let total_mib = total_kib / 1024;
    let memory_mib = total_mib.checked_sub(cfg.reserved_memory_mib).ok_or(
        RegisteredError::ReservedTooLarge {
            reserved_mib: cfg.reserved_memory_mib,
            total_mib,
        },
    )?;
    Ok(Registered {
        cpu_units: online_cpus() * 1024,
        memory_mib,
        reserved_tcp_ports: cfg.reserved_ports.iter().copied().collect(),
        reserved_udp_ports: cfg.reserved_ports_udp.iter().copied().collect(),
    })
}

fn online_cpus() -> u64 {
    // The ECS agent counts Go's runtime.NumCPU(): the CPUs in this process's affinity mask. Rust's
    // available_parallelism would also apply a cgroup CPU quota (e.g. systemd CPUQuota= on this unit),
    // which the ECS agent does not, so count the mask directly.
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .count()
            .max(1) as u64,
        Err(_) => std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_kib() {
        let text = "MemTotal:       16314112 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total_kib(text), Some(16314112));
        assert_eq!(parse_mem_total_kib("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn reserved_memory_is_subtracted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meminfo");
        std::fs::write(&p, "MemTotal:        4194304 kB\n").unwrap();
        let cfg = HostConfig {
            reserved_memory_mib: 256,
            ..HostConfig::default()
        };
        let r = read(&cfg, &p).unwrap();
        assert_eq!(r.memory_mib, 4096 - 256);
        assert!(r.reserved_tcp_ports.contains(&51678));
        let too_much = HostConfig {
            reserved_memory_mib: 5000,
            ..HostConfig::default()
        };
        assert!(
            read(&too_much, &p)
                .unwrap_err()
                .to_string()
                .contains("5000")
        );
    }
}
