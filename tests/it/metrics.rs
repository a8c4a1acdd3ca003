//! CloudWatch publishing end to end: the publisher → the CBOR↔JSON proxy (support/cloudwatch.rs) →
//! moto, read back with GetMetricStatistics through the same SDK.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use ecs_capacity_agent::capacity::{self, HostInput, Quantity, TaskShape};
use ecs_capacity_agent::config::{CloudWatchConfig, Config};
use ecs_capacity_agent::health::Health;
use ecs_capacity_agent::metrics::cloudwatch::{self, Publisher};
use ecs_capacity_agent::metrics::{HostFacts, HostFigures, Observed};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::require;
use crate::support::cloudwatch::CloudWatchProxy;
use crate::support::eventually;
use crate::support::moto::Moto;

const CLUSTER: &str = "metrics-test";

fn shape() -> TaskShape {
    TaskShape {
        name: "web".into(),
        cpu_units: 512,
        memory_mib: 1024,
        tcp_ports: BTreeSet::new(),
        udp_ports: BTreeSet::new(),
        awsvpc: false,
    }
}

fn host(name: &str, cpu_reserved: u64, memory_reserved: u64) -> HostInput {
    HostInput {
        name: name.into(),
        cpu_units: Quantity::new(2048, cpu_reserved),
        memory_mib: Quantity::new(7680, memory_reserved),
        taken_tcp_ports: BTreeSet::new(),
        taken_udp_ports: BTreeSet::new(),
        eni: None,
    }
}

fn figures(host: &capacity::HostCapacity, running_tasks: u32) -> HostFigures {
    HostFigures::from_host(
        HostFacts {
            at: SystemTime::now(),
            cluster: CLUSTER.into(),
            instance_id: host.name.clone(),
            autoscaling_group: None,
            cpu_used_cores: Some(0.25),
            memory_used_bytes: Some(512 * 1024 * 1024),
            eni_attached: Some(1),
            eni_limit: Some(3),
            running_tasks: Some(running_tasks),
            draining: false,
            placeable: Some(true),
            capacity_unknown: None,
            cpu_reserved_difference: None,
            memory_reserved_difference: None,
            removable: None,
            scale_in_protected: None,
        },
        host,
    )
}

/// Short periods keep the tests quick (the product allows 10 s and 60 s; the schedule is the same
/// arithmetic at any length). Per instance and every metric, so each host can be read back alone.
fn cw_config(namespace: &str, period: Duration) -> CloudWatchConfig {
    CloudWatchConfig {
        namespace: namespace.into(),
        asg_dimension: false,
        buffer_periods: 30,
        period,
        per_instance: true,
        all_metrics: true,
    }
}

async fn peers() -> Result<(Moto, CloudWatchProxy), String> {
    let moto = tokio::task::spawn_blocking(Moto::start)
        .await
        .map_err(|e| e.to_string())??;
    let proxy = CloudWatchProxy::start(moto.url()).await;
    Ok((moto, proxy))
}

/// A publisher and an observer: every `interval` the observer sends `make(n)` (n = 1, 2, ...)
/// stamped with the time of that observation, as the daemon's observe loop does.
struct Running {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    observer: tokio::task::JoinHandle<u32>,
    /// The observer's channel: a test sends a material change through it.
    observed: watch::Sender<Option<Arc<Published>>>,
    material: Arc<AtomicU64>,
    health: Arc<Health>,
}

/// What the daemon's observe loop publishes, reduced to what the publisher reads.
struct Published {
    figures: HostFigures,
    material_changes: u64,
}

impl Observed for Published {
    fn figures(&self) -> Option<&HostFigures> {
        Some(&self.figures)
    }

    fn material_changes(&self) -> u64 {
        self.material_changes
    }
}

impl Running {
    /// The latest figures again, as an observation taken because something material changed.
    fn material_change(&self) {
        let n = self.material.fetch_add(1, Ordering::SeqCst) + 1;
        self.observed.send_modify(|o| {
            if let Some(o) = o {
                *o = Arc::new(Published {
                    figures: o.figures.clone(),
                    material_changes: n,
                });
            }
        });
    }

    /// New figures, observed because something material changed.
    fn material_figures(&self, figures: HostFigures) {
        let n = self.material.fetch_add(1, Ordering::SeqCst) + 1;
        self.observed.send_replace(Some(Arc::new(Published {
            figures,
            material_changes: n,
        })));
    }

