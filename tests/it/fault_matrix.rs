//! The drain happens whatever else fails. Each fault is injected into a real daemon (the binary, a
//! fake IMDSv2 of its own, moto behind the recording lifecycle proxy), then a spot notice or an
//! Auto Scaling termination arrives: the container instance must go DRAINING in ECS and, for the
//! termination, the lifecycle action must be completed with CONTINUE exactly once. Docker and the
//! ECS agent's introspection API are unreachable in every case.
//!
//! Prints the figure line "faults tried N, drains completed N, lost 0".

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use crate::require;
use crate::start::{Blackhole, Daemon, free_port, healthz, registered};
use crate::support::cloudwatch::CloudWatchProxy;
use crate::support::eventually;
use crate::support::imds::{FakeImds, Fault as ImdsFault};
use crate::support::lifecycle::LifecycleProxy;
use crate::support::moto::Moto;
use crate::support::moto::ecs_status;
use aws_sdk_ecs::types::ContainerInstanceStatus;

const LIFECYCLE: &str = "autoscaling/target-lifecycle-state";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Nothing besides Docker and the ECS agent being unreachable.
    DockerAndAgentUnreachable,
    /// The token endpoint answers 403 for the first 3 s.
    ImdsTokensRefused,
    /// Every IMDS request answers 500 for the first 4 s.
    ImdsServerErrors,
    /// Every IMDS path serves garbage for the first 3 s.
    ImdsGarbage,
    /// IMDS requests hang for the first 4 s.
    ImdsHangs,
    /// `agent.aws = "auto"` on an EC2 host (DMI files) while IMDS answers 500 at boot.
    AutoWhileImdsFails,
    /// PutMetricData is denied (403) from the start check on.
    CloudWatchDenied,
    /// The CloudWatch endpoint accepts connections and never answers.
    CloudWatchHangs,
    /// `drain.json` is garbage.
    StateGarbage,
    /// `drain.json` is binary.
    StateBinary,
    /// `drain.json` is a directory.
    StateIsDirectory,
    /// `drain.json` is a drain that began at the end of time.
    StateExtremeTimes,
    /// `drain.lock` cannot be opened (it is a directory).
    LockUnusable,
    /// The state directory cannot be created (its path is a regular file).
    StateDirUnusable,
    /// The first 6 UpdateContainerInstancesState calls are throttled.
    EcsThrottled,
    /// The ECS agent registers the instance again after the daemon looked it up (a new ARN).
    RegisteredAgain,
}

const FAULTS: [Fault; 16] = [
    Fault::DockerAndAgentUnreachable,
    Fault::ImdsTokensRefused,
    Fault::ImdsServerErrors,
    Fault::ImdsGarbage,
    Fault::ImdsHangs,
    Fault::AutoWhileImdsFails,
    Fault::CloudWatchDenied,
    Fault::CloudWatchHangs,
    Fault::StateGarbage,
    Fault::StateBinary,
    Fault::StateIsDirectory,
    Fault::StateExtremeTimes,
    Fault::LockUnusable,
    Fault::StateDirUnusable,
    Fault::EcsThrottled,
    Fault::RegisteredAgain,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Spot,
    Termination,
}

struct World {
    moto: Moto,
    proxy: LifecycleProxy,
    cloudwatch: CloudWatchProxy,
    hole: Blackhole,
    sdk: aws_config::SdkConfig,
}

/// A drain that began at `u64::MAX` seconds: valid JSON in the state's shape, times that overflow.
const EXTREME_STATE: &str = r#"{"version":1,"updated_at":{"secs_since_epoch":1,"nanos_since_epoch":0},"state":{"phase":{"phase":"draining","reasons":[{"kind":"manual"}],"since":{"secs_since_epoch":18446744073709551615,"nanos_since_epoch":0},"deadline":null,"ecs_draining":true,"tasks_remaining":null,"lifecycle":{"state":"none"}},"handled":[],"scheduled":{}}}"#;

/// Puts the state directory's fault in place before the daemon starts.
fn prepare_state(fault: Fault, dir: &Path) {
    let state = dir.join("state");
    if fault == Fault::StateDirUnusable {
        std::fs::write(&state, "a file where the state directory should be").unwrap();
        return;
    }
    std::fs::create_dir_all(&state).unwrap();
    let json = state.join("drain.json");
    match fault {
        Fault::StateGarbage => std::fs::write(json, "{ not json").unwrap(),
        Fault::StateBinary => std::fs::write(json, [0u8, 159, 146, 150, 255, 1]).unwrap(),
        Fault::StateIsDirectory => std::fs::create_dir(json).unwrap(),
        Fault::StateExtremeTimes => std::fs::write(json, EXTREME_STATE).unwrap(),
        Fault::LockUnusable => std::fs::create_dir(state.join("drain.lock")).unwrap(),
        _ => {}
    }
}

