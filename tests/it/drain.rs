//! Self-drain against moto (ECS, Auto Scaling) behind the recording lifecycle proxy.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ecs::config::Credentials;
use ecs_capacity_agent::config::ImdsConfig;
use ecs_capacity_agent::drain::{
    AwsEffects, DrainStatus, Effects, Handles, Runner, Settings, Store, Target,
    drain_before_shutdown,
};
use ecs_capacity_agent::health::Health;
use ecs_capacity_agent::imds;
use ecs_capacity_agent::notice::{Notice, SpotAction};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::require;
use crate::support::imds::{FakeImds, Fault};
use crate::support::lifecycle::LifecycleProxy;
use crate::support::moto::{Moto, run_instance};

const CLUSTER: &str = "drain-test";
const GROUP: &str = "drain-asg";
const HOOK: &str = "drain-hook";

/// moto, the proxy in front of it, an SDK config for the proxy, a container instance running one task.
struct World {
    moto: Moto,
    proxy: LifecycleProxy,
    sdk: SdkConfig,
    ecs: aws_sdk_ecs::Client,
    container_instance: String,
    /// This instance's EC2 id (moto registers only instances its EC2 knows).
    instance: String,
    task: String,
}

async fn world() -> Result<World, String> {
    let moto = Moto::start()?;
    let proxy = LifecycleProxy::start(moto.url()).await;
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .endpoint_url(proxy.url())
        .load()
        .await;
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    ecs.create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .map_err(|e| format!("create cluster: {e:?}"))?;
    // Another instance in the cluster, so finding ours by instance id is a real choice.
    // Another instance in the cluster too; moto's RegisterContainerInstance wants both to exist in EC2.
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(run_instance(&sdk, "c5.large").await?);
    }
    let instance = ids[1].clone();
    for id in &ids {
        crate::support::moto::register(&ecs, CLUSTER, id).await?;
    }
    let arns = ecs
        .list_container_instances()
        .cluster(CLUSTER)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?
        .container_instance_arns
        .unwrap_or_default();
    let described = ecs
        .describe_container_instances()
        .cluster(CLUSTER)
        .set_container_instances(Some(arns))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let container_instance = described
        .container_instances
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.ec2_instance_id.as_deref() == Some(instance.as_str()))
        .and_then(|c| c.container_instance_arn)
        .ok_or("registered instance not found")?;
    ecs.register_task_definition()
        .family("web")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("web")
                .image("busybox")
                .cpu(128)
                .memory(64)
                .build(),
        )
        .send()
        .await
        .map_err(|e| format!("task definition: {e:?}"))?;
    let started = ecs
        .start_task()
        .cluster(CLUSTER)
        .task_definition("web")
        .container_instances(&container_instance)
        .send()
        .await
        .map_err(|e| format!("start task: {e:?}"))?;
    let task = started
        .tasks
        .unwrap_or_default()
        .into_iter()
        .next()
        .and_then(|t| t.task_arn)
        .ok_or("no task started")?;
    let asg = aws_sdk_autoscaling::Client::new(&sdk);
    asg.put_lifecycle_hook()
        .auto_scaling_group_name(GROUP)
        .lifecycle_hook_name(HOOK)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
        .heartbeat_timeout(3)
        .send()
        .await
        .map_err(|e| format!("lifecycle hook: {e:?}"))?;
    Ok(World {
        moto,
        proxy,
        sdk,
        ecs,
        container_instance,
        instance,
        task,
    })
}

impl World {
    fn effects(&self) -> AwsEffects {
        self.effects_for_group(Some(GROUP))
    }

    /// `group: None` finds the group through DescribeAutoScalingInstances, as an unconfigured daemon does.
    fn effects_for_group(&self, group: Option<&str>) -> AwsEffects {
        AwsEffects::new(
            &self.sdk,
            Target {
                cluster: CLUSTER.into(),
                instance_id: self.instance.clone(),
                container_instance_arn: None,
                autoscaling_group: group.map(str::to_string),
                lifecycle_hook: None,
            },
        )
    }

    /// Waits (30 s at most) until ECS shows this container instance in `status`.
    async fn until_in_ecs(&self, status: &str) {
        until(30, &format!("{status} in moto"), async || {
            self.status_in_ecs().await == status
        })
        .await;
    }

    async fn status_in_ecs(&self) -> String {
        self.ecs
            .describe_container_instances()
            .cluster(CLUSTER)
            .container_instances(&self.container_instance)
            .send()
            .await
            .expect("describe")
            .container_instances
            .unwrap_or_default()
            .into_iter()
            .next()
            .and_then(|c| c.status)
            .unwrap_or_default()
    }