    async fn stop(self) -> u32 {
        self.token.cancel();
        let _ = self.task.await;
        self.observer.await.unwrap_or(0)
    }
}

type Make = Arc<dyn Fn(u32) -> HostFigures + Send + Sync>;

/// A publisher sending each period at its end (offset 0), on the system clock, observed every
/// `interval`.
fn run_publisher(
    sdk: &aws_config::SdkConfig,
    namespace: &str,
    period: Duration,
    interval: Duration,
    make: Make,
) -> Running {
    let publisher = Publisher::new(
        cloudwatch::client(sdk),
        cw_config(namespace, period),
        Arc::new(Health::default()),
    )
    .with_offset(Duration::ZERO);
    start_publisher(publisher, interval, make, Arc::new(SystemTime::now))
}

fn start_publisher(
    publisher: Publisher,
    interval: Duration,
    make: Make,
    now: Arc<dyn Fn() -> SystemTime + Send + Sync>,
) -> Running {
    let health = publisher.health();
    let (tx, rx) = watch::channel(None);
    let material = Arc::new(AtomicU64::new(0));
    let token = CancellationToken::new();
    let task = tokio::spawn(publisher.run(rx, token.clone()));
    let stop = token.clone();
    let observed = tx.clone();
    let counted = material.clone();
    let observer = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        let mut n = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return n,
                _ = ticker.tick() => {}
            }
            n += 1;
            let mut f = make(n);
            f.at = now();
            tx.send_replace(Some(Arc::new(Published {
                figures: f,
                material_changes: counted.load(Ordering::SeqCst),
            })));
        }
    });
    Running {
        token,
        task,
        observer,
        observed,
        material,
        health,
    }
}

fn dims(pairs: &[(&str, &str)]) -> Vec<Dimension> {
    pairs
        .iter()
        .map(|(n, v)| Dimension::builder().name(*n).value(*v).build())
        .collect()
}

/// `(timestamp secs, Sum, SampleCount)` of one metric from `from` to `to` in `period`-second
/// buckets. moto includes datums stamped exactly `to`, so callers pass a `to` short of the next period.
async fn statistics(
    client: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    metric: &str,
    dimensions: Vec<Dimension>,
    from: i64,
    to: i64,
    period: i32,
) -> Vec<(i64, f64, f64)> {
    let out = client
        .get_metric_statistics()
        .namespace(namespace)
        .metric_name(metric)
        .set_dimensions(Some(dimensions))
        .start_time(aws_smithy_types::DateTime::from_secs(from))
        .end_time(aws_smithy_types::DateTime::from_secs(to))
        .period(period)
        .statistics(Statistic::Sum)
        .statistics(Statistic::SampleCount)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "GetMetricStatistics {metric}: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            )
        });
    let mut points: Vec<_> = out
        .datapoints()
        .iter()
        .map(|d| {
            (
                d.timestamp().map_or(0, |t| t.secs()),
                d.sum().unwrap_or(f64::NAN),
                d.sample_count().unwrap_or(f64::NAN),
            )
        })
        .collect();
    points.sort_by_key(|p| p.0);
    points
}