/// What the IMDS serves at start; `Some(d)`: the fault lifts after `d`.
fn imds_fault(fault: Fault, imds: &FakeImds) -> Option<Duration> {
    match fault {
        Fault::ImdsTokensRefused => {
            imds.refuse_tokens(Some(403));
            Some(Duration::from_secs(3))
        }
        Fault::ImdsServerErrors | Fault::AutoWhileImdsFails => {
            imds.set_fault(Some(ImdsFault::Status(500)));
            Some(Duration::from_secs(4))
        }
        Fault::ImdsGarbage => {
            imds.set_fault(Some(ImdsFault::Garbage("\u{0}\u{1}<html>oops".into())));
            Some(Duration::from_secs(3))
        }
        Fault::ImdsHangs => {
            imds.set_fault(Some(ImdsFault::Hang(Duration::from_secs(30))));
            Some(Duration::from_secs(4))
        }
        _ => None,
    }
}

/// What the daemon's log says when the fault took effect: the case proves nothing otherwise.
fn evidence(fault: Fault) -> Option<&'static str> {
    Some(match fault {
        Fault::DockerAndAgentUnreachable => "ECS agent introspection unavailable",
        Fault::ImdsTokensRefused => "refused a session token",
        Fault::ImdsServerErrors | Fault::AutoWhileImdsFails => "HTTP 500",
        Fault::ImdsGarbage => "malformed IMDS content",
        Fault::ImdsHangs => "no answer within",
        Fault::CloudWatchDenied => "CloudWatch check",
        Fault::CloudWatchHangs => return None,
        Fault::StateGarbage
        | Fault::StateBinary
        | Fault::StateIsDirectory
        | Fault::StateExtremeTimes => "drain state file is corrupt",
        Fault::LockUnusable | Fault::StateDirUnusable => "cannot store the drain state",
        Fault::EcsThrottled => "ThrottlingException",
        Fault::RegisteredAgain => "looking this instance up in ECS again",
    })
}

fn clear_imds_fault(imds: &FakeImds) {
    imds.refuse_tokens(None);
    imds.set_fault(None);
}

