//! Host observation against real peers: the local Docker engine (labelled containers with CPU
//! shares, memory limits and reservations, static ports, bridge / host / awsvpc-style network
//! modes), a socket proxy that is restarted under the observer, moto's DescribeInstanceTypes, and a
//! fake ECS agent introspection endpoint serving the documented shapes.
//!
//! The Docker engine is shared with other test runs: every assertion is about containers this test
//! created (names and task ARNs carry a unique suffix), never about the whole engine.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ecs_capacity_agent::config::Config;
use ecs_capacity_agent::host::{NetworkMode, Observer, Snapshot, Task};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::require;
use crate::support::docker::{self, ContainerSpec};
use crate::support::moto::Moto;

const MIB: i64 = 1024 * 1024;
const CLUSTER: &str = "it-cluster";

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "eca-it-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn arn(id: &str) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:task/{CLUSTER}/{id}")
}

/// A config that never touches the machine's ECS files; the ECS agent URL points at a closed port
/// unless a test serves a fake there.
fn config(dir: &Path, socket: Option<&Path>, agent_url: Option<&str>) -> Arc<Config> {
    let mut cfg = Config::default();
    cfg.agent.state_dir = dir.join("state");
    cfg.agent.ecs_config_path = dir.join("ecs.config");
    cfg.host.ecs_agent_url = agent_url.unwrap_or("http://127.0.0.1:9").to_string();
    // Only events can update the snapshot within a test: the periodic resync is an hour away.
    cfg.host.docker_resync_interval = Duration::from_secs(3600);
    if let Some(s) = socket {
        cfg.host.docker_socket = s.to_path_buf();
    }
    Arc::new(cfg)
}

/// A free loopback port (bound, then released).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// Removes the containers it names when dropped (also when a test panics).
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        if names.is_empty() {
            return;
        }
        // Drop may run inside the test's runtime: clean up with the CLI, synchronously.
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(&names)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn task<'a>(s: &'a Snapshot, arn: &str) -> Option<&'a Task> {
    s.tasks.iter().find(|t| t.arn == arn)
}

