//! Task definitions by `family:revision`, fetched from ECS once each (a revision never changes) and
//! kept in memory and on disk under `agent.state_dir/task-definitions/`, so a restart or an ECS
//! outage does not lose them. A corrupt cache file is ignored (and fetched again) with a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::capacity::Definition;

/// A definition that could not be fetched is not asked for again within this time.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The store. Cheap to share behind an `Arc`.
pub struct Definitions {
    ecs: Option<aws_sdk_ecs::Client>,
    cluster: String,
    dir: PathBuf,
    known: Mutex<HashMap<String, Arc<Definition>>>,
    failed: Mutex<HashMap<String, Instant>>,
}

/// `family:revision` from a key or a task definition ARN (`…:task-definition/family:revision`).
pub fn key_of(name: &str) -> &str {
    name.rsplit_once(":task-definition/")
        .map_or(name, |(_, key)| key)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Definitions {
    /// Without an ECS client only the cache on disk is read.
    pub fn new(ecs: Option<aws_sdk_ecs::Client>, cluster: &str, state_dir: &Path) -> Definitions {
        Definitions {
            ecs,
            cluster: cluster.to_string(),
            dir: state_dir.join("task-definitions"),
            known: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        // The key ends up in a file name: accept only what family names and revisions look like.
        let ok = !key.is_empty()
            && !key.starts_with('.')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'));
        ok.then(|| self.dir.join(format!("{key}.json")))
    }

    /// The definition if it is known, from memory or the disk cache; never asks ECS.
    pub fn cached(&self, name: &str) -> Option<Arc<Definition>> {
        let key = key_of(name);
        if let Some(d) = lock(&self.known).get(key) {
            return Some(d.clone());
        }
        let path = self.path(key)?;
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str::<Definition>(&text) {
            Ok(d) if d.key() == key => {
                let d = Arc::new(d);
                lock(&self.known).insert(key.to_string(), d.clone());
                Some(d)
            }
            Ok(_) | Err(_) => {
                tracing::warn!(path = %path.display(), "ignoring a corrupt task definition cache file");
                None
            }
        }
    }

    /// The definition, fetched from ECS when not known yet (at most once a minute after a failure).
    pub async fn get(&self, name: &str) -> Result<Arc<Definition>, String> {
        if let Some(d) = self.cached(name) {
            return Ok(d);
        }
        let key = key_of(name).to_string();
        let Some(ecs) = &self.ecs else {
            return Err(format!("task definition {key}: unknown (AWS is off)"));
        };
        if lock(&self.failed)
            .get(&key)
            .is_some_and(|at| at.elapsed() < RETRY_AFTER)
        {
            return Err(format!(
                "task definition {key}: not fetched (failed recently)"
            ));
        }
        match crate::cluster::live::definition(ecs, &self.cluster, &key).await {
            Ok(d) => {
                let d = Arc::new(d);
                self.store(&key, &d);
                lock(&self.failed).remove(&key);
                lock(&self.known).insert(key, d.clone());
                Ok(d)
            }
            Err(e) => {
                lock(&self.failed).insert(key, Instant::now());
                Err(e.to_string())
            }
        }
    }

    fn store(&self, key: &str, d: &Definition) {
        let Some(path) = self.path(key) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(d).unwrap_or_default())?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            // Only a cache: it is fetched again after a restart.
            tracing::warn!(path = %path.display(), error = %e, "cannot cache a task definition");
        }
    }

    /// Every named definition that can be had now; the errors of those that cannot.
    pub async fn get_all<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> (HashMap<String, Arc<Definition>>, Vec<String>) {
        let mut found = HashMap::new();
        let mut errors = Vec::new();
        for name in names {
            let key = key_of(name);
            if found.contains_key(key) {
                continue;
            }
            match self.get(name).await {
                Ok(d) => {
                    found.insert(key.to_string(), d);
                }
                Err(e) => errors.push(e),
            }
        }
        (found, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::NetworkMode;

    fn definition() -> Definition {
        Definition {
            arn: "arn:aws:ecs:us-east-1:1:task-definition/web:3".into(),
            family: "web".into(),
            revision: 3,
            network_mode: NetworkMode::Bridge,
            task_cpu: Some("256".into()),
            task_memory: Some("512".into()),
            containers: Vec::new(),
        }
    }

    #[test]
    fn key_of_takes_family_and_revision_from_an_arn() {
        assert_eq!(
            key_of("arn:aws:ecs:us-east-1:1:task-definition/web:3"),
            "web:3"
        );
        assert_eq!(key_of("web:3"), "web:3");
    }

    #[tokio::test]
    async fn the_disk_cache_serves_a_restart_and_a_corrupt_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let first = Definitions::new(None, "c", dir.path());
        first.store("web:3", &definition());
        let again = Definitions::new(None, "c", dir.path());
        let d = again
            .get("arn:aws:ecs:us-east-1:1:task-definition/web:3")
            .await
            .unwrap();
        assert_eq!(*d, definition());
        std::fs::write(dir.path().join("task-definitions/api:1.json"), "{not json").unwrap();
        assert_eq!(again.cached("api:1"), None);
        let err = again.get("api:1").await.unwrap_err();
        assert!(err.contains("AWS is off"), "{err}");
        assert_eq!(again.path("../x:1"), None);
    }
}
