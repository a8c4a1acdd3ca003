//! Elastic network interfaces: how many are attached, how many the instance type allows, how many
//! awsvpc tasks use. Each awsvpc task takes one ENI (or, with awsvpc trunking, one branch ENI of the
//! trunk), so ENIs are a capacity resource like CPU and memory.
//!
//! - attached: the MAC list from IMDS (`network/interfaces/macs/`, passed in by the caller), or else
//!   the physical interfaces in sysfs (those with a `device` link: ENIs, not veth/bridges/lo);
//! - limit: EC2 DescribeInstanceTypes `NetworkInfo.MaximumNetworkInterfaces`, cached on disk per
//!   instance type (it never changes for a type) under `agent.state_dir`;
//! - trunk: the container instance's `ecs.awsvpc-trunk-id` attribute in ECS (set once ECS has
//!   attached the trunk), read at each reconciliation;
//! - slots: limit − 1 (the primary ENI cannot be used by a task), or with a trunk the branch-ENI
//!   limit from the Amazon ECS Developer Guide table "Supported Amazon EC2 instance types" for
//!   increased ENI density (eni-trunking-supported-instance-types.html).

use std::path::{Path, PathBuf};

use aws_smithy_types::error::display::DisplayErrorContext;
use serde::{Deserialize, Serialize};

/// The ENI picture for the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EniView {
    /// ENIs attached to the instance (primary included); `None` when neither IMDS nor sysfs said.
    pub attached: Option<u32>,
    /// MaximumNetworkInterfaces of the instance type; `None` when unknown.
    pub limit: Option<u32>,
    /// A trunk ENI is attached (awsvpc trunking is on for this instance); `None` when unknown.
    pub trunk: Option<bool>,
    /// ENIs tasks can use in total; `None` when unknown (then ENIs do not constrain capacity).
    pub slots: Option<u32>,
    /// ENIs used by running awsvpc tasks.
    pub used: u32,
    /// Caveats, e.g. a branch limit taken from a table row that could not be verified.
    pub note: Option<String>,
}

/// One row of the ECS trunking table: the instance's ENI limit with trunking (the primary ENI and
/// the trunk included, as the table states it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrunkRow {
    pub instance_type: &'static str,
    pub eni_limit_with_trunking: u32,
    /// The figure is quoted in the documentation text cited on [`TRUNK_TABLE`]; `false` rows are
    /// best knowledge and are flagged in the snapshot.
    pub verified: bool,
}

/// Amazon ECS Developer Guide, "Increasing Amazon ECS Linux container instance network interfaces"
/// (container-instance-eni.html): "a c5.large instance with awsvpcTrunking has an increased ENI
/// limit of twelve … this configuration allows you to launch ten tasks". The full per-type table is
/// at eni-trunking-supported-instance-types.html; only the c5.large row is quoted above, the other
/// rows are unverified and reported as such.
pub const TRUNK_TABLE: &[TrunkRow] = &[
    TrunkRow {
        instance_type: "c5.large",
        eni_limit_with_trunking: 12,
        verified: true,
    },
    TrunkRow {
        instance_type: "m5.large",
        eni_limit_with_trunking: 12,
        verified: false,
    },
    TrunkRow {
        instance_type: "r5.large",
        eni_limit_with_trunking: 12,
        verified: false,
    },
    TrunkRow {
        instance_type: "c5d.large",
        eni_limit_with_trunking: 12,
        verified: false,
    },
    TrunkRow {
        instance_type: "m5d.large",
        eni_limit_with_trunking: 12,
        verified: false,
    },
    TrunkRow {
        instance_type: "r5d.large",
        eni_limit_with_trunking: 12,
        verified: false,
    },
    TrunkRow {
        instance_type: "a1.large",
        eni_limit_with_trunking: 12,
        verified: false,
    },
];

pub fn trunk_row(instance_type: &str) -> Option<TrunkRow> {
    TRUNK_TABLE
        .iter()
        .copied()
        .find(|r| r.instance_type == instance_type)
}

/// ENI slots for tasks, the one rule `status`, the daemon and `cluster` share. `trunk` is whether
/// awsvpc trunking is on, `None` when that could not be found out.
///
/// - no trunk: every ENI but the primary (`limit` − 1);
/// - a trunk: the table's limit minus the primary and the trunk (c5.large: 12 − 2 = 10, as the
///   documentation says), whatever `limit` is: the branch limit is not `MaximumNetworkInterfaces`;
/// - a trunk on a type the table lacks, or trunking unknown: unknown, never `limit` − 1.
///
/// The note says why a figure is unknown or uncertain.
pub fn slots(
    limit: Option<u32>,
    trunk: Option<bool>,
    instance_type: Option<&str>,
) -> (Option<u32>, Option<String>) {
    match trunk {
        Some(false) => (limit.map(|l| l.saturating_sub(1)), None),
        None => (
            None,
            limit.map(|_| "whether awsvpc trunking is on is unknown, so are the ENI slots".into()),
        ),
        Some(true) => match instance_type.and_then(trunk_row) {
            Some(row) => {
                let note = (!row.verified).then(|| {
                    format!(
                        "branch-ENI limit for {} from an unverified table row",
                        row.instance_type
                    )
                });
                (Some(row.eni_limit_with_trunking.saturating_sub(2)), note)
            }
            None => (
                None,
                Some(format!(
                    "awsvpc trunking is on and no branch-ENI limit is known for {}",
                    instance_type.unwrap_or("an unknown instance type")
                )),
            ),
        },
    }
}

