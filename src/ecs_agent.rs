//! The ECS agent's introspection API (`http://127.0.0.1:51678`, `host.ecs_agent_url`):
//! `/v1/metadata` gives the cluster and this container instance's ARN (needed to drain), `/v1/tasks`
//! each task's known and desired status. Response shapes as documented in the Amazon ECS Developer
//! Guide, "Amazon ECS container introspection" (ecs-agent-introspection.html):
//!
//! ```json
//! {"Cluster": "default", "ContainerInstanceArn": "arn:aws:ecs:…:container-instance/…", "Version": "Amazon ECS Agent - v1.30.0 (02ff320c)"}
//! {"Tasks": [{"Arn": "arn:…:task/…", "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING", "Family": "nginx", "Version": "5",
//!             "Containers": [{"DockerId": "…", "DockerName": "ecs-nginx-5-nginx-…", "Name": "nginx"}]}]}
//! ```
//!
//! When the agent is not there (not yet started, or not an ECS instance) every field is unknown and
//! the log says so once, not on every observation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::chain;

/// What the ECS agent told us; all `None` when it did not answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EcsAgentView {
    pub cluster: Option<String>,
    pub container_instance_arn: Option<String>,
    pub agent_version: Option<String>,
    /// The EC2 instance id, when the caller knows it (from IMDS).
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Metadata {
    #[serde(rename = "Cluster", default)]
    pub cluster: Option<String>,
    /// Absent until the agent has registered the instance.
    #[serde(rename = "ContainerInstanceArn", default)]
    pub container_instance_arn: Option<String>,
    #[serde(rename = "Version", default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TaskList {
    #[serde(rename = "Tasks", default)]
    pub tasks: Vec<AgentTask>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentTask {
    #[serde(rename = "Arn")]
    pub arn: String,
    #[serde(rename = "DesiredStatus", default)]
    pub desired_status: Option<String>,
    #[serde(rename = "KnownStatus", default)]
    pub known_status: Option<String>,
    #[serde(rename = "Family", default)]
    pub family: Option<String>,
    #[serde(rename = "Version", default)]
    pub version: Option<String>,
    // Go's encoding/json matches keys case-insensitively; agents have served both spellings.
    #[serde(rename = "Containers", alias = "containers", default)]
    pub containers: Vec<AgentContainer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentContainer {
    #[serde(rename = "DockerId", default)]
    pub docker_id: Option<String>,
    #[serde(rename = "DockerName", default)]
    pub docker_name: Option<String>,
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("ECS agent introspection {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("ECS agent introspection {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("ECS agent introspection {url}: unexpected JSON: {reason}")]
    Body { url: String, reason: String },
}

/// Introspection client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    absent_logged: std::sync::Arc<AtomicBool>,
}

impl Client {
    pub fn new(base_url: &str, timeout: Duration) -> Client {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Client {
            base: base_url.trim_end_matches('/').to_string(),
            http,
            absent_logged: Default::default(),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, AgentError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| AgentError::Request {
                url: url.clone(),
                reason: chain(&e),
            })?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            return Err(AgentError::Status { url, status });
        }
        let body = crate::bounded::body(resp, crate::bounded::ECS_AGENT_BODY_MAX_BYTES)
            .await
            .map_err(|e| AgentError::Request {
                url: url.clone(),
                reason: chain(&e),
            })?;
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de).map_err(|e| AgentError::Body {
            url,
            reason: e.to_string(),
        })
    }

    pub async fn metadata(&self) -> Result<Metadata, AgentError> {
        self.get("/v1/metadata").await
    }

    pub async fn tasks(&self) -> Result<TaskList, AgentError> {
        self.get("/v1/tasks").await
    }

    /// Metadata and tasks together; on failure the view is empty and the error is returned for the
    /// snapshot's `unavailable` list. Logs the first failure (and the recovery) only.
    pub async fn observe(&self) -> (EcsAgentView, Option<TaskList>, Option<String>) {
        let (meta, tasks) = tokio::join!(self.metadata(), self.tasks());
        let err = match (&meta, &tasks) {
            (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        match &err {
            Some(e) => {
                if !self.absent_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "ECS agent introspection unavailable: cluster, container instance ARN and task statuses are unknown (logged once)");
                }
            }
            None => {
                if self.absent_logged.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.base, "ECS agent introspection answers again");
                }
            }
        }
        // One answer or none: when either call fails, the agent is down or restarting, and the
        // other call's answer (e.g. over a connection still open from before) is not used, as the
        // log line above says.
        match (meta, tasks) {
            (Ok(m), Ok(tasks)) => (
                EcsAgentView {
                    cluster: m.cluster.filter(|s| !s.is_empty()),
                    container_instance_arn: m.container_instance_arn.filter(|s| !s.is_empty()),
                    agent_version: m.version,
                    instance_id: None,
                },
                Some(tasks),
                None,
            ),
            _ => (EcsAgentView::default(), None, err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_shapes_parse() {
        let m: Metadata = serde_json::from_str(
            r#"{"Cluster":"default","ContainerInstanceArn":"arn:aws:ecs:us-west-2:1:container-instance/default/abc","Version":"Amazon ECS Agent - v1.30.0 (02ff320c)"}"#,
        )
        .unwrap();
        assert_eq!(m.cluster.as_deref(), Some("default"));
        assert!(m.container_instance_arn.unwrap().ends_with("/abc"));
        // Before registration the agent serves no ARN.
        let m: Metadata = serde_json::from_str(r#"{"Cluster":"default","Version":"v"}"#).unwrap();
        assert_eq!(m.container_instance_arn, None);

        let t: TaskList = serde_json::from_str(
            r#"{"Tasks":[{"Arn":"arn:aws:ecs:us-west-2:1:task/090eff9b","DesiredStatus":"RUNNING","KnownStatus":"RUNNING","Family":"console-sample-app-static","Version":"6","Containers":[{"DockerId":"189a8ff4b5f0","DockerName":"ecs-console-sample-app-static-6-simple-app-86caf9bcabe3e9c61600","Name":"simple-app"}]},
                        {"Arn":"arn:aws:ecs:us-west-2:1:task/1810e302","DesiredStatus":"STOPPED","KnownStatus":"STOPPED","Family":"f","Version":"1","containers":[{"DockerId":"x","DockerName":"y","Name":"z"}]}]}"#,
        )
        .unwrap();
        assert_eq!(t.tasks.len(), 2);
        assert_eq!(t.tasks[0].known_status.as_deref(), Some("RUNNING"));
        assert_eq!(t.tasks[0].containers[0].name.as_deref(), Some("simple-app"));
        assert_eq!(t.tasks[1].containers.len(), 1);
    }
}