/// One fault, one trigger: Ok when the drain happened as it must.
async fn run_case(w: &World, n: usize, fault: Fault, trigger: Trigger) -> Result<(), String> {
    let cluster = format!("fault-matrix-{n}");
    let group = format!("{cluster}-asg");
    let (instance, mut arn) = registered(&w.sdk, &cluster).await;
    let ecs = aws_sdk_ecs::Client::new(&w.sdk);
    aws_sdk_autoscaling::Client::new(&w.sdk)
        .put_lifecycle_hook()
        .auto_scaling_group_name(&group)
        .lifecycle_hook_name("drain")
        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
        .heartbeat_timeout(60)
        .send()
        .await
        .map_err(|e| format!("lifecycle hook: {e:?}"))?;

    let imds = FakeImds::start().await;
    imds.set("instance-id", &instance);
    imds.set(LIFECYCLE, "InService");
    let dir = tempfile::tempdir().unwrap();
    prepare_state(fault, dir.path());
    let aws = if fault == Fault::AutoWhileImdsFails {
        let vendor = dir.path().join("sys/class/dmi/id/sys_vendor");
        std::fs::create_dir_all(vendor.parent().unwrap()).unwrap();
        std::fs::write(vendor, "Amazon EC2\n").unwrap();
        "auto"
    } else {
        "on"
    };
    let lifts_after = imds_fault(fault, &imds);

    let mut env: Vec<(String, String)> = w
        .moto
        .env()
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL" && k != "AWS_EC2_METADATA_DISABLED")
        .collect();
    env.push(("AWS_ENDPOINT_URL".into(), w.proxy.url()));
    env.push(("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), imds.url()));
    let sinks = match fault {
        Fault::CloudWatchDenied => {
            env.push(("AWS_ENDPOINT_URL_CLOUDWATCH".into(), w.cloudwatch.url()));
            r#""prometheus", "cloudwatch""#
        }
        Fault::CloudWatchHangs => {
            env.push(("AWS_ENDPOINT_URL_CLOUDWATCH".into(), w.hole.url()));
            r#""prometheus", "cloudwatch""#
        }
        _ => r#""prometheus""#,
    };
    if fault == Fault::EcsThrottled {
        w.proxy.throttle(
            "UpdateContainerInstancesState",
            &format!("\"{cluster}\""),
            6,
        );
    }
    let port = free_port();
    let mut d = Daemon::spawn(
        dir.path(),
        &cluster,
        aws,
        &format!(
            "[sinks]\nenabled = [{sinks}]\n[prometheus]\nlisten = \"127.0.0.1:{port}\"\n\
             [drain]\nautoscaling_group = \"{group}\"\ncheck_interval = \"200ms\"\n"
        ),
        &env,
    );
    let fail =
        |d: &Daemon, what: &str| format!("{fault:?} + {trigger:?}: {what}; log:\n{}", d.logs());

    if let Some(after) = lifts_after {
        tokio::time::sleep(after).await;
        clear_imds_fault(&imds);
    }
    if fault == Fault::RegisteredAgain {
        // After the drain looked its container instance up (and cached its ARN), the agent
        // registers it again.
        let looked_up = eventually(Duration::from_secs(30), || async {
            d.logs()
                .contains("found this instance in ECS")
                .then_some(())
        })
        .await;
        if looked_up.is_none() {
            return Err(fail(&d, "the container instance was never looked up"));
        }
        ecs.deregister_container_instance()
            .cluster(&cluster)
            .container_instance(&arn)
            .force(true)
            .send()
            .await
            .map_err(|e| format!("deregister: {e:?}"))?;
        arn = crate::support::moto::register(&ecs, &cluster, &instance).await?;
    }

    match trigger {
        Trigger::Spot => imds.set_spot_terminate(SystemTime::now() + Duration::from_secs(120)),
        Trigger::Termination => imds.set(LIFECYCLE, "Terminated"),
    }
    let draining = eventually(Duration::from_secs(60), || async {
        (ecs_status(&ecs, &cluster, &arn).await == Some(ContainerInstanceStatus::Draining))
            .then_some(())
    })
    .await;
    if draining.is_none() {
        return Err(fail(&d, "never DRAINING in ECS"));
    }
    if trigger == Trigger::Termination {
        let continues = || {
            w.proxy
                .calls_of("CompleteLifecycleAction")
                .iter()
                .filter(|c| c.param("InstanceId") == Some(instance.as_str()))
                .map(|c| c.param("LifecycleActionResult").unwrap_or("").to_string())
                .collect::<Vec<_>>()
        };
        let completed = eventually(Duration::from_secs(60), || async {
            (!continues().is_empty()).then_some(())
        })
        .await;
        if completed.is_none() {
            return Err(fail(&d, "the lifecycle action was never completed"));
        }
        // Ticks go on every 200 ms: a second completion would come within this.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sent = continues();
        if sent != ["CONTINUE"] {
            return Err(fail(&d, &format!("completions sent: {sent:?}")));
        }
    }
    if !d.running() {
        return Err(fail(&d, "the daemon stopped"));
    }
    if healthz(port).await.is_none() {
        return Err(fail(&d, "/healthz does not answer"));
    }
    if let Some(evidence) = evidence(fault)
        && !d.logs().contains(evidence)
    {
        return Err(fail(
            &d,
            &format!("the fault did not show (no {evidence:?} in the log)"),
        ));
    }
    if fault == Fault::CloudWatchHangs && w.hole.accepted.load(Ordering::SeqCst) == 0 {
        return Err(fail(&d, "CloudWatch was never called"));
    }
    d.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_happens_whatever_else_fails() {
    let moto = require!(Moto::start(), "moto");
    let proxy = LifecycleProxy::start(moto.url()).await;
    let cloudwatch = CloudWatchProxy::start(moto.url()).await;
    cloudwatch.deny(true);
    let sdk = moto.sdk_config().await;
    let w = World {
        moto,
        proxy,
        cloudwatch,
        hole: Blackhole::start(),
        sdk,
    };
    let cases: Vec<(usize, Fault, Trigger)> = FAULTS
        .iter()
        .flat_map(|f| [Trigger::Spot, Trigger::Termination].map(|t| (*f, t)))
        .enumerate()
        .map(|(n, (f, t))| (n, f, t))
        .collect();
    let tried = cases.len();
    // A few daemons at a time: the machine has two cores and moto answers them all.
    let results: Vec<Result<(), String>> = futures_util::stream::iter(cases)
        .map(|(n, f, t)| {
            let w = &w;
            async move { run_case(w, n, f, t).await }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let completed = tried - failures.len();
    eprintln!(
        "faults tried {tried}, drains completed {completed}, lost {}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{}",
        failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}
