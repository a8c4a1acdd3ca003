//! The Docker Engine adapter (bollard over the unix socket): which containers run, what each one
//! reserves (CPU shares, memory limit and reservation, static host ports, network mode) and the ECS
//! labels the ECS agent puts on task containers. Grouping containers into tasks is `host`'s job.

mod parse;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures_util::{Stream, StreamExt};

pub use parse::{ContainerInfo, EcsLabels, PAUSE_CONTAINER_NAME, from_inspect};

/// Per-request timeout on the socket. The event stream is one long request: it is not subject to it
/// in bollard (streams are read without a deadline), so the timeout only bounds list and inspect.
const REQUEST_TIMEOUT_SECS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("docker socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: bollard::errors::Error,
    },
    #[error("docker {what}: {source}")]
    Api {
        what: String,
        source: bollard::errors::Error,
    },
}

/// What the event stream reports, reduced to what changes the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    /// Started, or its resources were updated (`docker update`): inspect it again.
    Changed(String),
    /// Died or was removed: it no longer runs.
    Gone(String),
}

/// A connected Docker Engine client.
#[derive(Debug, Clone)]
pub struct Client {
    docker: Docker,
    socket: PathBuf,
}

impl Client {
    /// Connects to the socket and negotiates the API version (the engine on an ECS-optimized AMI may
    /// be older than bollard's default API version).
    pub async fn connect(socket: &Path) -> Result<Client, DockerError> {
        let connect_err = |source| DockerError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        let docker = Docker::connect_with_unix(
            &socket.to_string_lossy(),
            REQUEST_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(connect_err)?
        .negotiate_version()
        .await
        .map_err(connect_err)?;
        Ok(Client {
            docker,
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Ids of the running containers.
    pub async fn running_ids(&self) -> Result<Vec<String>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("status".to_string(), vec!["running".to_string()]);
        let opts = ListContainersOptionsBuilder::default()
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|source| DockerError::Api {
                what: "list containers".into(),
                source,
            })?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// One container's reservations and labels; `None` when it is gone or no longer running (a
    /// container that exits between list and inspect is normal).
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, DockerError> {
        match self.docker.inspect_container(id, None).await {
            Ok(resp) => Ok(from_inspect(&resp).filter(|c| c.running)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(source) => Err(DockerError::Api {
                what: format!("inspect container {id}"),
                source,
            }),
        }
    }

    /// Every running container, inspected.
    pub async fn running(&self) -> Result<Vec<ContainerInfo>, DockerError> {
        let mut out = Vec::new();
        for id in self.running_ids().await? {
            if let Some(info) = self.inspect(&id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Container lifecycle events from `since` on (the engine replays those already past). The
    /// stream ends (or yields an error) when the engine goes away; the caller reconnects.
    pub fn events(
        &self,
        since: std::time::SystemTime,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + use<> {
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert(
            "event".to_string(),
            ["start", "die", "destroy", "update"]
                .map(String::from)
                .to_vec(),
        );
        // Docker takes a Unix time with a fractional part.
        let since = since
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
            .unwrap_or_else(|_| "0".into());
        let opts = EventsOptionsBuilder::default()
            .since(&since)
            .filters(&filters)
            .build();
        self.docker
            .events(Some(opts))
            .filter_map(|item| async move {
                match item {
                    Ok(msg) => {
                        let id = msg.actor.and_then(|a| a.id)?;
                        match msg.action.as_deref()? {
                            "start" | "update" => Some(Ok(ContainerEvent::Changed(id))),
                            "die" | "destroy" => Some(Ok(ContainerEvent::Gone(id))),
                            _ => None,
                        }
                    }
                    Err(source) => Some(Err(DockerError::Api {
                        what: "event stream".into(),
                        source,
                    })),
                }
            })
    }

    /// Pings the engine within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), DockerError> {
        match tokio::time::timeout(timeout, self.docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(DockerError::Api {
                what: "ping".into(),
                source,
            }),
            Err(_) => Err(DockerError::Api {
                what: "ping".into(),
                source: bollard::errors::Error::RequestTimeoutError,
            }),
        }
    }
}
