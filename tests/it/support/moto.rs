//! A moto server (from the repository's .venv, installed by scripts/test-env.sh) on 127.0.0.1 with a
//! port chosen by the OS, one per test process, stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ecs::config::Credentials;
use aws_sdk_ecs::types::ContainerInstanceStatus;

pub struct Moto {
    child: Child,
    url: String,
}

fn moto_server_path() -> PathBuf {
    std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::repo_root().join(".venv/bin/moto_server"))
}

impl Moto {
    /// Starts moto and waits until it answers. Err names what is missing.
    pub fn start() -> Result<Moto, String> {
        let bin = moto_server_path();
        if !bin.exists() {
            return Err(format!("{} not found", bin.display()));
        }
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        // werkzeug prints "Running on http://127.0.0.1:PORT" with the port the OS chose.
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(pos) = line.find("http://127.0.0.1:") {
                        let _ = tx.send(line[pos..].trim().to_string());
                    }
                    // Keep draining so moto never blocks on a full pipe.
                }
            });
        }
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url.trim_end_matches('/').to_string(),
            Err(_) => {
                let _ = child.kill();
                return Err("moto_server did not report its address within 60 s".into());
            }
        };
        let moto = Moto { child, url };
        for _ in 0..200 {
            if std::net::TcpStream::connect(moto.url.trim_start_matches("http://")).is_ok() {
                return Ok(moto);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("moto at {} does not accept connections", moto.url))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Forgets every resource (POST /moto-api/reset).
    pub async fn reset(&self) {
        let status = reqwest::Client::new()
            .post(format!("{}/moto-api/reset", self.url))
            .send()
            .await
            .expect("moto reset")
            .status();
        assert!(status.is_success(), "moto reset answered {status}");
    }

    /// Keeps ECS tasks RUNNING until they are stopped. moto otherwise moves a task one status on
    /// (RUNNING → DEACTIVATING → … → STOPPED) each time it is described, so a drain that counts its
    /// tasks with DescribeTasks would see them stop by themselves.
    pub async fn pin_task_states(&self) {
        let status = reqwest::Client::new()
            .post(format!(
                "{}/moto-api/state-manager/set-transition",
                self.url
            ))
            .json(&serde_json::json!({
                "model_name": "ecs::task",
                "transition": {"progression": "manual", "times": 1_000_000}
            }))
            .send()
            .await
            .expect("moto set-transition")
            .status();
        assert!(status.is_success(), "moto set-transition answered {status}");
    }

    /// SDK configuration pointing every service at this moto, with fake credentials and region, so no
    /// call can reach IMDS or AWS.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .endpoint_url(&self.url)
            .load()
            .await
    }

    /// Environment for a child process (the daemon binary) so its SDK talks to this moto.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.url.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts one instance of `instance_type` in moto's EC2 and returns its id. moto's
/// RegisterContainerInstance accepts only instance ids its EC2 knows.
pub async fn run_instance(sdk: &SdkConfig, instance_type: &str) -> Result<String, String> {
    let out = aws_sdk_ec2::Client::new(sdk)
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::from(instance_type))
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .map_err(|e| format!("run instance {instance_type}: {e:?}"))?;
    out.instances()
        .first()
        .and_then(|i| i.instance_id())
        .map(str::to_string)
        .ok_or_else(|| format!("run instance {instance_type}: no instance id in the answer"))
}

/// Registers `instance` (an id moto's EC2 knows, see [`run_instance`]) as a container instance of
/// `cluster`, as its ECS agent would, and returns the container instance ARN. Also for registering
/// an instance again after a deregistration (a new ARN).
pub async fn register(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    instance: &str,
) -> Result<String, String> {
    ecs.register_container_instance()
        .cluster(cluster)
        .instance_identity_document(
            serde_json::json!({"instanceId": instance, "region": "us-east-1"}).to_string(),
        )
        .send()
        .await
        .map_err(|e| format!("register {instance} in {cluster}: {e:?}"))?
        .container_instance
        .and_then(|c| c.container_instance_arn)
        .ok_or_else(|| format!("register {instance} in {cluster}: no container instance ARN"))
}

/// A new moto EC2 instance of `instance_type` registered in `cluster`: its id and its container
/// instance ARN.
pub async fn run_and_register(
    sdk: &SdkConfig,
    cluster: &str,
    instance_type: &str,
) -> Result<(String, String), String> {
    let instance = run_instance(sdk, instance_type).await?;
    let arn = register(&aws_sdk_ecs::Client::new(sdk), cluster, &instance).await?;
    Ok((instance, arn))
}

/// The container instance `arn`'s status in `cluster`; `None` when ECS does not answer.
pub async fn ecs_status(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    arn: &str,
) -> Option<ContainerInstanceStatus> {
    let out = ecs
        .describe_container_instances()
        .cluster(cluster)
        .container_instances(arn)
        .send()
        .await
        .ok()?;
    let status = out.container_instances?.into_iter().next()?.status?;
    Some(ContainerInstanceStatus::from(status.as_str()))
}
