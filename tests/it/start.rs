//! The daemon's start: signal handlers, then the notice pollers and the drain runner before any
//! optional look-up; no optional part's failure stops it. The real binary against a fake IMDSv2,
//! moto, and AWS endpoints that accept connections and never answer.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ecs::types::ContainerInstanceStatus;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::require;
use crate::support::eventually;
use crate::support::imds::FakeImds;
use crate::support::moto::{Moto, ecs_status, run_and_register};

const SPOT: &str = "spot/instance-action";

/// Accepts connections and never answers: every AWS endpoint pointed at it hangs.
pub(crate) struct Blackhole {
    addr: SocketAddr,
    pub(crate) accepted: Arc<AtomicU64>,
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Blackhole {
    pub(crate) fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (a, h) = (accepted.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                a.fetch_add(1, Ordering::SeqCst);
                h.lock().unwrap().push(stream);
            }
        });
        Blackhole {
            addr,
            accepted,
            _held: held,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) struct Daemon {
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl Daemon {
    /// `extra` is appended to the config (TOML); `env` is the process's AWS environment.
    pub(crate) fn spawn(
        dir: &Path,
        cluster: &str,
        aws: &str,
        extra: &str,
        env: &[(String, String)],
    ) -> Daemon {
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            crate::support::daemon_config(
                aws,
                cluster,
                &dir.join("state"),
                &format!("sysfs_root = \"{}\"\n{extra}\n", dir.join("sys").display()),
            ),
        )
        .unwrap();
        let log = dir.join("daemon.log");
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_ecs-capacity-agent"))
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env_remove("AWS_ENDPOINT_URL")
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            log,
            started,
        }
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), s).unwrap();
    }

    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, and the exit must be clean.
    pub(crate) fn stop(mut self) {
        self.signal(Signal::SIGTERM);
        let exit = self.child.wait().unwrap();
        assert!(
            exit.success(),
            "daemon exit {exit:?}; log:\n{}",
            self.logs()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blackholed_env(imds: &FakeImds, hole: &Blackhole) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", hole.url()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// How long after the process started the first notice poll reached IMDS (polled every 2 ms).
async fn first_notice_poll(imds: &FakeImds, d: &Daemon, limit: Duration) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if imds.requests(SPOT) > 0 {
            return Some(d.started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// With every AWS endpoint blackholed (connections accepted, nothing answered) the notices are
/// polled at once: the first poll comes while no AWS request can have completed. Prints the figure
/// (process start → first notice poll); the bound asserted is only a sanity one.
#[tokio::test]
async fn first_notice_poll_comes_while_every_aws_endpoint_hangs() {
    let imds = FakeImds::start().await;
    imds.set("instance-id", "i-0123456789abcdef0");
    let hole = Blackhole::start();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::spawn(
        dir.path(),
        "start-test",
        "on",
        "[sinks]\nenabled = [\"stdout\", \"cloudwatch\"]\n",
        &blackholed_env(&imds, &hole),
    );
    let first = first_notice_poll(&imds, &d, Duration::from_secs(20)).await;
    let first = first.unwrap_or_else(|| panic!("no notice poll; log:\n{}", d.logs()));
    eprintln!(
        "process start -> first notice poll: {} ms (every AWS endpoint blackholed; {} connections held unanswered so far)",
        first.as_millis(),
        hole.accepted.load(Ordering::SeqCst)
    );
    // Every poller, not only the spot one, polls while AWS hangs.
    for path in [
        "autoscaling/target-lifecycle-state",
        "events/maintenance/scheduled",
    ] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                (imds.requests(path) > 0).then_some(())
            })
            .await
            .is_some(),
            "{path} never polled; log:\n{}",
            d.logs()
        );
    }
    // Generous sanity bound, not the figure.
    assert!(
        first < Duration::from_secs(10),
        "first poll after {first:?}"
    );
    d.stop();
}

/// A cluster in moto with one registered instance; returns (instance id, container-instance ARN).
pub(crate) async fn registered(sdk: &aws_config::SdkConfig, cluster: &str) -> (String, String) {
    let ecs = aws_sdk_ecs::Client::new(sdk);
    ecs.create_cluster()
        .cluster_name(cluster)
        .send()
        .await
        .unwrap();
    run_and_register(sdk, cluster, "c5.large").await.unwrap()
}

async fn becomes_draining(ecs: &aws_sdk_ecs::Client, cluster: &str, arn: &str) -> bool {
    eventually(Duration::from_secs(20), || async {
        (ecs_status(ecs, cluster, arn).await == Some(ContainerInstanceStatus::Draining))
            .then_some(())
    })
    .await
    .is_some()
}