    async fn stop_task(&self) {
        self.ecs
            .stop_task()
            .cluster(CLUSTER)
            .task(&self.task)
            .send()
            .await
            .expect("stop task");
    }

    fn continues(&self) -> usize {
        self.proxy
            .calls_of("CompleteLifecycleAction")
            .iter()
            .filter(|c| c.param("LifecycleActionResult") == Some("CONTINUE"))
            .count()
    }
}

fn settings() -> Settings {
    Settings {
        check_interval: Duration::from_millis(200),
        ..Settings::default()
    }
}

struct Running {
    token: CancellationToken,
    tx: mpsc::Sender<Notice>,
    status: tokio::sync::watch::Receiver<DrainStatus>,
    handles: Handles,
    task: tokio::task::JoinHandle<()>,
}

fn start(world: &World, dir: &std::path::Path) -> Running {
    start_with(world.effects(), dir)
}

fn start_with(effects: impl Effects, dir: &std::path::Path) -> Running {
    let (runner, handles) = Runner::new(
        settings(),
        Store::open(dir).expect("state dir"),
        effects,
        Arc::new(Health::default()),
    );
    let (tx, rx) = mpsc::channel(16);
    let token = CancellationToken::new();
    let task = tokio::spawn(runner.run(rx, token.clone()));
    Running {
        token,
        tx,
        status: handles.status.clone(),
        handles,
        task,
    }
}

