//! Managed scale-in protection against moto's Auto Scaling and ECS: a busy host protects itself, an
//! idle one lifts its protection after the grace, and the least-loaded busy host volunteers and
//! protects itself again when it is not taken.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use ecs_capacity_agent::capacity::TaskShape;
use ecs_capacity_agent::protection::aws::{Cadence, Local, Member, Protector, Status, run};
use ecs_capacity_agent::protection::{Reason, Settings};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::require;
use crate::support::eventually;
use crate::support::moto::Moto;

const CLUSTER: &str = "protection-test";
const GROUP: &str = "protection-asg";

struct World {
    _moto: Moto,
    sdk: SdkConfig,
    asg: aws_sdk_autoscaling::Client,
    /// The group's instances, sorted.
    instances: Vec<String>,
}

/// A group of three instances, new instances protected from scale-in, each registered with ECS;
/// `tasks[i]` copies of a 256-CPU / 512-MiB task started on instance i.
async fn world(tasks: [usize; 3]) -> Result<World, String> {
    let moto = Moto::start()?;
    let sdk = moto.sdk_config().await;
    let asg = aws_sdk_autoscaling::Client::new(&sdk);
    asg.create_launch_configuration()
        .launch_configuration_name("protection-lc")
        .image_id("ami-12c6146b")
        .instance_type("c5.large")
        .send()
        .await
        .map_err(|e| format!("launch configuration: {e:?}"))?;
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(GROUP)
        .launch_configuration_name("protection-lc")
        .min_size(0)
        .max_size(5)
        .desired_capacity(3)
        .new_instances_protected_from_scale_in(true)
        .availability_zones("us-east-1a")
        .send()
        .await
        .map_err(|e| format!("group: {e:?}"))?;
    let mut instances: Vec<String> = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(GROUP)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?
        .auto_scaling_groups()
        .iter()
        .flat_map(|g| g.instances())
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    instances.sort();
    if instances.len() != 3 {
        return Err(format!("moto launched {instances:?}"));
    }
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    ecs.create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .map_err(|e| format!("cluster: {e:?}"))?;
    ecs.register_task_definition()
        .family("web")
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("web")
                .image("busybox")
                .cpu(256)
                .memory(512)
                .build(),
        )
        .send()
        .await
        .map_err(|e| format!("task definition: {e:?}"))?;
    for (id, count) in instances.iter().zip(tasks) {
        let arn = crate::support::moto::register(&ecs, CLUSTER, id).await?;
        for _ in 0..count {
            ecs.start_task()
                .cluster(CLUSTER)
                .task_definition("web")
                .container_instances(&arn)
                .send()
                .await
                .map_err(|e| format!("start task: {e:?}"))?;
        }
    }
    Ok(World {
        _moto: moto,
        sdk,
        asg,
        instances,
    })
}

impl World {
    /// ProtectedFromScaleIn of `id`, as DescribeAutoScalingInstances reports it.
    async fn protected(&self, id: &str) -> bool {
        self.asg
            .describe_auto_scaling_instances()
            .instance_ids(id)
            .send()
            .await
            .expect("describe instances")
            .auto_scaling_instances()
            .first()
            .and_then(|i| i.protected_from_scale_in())
            .expect("protection of a group instance")
    }

    async fn set_protected(&self, id: &str, protected: bool) {
        self.asg
            .set_instance_protection()
            .auto_scaling_group_name(GROUP)
            .instance_ids(id)
            .protected_from_scale_in(protected)
            .send()
            .await
            .expect("set protection");
    }

    async fn locate(&self, id: &str) -> (Arc<Protector>, Member) {
        let (p, member) = Protector::locate(&self.sdk, CLUSTER, id)
            .await
            .expect("locate")
            .expect("the instance is in the group");
        assert_eq!(p.group(), GROUP);
        (Arc::new(p), member)
    }
}

fn web() -> TaskShape {
    TaskShape {
        name: "web".into(),
        cpu_units: 256,
        memory_mib: 512,
        tcp_ports: BTreeSet::new(),
        udp_ports: BTreeSet::new(),
        awsvpc: false,
    }
}

