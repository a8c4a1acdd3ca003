//! The local Docker engine: a tiny test image built FROM scratch with Debian's static busybox (the
//! engine here has no images and cannot pull), and labelled containers started from it.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::sync::OnceCell;

pub const IMAGE: &str = "ecs-capacity-agent-test/busybox:1";
const BUSYBOX: &str = "/bin/busybox";

/// Connects to the engine on its default socket and pings it. Err names what is missing.
pub async fn connect() -> Result<Docker, String> {
    let docker = Docker::connect_with_unix_defaults()
        .map_err(|e| format!("cannot connect to the Docker engine: {e}"))?;
    docker
        .ping()
        .await
        .map_err(|e| format!("Docker engine does not answer on its socket: {e}"))?;
    Ok(docker)
}

static IMAGE_BUILT: OnceCell<Result<(), String>> = OnceCell::const_new();

/// Builds `IMAGE` once per test process (a no-op when the engine already has it).
pub async fn test_image(docker: &Docker) -> Result<&'static str, String> {
    IMAGE_BUILT
        .get_or_init(|| async { build_image(docker).await })
        .await
        .clone()
        .map(|_| IMAGE)
}

async fn build_image(docker: &Docker) -> Result<(), String> {
    if docker.inspect_image(IMAGE).await.is_ok() {
        return Ok(());
    }
    let busybox = std::fs::read(BUSYBOX)
        .map_err(|e| format!("{BUSYBOX} (Debian package busybox-static): {e}"))?;
    let context =
        build_context(&busybox).map_err(|e| format!("building the image context: {e}"))?;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(IMAGE)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| format!("docker build of {IMAGE}: {e}"))?;
        if let Some(err) = info.error_detail {
            return Err(format!("docker build of {IMAGE}: {err:?}"));
        }
    }
    docker
        .inspect_image(IMAGE)
        .await
        .map(|_| ())
        .map_err(|e| format!("{IMAGE} missing after build: {e}"))
}

fn build_context(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let dockerfile = b"FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\"]\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(dockerfile.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "Dockerfile", &dockerfile[..])?;
    let mut h = tar::Header::new_gnu();
    h.set_size(busybox.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    tar.append_data(&mut h, "rootfs/bin/busybox", busybox)?;
    for applet in ["sh", "sleep", "dd", "cat", "nc", "yes", "head"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, format!("rootfs/bin/{applet}"), "busybox")?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o1777);
    h.set_cksum();
    tar.append_data(&mut h, "rootfs/tmp/", &[][..])?;
    tar.into_inner()
}

/// What to start. `cmd` runs under busybox sh, e.g. `"sleep 3600"` or `"while :; do :; done"`.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub cmd: String,
    pub cpu_shares: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub memory_reservation_bytes: Option<i64>,
    /// (container port, host port, "tcp"|"udp")
    pub ports: Vec<(u16, u16, &'static str)>,
    /// "bridge" (default), "host", "none", or "container:<id>".
    pub network_mode: Option<String>,
    /// Docker's `--cgroup-parent`, e.g. `/ecs/<task-id>` as the ECS agent sets it for task cgroups.
    pub cgroup_parent: Option<String>,
}

impl ContainerSpec {
    pub fn new(name: &str, cmd: &str) -> Self {
        ContainerSpec {
            name: name.into(),
            cmd: cmd.into(),
            ..Default::default()
        }
    }

    /// The labels the ECS agent puts on a task's containers.
    pub fn ecs_task(
        mut self,
        cluster: &str,
        task_arn: &str,
        family: &str,
        version: &str,
        container: &str,
    ) -> Self {
        for (k, v) in [
            ("com.amazonaws.ecs.cluster", cluster),
            ("com.amazonaws.ecs.task-arn", task_arn),
            ("com.amazonaws.ecs.task-definition-family", family),
            ("com.amazonaws.ecs.task-definition-version", version),
            ("com.amazonaws.ecs.container-name", container),
        ] {
            self.labels.insert(k.into(), v.into());
        }
        self
    }
}

/// Creates and starts a container from the test image; returns its id. An existing container of the
/// same name (a previous crashed run) is removed first.
pub async fn start(docker: &Docker, spec: &ContainerSpec) -> Result<String, String> {
    let image = test_image(docker).await?;
    remove(docker, &spec.name).await;
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for (cport, hport, proto) in &spec.ports {
        let key = format!("{cport}/{proto}");
        exposed.push(key.clone());
        bindings.insert(
            key,
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(hport.to_string()),
            }]),
        );
    }
    let body = ContainerCreateBody {
        image: Some(image.into()),
        cmd: Some(vec![
            BUSYBOX.into(),
            "sh".into(),
            "-c".into(),
            spec.cmd.clone(),
        ]),
        labels: Some(spec.labels.clone()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            cpu_shares: spec.cpu_shares,
            memory: spec.memory_bytes,
            memory_reservation: spec.memory_reservation_bytes,
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            network_mode: spec.network_mode.clone(),
            cgroup_parent: spec.cgroup_parent.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&spec.name)
                    .build(),
            ),
            body,
        )
        .await
        .map_err(|e| format!("create {}: {e}", spec.name))?;
    docker
        .start_container(&created.id, None)
        .await
        .map_err(|e| format!("start {}: {e}", spec.name))?;
    Ok(created.id)
}

/// Removes a container by name or id, forcibly; missing is fine.
pub async fn remove(docker: &Docker, name_or_id: &str) {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let _ = docker.remove_container(name_or_id, Some(opts)).await;
}