/// Polls `check` every 50 ms for at most `limit_secs` (a generous bound, not a speed assertion).
async fn until(limit_secs: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(limit_secs),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spot_notice() -> Notice {
    Notice::Spot {
        action: SpotAction::Terminate,
        time: SystemTime::now() + Duration::from_secs(120),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_notice_sets_the_instance_draining_in_ecs_and_ends_when_tasks_stop() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();
    let r = start(&w, dir.path());
    r.tx.send(spot_notice()).await.unwrap();
    w.until_in_ecs("DRAINING").await;
    let draining = r.status.borrow().clone();
    assert!(
        matches!(draining, DrainStatus::Draining { .. }),
        "{draining:?}"
    );
    w.stop_task().await;
    let mut status = r.status.clone();
    until(30, "drained", async || {
        matches!(
            *status.borrow_and_update(),
            DrainStatus::Drained { forced: false, .. }
        )
    })
    .await;
    assert_eq!(w.proxy.calls_of("CompleteLifecycleAction").len(), 0);
    r.token.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_termination_heartbeats_while_tasks_remain_then_continues_once() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();
    let r = start(&w, dir.path());
    r.tx.send(Notice::AutoScalingTerminated {
        seen_at: SystemTime::now(),
    })
    .await
    .unwrap();
    w.until_in_ecs("DRAINING").await;
    // Heartbeat timeout 3 s → one heartbeat a second while the task runs.
    until(30, "two heartbeats", async || {
        w.proxy.calls_of("RecordLifecycleActionHeartbeat").len() >= 2
    })
    .await;
    assert_eq!(w.continues(), 0, "not completed while a task runs");
    let hb = &w.proxy.calls_of("RecordLifecycleActionHeartbeat")[0];
    assert_eq!(hb.param("AutoScalingGroupName"), Some(GROUP));
    assert_eq!(hb.param("LifecycleHookName"), Some(HOOK));
    assert_eq!(hb.param("InstanceId"), Some(w.instance.as_str()));
    w.stop_task().await;
    until(30, "CONTINUE", async || w.continues() == 1).await;
    // Ticks keep coming; nothing more is sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.proxy.calls_of("CompleteLifecycleAction").len(), 1);
    assert!(matches!(
        *r.status.borrow(),
        DrainStatus::Drained { forced: false, .. }
    ));
    r.token.cancel();
    r.task.await.unwrap();
}

/// The group is not configured: the drain finds it through DescribeAutoScalingInstances (the instance
/// is attached to a real group in moto) and its terminating hook through DescribeLifecycleHooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_group_and_hook_are_found_from_the_instance_id() {
    const FOUND_GROUP: &str = "found-asg";
    const FOUND_HOOK: &str = "found-hook";
    let w = require!(world().await, "moto");
    let asg = aws_sdk_autoscaling::Client::new(&w.sdk);
    asg.create_launch_configuration()
        .launch_configuration_name("found-lc")
        .image_id("ami-12c6146b")
        .instance_type("c5.large")
        .send()
        .await
        .expect("launch configuration");
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(FOUND_GROUP)
        .launch_configuration_name("found-lc")
        .min_size(0)
        .max_size(2)
        .desired_capacity(0)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("auto scaling group");
    asg.attach_instances()
        .auto_scaling_group_name(FOUND_GROUP)
        .instance_ids(&w.instance)
        .send()
        .await
        .expect("attach this instance to the group");
    // A launching hook on the same group, which must not be taken for the terminating one.
    for (name, transition) in [
        ("launch-hook", "autoscaling:EC2_INSTANCE_LAUNCHING"),
        (FOUND_HOOK, "autoscaling:EC2_INSTANCE_TERMINATING"),
    ] {
        asg.put_lifecycle_hook()
            .auto_scaling_group_name(FOUND_GROUP)
            .lifecycle_hook_name(name)
            .lifecycle_transition(transition)
            .heartbeat_timeout(3)
            .send()
            .await
            .expect("lifecycle hook");
    }

    let dir = tempfile::tempdir().unwrap();
    let r = start_with(w.effects_for_group(None), dir.path());
    r.tx.send(Notice::AutoScalingTerminated {
        seen_at: SystemTime::now(),
    })
    .await
    .unwrap();
    until(30, "a heartbeat", async || {
        !w.proxy
            .calls_of("RecordLifecycleActionHeartbeat")
            .is_empty()
    })
    .await;
    let lookups = w.proxy.calls_of("DescribeAutoScalingInstances");
    assert_eq!(lookups.len(), 1, "looked up once: {lookups:?}");
    assert_eq!(
        lookups[0].param("InstanceIds.member.1"),
        Some(w.instance.as_str())
    );
    let hb = &w.proxy.calls_of("RecordLifecycleActionHeartbeat")[0];
    assert_eq!(hb.param("AutoScalingGroupName"), Some(FOUND_GROUP));
    assert_eq!(hb.param("LifecycleHookName"), Some(FOUND_HOOK));
    w.stop_task().await;
    until(30, "CONTINUE", async || w.continues() == 1).await;
    let done = &w.proxy.calls_of("CompleteLifecycleAction")[0];
    assert_eq!(done.param("AutoScalingGroupName"), Some(FOUND_GROUP));
    assert_eq!(done.param("LifecycleHookName"), Some(FOUND_HOOK));
    assert_eq!(done.param("InstanceId"), Some(w.instance.as_str()));
    r.token.cancel();
    r.task.await.unwrap();
}

/// The daemon's wiring (IMDS pollers → drain runner → ECS) while IMDS misbehaves: 500s, garbage,
/// answers slower than the client's timeout and a malformed notice are survived and never drain;
/// the real notice that follows is acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_errors_garbage_and_timeouts_then_the_notice_is_acted_on() {
    let w = require!(world().await, "moto");
    let fake = FakeImds::start().await;
    let cfg = ImdsConfig {
        poll_interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
        ..ImdsConfig::default()
    };
    let client = imds::Client::with_endpoint(&cfg, &fake.url()).expect("IMDS client");
    let health = Arc::new(Health::default());
    let dir = tempfile::tempdir().unwrap();
    let (runner, handles) = Runner::new(
        settings(),
        Store::open(dir.path()).unwrap(),
        w.effects(),
        health.clone(),
    );
    let (tx, rx) = mpsc::channel(32);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    imds::spawn_pollers(
        Arc::new(client),
        &cfg,
        tx,
        token.clone(),
        &tracker,
        health.clone(),
    );
    tracker.spawn(runner.run(rx, token.clone()));
    tracker.close();

    let polls_pass = async |n: u64| {
        assert!(
            fake.polls_pass(n, Duration::from_secs(60)).await,
            "the pollers stopped polling"
        );
    };
    polls_pass(2).await;
    fake.set_fault(Some(Fault::Status(500)));
    polls_pass(3).await;
    fake.set_fault(Some(Fault::Garbage("<html>oops</html>".into())));
    polls_pass(3).await;
    fake.set_fault(Some(Fault::Hang(Duration::from_secs(2))));
    polls_pass(2).await;
    fake.set_fault(None);
    // A notice whose time is not a time is malformed, not a drain.
    fake.set(
        "spot/instance-action",
        r#"{"action":"terminate","time":"soon"}"#,
    );
    polls_pass(3).await;
    assert!(
        w.proxy.calls_of("UpdateContainerInstancesState").is_empty(),
        "errors and garbage drained the instance"
    );
    assert!(matches!(*handles.status.borrow(), DrainStatus::Idle { .. }));
    let errors = health.errors();
    for kind in ["imds_status", "imds_timeout", "imds_malformed"] {
        assert!(
            errors.get(kind).copied().unwrap_or(0) > 0,
            "{kind} not counted: {errors:?}"
        );
    }

    fake.set_spot_terminate(SystemTime::now() + Duration::from_secs(120));
    w.until_in_ecs("DRAINING").await;
    assert!(matches!(
        *handles.status.borrow(),
        DrainStatus::Draining { .. }
    ));
    assert_eq!(w.proxy.calls_of("UpdateContainerInstancesState").len(), 1);
    token.cancel();
    tracker.wait().await;
}