async fn snapshot_where(
    observer: &Observer,
    limit: Duration,
    mut ok: impl FnMut(&Snapshot) -> bool,
) -> Option<Snapshot> {
    let start = std::time::Instant::now();
    loop {
        let s = observer
            .snapshot()
            .await
            .expect("registered resources readable");
        if ok(&s) {
            return Some(s);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_holds_exactly_the_labelled_tasks_reservations_and_ports() {
    let engine = require!(docker::connect().await, "docker");
    let dir = tempfile::tempdir().unwrap();
    let (bridge_id, host_id, vpc_id) = (unique("bridge"), unique("host"), unique("vpc"));
    let (web_port, dns_port, host_port) = (free_port(false), free_port(true), free_port(false));

    let web = ContainerSpec {
        cpu_shares: Some(256),
        memory_bytes: Some(64 * MIB),
        ports: vec![(80, web_port, "tcp")],
        ..ContainerSpec::new(&unique("web"), "sleep 3600")
    }
    .ecs_task(CLUSTER, &arn(&bridge_id), "web", "3", "app");
    let side = ContainerSpec {
        cpu_shares: Some(128),
        memory_reservation_bytes: Some(32 * MIB),
        ports: vec![(53, dns_port, "udp")],
        ..ContainerSpec::new(&unique("side"), "sleep 3600")
    }
    .ecs_task(CLUSTER, &arn(&bridge_id), "web", "3", "sidecar");
    let hosted = ContainerSpec {
        cpu_shares: Some(512),
        memory_bytes: Some(48 * MIB),
        memory_reservation_bytes: Some(16 * MIB),
        ports: vec![(host_port, host_port, "tcp")],
        network_mode: Some("host".into()),
        ..ContainerSpec::new(&unique("hosted"), "sleep 3600")
    }
    .ecs_task(CLUSTER, &arn(&host_id), "batch", "11", "worker");
    let pause = ContainerSpec {
        network_mode: Some("none".into()),
        ..ContainerSpec::new(&unique("pause"), "sleep 3600")
    }
    .ecs_task(CLUSTER, &arn(&vpc_id), "api", "1", "~internal~ecs~pause");
    let plain = ContainerSpec {
        cpu_shares: Some(2048),
        memory_bytes: Some(128 * MIB),
        ..ContainerSpec::new(&unique("plain"), "sleep 3600")
    };
    let mut cleanup = Cleanup(vec![]);
    for spec in [&web, &side, &hosted, &pause, &plain] {
        cleanup.0.push(spec.name.clone());
        require!(docker::start(&engine, spec).await, "docker");
    }
    let pause_id = docker::start(&engine, &pause).await.unwrap();
    let api = ContainerSpec {
        cpu_shares: Some(1024),
        memory_bytes: Some(100 * MIB),
        network_mode: Some(format!("container:{pause_id}")),
        ..ContainerSpec::new(&unique("api"), "sleep 3600")
    }
    .ecs_task(CLUSTER, &arn(&vpc_id), "api", "1", "app");
    cleanup.0.push(api.name.clone());
    docker::start(&engine, &api).await.unwrap();

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let observer = Observer::start(config(dir.path(), None, None), token.clone(), &tracker).await;
    let ours = [arn(&bridge_id), arn(&host_id), arn(&vpc_id)];
    let s = snapshot_where(&observer, Duration::from_secs(30), |s| {
        ours.iter().all(|a| {
            task(s, a)
                .is_some_and(|t| t.containers.len() == 2 || t.network_mode == NetworkMode::Host)
        })
    })
    .await
    .expect("the observer lists the three tasks");

    let bridge = task(&s, &arn(&bridge_id)).unwrap();
    assert_eq!(bridge.family, "web");
    assert_eq!(bridge.revision, "3");
    assert_eq!(bridge.network_mode, NetworkMode::Bridge);
    assert_eq!(bridge.cpu_units, 256 + 128);
    assert_eq!(
        bridge.memory_mib,
        64 + 32,
        "hard limit of one, soft reservation of the other"
    );
    assert_eq!(bridge.tcp_ports, BTreeSet::from([web_port]));
    assert_eq!(bridge.udp_ports, BTreeSet::from([dns_port]));
    assert_eq!(
        bridge
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["app", "sidecar"]
    );

    let host = task(&s, &arn(&host_id)).unwrap();
    assert_eq!(host.network_mode, NetworkMode::Host);
    assert_eq!(
        (host.cpu_units, host.memory_mib),
        (512, 16),
        "the soft reservation is what ECS subtracts"
    );
    assert_eq!(host.tcp_ports, BTreeSet::from([host_port]));

    let vpc = task(&s, &arn(&vpc_id)).unwrap();
    assert_eq!(vpc.network_mode, NetworkMode::Awsvpc);
    assert_eq!(
        (vpc.cpu_units, vpc.memory_mib),
        (1024, 100),
        "the pause container is not counted"
    );

    // The unlabelled container is listed apart and counted nowhere.
    assert!(s.others.iter().any(|o| o.name == plain.name));
    assert!(
        s.tasks
            .iter()
            .all(|t| t.containers.iter().all(|c| c.docker_name != plain.name))
    );

    // Reserved sums every task on the engine (other runs may have some): ours are included.
    assert!(s.reserved.cpu_units >= 256 + 128 + 512 + 1024);
    assert!(s.reserved.tcp_ports.contains(&web_port) && s.reserved.tcp_ports.contains(&host_port));
    assert!(s.reserved.udp_ports.contains(&dns_port));
    assert!(s.reserved.awsvpc_tasks >= 1);
    assert!(s.eni.used >= 1);
    // No ECS agent here: its fields are unknown and the snapshot says why.
    assert_eq!(s.ecs.container_instance_arn, None);
    assert!(
        s.unavailable.iter().any(|u| u.starts_with("ecs agent")),
        "{:?}",
        s.unavailable
    );

    // `status` JSON carries the same picture.
    let json = serde_json::to_value(&s).unwrap();
    assert!(
        json["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["network_mode"] == "awsvpc")
    );

    token.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_task_container_updates_the_snapshot_through_events() {
    let engine = require!(docker::connect().await, "docker");
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let observer = Observer::start(config(dir.path(), None, None), token.clone(), &tracker).await;
    let mut changes = observer.changes();
    // Let the first listing finish so the change below comes from the event stream.
    snapshot_where(&observer, Duration::from_secs(30), |s| {
        !s.unavailable.iter().any(|u| u.starts_with("docker"))
    })
    .await
    .expect("docker listed");

    let id = unique("stop");
    let spec = ContainerSpec {
        cpu_shares: Some(300),
        ..ContainerSpec::new(&unique("stopme"), "sleep 3600")
    }
    .ecs_task(CLUSTER, &arn(&id), "stopper", "1", "app");
    let _cleanup = Cleanup(vec![spec.name.clone()]);
    let before = *changes.borrow_and_update();
    require!(docker::start(&engine, &spec).await, "docker");
    snapshot_where(&observer, Duration::from_secs(10), |s| {
        task(s, &arn(&id)).is_some()
    })
    .await
    .expect("a started task appears through the event stream (resync is an hour away)");
    assert_ne!(
        *changes.borrow_and_update(),
        before,
        "changes() bumps on a task start"
    );

    docker::remove(&engine, &spec.name).await;
    // The bound is generous for a loaded machine; the event path is proven by the hour-long resync.
    snapshot_where(&observer, Duration::from_secs(10), |s| {
        task(s, &arn(&id)).is_none()
    })
    .await
    .expect("a stopped task disappears through the event stream");
    token.cancel();
    tracker.close();
    tracker.wait().await;
}

/// A unix-socket proxy in front of the Docker engine that the test can take down and bring back,
/// as a Docker daemon restart looks to a client.
struct SocketProxy {
    path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SocketProxy {
    fn start(path: &Path) -> SocketProxy {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(async move {
                    if let Ok(mut upstream) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
            // Dropping the JoinSet (when this task is aborted) aborts every open connection.
        });
        SocketProxy {
            path: path.to_path_buf(),
            task: Some(task),
        }
    }

    /// Closes the listener and every connection, and removes the socket file.
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_recovers_when_the_docker_socket_goes_away_and_comes_back() {
    let engine = require!(docker::connect().await, "docker");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let mut proxy = SocketProxy::start(&sock);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let observer = Observer::start(
        config(dir.path(), Some(&sock), None),
        token.clone(),
        &tracker,
    )
    .await;

    let (first_id, second_id) = (unique("before"), unique("after"));
    let first = ContainerSpec::new(&unique("before"), "sleep 3600").ecs_task(
        CLUSTER,
        &arn(&first_id),
        "rc",
        "1",
        "app",
    );
    let second = ContainerSpec::new(&unique("after"), "sleep 3600").ecs_task(
        CLUSTER,
        &arn(&second_id),
        "rc",
        "1",
        "app",
    );
    let _cleanup = Cleanup(vec![first.name.clone(), second.name.clone()]);
    require!(docker::start(&engine, &first).await, "docker");
    snapshot_where(&observer, Duration::from_secs(30), |s| {
        task(s, &arn(&first_id)).is_some()
    })
    .await
    .expect("seen through the proxy");

    proxy.stop();
    let down = snapshot_where(&observer, Duration::from_secs(20), |s| {
        s.unavailable.iter().any(|u| u.starts_with("docker"))
    })
    .await
    .expect("the lost engine is reported");
    assert!(
        task(&down, &arn(&first_id)).is_some(),
        "tasks are kept as last seen while the engine is away"
    );

    // While the observer cannot see: one task ends, another starts.
    docker::remove(&engine, &first.name).await;
    docker::start(&engine, &second).await.unwrap();

    let _proxy = SocketProxy::start(&sock);
    let s = snapshot_where(&observer, Duration::from_secs(30), |s| {
        task(s, &arn(&second_id)).is_some() && task(s, &arn(&first_id)).is_none()
    })
    .await
    .expect("after reconnecting, the resync shows what changed meanwhile");
    assert!(
        !s.unavailable.iter().any(|u| u.starts_with("docker")),
        "{:?}",
        s.unavailable
    );

    // And the event stream works again on the new connection.
    docker::remove(&engine, &second.name).await;
    snapshot_where(&observer, Duration::from_secs(10), |s| {
        task(s, &arn(&second_id)).is_none()
    })
    .await
    .expect("events flow after the reconnect");
    token.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eni_limit_comes_from_describe_instance_types_and_is_cached_on_disk() {
    let moto = require!(Moto::start(), "moto");
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config().await);
    let dir = tempfile::tempdir().unwrap();
    let limit = ecs_capacity_agent::eni::max_interfaces(&ec2, "c5.large", dir.path())
        .await
        .unwrap();
    assert_eq!(limit, 3);
    assert_eq!(
        ecs_capacity_agent::eni::cached_limit(dir.path(), "c5.large"),
        Some(3)
    );

    // From the cache: no EC2 call (this client points at a closed port).
    let dead = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&moto.sdk_config().await)
            .endpoint_url("http://127.0.0.1:9")
            .build(),
    );
    assert_eq!(
        ecs_capacity_agent::eni::max_interfaces(&dead, "c5.large", dir.path())
            .await
            .unwrap(),
        3
    );
    // An unknown type is a clear error naming it.
    let err = ecs_capacity_agent::eni::max_interfaces(&ec2, "x9.nonexistent", dir.path())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("x9.nonexistent"), "{err}");
}

fn json(v: serde_json::Value) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
}

/// A fake ECS agent serving the documented introspection shapes.
async fn fake_agent(task_arn: &str) -> (String, tokio::task::JoinHandle<()>) {
    use axum::{Router, routing::get};
    let metadata = serde_json::json!({
        "Cluster": CLUSTER,
        "ContainerInstanceArn": format!("arn:aws:ecs:us-east-1:123456789012:container-instance/{CLUSTER}/0f9e"),
        "Version": "Amazon ECS Agent - v1.30.0 (02ff320c)"
    });
    let tasks = serde_json::json!({"Tasks": [{
        "Arn": task_arn, "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING",
        "Family": "intro", "Version": "2",
        "Containers": [{"DockerId": "x", "DockerName": "ecs-intro-2-app-x", "Name": "app"}]
    }]});
    let app = Router::new()
        .route("/v1/metadata", get(move || async move { json(metadata) }))
        .route("/v1/tasks", get(move || async move { json(tasks) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_fills_cluster_instance_arn_and_task_statuses() {
    let id = unique("intro");
    let (url, server) = fake_agent(&arn(&id)).await;
    let client = ecs_capacity_agent::ecs_agent::Client::new(&url, Duration::from_secs(2));
    let (view, tasks, err) = client.observe().await;
    assert_eq!(err, None);
    assert_eq!(view.cluster.as_deref(), Some(CLUSTER));
    assert!(view.container_instance_arn.unwrap().ends_with("/0f9e"));
    assert_eq!(
        tasks.unwrap().tasks[0].known_status.as_deref(),
        Some("RUNNING")
    );

    // Through the observer: a running labelled container gets its task's statuses.
    let engine = require!(docker::connect().await, "docker");
    let dir = tempfile::tempdir().unwrap();
    let spec = ContainerSpec::new(&unique("intro"), "sleep 3600").ecs_task(
        CLUSTER,
        &arn(&id),
        "intro",
        "2",
        "app",
    );
    let _cleanup = Cleanup(vec![spec.name.clone()]);
    require!(docker::start(&engine, &spec).await, "docker");
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let observer = Observer::start(
        config(dir.path(), None, Some(&url)),
        token.clone(),
        &tracker,
    )
    .await;
    // The agent's task is listed at once (ECS placed it); wait until Docker runs it too.
    let s = snapshot_where(&observer, Duration::from_secs(30), |s| {
        task(s, &arn(&id)).is_some_and(|t| !t.containers.is_empty())
    })
    .await
    .expect("task listed");
    let t = task(&s, &arn(&id)).unwrap();
    assert_eq!(t.known_status.as_deref(), Some("RUNNING"));
    assert_eq!(t.desired_status.as_deref(), Some("RUNNING"));
    assert_eq!(s.ecs.cluster.as_deref(), Some(CLUSTER));
    assert!(
        !s.unavailable.iter().any(|u| u.starts_with("ecs agent")),
        "{:?}",
        s.unavailable
    );

    // The agent going away leaves the fields unknown, not the snapshot failed.
    server.abort();
    let s = snapshot_where(&observer, Duration::from_secs(10), |s| {
        s.ecs.cluster.is_none()
    })
    .await
    .expect("agent gone");
    assert!(task(&s, &arn(&id)).unwrap().known_status.is_none());
    assert!(s.unavailable.iter().any(|u| u.starts_with("ecs agent")));
    token.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_comes_from_the_containers_cgroups() {
    let engine = require!(docker::connect().await, "docker");
    let dir = tempfile::tempdir().unwrap();
    let (spin_id, hold_id) = (unique("spin"), unique("hold"));
    let spinner = ContainerSpec::new(&unique("spinner"), "while :; do :; done").ecs_task(
        CLUSTER,
        &arn(&spin_id),
        "spin",
        "1",
        "app",
    );
    // 16 MiB in the container's /dev/shm (tmpfs pages are charged to its memory cgroup), then sleep.
    let holder = ContainerSpec {
        memory_bytes: Some(256 * MIB),
        ..ContainerSpec::new(
            &unique("holder"),
            "head -c 16777216 /dev/zero > /dev/shm/held; sleep 3600",
        )
    }
    .ecs_task(CLUSTER, &arn(&hold_id), "hold", "1", "app");
    let _cleanup = Cleanup(vec![spinner.name.clone(), holder.name.clone()]);
    require!(docker::start(&engine, &spinner).await, "docker");
    require!(docker::start(&engine, &holder).await, "docker");

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let observer = Observer::start(config(dir.path(), None, None), token.clone(), &tracker).await;
    let first = snapshot_where(&observer, Duration::from_secs(30), |s| {
        task(s, &arn(&spin_id))
            .is_some_and(|t| t.usage.as_ref().is_some_and(|u| u.cpu_usage_usec.is_some()))
    })
    .await
    .expect("the spinner's cgroup is read");
    let cpu0 = task(&first, &arn(&spin_id))
        .unwrap()
        .usage
        .as_ref()
        .unwrap()
        .cpu_usage_usec
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = observer.snapshot().await.unwrap();
    let spin = task(&second, &arn(&spin_id))
        .unwrap()
        .usage
        .clone()
        .unwrap();
    assert!(
        spin.cpu_usage_usec.unwrap() > cpu0,
        "CPU time rises while spinning"
    );
    assert!(
        spin.cpu_cores.unwrap() > 0.05,
        "a busy loop shows as CPU in use: {spin:?}"
    );
    let c = &task(&second, &arn(&spin_id)).unwrap().containers[0];
    assert!(
        c.usage.as_ref().unwrap().cpu_usage_usec.is_some(),
        "per-container figures too"
    );

    let held = snapshot_where(&observer, Duration::from_secs(30), |s| {
        task(s, &arn(&hold_id))
            .and_then(|t| t.usage.as_ref())
            .and_then(|u| u.memory_bytes)
            .is_some_and(|b| b >= 16 * MIB as u64)
    })
    .await
    .expect("the holder's 16 MiB show in its memory usage");
    let u = held.usage.clone().expect("host usage summed over tasks");
    assert!(u.memory_bytes.unwrap() >= 16 * MIB as u64);
    assert!(
        !held.unavailable.iter().any(|u| u.starts_with("usage")),
        "{:?}",
        held.unavailable
    );
    token.cancel();
    tracker.close();
    tracker.wait().await;
}