/// Period timestamps → how many PutMetricData requests carried them.
fn puts_by_period(proxy: &CloudWatchProxy) -> BTreeMap<i64, usize> {
    let mut out = BTreeMap::new();
    for p in proxy.period_puts() {
        for t in p.timestamps.iter().collect::<BTreeSet<_>>() {
            *out.entry(*t).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hosts_one_period_sum_is_the_clusters_container_capacity() {
    let (_moto, proxy) = require!(peers().await, "moto");
    let sdk = proxy.sdk_config().await;
    let ns = "Test/Aggregate";
    let hosts = vec![
        host("i-000000000000000a1", 0, 0), // 4 by CPU, 7 by memory → 4
        host("i-000000000000000a2", 1024, 1024), // 2 by CPU → 2
        host("i-000000000000000a3", 1536, 7000), // 1 by CPU, 0 by memory → 0
    ];
    let computed = capacity::compute(&hosts, &[shape()], 1.0);
    assert_eq!(computed.container_capacity, 6, "the state under test");
    let running: Vec<_> = computed
        .hosts
        .iter()
        .map(|h| {
            let h = h.clone();
            run_publisher(
                &sdk,
                ns,
                Duration::from_secs(2),
                Duration::from_secs(1),
                Arc::new(move |_| figures(&h, 3)),
            )
        })
        .collect();

    // A period every host has published.
    let period = eventually(Duration::from_secs(60), || async {
        puts_by_period(&proxy)
            .into_iter()
            .find(|(_, n)| *n == hosts.len())
            .map(|(t, _)| t)
    })
    .await
    .expect("all three hosts publish one common period");
    for r in running {
        r.stop().await;
    }

    let client = cloudwatch::client(&sdk);
    let cluster = statistics(
        &client,
        ns,
        "ContainerCapacity",
        dims(&[("ClusterName", CLUSTER)]),
        period,
        period + 1,
        2,
    )
    .await;
    assert_eq!(
        cluster,
        vec![(period, computed.container_capacity as f64, 3.0)],
        "Sum over {{ClusterName}} for one period = ContainerCapacity from capacity::compute, one sample per host"
    );
    for h in &computed.hosts {
        let per_host = statistics(
            &client,
            ns,
            "ContainerCapacity",
            dims(&[("ClusterName", CLUSTER), ("InstanceId", &h.name)]),
            period,
            period + 1,
            2,
        )
        .await;
        assert_eq!(
            per_host,
            vec![(period, h.spare_tasks.unwrap() as f64, 1.0)],
            "{}",
            h.name
        );
    }
    let by_memory = statistics(
        &client,
        ns,
        "ContainerCapacityByResource",
        dims(&[("ClusterName", CLUSTER), ("Resource", "memory")]),
        period,
        period + 1,
        2,
    )
    .await;
    assert_eq!(
        by_memory,
        vec![(
            period,
            computed.per_resource.memory.unwrap().capacity as f64,
            3.0
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_sends_exactly_one_put_per_interval_even_with_material_changes() {
    let (_moto, proxy) = require!(peers().await, "moto");
    let sdk = proxy.sdk_config().await;
    let report = capacity::compute(&[host("i-0steady", 512, 512)], &[shape()], 1.0);
    let h = report.hosts[0].clone();
    let r = run_publisher(
        &sdk,
        "Test/Steady",
        Duration::from_secs(1),
        Duration::from_millis(250),
        Arc::new(move |_| figures(&h, 1)),
    );
    eventually(Duration::from_secs(60), || async {
        (proxy.period_puts().len() >= 2).then_some(())
    })
    .await
    .expect("first periods published");
    // Material changes: the first sends the current period early, the second finds it sent (and
    // the period's own send point skips it).
    r.material_change();
    tokio::time::sleep(Duration::from_millis(20)).await;
    r.material_change();
    eventually(Duration::from_secs(60), || async {
        (proxy.period_puts().len() >= 6).then_some(())
    })
    .await
    .expect("more periods published");
    r.stop().await;

    let puts = proxy.period_puts();
    for p in &puts {
        let periods: BTreeSet<_> = p.timestamps.iter().collect();
        assert_eq!(
            periods.len(),
            1,
            "one period per request in steady state: {p:?}"
        );
    }
    let by_period = puts_by_period(&proxy);
    assert!(
        by_period.values().all(|n| *n == 1),
        "no period sent twice: {by_period:?}"
    );
    assert_eq!(by_period.len(), puts.len());
    let first = *by_period.keys().next().unwrap();
    let last = *by_period.keys().last().unwrap();
    assert_eq!(
        by_period.keys().copied().collect::<Vec<_>>(),
        (first..=last).collect::<Vec<_>>(),
        "one request for every interval, none skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_of_three_intervals_delivers_the_buffered_periods_after() {
    let (_moto, mut proxy) = require!(peers().await, "moto");
    let sdk = proxy.sdk_config().await;
    let ns = "Test/Outage";
    let report = capacity::compute(&[host("i-0outage", 0, 0)], &[shape()], 1.0);
    let h = report.hosts[0].clone();
    // The observer: a new observation (running_tasks = its sequence number) every 100 ms, which
    // the publisher must never hold up, outage or not.
    let observed = h.clone();
    let r = run_publisher(
        &sdk,
        ns,
        Duration::from_secs(1),
        Duration::from_millis(100),
        Arc::new(move |n| figures(&observed, n)),
    );
    let health = r.health.clone();

    eventually(Duration::from_secs(60), || async {
        (proxy.period_puts().len() >= 2).then_some(())
    })
    .await
    .expect("published before the outage");
    proxy.down().await;
    let before = proxy.period_puts().len();
    // Wait for a send to fail (on a loaded machine the first refused attempt can come late), then
    // keep the endpoint down for three more periods so several are buffered.
    eventually(Duration::from_secs(60), || async {
        r.health
            .errors()
            .get("cloudwatch_unsent")
            .is_some_and(|n| *n >= 1)
            .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("sends failed while down: {:?}", r.health.errors()));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    proxy.up().await;
    let caught_up = eventually(Duration::from_secs(60), || async {
        let puts = proxy.period_puts();
        puts[before..]
            .iter()
            .find(|p| p.timestamps.iter().collect::<BTreeSet<_>>().len() >= 3)
            .cloned()
    })
    .await
    .expect("the buffered periods arrive in one request after the outage");
    eventually(Duration::from_secs(60), || async {
        (proxy.period_puts().len() >= before + 3).then_some(())
    })
    .await
    .expect("steady again");
    let observations = r.stop().await;
    assert!(observations > 30, "observation kept going: {observations}");

    let by_period = puts_by_period(&proxy);
    assert!(
        by_period.values().all(|n| *n == 1),
        "nothing sent twice: {by_period:?}"
    );
    let first = *by_period.keys().next().unwrap();
    let last = *by_period.keys().last().unwrap();
    assert_eq!(
        by_period.keys().copied().collect::<Vec<_>>(),
        (first..=last).collect::<Vec<_>>(),
        "no period lost"
    );
    assert_eq!(health.errors().get("cloudwatch_ambiguous"), None);
    assert_eq!(health.errors().get("cloudwatch_dropped_period"), None);

    // Read back: exactly one RunningTasks sample per period, and the periods sent late carry the
    // observations made during the outage (rising sequence numbers), not one repeated value.
    let client = cloudwatch::client(&sdk);
    let points = statistics(
        &client,
        ns,
        "RunningTasks",
        dims(&[("ClusterName", CLUSTER), ("InstanceId", "i-0outage")]),
        first,
        last + 1,
        1,
    )
    .await;
    assert_eq!(
        points.iter().map(|p| p.0).collect::<Vec<_>>(),
        (first..=last).collect::<Vec<_>>()
    );
    assert!(points.iter().all(|p| p.2 == 1.0), "{points:?}");
    let late: BTreeSet<i64> = caught_up.timestamps.iter().copied().collect();
    let late_values: Vec<f64> = points
        .iter()
        .filter(|p| late.contains(&p.0))
        .map(|p| p.1)
        .collect();
    assert!(
        late_values.windows(2).all(|w| w[0] < w[1]),
        "each buffered period kept the figures of its own time: {late_values:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_check_passes_and_fails_fast_with_a_clear_message() {
    let (_moto, proxy) = require!(peers().await, "moto");
    let sdk = proxy.sdk_config().await;
    let mut cfg = Config::default();
    cfg.agent.cluster = CLUSTER.into();
    cfg.cloudwatch.namespace = "Test/Startup".into();

    let ok = cloudwatch::start(&sdk, &cfg, Arc::new(Health::default())).await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    assert!(proxy.puts().iter().any(|p| p.is_probe()));

    proxy.deny(true);
    let err = cloudwatch::start(&sdk, &cfg, Arc::new(Health::default()))
        .await
        .err()
        .expect("denied")
        .to_string();
    assert!(
        err.contains("denied cloudwatch:PutMetricData")
            && err.contains("Test/Startup")
            && err.contains("deploy/iam-policy.json"),
        "{err}"
    );
    proxy.deny(false);

    let no_region = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let err = cloudwatch::start(&no_region, &cfg, Arc::new(Health::default()))
        .await
        .err()
        .expect("no region")
        .to_string();
    assert!(err.contains("no AWS region"), "{err}");

    let no_credentials = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .build();
    let err = cloudwatch::start(&no_credentials, &cfg, Arc::new(Health::default()))
        .await
        .err()
        .expect("no credentials")
        .to_string();
    assert!(err.contains("no AWS credentials"), "{err}");

    // Nothing listening where the endpoint should be: unreachable, said so with the region.
    let mut down = CloudWatchProxy::start(_moto.url()).await;
    let sdk_down = down.sdk_config().await;
    down.down().await;
    let err = cloudwatch::start(&sdk_down, &cfg, Arc::new(Health::default()))
        .await
        .err()
        .expect("unreachable")
        .to_string();
    assert!(
        err.contains("cannot be reached") && err.contains("us-east-1"),
        "{err}"
    );
    let _ = UNIX_EPOCH;
}

/// `(period start, Sum, SampleCount)` of `Hosts` for one instance, every `period` seconds from
/// `from` to `to`.
async fn host_periods(
    sdk: &aws_config::SdkConfig,
    ns: &str,
    metric: &str,
    instance: &str,
    from: i64,
    to: i64,
    period: i32,
) -> Vec<(i64, f64, f64)> {
    statistics(
        &cloudwatch::client(sdk),
        ns,
        metric,
        dims(&[("ClusterName", CLUSTER), ("InstanceId", instance)]),
        from,
        to,
        period,
    )
    .await
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The 20 s and 60 s intervals of a 60 s period, scaled down to a 3 s period: an interval of a
/// third of the period, and one equal to it. Each host sends exactly one datum per period, each
/// carrying an observation of its own period (`RunningTasks` = the observation's number, rising).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_datum_per_period_whatever_the_interval() {
    let (_moto, proxy) = require!(peers().await, "moto");
    let sdk = proxy.sdk_config().await;
    let ns = "Test/OnePerPeriod";
    let period = 3;
    let report = capacity::compute(
        &[host("i-0third", 0, 0), host("i-0whole", 0, 0)],
        &[shape()],
        1.0,
    );
    let from = unix_now();
    let running: Vec<_> = [(0, Duration::from_secs(1)), (1, Duration::from_secs(3))]
        .into_iter()
        .map(|(i, interval)| {
            let h = report.hosts[i].clone();
            run_publisher(
                &sdk,
                ns,
                Duration::from_secs(period),
                interval,
                Arc::new(move |n| figures(&h, n)),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5 * period)).await;
    for r in running {
        r.stop().await;
    }
    let to = unix_now() - 1;
    for (instance, observations_per_period) in [("i-0third", 3.0), ("i-0whole", 1.0)] {
        let points =
            host_periods(&sdk, ns, "RunningTasks", instance, from, to, period as i32).await;
        assert!(points.len() >= 4, "{instance}: {points:?}");
        assert!(
            points
                .iter()
                .all(|p| p.0 % period as i64 == 0 && p.2 == 1.0),
            "{instance}: one datum per period, stamped with its start: {points:?}"
        );
        assert!(
            points.windows(2).all(|w| w[1].0 - w[0].0 == period as i64),
            "{instance}: no period skipped: {points:?}"
        );
        // Full periods after the first: the observation numbers advance by the observations a
        // period holds (the last of each period is sent, not a later or an earlier one).
        let steps: Vec<f64> = points[1..].windows(2).map(|w| w[1].1 - w[0].1).collect();
        assert!(
            steps
                .iter()
                .all(|s| (s - observations_per_period).abs() <= 1.0),
            "{instance}: {points:?}"
        );
    }
    let by_period = puts_by_period(&proxy);
    assert!(by_period.values().all(|n| *n <= 2), "{by_period:?}");
}

/// A drain starts mid-period: `Draining=1` goes out at once, as the current period's datum, and the
/// period's own send point does not add a second datum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_goes_out_at_once_as_the_current_periods_only_datum() {
    let (_moto, proxy) = require!(peers().await, "moto");
    let sdk = proxy.sdk_config().await;
    let ns = "Test/DrainingEarly";
    let period = 4i64;
    let report = capacity::compute(&[host("i-0drain", 0, 0)], &[shape()], 1.0);
    let h = report.hosts[0].clone();
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let make: Make = {
        let draining = draining.clone();
        Arc::new(move |n| {
            let mut f = figures(&h, n);
            f.draining = draining.load(std::sync::atomic::Ordering::SeqCst);
            f
        })
    };
    let r = run_publisher(
        &sdk,
        ns,
        Duration::from_secs(period as u64),
        Duration::from_secs(1),
        make.clone(),
    );
    eventually(Duration::from_secs(30), || async {
        (!proxy.period_puts().is_empty()).then_some(())
    })
    .await
    .expect("a first period");
    // A second into a period, so the period's own send point is well ahead.
    while unix_now() % period != 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = proxy.period_puts().len();
    let t0 = std::time::Instant::now();
    let current = unix_now() / period * period;
    draining.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut f = make(0);
    f.at = SystemTime::now();
    r.material_figures(f);
    let put = eventually(Duration::from_secs(10), || async {
        proxy.period_puts()[before..]
            .iter()
            .find(|p| p.values_of("Draining").contains(&1.0))
            .cloned()
    })
    .await
    .expect("Draining=1 sent");
    let latency = t0.elapsed();
    assert!(
        latency < Duration::from_millis(1500),
        "Draining=1 within seconds of the drain: {latency:?}"
    );
    assert_eq!(
        put.timestamps.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&current]),
        "stamped with the current period, not the next"
    );
    // Past the period's send point and the next one.
    tokio::time::sleep(Duration::from_secs(2 * period as u64)).await;
    r.stop().await;
    let points = host_periods(
        &sdk,
        ns,
        "Draining",
        "i-0drain",
        current,
        current + 1,
        period as i32,
    )
    .await;
    assert_eq!(
        points,
        vec![(current, 1.0, 1.0)],
        "one datum for the period"
    );
    let by_period = puts_by_period(&proxy);
    assert!(
        by_period.values().all(|n| *n == 1),
        "no period sent twice: {by_period:?}"
    );
}

/// The wall clock a test can step.
struct SteppedClock {
    back_secs: std::sync::atomic::AtomicU64,
}

impl SteppedClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
            - Duration::from_secs(self.back_secs.load(std::sync::atomic::Ordering::SeqCst))
    }
}

impl cloudwatch::WallClock for SteppedClock {
    fn now(&self) -> SystemTime {
        SteppedClock::now(self)
    }
}

/// The wall clock steps back 7 s (over three periods): sends go on within two periods, and no
/// period is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_goes_on_after_a_backward_clock_step() {
    let (_moto, proxy) = require!(peers().await, "moto");
    let sdk = proxy.sdk_config().await;
    let clock = Arc::new(SteppedClock {
        back_secs: 0.into(),
    });
    let report = capacity::compute(&[host("i-0clock", 0, 0)], &[shape()], 1.0);
    let h = report.hosts[0].clone();
    let publisher = Publisher::new(
        cloudwatch::client(&sdk),
        cw_config("Test/ClockStep", Duration::from_secs(2)),
        Arc::new(Health::default()),
    )
    .with_offset(Duration::ZERO)
    .with_clock(clock.clone());
    let observed = clock.clone();
    let r = start_publisher(
        publisher,
        Duration::from_millis(500),
        Arc::new(move |n| figures(&h, n)),
        Arc::new(move || observed.now()),
    );
    eventually(Duration::from_secs(30), || async {
        (proxy.period_puts().len() >= 3).then_some(())
    })
    .await
    .expect("periods before the step");
    clock
        .back_secs
        .store(7, std::sync::atomic::Ordering::SeqCst);
    let before = proxy.period_puts().len();
    let t0 = std::time::Instant::now();
    eventually(Duration::from_secs(30), || async {
        (proxy.period_puts().len() > before).then_some(())
    })
    .await
    .expect("a period after the step");
    let gap = t0.elapsed();
    assert!(
        gap < Duration::from_millis(4500),
        "publishing went on: first send {gap:?} after the step"
    );
    eventually(Duration::from_secs(30), || async {
        (proxy.period_puts().len() >= before + 4).then_some(())
    })
    .await
    .expect("more periods after the step");
    r.stop().await;
    let by_period = puts_by_period(&proxy);
    assert!(
        by_period.values().all(|n| *n == 1),
        "no period sent twice: {by_period:?}"
    );
    let first = *by_period.keys().next().unwrap();
    let last = *by_period.keys().last().unwrap();
    assert_eq!(
        by_period.keys().copied().collect::<Vec<_>>(),
        (first..=last).step_by(2).collect::<Vec<_>>(),
        "every period once, none skipped"
    );
}