/// Tasks of an ignored family (a daemon service such as a log router) are not waited for; the
/// others are. Counting with ignored families goes through ListTasks + DescribeTasks, so moto's task
/// states are pinned: RUNNING until stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_families_are_not_waited_for() {
    let w = require!(world().await, "moto");
    w.moto.pin_task_states().await;
    w.ecs
        .register_task_definition()
        .family("log-router")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("log-router")
                .image("busybox")
                .cpu(64)
                .memory(32)
                .build(),
        )
        .send()
        .await
        .expect("task definition");
    w.ecs
        .start_task()
        .cluster(CLUSTER)
        .task_definition("log-router")
        .container_instances(&w.container_instance)
        .send()
        .await
        .expect("start the daemon task");

    let dir = tempfile::tempdir().unwrap();
    let r = start_with(
        w.effects()
            .with_ignored_families(vec!["log-router".to_string()]),
        dir.path(),
    );
    r.tx.send(spot_notice()).await.unwrap();
    let mut status = r.status.clone();
    until(30, "DRAINING, waiting for web only", async || {
        matches!(
            *status.borrow_and_update(),
            DrainStatus::Draining {
                tasks_remaining: Some(1),
                ..
            }
        )
    })
    .await;
    // Several counts later (one per 200 ms), web is still waited for.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        matches!(
            *r.status.borrow(),
            DrainStatus::Draining {
                tasks_remaining: Some(1),
                ..
            }
        ),
        "{:?}",
        *r.status.borrow()
    );
    assert!(w.proxy.calls_of("DescribeTasks").len() >= 3);
    w.stop_task().await;
    until(
        30,
        "drained with the log router still running",
        async || matches!(*status.borrow_and_update(), DrainStatus::Drained { .. }),
    )
    .await;
    r.token.cancel();
    r.task.await.unwrap();
}

