//! The IMDSv2 client and the notice pollers against the fake IMDSv2 server (support/imds.rs): token
//! reuse and refresh, 401 handling, 404 as "no notice", each notice kind emitted once, maintenance
//! cancellation re-emitted, polling surviving 500s / garbage / timeouts / an unreachable IMDS.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ecs_capacity_agent::config::ImdsConfig;
use ecs_capacity_agent::health::Health;
use ecs_capacity_agent::imds::{self, Client, Error};
use ecs_capacity_agent::notice::{MaintenanceCode, MaintenanceState, Notice, SpotAction};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::eventually;
use crate::support::imds::{FakeImds, Fault};
use crate::support::logs::Logs;

const SPOT: &str = "spot/instance-action";
const LIFECYCLE: &str = "autoscaling/target-lifecycle-state";
const REBALANCE: &str = "events/recommendations/rebalance";
const SCHEDULED: &str = "events/maintenance/scheduled";

/// Generous: a bound for eventual arrival on a shared, noisy machine, never a speed claim.
const PATIENCE: Duration = Duration::from_secs(20);

fn fast() -> ImdsConfig {
    ImdsConfig {
        poll_interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        ..ImdsConfig::default()
    }
}

fn client(fake: &FakeImds, cfg: &ImdsConfig) -> Client {
    Client::with_endpoint(cfg, &fake.url()).expect("client")
}

struct Pollers {
    rx: mpsc::Receiver<Notice>,
    token: CancellationToken,
    tracker: TaskTracker,
    health: Arc<Health>,
    /// The scheduled-event listings received, kept apart from the events themselves.
    listings: Vec<BTreeSet<String>>,
}

impl Pollers {
    fn start(client: Client, cfg: &ImdsConfig) -> Pollers {
        let (tx, rx) = mpsc::channel(16);
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let health = Arc::new(Health::default());
        imds::spawn_pollers(
            Arc::new(client),
            cfg,
            tx,
            token.clone(),
            &tracker,
            health.clone(),
        );
        tracker.close();
        Pollers {
            rx,
            token,
            tracker,
            health,
            listings: Vec::new(),
        }
    }

    /// The next notice that is not a listing of scheduled events (those go to `listings`).
    async fn next(&mut self) -> Notice {
        loop {
            let n = tokio::time::timeout(PATIENCE, self.rx.recv())
                .await
                .expect("a notice within the patience bound")
                .expect("pollers alive");
            if let Some(n) = self.keep(n) {
                return n;
            }
        }
    }

    fn pending(&mut self) -> Vec<Notice> {
        let mut out = Vec::new();
        while let Ok(n) = self.rx.try_recv() {
            out.extend(self.keep(n));
        }
        out
    }

    fn keep(&mut self, n: Notice) -> Option<Notice> {
        match n {
            Notice::MaintenanceListed { event_ids } => {
                self.listings.push(event_ids);
                None
            }
            n => Some(n),
        }
    }

    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(PATIENCE, self.tracker.wait())
            .await
            .expect("pollers end on cancel");
    }
}