pub(crate) async fn healthz(port: u16) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// IMDS refuses tokens at start: the daemon keeps polling, reports unhealthy with the reason, and
/// once IMDS answers again it learns the instance id and drains on a spot notice.
#[tokio::test]
async fn imds_failing_at_start_then_recovering_still_drains() {
    let moto = require!(Moto::start(), "moto");
    let sdk = moto.sdk_config().await;
    let cluster = "start-imds-recovers";
    let (instance, arn) = registered(&sdk, cluster).await;
    let ecs = aws_sdk_ecs::Client::new(&sdk);

    let imds = FakeImds::start().await;
    imds.set("instance-id", &instance);
    imds.refuse_tokens(Some(403));
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut env = moto.env();
    env.push(("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), imds.url()));
    let mut d = Daemon::spawn(
        dir.path(),
        cluster,
        "on",
        &format!(
            "[sinks]\nenabled = [\"prometheus\"]\n[prometheus]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
        &env,
    );
    let unhealthy = eventually(Duration::from_secs(15), || async {
        healthz(port)
            .await
            .filter(|(s, body)| *s == 503 && body.contains("instance_id"))
    })
    .await;
    assert!(
        unhealthy.is_some(),
        "/healthz does not name the instance id; log:\n{}",
        d.logs()
    );
    assert!(d.running(), "daemon stopped; log:\n{}", d.logs());

    imds.refuse_tokens(None);
    imds.set_spot_terminate(SystemTime::now() + Duration::from_secs(120));
    assert!(
        becomes_draining(&ecs, cluster, &arn).await,
        "instance never DRAINING after IMDS recovered; log:\n{}",
        d.logs()
    );
    let healthy = eventually(Duration::from_secs(15), || async {
        healthz(port).await.filter(|(s, _)| *s == 200)
    })
    .await;
    assert!(
        healthy.is_some(),
        "/healthz stays unhealthy: {:?}",
        healthz(port).await
    );
    d.stop();
}

/// The CloudWatch check fails (its endpoint refuses connections): the daemon says so, keeps running
/// and drains on a spot notice.
#[tokio::test]
async fn cloudwatch_check_failing_keeps_the_daemon_draining() {
    let moto = require!(Moto::start(), "moto");
    let sdk = moto.sdk_config().await;
    let cluster = "start-cloudwatch-fails";
    let (instance, arn) = registered(&sdk, cluster).await;
    let ecs = aws_sdk_ecs::Client::new(&sdk);

    let imds = FakeImds::start().await;
    imds.set("instance-id", &instance);
    let dir = tempfile::tempdir().unwrap();
    let mut env = moto.env();
    env.push(("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), imds.url()));
    env.push((
        "AWS_ENDPOINT_URL_CLOUDWATCH".into(),
        "http://127.0.0.1:9".into(),
    ));
    let mut d = Daemon::spawn(
        dir.path(),
        cluster,
        "on",
        "[sinks]\nenabled = [\"stdout\", \"cloudwatch\"]\n",
        &env,
    );
    let said = eventually(Duration::from_secs(30), || async {
        d.logs().contains("CloudWatch check").then_some(())
    })
    .await;
    assert!(
        said.is_some(),
        "the failed check is not logged; log:\n{}",
        d.logs()
    );
    assert!(d.running(), "daemon stopped; log:\n{}", d.logs());
    imds.set_spot_terminate(SystemTime::now() + Duration::from_secs(120));
    assert!(
        becomes_draining(&ecs, cluster, &arn).await,
        "instance never DRAINING; log:\n{}",
        d.logs()
    );
    assert!(d.running(), "daemon stopped; log:\n{}", d.logs());
    d.stop();
}

/// SIGHUP, SIGUSR1, SIGUSR2 and SIGQUIT are logged and ignored; SIGTERM still stops it cleanly.
#[tokio::test]
async fn hup_usr1_usr2_quit_do_not_kill_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::spawn(
        dir.path(),
        "start-signals",
        "off",
        "[sinks]\nenabled = [\"stdout\"]\n",
        &[],
    );
    let up = eventually(Duration::from_secs(15), || async {
        d.logs()
            .contains("ecs-capacity-agent running")
            .then_some(())
    })
    .await;
    assert!(up.is_some(), "never running; log:\n{}", d.logs());
    for s in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGQUIT,
    ] {
        d.signal(s);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(d.running(), "{s} ended the daemon; log:\n{}", d.logs());
    }
    let logged = d.logs().matches("signal received and ignored").count();
    assert_eq!(logged, 4, "log:\n{}", d.logs());
    d.stop();
}

/// `auto` on a host whose sysfs says EC2 means on: notices are polled although nothing else is
/// configured; without those files it is off and IMDS is never asked.
#[tokio::test]
async fn auto_follows_the_dmi_files() {
    for (ec2, files) in [
        (true, &[("class/dmi/id/sys_vendor", "Amazon EC2\n")][..]),
        (
            true,
            &[("hypervisor/uuid", "ec2e1916-9099-7caf-fd21-012345abcdef\n")][..],
        ),
        (false, &[("class/dmi/id/sys_vendor", "QEMU\n")][..]),
    ] {
        let imds = FakeImds::start().await;
        let hole = Blackhole::start();
        let dir = tempfile::tempdir().unwrap();
        for (rel, body) in files {
            let p = dir.path().join("sys").join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        let d = Daemon::spawn(
            dir.path(),
            "start-auto",
            "auto",
            "[sinks]\nenabled = [\"stdout\"]\n",
            &blackholed_env(&imds, &hole),
        );
        let polled =
            first_notice_poll(&imds, &d, Duration::from_secs(if ec2 { 15 } else { 3 })).await;
        assert_eq!(polled.is_some(), ec2, "{files:?}; log:\n{}", d.logs());
        if !ec2 {
            assert_eq!(
                imds.token_requests(),
                0,
                "IMDS asked off EC2; log:\n{}",
                d.logs()
            );
        }
        d.stop();
    }
}
