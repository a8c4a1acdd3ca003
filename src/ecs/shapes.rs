//! The cluster's task shapes, the same on every host: the task definitions of the cluster's
//! services (the `cluster --cluster` look-up, [`crate::cluster::live::services`]), refreshed on a
//! jittered schedule and cached in `agent.state_dir/cluster-shapes.json`, so a restart or an ECS
//! outage keeps the last known set. DAEMON-strategy services are kept apart: they run one task on
//! every instance, so they are per-host overhead, not shapes to plan for.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::definitions::Definitions;
use crate::capacity::{Definition, TaskShape};
use crate::error::Error;

/// How often the services are looked up again (jittered by ±20 %).
pub const REFRESH: Duration = Duration::from_secs(600);
/// After a failed look-up, sooner.
const RETRY: Duration = Duration::from_secs(60);

/// The cluster's services' task definitions at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterShapes {
    pub cluster: String,
    /// When ECS answered (seconds since the Unix epoch).
    pub fetched_at_unix: u64,
    /// Task definitions of the REPLICA services: the shapes to plan for.
    pub services: Vec<Definition>,
    /// Task definitions of the DAEMON services: reserved on every host where their task is not
    /// running yet.
    pub daemons: Vec<Definition>,
}

impl ClusterShapes {
    /// The shapes of the replica services (a definition that makes no shape is skipped and named).
    pub fn shapes(&self) -> (Vec<TaskShape>, Vec<String>) {
        let mut shapes = Vec::new();
        let mut errors = Vec::new();
        for d in &self.services {
            match d.shape() {
                Ok(s) => shapes.push(s),
                Err(e) => errors.push(e.to_string()),
            }
        }
        (shapes, errors)
    }
}

pub fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster-shapes.json")
}

/// The cached set for `cluster`, if a valid one is there; a corrupt file is ignored with a warning.
pub fn load(state_dir: &Path, cluster: &str) -> Option<ClusterShapes> {
    let path = cache_path(state_dir);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str::<ClusterShapes>(&text) {
        Ok(s) if s.cluster == cluster => Some(s),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a corrupt cluster shapes cache");
            None
        }
    }
}

pub fn store(state_dir: &Path, shapes: &ClusterShapes) {
    let path = cache_path(state_dir);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(shapes).unwrap_or_default())?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "cannot cache the cluster's task shapes");
    }
}

/// Looks the services up now: ListServices + DescribeServices, and DescribeTaskDefinition for each
/// revision not known yet.
pub async fn fetch(
    ecs: &aws_sdk_ecs::Client,
    definitions: &Definitions,
    cluster: &str,
) -> Result<ClusterShapes, Error> {
    let services = crate::cluster::live::services(ecs, cluster).await?;
    let mut out = ClusterShapes {
        cluster: cluster.to_string(),
        fetched_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        services: Vec::new(),
        daemons: Vec::new(),
    };
    for s in services {
        let d = definitions
            .get(&s.task_definition)
            .await
            .map_err(Error::Unavailable)?;
        if s.daemon {
            out.daemons.push((*d).clone());
        } else {
            out.services.push((*d).clone());
        }
    }
    Ok(out)
}

/// Publishes the last known set on `tx`: the cache at once, then ECS's answer now and every
/// [`REFRESH`] (jittered). A failed look-up keeps the last set. Ends on `token`.
pub async fn follow(
    ecs: aws_sdk_ecs::Client,
    definitions: Arc<Definitions>,
    cluster: String,
    state_dir: PathBuf,
    tx: watch::Sender<Option<Arc<ClusterShapes>>>,
    token: CancellationToken,
) {
    if let Some(cached) = load(&state_dir, &cluster) {
        tx.send_replace(Some(Arc::new(cached)));
    }
    loop {
        let wait = match fetch(&ecs, &definitions, &cluster).await {
            Ok(shapes) => {
                let changed = tx.borrow().as_deref().is_none_or(|old| {
                    old.services != shapes.services || old.daemons != shapes.daemons
                });
                if changed {
                    tracing::info!(
                        services = shapes.services.len(),
                        daemons = shapes.daemons.len(),
                        "cluster task shapes"
                    );
                }
                store(&state_dir, &shapes);
                tx.send_replace(Some(Arc::new(shapes)));
                crate::retry::jittered(REFRESH)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up the cluster's services; keeping the last known task shapes");
                crate::retry::jittered(RETRY)
            }
        };
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::NetworkMode;

    fn set(cluster: &str) -> ClusterShapes {
        ClusterShapes {
            cluster: cluster.into(),
            fetched_at_unix: 1,
            services: vec![Definition {
                arn: "arn:aws:ecs:us-east-1:1:task-definition/web:1".into(),
                family: "web".into(),
                revision: 1,
                network_mode: NetworkMode::Bridge,
                task_cpu: Some("512".into()),
                task_memory: Some("1024".into()),
                containers: Vec::new(),
            }],
            daemons: Vec::new(),
        }
    }

    #[test]
    fn the_cache_is_per_cluster_and_a_corrupt_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "prod"), None);
        store(dir.path(), &set("prod"));
        assert_eq!(load(dir.path(), "prod"), Some(set("prod")));
        assert_eq!(load(dir.path(), "other"), None);
        let (shapes, errors) = set("prod").shapes();
        assert_eq!((shapes[0].cpu_units, shapes[0].memory_mib), (512, 1024));
        assert!(errors.is_empty());
        std::fs::write(cache_path(dir.path()), "{oops").unwrap();
        assert_eq!(load(dir.path(), "prod"), None);
    }
}