/// Waits until every notice path has been polled at least `more` more times than now.
async fn polls_pass(fake: &FakeImds, more: u64) {
    assert!(
        fake.polls_pass(more, PATIENCE).await,
        "the pollers stopped polling"
    );
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn token_is_reused_across_requests() {
    let fake = FakeImds::start().await;
    fake.set("instance-id", "i-0123456789abcdef0");
    let c = client(&fake, &ImdsConfig::default());
    for _ in 0..10 {
        assert_eq!(
            c.instance_id().await.unwrap().as_str(),
            "i-0123456789abcdef0"
        );
    }
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(
        fake.token_ttls(),
        vec![21600],
        "imds.token_ttl is asked for"
    );
    assert_eq!(fake.unauthorized(), 0);
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires() {
    let fake = FakeImds::start().await;
    fake.set("instance-id", "i-0123456789abcdef0");
    let cfg = ImdsConfig {
        token_ttl: Duration::from_secs(1),
        ..ImdsConfig::default()
    };
    let c = client(&fake, &cfg);
    c.instance_id().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.instance_id().await.unwrap();
    assert_eq!(fake.token_requests(), 2);
    // The client did not wait for IMDS to reject the old token.
    assert_eq!(fake.unauthorized(), 0);
}

#[tokio::test]
async fn expired_token_gets_one_refresh_and_the_request_succeeds() {
    let fake = FakeImds::start().await;
    fake.set("instance-type", "m5.large");
    let c = client(&fake, &ImdsConfig::default());
    assert_eq!(c.instance_type().await.unwrap(), "m5.large");
    fake.expire_tokens();
    assert_eq!(c.instance_type().await.unwrap(), "m5.large");
    assert_eq!(fake.token_requests(), 2);
    assert_eq!(fake.unauthorized(), 1);
    // And the new token is reused afterwards.
    c.instance_type().await.unwrap();
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn a_401_that_persists_fails_after_exactly_one_refresh() {
    let fake = FakeImds::start().await;
    fake.set("instance-id", "i-0123456789abcdef0");
    let c = client(&fake, &ImdsConfig::default());
    fake.set_fault(Some(Fault::Status(401)));
    let e = c.instance_id().await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    assert_eq!(fake.token_requests(), 2, "initial token + one refresh");
    assert_eq!(fake.unauthorized(), 2);
}

#[tokio::test]
async fn a_path_not_served_is_none_and_identity_errors_name_the_path() {
    let fake = FakeImds::start().await;
    let c = client(&fake, &ImdsConfig::default());
    assert_eq!(c.get(SPOT).await.unwrap(), None);
    let e = c.region().await.unwrap_err();
    assert!(e.to_string().contains("placement/region"), "{e}");
    fake.set("instance-id", "i-NOTHEX");
    let e = c.instance_id().await.unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
    assert!(
        e.to_string().contains("instance-id") && e.to_string().contains("i-NOTHEX"),
        "{e}"
    );
}

#[tokio::test]
async fn identity_and_network_interfaces() {
    let fake = FakeImds::start().await;
    fake.set("instance-id", "i-0123456789abcdef0\n");
    fake.set("instance-type", "c6i.xlarge");
    fake.set("placement/region", "eu-west-1");
    fake.set("placement/availability-zone", "eu-west-1b");
    fake.set(
        "network/interfaces/macs",
        "0e:00:00:00:00:02/\n0e:00:00:00:00:01/",
    );
    fake.set(
        "network/interfaces/macs/0e:00:00:00:00:01/device-number",
        "0",
    );
    fake.set(
        "network/interfaces/macs/0e:00:00:00:00:01/interface-id",
        "eni-primary",
    );
    fake.set(
        "network/interfaces/macs/0e:00:00:00:00:02/device-number",
        "1",
    );
    fake.set(
        "network/interfaces/macs/0e:00:00:00:00:02/interface-id",
        "eni-trunk",
    );
    let c = client(&fake, &ImdsConfig::default());
    assert_eq!(
        c.instance_id().await.unwrap().as_str(),
        "i-0123456789abcdef0"
    );
    assert_eq!(c.instance_type().await.unwrap(), "c6i.xlarge");
    assert_eq!(c.region().await.unwrap(), "eu-west-1");
    assert_eq!(c.availability_zone().await.unwrap(), "eu-west-1b");
    assert_eq!(
        c.mac_addresses().await.unwrap(),
        vec!["0e:00:00:00:00:02", "0e:00:00:00:00:01"]
    );
    let enis = c.network_interfaces().await.unwrap();
    assert_eq!(
        enis.iter()
            .map(|i| (i.device_number, i.interface_id.as_str(), i.mac.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (0, "eni-primary", "0e:00:00:00:00:01"),
            (1, "eni-trunk", "0e:00:00:00:00:02")
        ]
    );

    fake.set(
        "network/interfaces/macs/0e:00:00:00:00:01/device-number",
        "zero",
    );
    let e = c.device_number("0e:00:00:00:00:01").await.unwrap_err();
    assert!(
        e.to_string().contains("device-number") && e.to_string().contains("zero"),
        "{e}"
    );
}

#[tokio::test]
async fn imdsv1_fallback_only_when_allowed() {
    let fake = FakeImds::start().await;
    fake.set("instance-id", "i-1234abcd");
    fake.refuse_tokens(Some(405));
    fake.require_token(false);

    let strict = client(&fake, &ImdsConfig::default());
    let e = strict.instance_id().await.unwrap_err();
    assert!(matches!(e, Error::TokenRefused { status: 405, .. }), "{e}");
    assert!(e.to_string().contains("imds.allow_v1"), "{e}");

    let lenient = client(
        &fake,
        &ImdsConfig {
            allow_v1: true,
            ..ImdsConfig::default()
        },
    );
    let before = fake.token_requests();
    for _ in 0..3 {
        assert_eq!(lenient.instance_id().await.unwrap().as_str(), "i-1234abcd");
    }
    assert_eq!(
        fake.token_requests(),
        before + 1,
        "a refusal is remembered, not asked again on every request"
    );
}

#[tokio::test]
async fn no_notice_paths_mean_no_notices_and_no_errors() {
    let fake = FakeImds::start().await;
    fake.set(LIFECYCLE, "InService");
    fake.set(SCHEDULED, "[]");
    let cfg = fast();
    let mut p = Pollers::start(client(&fake, &cfg), &cfg);
    polls_pass(&fake, 5).await;
    assert!(p.pending().is_empty());
    assert!(p.health.errors().is_empty(), "{:?}", p.health.errors());
    assert!(p.health.imds_poll_seconds() > 0.0, "poll latency recorded");
    p.stop().await;
}

#[tokio::test]
async fn each_notice_kind_is_parsed_and_emitted_once() {
    let fake = FakeImds::start().await;
    let cfg = fast();
    let mut p = Pollers::start(client(&fake, &cfg), &cfg);
    polls_pass(&fake, 2).await;

    fake.set(
        SPOT,
        r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#,
    );
    fake.set(LIFECYCLE, "Terminated");
    fake.set(REBALANCE, r#"{"noticeTime": "2020-11-05T08:22:00Z"}"#);
    fake.set(
        SCHEDULED,
        r#"[ {
          "NotBefore" : "21 Jan 2019 09:00:43 GMT",
          "Code" : "system-reboot",
          "Description" : "scheduled reboot",
          "EventId" : "instance-event-0d59937288b749b32",
          "NotAfter" : "21 Jan 2019 09:17:23 GMT",
          "State" : "active"
        } ]"#,
    );
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(p.next().await);
    }
    // Many more polls of the same content: nothing new.
    polls_pass(&fake, 5).await;
    assert!(p.pending().is_empty(), "a notice was sent twice");

    let mut spot = None;
    let mut terminated = 0;
    let mut rebalance = None;
    let mut maintenance = None;
    for n in got {
        match n {
            Notice::Spot { action, time } => spot = Some((action, unix(time))),
            Notice::AutoScalingTerminated { .. } => terminated += 1,
            Notice::Rebalance { notice_time } => rebalance = Some(unix(notice_time)),
            Notice::Maintenance(e) => maintenance = Some(e),
            other => panic!("unexpected notice {other:?}"),
        }
    }
    assert_eq!(spot, Some((SpotAction::Terminate, 1_505_722_920)));
    assert_eq!(terminated, 1);
    assert_eq!(rebalance, Some(1_604_564_520));
    let e = maintenance.expect("maintenance notice");
    assert_eq!(e.event_id, "instance-event-0d59937288b749b32");
    assert_eq!(e.code, MaintenanceCode::SystemReboot);
    assert_eq!(e.state, MaintenanceState::Active);
    assert_eq!(unix(e.not_before), 1_548_061_243);
    assert!(p.health.errors().is_empty(), "{:?}", p.health.errors());
    p.stop().await;
}

#[tokio::test]
async fn maintenance_canceled_is_emitted_again() {
    let fake = FakeImds::start().await;
    let event = |state: &str, description: &str| {
        format!(
            r#"[{{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"instance-stop","Description":"{description}",
                "EventId":"instance-event-1","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"{state}"}}]"#
        )
    };
    fake.set(SCHEDULED, &event("active", "scheduled stop"));
    let cfg = fast();
    let mut p = Pollers::start(client(&fake, &cfg), &cfg);
    let first = p.next().await;
    let Notice::Maintenance(e) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(e.state, MaintenanceState::Active);

    fake.set(SCHEDULED, &event("canceled", "[Canceled] scheduled stop"));
    let second = p.next().await;
    let Notice::Maintenance(e) = &second else {
        panic!("{second:?}")
    };
    assert_eq!(e.state, MaintenanceState::Canceled);
    assert_eq!(first.id(), second.id(), "same event");
    assert_ne!(first.revision(), second.revision());

    polls_pass(&fake, 5).await;
    assert!(p.pending().is_empty(), "canceled sent more than once");
    p.stop().await;
}

#[tokio::test]
async fn polling_survives_errors_garbage_and_timeouts_then_emits_the_notice() {
    let logs = Logs::capture();
    let fake = FakeImds::start().await;
    let cfg = fast();
    let mut p = Pollers::start(client(&fake, &cfg), &cfg);
    polls_pass(&fake, 1).await;

    fake.set_fault(Some(Fault::Status(500)));
    polls_pass(&fake, 2).await;
    fake.set_fault(Some(Fault::Garbage("<html>oops</html>".into())));
    polls_pass(&fake, 2).await;
    fake.set_fault(Some(Fault::Hang(Duration::from_secs(2))));
    polls_pass(&fake, 2).await;
    fake.set_fault(None);
    assert!(p.pending().is_empty(), "errors produced a notice");

    fake.set(SPOT, r#"{"action":"stop","time":"2030-01-01T00:00:00Z"}"#);
    let n = p.next().await;
    assert!(
        matches!(
            n,
            Notice::Spot {
                action: SpotAction::Stop,
                ..
            }
        ),
        "{n:?}"
    );
    let errors = p.health.errors();
    for kind in ["imds_status", "imds_malformed", "imds_timeout"] {
        assert!(
            errors.get(kind).copied().unwrap_or(0) > 0,
            "{kind}: {errors:?}"
        );
    }
    // Malformed content is logged naming the path and an excerpt, once per distinct content.
    let malformed = logs.lines_with("malformed IMDS content");
    assert!(
        malformed
            .iter()
            .any(|l| l.contains(SPOT) && l.contains("<html>oops</html>")),
        "{malformed:#?}"
    );
    for path in [SPOT, LIFECYCLE, REBALANCE, SCHEDULED] {
        assert_eq!(
            malformed.iter().filter(|l| l.contains(path)).count(),
            1,
            "{path}: {malformed:#?}"
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn garbage_on_one_path_does_not_stop_the_others() {
    let fake = FakeImds::start().await;
    fake.set(SCHEDULED, "\u{0}\u{1}not json at all");
    fake.set(LIFECYCLE, "Terminating:Wait:Maybe?");
    let cfg = fast();
    let mut p = Pollers::start(client(&fake, &cfg), &cfg);
    polls_pass(&fake, 3).await;
    fake.set(REBALANCE, r#"{"noticeTime":"2030-01-01T00:00:00Z"}"#);
    let n = p.next().await;
    assert!(matches!(n, Notice::Rebalance { .. }), "{n:?}");
    assert!(p.health.errors()["imds_malformed"] >= 2);
    p.stop().await;
}

#[tokio::test]
async fn unreachable_imds_is_logged_once_and_polling_recovers() {
    let logs = Logs::capture();
    let addr = FakeImds::closed_addr();
    let cfg = fast();
    let c = Client::with_endpoint(&cfg, &format!("http://{addr}")).unwrap();
    let mut p = Pollers::start(c, &cfg);

    let health = p.health.clone();
    let failed = eventually(PATIENCE, || async {
        (health
            .errors()
            .get("imds_unreachable")
            .copied()
            .unwrap_or(0)
            >= 12)
            .then_some(())
    })
    .await;
    assert!(failed.is_some(), "{:?}", health.errors());

    let fake = FakeImds::start_on(addr).await.expect("rebind the port");
    fake.set(LIFECYCLE, "Terminated");
    let n = p.next().await;
    assert!(matches!(n, Notice::AutoScalingTerminated { .. }), "{n:?}");

    let said = logs.lines_with("IMDS is unreachable");
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].contains("hop limit"),
        "names the likely cause: {said:?}"
    );
    assert_eq!(logs.lines_with("IMDS is reachable again").len(), 1);
    p.stop().await;
}