/// The daemon looks its container instance up at start (`resolve_ahead`), so a notice costs one
/// request: after it, no ListContainerInstances, and the DRAINING update goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_instance_looked_up_ahead_leaves_the_drain_one_request() {
    let w = require!(world().await, "moto");
    let effects = Arc::new(w.effects());
    // The world's set-up listed the instances once already.
    let listed = w.proxy.calls_of("ListContainerInstances").len();
    effects.resolve_ahead(&CancellationToken::new()).await;
    assert_eq!(w.proxy.calls_of("ListContainerInstances").len(), listed + 1);
    assert_eq!(
        effects.container_instance_arn().await.ok().as_deref(),
        Some(w.container_instance.as_str())
    );
    let before = w.proxy.calls().len();

    let dir = tempfile::tempdir().unwrap();
    let r = start_with(effects.clone(), dir.path());
    r.tx.send(spot_notice()).await.unwrap();
    w.until_in_ecs("DRAINING").await;
    r.token.cancel();
    r.task.await.unwrap();
    let after: Vec<String> = w.proxy.calls()[before..]
        .iter()
        .map(|c| c.action.clone())
        .collect();
    // DescribeContainerInstances: this test's own status polls and the drain's task count.
    assert!(
        after
            .iter()
            .all(|a| a == "UpdateContainerInstancesState" || a == "DescribeContainerInstances"),
        "{after:?}"
    );
    assert_eq!(
        after
            .iter()
            .filter(|a| *a == "UpdateContainerInstancesState")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_drain_and_restarted_resumes_and_continues_exactly_once() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();
    let first = start(&w, dir.path());
    first
        .tx
        .send(Notice::AutoScalingTerminated {
            seen_at: SystemTime::now(),
        })
        .await
        .unwrap();
    until(30, "a heartbeat", async || {
        !w.proxy
            .calls_of("RecordLifecycleActionHeartbeat")
            .is_empty()
    })
    .await;
    // Killed, not shut down: the task is dropped wherever it is.
    first.task.abort();
    let _ = first.task.await;
    let heartbeats = w.proxy.calls_of("RecordLifecycleActionHeartbeat").len();

    let second = start(&w, dir.path());
    until(30, "heartbeats resumed", async || {
        w.proxy.calls_of("RecordLifecycleActionHeartbeat").len() > heartbeats
    })
    .await;
    assert!(matches!(
        *second.status.borrow(),
        DrainStatus::Draining { .. }
    ));
    // The IMDS poller of a restarted daemon sends the notice again: it is not a second drain.
    second
        .tx
        .send(Notice::AutoScalingTerminated {
            seen_at: SystemTime::now(),
        })
        .await
        .unwrap();
    w.stop_task().await;
    until(30, "CONTINUE", async || w.continues() == 1).await;
    second.token.cancel();
    second.task.await.unwrap();

    // A third start after the end does nothing more.
    let third = start(&w, dir.path());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.proxy.calls_of("CompleteLifecycleAction").len(), 1);
    third.token.cancel();
    third.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_notice_many_times_is_one_drain() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();
    let r = start(&w, dir.path());
    let notice = spot_notice();
    for _ in 0..20 {
        r.tx.send(notice.clone()).await.unwrap();
    }
    w.until_in_ecs("DRAINING").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let updates = w.proxy.calls_of("UpdateContainerInstancesState");
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert!(updates[0].body.contains("DRAINING"));
    r.token.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_docker_view_keeps_the_drain_waiting_until_it_agrees() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();
    let (local_tx, local_rx) = tokio::sync::watch::channel(Some(vec!["web".to_string()]));
    let (runner, handles) = Runner::new(
        settings(),
        Store::open(dir.path()).unwrap(),
        w.effects()
            .with_local_tasks(move || local_rx.borrow().clone()),
        Arc::new(Health::default()),
    );
    let (tx, rx) = mpsc::channel(4);
    let token = CancellationToken::new();
    let task = tokio::spawn(runner.run(rx, token.clone()));
    tx.send(spot_notice()).await.unwrap();
    w.stop_task().await;
    let mut status = handles.status.clone();
    until(30, "ECS says 0 but Docker still runs web", async || {
        matches!(
            *status.borrow_and_update(),
            DrainStatus::Draining {
                tasks_remaining: Some(1),
                ..
            }
        )
    })
    .await;
    local_tx.send_replace(Some(vec![]));
    until(30, "drained", async || {
        matches!(*status.borrow_and_update(), DrainStatus::Drained { .. })
    })
    .await;
    token.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drain_waits_for_tasks_bounded_by_the_timeout() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();
    let r = start(&w, dir.path());
    // Not a system shutdown: nothing happens.
    assert!(
        drain_before_shutdown(&r.handles, Duration::from_secs(1), || false)
            .await
            .is_none()
    );
    assert_eq!(w.status_in_ecs().await, "ACTIVE");
    // A task that never stops: the drain gives up at the timeout, still DRAINING.
    let status = drain_before_shutdown(&r.handles, Duration::from_secs(1), || true)
        .await
        .expect("drained on shutdown");
    assert!(matches!(status, DrainStatus::Draining { .. }), "{status:?}");
    assert_eq!(w.status_in_ecs().await, "DRAINING");
    w.stop_task().await;
    let status = drain_before_shutdown(&r.handles, Duration::from_secs(30), || true)
        .await
        .expect("drained on shutdown");
    assert!(matches!(status, DrainStatus::Drained { .. }), "{status:?}");
    r.token.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drain_joins_a_notice_drain_in_the_one_runner() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();
    let r = start(&w, dir.path());
    r.tx.send(spot_notice()).await.unwrap();
    w.until_in_ecs("DRAINING").await;
    // The task still runs: the shutdown drain waits its timeout and the drain goes on.
    let status = drain_before_shutdown(&r.handles, Duration::from_secs(1), || true)
        .await
        .expect("drained on shutdown");
    let DrainStatus::Draining { reason, .. } = &status else {
        panic!("{status:?}");
    };
    assert!(reason.contains("spot"), "{reason}");
    assert!(reason.contains("system shutdown"), "{reason}");
    // The status the runner publishes is the one the shutdown drain changed.
    assert!(
        matches!(&*r.status.borrow(), DrainStatus::Draining { reason, .. } if reason.contains("system shutdown")),
        "{:?}",
        *r.status.borrow()
    );
    let updates = w.proxy.calls_of("UpdateContainerInstancesState");
    assert_eq!(
        updates.len(),
        1,
        "one drain, set DRAINING once: {updates:?}"
    );

    // The one drain ends when the task is gone.
    w.stop_task().await;
    let mut status = r.status.clone();
    until(30, "drained", async || {
        matches!(*status.borrow_and_update(), DrainStatus::Drained { .. })
    })
    .await;
    assert!(!r.task.is_finished(), "the runner runs on until cancelled");
    let updates = w.proxy.calls_of("UpdateContainerInstancesState");
    assert_eq!(updates.len(), 1, "{updates:?}");
    r.token.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drain_without_a_running_runner_returns_at_once() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();
    let r = start(&w, dir.path());
    r.token.cancel();
    r.task.await.unwrap();
    let started = std::time::Instant::now();
    let status = drain_before_shutdown(&r.handles, Duration::from_secs(30), || true)
        .await
        .expect("a system shutdown");
    assert!(matches!(status, DrainStatus::Idle { .. }), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(w.status_in_ecs().await, "ACTIVE");
}