/// Attached ENIs from sysfs: entries of `/sys/class/net` backed by a device (a `device` link).
pub fn attached_from_sysfs(net_dir: &Path) -> Result<u32, EniError> {
    let rd = std::fs::read_dir(net_dir).map_err(|source| EniError::Sysfs {
        path: net_dir.into(),
        source,
    })?;
    let mut n = 0;
    for entry in rd.flatten() {
        if entry.file_name() == "lo" {
            continue;
        }
        if entry.path().join("device").exists() {
            n += 1;
        }
    }
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
pub enum EniError {
    #[error("cannot list {path}: {source}")]
    Sysfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("EC2 DescribeInstanceTypes {instance_type}: {message}")]
    DescribeInstanceTypes {
        instance_type: String,
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedLimit {
    instance_type: String,
    maximum_network_interfaces: u32,
}

fn cache_path(state_dir: &Path, instance_type: &str) -> Option<PathBuf> {
    // The instance type ends up in a file name: accept only what instance types look like.
    let ok = !instance_type.is_empty()
        && instance_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !instance_type.starts_with('.');
    ok.then(|| {
        state_dir
            .join("eni-limits")
            .join(format!("{instance_type}.json"))
    })
}

/// The limit from the on-disk cache, if a valid entry is there.
pub fn cached_limit(state_dir: &Path, instance_type: &str) -> Option<u32> {
    let path = cache_path(state_dir, instance_type)?;
    let text = std::fs::read_to_string(path).ok()?;
    let c: CachedLimit = serde_json::from_str(&text).ok()?;
    (c.instance_type == instance_type && c.maximum_network_interfaces > 0)
        .then_some(c.maximum_network_interfaces)
}

fn store_limit(state_dir: &Path, instance_type: &str, limit: u32) {
    let Some(path) = cache_path(state_dir, instance_type) else {
        return;
    };
    let body = CachedLimit {
        instance_type: instance_type.into(),
        maximum_network_interfaces: limit,
    };
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&body).unwrap_or_default())?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        // Only a cache: the next start asks EC2 again.
        tracing::warn!(path = %path.display(), error = %e, "cannot cache the ENI limit");
    }
}

/// MaximumNetworkInterfaces of `instance_type`: from the cache under `state_dir`, else from EC2
/// DescribeInstanceTypes (then cached).
pub async fn max_interfaces(
    ec2: &aws_sdk_ec2::Client,
    instance_type: &str,
    state_dir: &Path,
) -> Result<u32, EniError> {
    if let Some(l) = cached_limit(state_dir, instance_type) {
        return Ok(l);
    }
    let err = |message: String| EniError::DescribeInstanceTypes {
        instance_type: instance_type.into(),
        message,
    };
    let out = ec2
        .describe_instance_types()
        .instance_types(aws_sdk_ec2::types::InstanceType::from(instance_type))
        .send()
        .await
        .map_err(|e| err(DisplayErrorContext(&e).to_string()))?;
    let limit = out
        .instance_types()
        .iter()
        .find(|t| t.instance_type().map(|t| t.as_str()) == Some(instance_type))
        .and_then(|t| t.network_info())
        .and_then(|n| n.maximum_network_interfaces())
        .filter(|n| *n > 0)
        .ok_or_else(|| err("no NetworkInfo.MaximumNetworkInterfaces in the answer".into()))?;
    let limit = limit as u32;
    store_limit(state_dir, instance_type, limit);
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_one_rule_for_trunk_off_on_and_unknown() {
        let cases = [
            // (limit, trunk, type, slots, note contains)
            (Some(3), Some(false), Some("c5.large"), Some(2), None),
            (None, Some(false), None, None, None),
            (Some(3), Some(true), Some("c5.large"), Some(10), None),
            (None, Some(true), Some("c5.large"), Some(10), None),
            (
                Some(3),
                Some(true),
                Some("m5.large"),
                Some(10),
                Some("unverified"),
            ),
            (Some(8), Some(true), Some("x9.huge"), None, Some("x9.huge")),
            (
                Some(8),
                Some(true),
                None,
                None,
                Some("unknown instance type"),
            ),
            (Some(3), None, Some("c5.large"), None, Some("trunking")),
            (None, None, Some("c5.large"), None, None),
        ];
        for (limit, trunk, ty, want, note_has) in cases {
            let (got, note) = slots(limit, trunk, ty);
            let case = format!("slots({limit:?}, {trunk:?}, {ty:?}) = {got:?}, {note:?}");
            assert_eq!(got, want, "{case}");
            match note_has {
                Some(part) => assert!(note.as_deref().is_some_and(|n| n.contains(part)), "{case}"),
                None => assert_eq!(note, None, "{case}"),
            }
        }
    }

    #[test]
    fn sysfs_counts_device_backed_interfaces_only() {
        let dir = tempfile::tempdir().unwrap();
        for (name, device) in [
            ("lo", false),
            ("eth0", true),
            ("eth1", true),
            ("docker0", false),
            ("veth1", false),
        ] {
            let p = dir.path().join(name);
            std::fs::create_dir(&p).unwrap();
            if device {
                std::fs::create_dir(p.join("device")).unwrap();
            }
        }
        assert_eq!(attached_from_sysfs(dir.path()).unwrap(), 2);
        assert!(
            attached_from_sysfs(&dir.path().join("nope"))
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
    }

    #[test]
    fn cache_round_trips_and_rejects_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cached_limit(dir.path(), "c5.large"), None);
        store_limit(dir.path(), "c5.large", 3);
        assert_eq!(cached_limit(dir.path(), "c5.large"), Some(3));
        assert_eq!(cache_path(dir.path(), "../etc/passwd"), None);
        std::fs::write(dir.path().join("eni-limits/m5.large.json"), "garbage").unwrap();
        assert_eq!(cached_limit(dir.path(), "m5.large"), None);
    }
}