fn local(busy: bool, tasks: usize) -> Local {
    Local {
        busy,
        draining: false,
        tasks: vec![web(); tasks],
        daemon_tasks: 0,
        shapes: vec![web()],
    }
}

struct Loop {
    local: watch::Sender<Option<Local>>,
    status: watch::Receiver<Option<Status>>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(world: &World, id: &str, settings: Settings, first: Local) -> Loop {
    let (protector, member) = world.locate(id).await;
    let (local, local_rx) = watch::channel(Some(first));
    let (status_tx, status) = watch::channel(None);
    let token = CancellationToken::new();
    let task = tokio::spawn(run(
        protector,
        member,
        settings,
        Cadence {
            tick: Duration::from_millis(100),
            view_interval: Duration::from_millis(200),
            launched_ago: Duration::from_secs(3600),
            scale_out_threshold: 1.0,
        },
        local_rx,
        status_tx,
        token.clone(),
    ));
    Loop {
        local,
        status,
        token,
        task,
    }
}

impl Loop {
    fn status(&self) -> Option<Status> {
        *self.status.borrow()
    }

    async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap();
    }
}

fn quick() -> Settings {
    Settings {
        idle_grace: Duration::from_secs(1),
        launch_warmup: Duration::from_secs(60),
        volunteer: false,
        volunteer_after: Duration::ZERO,
        volunteer_timeout: Duration::from_secs(2),
    }
}