/// Runs the binary's `args` against the proxy with a config in `dir`.
async fn cli(w: &World, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ncluster = \"{CLUSTER}\"\naws = \"on\"\nstate_dir = \"{}\"\necs_config_path = \"{}\"\n[drain]\ncheck_interval = \"200ms\"\n",
            dir.join("state").display(),
            dir.join("ecs.config").display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ecs-capacity-agent"));
    cmd.args(args)
        .arg("--config")
        .arg(&config)
        .env_remove("ECS_CAPACITY_AGENT_CONFIG")
        .env("AWS_ENDPOINT_URL", w.proxy.url())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9");
    tokio::task::spawn_blocking(move || cmd.output().expect("run the binary"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drain_waits_for_tasks_and_activate_returns_to_active() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();

    let out = cli(
        &w,
        dir.path(),
        &["drain", "--instance-id", w.instance.as_str()],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.status_in_ecs().await, "DRAINING");

    // A task remains: --wait gives up at the timeout, saying how many remain, exit 75
    // (EX_TEMPFAIL: not a missing service, and running it again keeps waiting).
    let out = cli(
        &w,
        dir.path(),
        &[
            "drain",
            "--instance-id",
            w.instance.as_str(),
            "--wait",
            "--timeout",
            "1s",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("tasks remaining: 1"), "{stderr}");
    assert!(stderr.contains("1 task(s) remaining"), "{stderr}");

    w.stop_task().await;
    let out = cli(
        &w,
        dir.path(),
        &["drain", "--instance-id", w.instance.as_str(), "--wait"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("drained"), "{stdout}");

    let out = cli(
        &w,
        dir.path(),
        &["activate", "--instance-id", w.instance.as_str()],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.status_in_ecs().await, "ACTIVE");
    assert!(String::from_utf8_lossy(&out.stdout).contains("active"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drain_of_an_instance_not_in_the_cluster_says_so() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        &w,
        dir.path(),
        &["drain", "--instance-id", "i-0aaaaaaaaaaaaaaa1"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no container instance for EC2 instance i-0aaaaaaaaaaaaaaa1"),
        "{stderr}"
    );
    // No id given and IMDS not answering: the error says how to give one.
    let out = cli(&w, dir.path(), &["drain"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--instance-id"));
}

/// The daemon's drain wiring in one boot: the IMDS pollers against the fake IMDS, the runner (told
/// the boot id) over `dir`, moto behind the proxy.
struct Booted {
    token: CancellationToken,
    tracker: TaskTracker,
    status: tokio::sync::watch::Receiver<DrainStatus>,
}

fn boot(w: &World, fake: &FakeImds, dir: &std::path::Path, boot_id: &str) -> Booted {
    let cfg = ImdsConfig {
        poll_interval: Duration::from_millis(100),
        ..ImdsConfig::default()
    };
    let client = imds::Client::with_endpoint(&cfg, &fake.url()).expect("IMDS client");
    let health = Arc::new(Health::default());
    let (runner, handles) = Runner::new(
        settings(),
        Store::open(dir).unwrap(),
        w.effects(),
        health.clone(),
    );
    let runner = runner.with_boot_id(Some(boot_id.into()));
    let (tx, rx) = mpsc::channel(32);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    imds::spawn_pollers(Arc::new(client), &cfg, tx, token.clone(), &tracker, health);
    tracker.spawn(runner.run(rx, token.clone()));
    tracker.close();
    Booted {
        token,
        tracker,
        status: handles.status,
    }
}

impl Booted {
    async fn stop(self) {
        self.token.cancel();
        self.tracker.wait().await;
    }
}

const SCHEDULED: &str = "events/maintenance/scheduled";
const HISTORY: &str = "events/maintenance/history";

/// One maintenance event as IMDS lists it, NotBefore two minutes from now (within the lead time:
/// the drain starts at once).
fn maintenance_event(id: &str, code: &str, state: &str) -> String {
    let not_before = time::OffsetDateTime::from(SystemTime::now() + Duration::from_secs(120))
        .format(time::macros::format_description!(
            "[day padding:none] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ))
        .unwrap();
    format!(
        r#"[{{"NotBefore":"{not_before}","Code":"{code}","Description":"scheduled {code}",
            "EventId":"{id}","State":"{state}"}}]"#
    )
}

impl World {
    async fn set_status_in_ecs(&self, status: aws_sdk_ecs::types::ContainerInstanceStatus) {
        self.ecs
            .update_container_instances_state()
            .cluster(CLUSTER)
            .container_instances(&self.container_instance)
            .status(status)
            .send()
            .await
            .expect("update container instance state");
    }
}

/// A reboot-type maintenance drains; after the reboot (a new boot id, the event completed) the
/// restarted daemon sets the instance ACTIVE again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_maintenance_drains_and_a_restart_in_a_new_boot_sets_active_again() {
    let w = require!(world().await, "moto");
    let fake = FakeImds::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.set(
        SCHEDULED,
        &maintenance_event("instance-event-r1", "system-reboot", "active"),
    );
    let first = boot(&w, &fake, dir.path(), "boot-a");
    w.until_in_ecs("DRAINING").await;
    first.stop().await;
    // The reboot: the event moves to the history, completed.
    fake.set(SCHEDULED, "[]");
    fake.set(
        HISTORY,
        &maintenance_event("instance-event-r1", "system-reboot", "completed"),
    );
    let second = boot(&w, &fake, dir.path(), "boot-b");
    w.until_in_ecs("ACTIVE").await;
    assert!(matches!(*second.status.borrow(), DrainStatus::Idle { .. }));
    second.stop().await;
}

/// The same, on a host someone else had set DRAINING: it stays DRAINING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_someone_else_set_draining_stays_draining_after_the_reboot() {
    let w = require!(world().await, "moto");
    w.set_status_in_ecs(aws_sdk_ecs::types::ContainerInstanceStatus::Draining)
        .await;
    let fake = FakeImds::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.set(
        SCHEDULED,
        &maintenance_event("instance-event-r2", "instance-reboot", "active"),
    );
    let first = boot(&w, &fake, dir.path(), "boot-a");
    let mut status = first.status.clone();
    until(30, "the drain", async || {
        matches!(*status.borrow_and_update(), DrainStatus::Draining { .. })
    })
    .await;
    until(30, "DRAINING sent", async || {
        !w.proxy.calls_of("UpdateContainerInstancesState").is_empty()
    })
    .await;
    first.stop().await;
    fake.set(SCHEDULED, "[]");
    let second = boot(&w, &fake, dir.path(), "boot-b");
    let mut status = second.status.clone();
    until(30, "the drain undone", async || {
        matches!(*status.borrow_and_update(), DrainStatus::Idle { .. })
    })
    .await;
    // Several checks later, still DRAINING: only this test's DRAINING and the first drain's were
    // ever sent, never an ACTIVE.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.status_in_ecs().await, "DRAINING");
    assert_eq!(w.proxy.calls_of("UpdateContainerInstancesState").len(), 2);
    second.stop().await;
}

/// A maintenance event canceled (listed canceled in the history) stands its drain down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceled_maintenance_sets_the_host_active_again() {
    let w = require!(world().await, "moto");
    let fake = FakeImds::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.set(
        SCHEDULED,
        &maintenance_event("instance-event-c1", "instance-stop", "active"),
    );
    let daemon = boot(&w, &fake, dir.path(), "boot-a");
    w.until_in_ecs("DRAINING").await;
    fake.set(
        HISTORY,
        &maintenance_event("instance-event-c1", "instance-stop", "canceled"),
    );
    w.until_in_ecs("ACTIVE").await;
    assert!(matches!(*daemon.status.borrow(), DrainStatus::Idle { .. }));
    daemon.stop().await;
}

/// InService → Warmed:Stopped (back to the warm pool on scale in) drains the host, and the
/// terminating hook's action is completed once the task is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_service_to_warmed_stopped_is_drained_and_the_hook_continued_once() {
    const LIFECYCLE: &str = "autoscaling/target-lifecycle-state";
    let w = require!(world().await, "moto");
    let fake = FakeImds::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.set(LIFECYCLE, "InService");
    let daemon = boot(&w, &fake, dir.path(), "boot-a");
    assert!(fake.polls_pass(3, Duration::from_secs(60)).await);
    assert_eq!(w.status_in_ecs().await, "ACTIVE");
    fake.set(LIFECYCLE, "Warmed:Stopped");
    w.until_in_ecs("DRAINING").await;
    until(30, "a heartbeat", async || {
        !w.proxy
            .calls_of("RecordLifecycleActionHeartbeat")
            .is_empty()
    })
    .await;
    w.stop_task().await;
    until(30, "CONTINUE", async || w.continues() == 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.proxy.calls_of("CompleteLifecycleAction").len(), 1);
    let status = daemon.status.borrow().clone();
    assert!(
        matches!(status, DrainStatus::Drained { forced: false, .. }),
        "{status:?}"
    );
    daemon.stop().await;
}

/// A drain that reaches its bound (`max_duration`) with tasks left: `stop_lead` before it the task
/// no service owns is stopped (StopTask, with the agent's reason), the service's task is left to
/// its scheduler, and at the bound the lifecycle action completes with CONTINUE, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_bound_unowned_tasks_are_stopped_and_the_hook_continued_once() {
    use ecs_capacity_agent::config::StopRemaining;
    let w = require!(world().await, "moto");
    w.moto.pin_task_states().await;
    let owned = w
        .ecs
        .start_task()
        .cluster(CLUSTER)
        .task_definition("web")
        .group("service:api")
        .container_instances(&w.container_instance)
        .send()
        .await
        .expect("start the service's task")
        .tasks
        .unwrap_or_default()
        .into_iter()
        .next()
        .and_then(|t| t.task_arn)
        .expect("service task");
    let dir = tempfile::tempdir().unwrap();
    let (runner, handles) = Runner::new(
        Settings {
            max_duration: Duration::from_secs(6),
            stop_lead: Duration::from_secs(4),
            stop_remaining: StopRemaining::Unowned,
            ..settings()
        },
        Store::open(dir.path()).expect("state dir"),
        w.effects(),
        Arc::new(Health::default()),
    );
    let (tx, rx) = mpsc::channel(16);
    let token = CancellationToken::new();
    let task = tokio::spawn(runner.run(rx, token.clone()));
    tx.send(Notice::AutoScalingTerminated {
        seen_at: SystemTime::now(),
    })
    .await
    .unwrap();
    until(30, "StopTask of the standalone task", async || {
        !w.proxy.calls_of("StopTask").is_empty()
    })
    .await;
    let stops = w.proxy.calls_of("StopTask");
    assert_eq!(stops.len(), 1, "only the task no service owns: {stops:?}");
    assert_eq!(stops[0].param("task"), Some(w.task.as_str()));
    assert!(
        stops[0]
            .param("reason")
            .is_some_and(|r| r.contains("ecs-capacity-agent")),
        "{stops:?}"
    );
    assert_eq!(w.continues(), 0, "the service's task still runs");
    let mut status = handles.status.clone();
    until(30, "CONTINUE at the bound", async || w.continues() == 1).await;
    until(30, "drained, forced", async || {
        matches!(
            *status.borrow_and_update(),
            DrainStatus::Drained { forced: true, .. }
        )
    })
    .await;
    // The service's task was not touched; nothing more is sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.proxy.calls_of("CompleteLifecycleAction").len(), 1);
    assert!(
        w.proxy
            .calls_of("StopTask")
            .iter()
            .all(|c| c.param("task") != Some(owned.as_str()))
    );
    token.cancel();
    task.await.unwrap();
}

/// The ECS agent registered the instance again (a new container instance ARN): the cached ARN is
/// MISSING, which is looked up again instead of failing the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_instance_registered_again_is_looked_up_again_and_drained() {
    let w = require!(world().await, "moto");
    let dir = tempfile::tempdir().unwrap();
    // The daemon found its ARN before the agent re-registered.
    let effects = w.effects();
    assert_eq!(
        effects.container_instance_arn().await.expect("found"),
        w.container_instance
    );
    w.ecs
        .deregister_container_instance()
        .cluster(CLUSTER)
        .container_instance(&w.container_instance)
        .force(true)
        .send()
        .await
        .expect("deregister");
    let registered = crate::support::moto::register(&w.ecs, CLUSTER, &w.instance)
        .await
        .expect("register again");
    assert_ne!(registered, w.container_instance);
    let r = start_with(effects, dir.path());
    r.tx.send(spot_notice()).await.unwrap();
    let status_of = async |arn: &str| {
        w.ecs
            .describe_container_instances()
            .cluster(CLUSTER)
            .container_instances(arn)
            .send()
            .await
            .expect("describe")
            .container_instances
            .unwrap_or_default()
            .into_iter()
            .next()
            .and_then(|c| c.status)
            .unwrap_or_default()
    };
    until(30, "the new container instance DRAINING", async || {
        status_of(&registered).await == "DRAINING"
    })
    .await;
    // The new container instance runs nothing: drained, not failed.
    let status = r.status.borrow().clone();
    assert!(
        matches!(
            status,
            DrainStatus::Draining { .. } | DrainStatus::Drained { forced: false, .. }
        ),
        "{status:?}"
    );
    r.token.cancel();
    r.task.await.unwrap();
}