async fn until(what: &str, check: impl AsyncFn() -> bool) {
    let seen = eventually(Duration::from_secs(20), async || {
        check().await.then_some(())
    })
    .await;
    assert!(seen.is_some(), "not within 20 s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_host_is_protected_and_an_idle_one_is_not_after_the_grace() {
    let w = require!(world([1, 0, 0]).await, "moto");
    let busy = w.instances[0].clone();
    // Start from the wrong state: the busy host unprotected.
    w.set_protected(&busy, false).await;
    let l = start(&w, &busy, quick(), local(true, 1)).await;
    until("the busy host protected", async || w.protected(&busy).await).await;
    assert_eq!(
        l.status().map(|s| (s.protected, s.removable, s.reason)),
        Some((Some(true), false, Reason::Busy))
    );

    // Its task ends: still protected within the grace, unprotected and removable after it.
    l.local.send_replace(Some(local(false, 0)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.protected(&busy).await, "lifted within the grace");
    until("the idle host unprotected", async || {
        !w.protected(&busy).await
    })
    .await;
    until("removable", async || {
        l.status()
            .is_some_and(|s| s.removable && s.reason == Reason::Idle)
    })
    .await;

    // Busy again: protected at once.
    l.local.send_replace(Some(local(true, 1)));
    until("protected again", async || w.protected(&busy).await).await;
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_loaded_busy_host_volunteers_and_protects_itself_again_when_not_taken() {
    // Every host runs something (2, 1, 2 tasks); each has room for 16: far more than a host idle.
    let w = require!(world([2, 1, 2]).await, "moto");
    let settings = Settings {
        volunteer: true,
        ..quick()
    };
    let loops = [
        start(&w, &w.instances[0], settings, local(true, 2)).await,
        start(&w, &w.instances[1], settings, local(true, 1)).await,
        start(&w, &w.instances[2], settings, local(true, 2)).await,
    ];
    let least = &w.instances[1];
    until("the least-loaded host volunteers", async || {
        loops[1]
            .status()
            .is_some_and(|s| s.reason == Reason::Volunteering && s.removable)
    })
    .await;
    assert!(!w.protected(least).await, "the volunteer is unprotected");
    for i in [0, 2] {
        assert!(
            w.protected(&w.instances[i]).await,
            "{} is not the least loaded and stays protected",
            w.instances[i]
        );
        assert_eq!(loops[i].status().map(|s| s.reason), Some(Reason::Busy));
    }
    // Not taken within volunteer_timeout (2 s): protected again.
    until("the volunteer protected again", async || {
        w.protected(least).await
            && loops[1]
                .status()
                .is_some_and(|s| s.reason == Reason::Busy && !s.removable)
    })
    .await;
    for l in loops {
        l.stop().await;
    }
}

/// The wired daemon: the real binary, in the group, with a fake IMDS and its own Docker engine.
/// Busy, it protects its instance; idle for `scale_in.idle_grace` (1 minute, the least allowed),
/// it lifts the protection and publishes `RemovableHosts` = 1 — 0 before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_protects_its_busy_instance_and_lifts_it_once_idle_for_the_grace() {
    use crate::support::cloudwatch::CloudWatchProxy;
    use crate::support::fake_docker::{FakeContainer, FakeDocker};
    use crate::support::imds::FakeImds;

    let w = require!(world([0, 0, 0]).await, "moto");
    let me = w.instances[0].clone();
    // Start from the wrong state: a busy host unprotected.
    w.set_protected(&me, false).await;
    let docker = FakeDocker::start().await;
    docker.run(FakeContainer {
        id: "c0ffee".into(),
        cluster: CLUSTER.into(),
        task_arn: format!("arn:aws:ecs:us-east-1:123456789012:task/{CLUSTER}/0123456789abcdef"),
        family: "web".into(),
        revision: 1,
        cpu_shares: 256,
        memory_bytes: 512 << 20,
    });
    let imds = FakeImds::start().await;
    imds.set("instance-id", &me);
    imds.set("instance-type", "c5.large");
    imds.set("network/interfaces/macs/", "0e:00:00:00:00:01/");
    imds.set("autoscaling/target-lifecycle-state", "InService");
    let cloudwatch = CloudWatchProxy::start(w._moto.url()).await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
aws = "on"
cluster = "{CLUSTER}"
interval = "2s"
state_dir = "{}"
ecs_config_path = "/nonexistent/ecs.config"

[host]
docker_socket = "{}"
ecs_agent_url = "http://127.0.0.1:9"

[sinks]
enabled = ["cloudwatch"]

[cloudwatch]
period = "10s"
namespace = "ProtectionTest"

[scale_in]
idle_grace = "1m"
launch_warmup = "0s"
volunteer = false
"#,
            dir.path().join("state").display(),
            docker.socket().display(),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _daemon = Kill(
        std::process::Command::new(env!("CARGO_BIN_EXE_ecs-capacity-agent"))
            .args(["run", "--config", cfg.to_str().unwrap()])
            .envs(w._moto.env())
            .env("AWS_ENDPOINT_URL_CLOUDWATCH", cloudwatch.url())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let removable = || -> Vec<f64> {
        cloudwatch
            .period_puts()
            .iter()
            .flat_map(|p| p.values_of("RemovableHosts"))
            .collect()
    };

    let protected = eventually(Duration::from_secs(30), async || {
        w.protected(&me).await.then_some(())
    })
    .await;
    assert!(
        protected.is_some(),
        "busy, never protected; daemon log:\n{}",
        logs()
    );
    let published = eventually(Duration::from_secs(30), async || {
        (!removable().is_empty()).then_some(())
    })
    .await;
    assert!(
        published.is_some(),
        "no RemovableHosts datum; daemon log:\n{}",
        logs()
    );
    assert!(
        removable().iter().all(|v| *v == 0.0),
        "busy yet removable: {:?}",
        removable()
    );

    // Its task ends. Within the grace it stays protected; after it, unprotected and removable.
    docker.remove("c0ffee");
    let idle_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(w.protected(&me).await, "lifted within the grace");
    let lifted = eventually(Duration::from_secs(120), async || {
        (!w.protected(&me).await).then_some(())
    })
    .await;
    assert!(
        lifted.is_some(),
        "idle, never unprotected; daemon log:\n{}",
        logs()
    );
    assert!(
        idle_at.elapsed() >= Duration::from_secs(60),
        "lifted before the grace ended ({:?})",
        idle_at.elapsed()
    );
    let one = eventually(Duration::from_secs(30), async || {
        removable().contains(&1.0).then_some(())
    })
    .await;
    assert!(
        one.is_some(),
        "RemovableHosts never 1: {:?}; daemon log:\n{}",
        removable(),
        logs()
    );
}
