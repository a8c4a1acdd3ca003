use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// The `index`-th one-minute period.
fn minute(index: u64) -> Period {
    Period {
        index,
        length_secs: 60,
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn figures() -> HostFigures {
    HostFigures {
        // 2026-01-01T00:00:42Z: 42 s into a minute.
        at: at(1_767_225_642),
        cluster: "prod".into(),
        instance_id: "i-0abc".into(),
        autoscaling_group: Some("prod-asg".into()),
        spare_tasks: Some(3),
        spare_tasks_by_resource: BTreeMap::from([("cpu", 3), ("memory", 7)]),
        idle_fraction: Some(0.5),
        idle_fraction_by_resource: BTreeMap::from([("cpu", 0.5), ("memory", 0.875)]),
        cpu_reserved_pct: Some(25.0),
        memory_reserved_pct: Some(12.5),
        cpu_used_pct: Some(3.0),
        memory_used_pct: None,
        eni_attached: Some(2),
        eni_limit: Some(4),
        running_tasks: Some(5),
        draining: false,
        placeable: None,
        cpu_reserved_difference: None,
        memory_reserved_difference: None,
        removable: None,
        scale_in_protected: None,
    }
}

/// Every metric, per instance too (the opt-in keys on), so each mapping rule is visible.
fn cfg(asg: bool) -> CloudWatchConfig {
    CloudWatchConfig {
        asg_dimension: asg,
        per_instance: true,
        all_metrics: true,
        ..CloudWatchConfig::default()
    }
}

/// `(metric, dims as "Name=Value,...", value)` for easy table comparison.
fn flat(datums: &[MetricDatum]) -> Vec<(String, String, f64)> {
    datums
        .iter()
        .map(|d| {
            let dims = d
                .dimensions()
                .iter()
                .map(|x| format!("{}={}", x.name().unwrap_or(""), x.value().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",");
            (
                d.metric_name().unwrap_or("").to_string(),
                dims,
                d.value().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

fn find(datums: &[MetricDatum], metric: &str, dims: &str) -> Vec<f64> {
    flat(datums)
        .into_iter()
        .filter(|(m, d, _)| m == metric && d == dims)
        .map(|(_, _, v)| v)
        .collect()
}

#[test]
fn each_figure_maps_to_its_metric_once_per_dimension_set() {
    let d = datums(&figures(), &cfg(false));
    let table: &[(&str, f64)] = &[
        ("ContainerCapacity", 3.0),
        ("IdleHostCapacity", 0.5),
        ("CPUReservation", 25.0),
        ("MemoryReservation", 12.5),
        ("CPUUtilization", 3.0),
        ("ENIsAttached", 2.0),
        ("ENILimit", 4.0),
        ("RunningTasks", 5.0),
        ("Draining", 0.0),
        ("Hosts", 1.0),
    ];
    for (metric, value) in table {
        assert_eq!(
            find(&d, metric, "ClusterName=prod"),
            vec![*value],
            "{metric}"
        );
        assert_eq!(
            find(&d, metric, "ClusterName=prod,InstanceId=i-0abc"),
            vec![*value],
            "{metric}"
        );
    }
}

#[test]
fn unknown_figures_are_left_out_never_sent_as_zero() {
    let mut f = figures();
    f.spare_tasks = None;
    f.idle_fraction = None;
    f.eni_attached = None;
    let d = datums(&f, &cfg(false));
    let names: Vec<_> = flat(&d).into_iter().map(|(m, _, _)| m).collect();
    for gone in [
        "ContainerCapacity",
        "IdleHostCapacity",
        "ENIsAttached",
        "MemoryUtilization",
    ] {
        assert!(!names.iter().any(|n| n == gone), "{gone} published");
    }
    assert!(names.iter().any(|n| n == "ENILimit"));
}

#[test]
fn removable_hosts_is_published_only_in_a_group_and_never_while_draining() {
    let names = |f: &HostFigures| -> Vec<String> {
        flat(&datums(f, &cfg(false)))
            .into_iter()
            .map(|(m, _, _)| m)
            .collect()
    };
    assert!(!names(&figures()).iter().any(|n| n == "RemovableHosts"));
    let mut f = figures();
    f.removable = Some(true);
    assert_eq!(
        find(
            &datums(&f, &cfg(false)),
            "RemovableHosts",
            "ClusterName=prod"
        ),
        vec![1.0]
    );
    f.removable = Some(false);
    assert_eq!(
        find(
            &datums(&f, &cfg(false)),
            "RemovableHosts",
            "ClusterName=prod"
        ),
        vec![0.0]
    );
}

#[test]
fn per_resource_figures_carry_a_resource_dimension() {
    let d = datums(&figures(), &cfg(false));
    assert_eq!(
        find(
            &d,
            "ContainerCapacityByResource",
            "ClusterName=prod,Resource=memory"
        ),
        vec![7.0]
    );
    assert_eq!(
        find(
            &d,
            "IdleHostCapacityByResource",
            "ClusterName=prod,InstanceId=i-0abc,Resource=memory"
        ),
        vec![0.875]
    );
    // Resources that do not constrain this host (ports, eni here) are absent.
    assert!(
        find(
            &d,
            "ContainerCapacityByResource",
            "ClusterName=prod,Resource=eni"
        )
        .is_empty()
    );
}

#[test]
fn asg_dimension_only_when_enabled_and_known() {
    let with = datums(&figures(), &cfg(true));
    assert_eq!(
        find(
            &with,
            "ContainerCapacity",
            "ClusterName=prod,AutoScalingGroupName=prod-asg"
        ),
        vec![3.0]
    );
    let without = datums(&figures(), &cfg(false));
    assert!(
        flat(&without)
            .iter()
            .all(|(_, d, _)| !d.contains("AutoScalingGroupName"))
    );
    let mut unknown = figures();
    unknown.autoscaling_group = None;
    let d = datums(&unknown, &cfg(true));
    assert!(
        flat(&d)
            .iter()
            .all(|(_, d, _)| !d.contains("AutoScalingGroupName"))
    );
    assert_eq!(d.len() * 3, with.len() * 2);
}

#[test]
fn timestamps_are_the_minute_and_units_are_standard() {
    let d = datums(&figures(), &cfg(false));
    let minute = DateTime::from(at(1_767_225_600));
    assert!(d.iter().all(|x| x.timestamp() == Some(&minute)));
    assert!(d.iter().all(|x| x.storage_resolution() == Some(60)));
    let unit = |m: &str| {
        d.iter()
            .find(|x| x.metric_name() == Some(m))
            .and_then(|x| x.unit().cloned())
    };
    assert_eq!(unit("ContainerCapacity"), Some(StandardUnit::Count));
    assert_eq!(unit("IdleHostCapacity"), Some(StandardUnit::None));
    assert_eq!(unit("CPUReservation"), Some(StandardUnit::Percent));
}

#[test]
fn draining_is_one_and_zero() {
    let mut f = figures();
    f.draining = true;
    assert_eq!(
        find(&datums(&f, &cfg(false)), "Draining", "ClusterName=prod"),
        vec![1.0]
    );
}

#[test]
fn short_periods_are_high_resolution_and_aligned() {
    let p = Period::containing(at(1_767_225_642), Duration::from_secs(5));
    assert_eq!(p.start(), at(1_767_225_640));
    assert_eq!(p.storage_resolution(), 1);
    assert_eq!(p.next().start(), at(1_767_225_645));
    let d = period_datums(&figures(), &cfg(false), p);
    assert!(d.iter().all(|x| x.storage_resolution() == Some(1)));
    assert!(
        d.iter()
            .all(|x| x.timestamp() == Some(&DateTime::from(at(1_767_225_640))))
    );
}

#[test]
fn one_host_period_is_far_below_the_request_limits() {
    let mut f = figures();
    for r in super::super::figures::RESOURCES {
        f.spare_tasks_by_resource.insert(r, 1);
        f.idle_fraction_by_resource.insert(r, 1.0);
    }
    f.memory_used_pct = Some(1.0);
    let d = datums(&f, &cfg(true));
    assert_eq!(d.len(), (11 + 10) * 3);
    assert_eq!(batches(d).len(), 1);
}

#[test]
fn batches_split_only_past_a_thousand_datums() {
    let d = datums(&figures(), &cfg(false));
    let many: Vec<_> = d.iter().cycle().take(2500).cloned().collect();
    let b = batches(many);
    assert_eq!(
        b.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1000, 1000, 500]
    );
    let few: Vec<_> = d.iter().cycle().take(1000).cloned().collect();
    assert_eq!(batches(few).len(), 1);
}

#[test]
fn batches_split_past_a_megabyte() {
    // Dimension values may be 1,024 characters long.
    let long = "x".repeat(1024);
    let d = MetricDatum::builder()
        .metric_name("M")
        .dimensions(Dimension::builder().name("A").value(&long).build())
        .dimensions(Dimension::builder().name("B").value(&long).build())
        .value(1.0)
        .build();
    let size = estimated_size(&d);
    let per_request = (MAX_REQUEST_BYTES - REQUEST_OVERHEAD_BYTES) / size;
    assert!(per_request < MAX_DATUMS_PER_REQUEST);
    let b = batches(vec![d; 1000]);
    assert!(b.len() >= 2);
    assert!(
        b.iter()
            .all(|r| r.iter().map(estimated_size).sum::<usize>() < MAX_REQUEST_BYTES)
    );
    assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 1000);
}

fn pending(index: u64, n: usize) -> Pending {
    let d = datums(&figures(), &cfg(false));
    Pending {
        period: minute(index),
        datums: d.iter().cycle().take(n).cloned().collect(),
    }
}

#[test]
fn a_request_takes_whole_periods_oldest_first_up_to_the_limit() {
    let buffer: VecDeque<_> = (0..5).map(|i| pending(i, 300)).collect();
    let (n, datums) = take_request(&buffer);
    assert_eq!((n, datums.len()), (3, 900));
    let one: VecDeque<_> = [pending(0, 40)].into_iter().collect();
    assert_eq!(take_request(&one).0, 1);
    assert_eq!(take_request(&VecDeque::new()).0, 0);
}

fn publisher(buffer_periods: usize) -> Publisher {
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    Publisher::new(
        client(&sdk),
        CloudWatchConfig {
            buffer_periods,
            ..CloudWatchConfig::default()
        },
        Arc::new(Health::default()),
    )
}

#[tokio::test]
async fn a_full_buffer_drops_the_oldest_period_and_counts_it() {
    let mut p = publisher(2);
    let f = figures();
    for i in 0..3 {
        p.claim(regular(minute(i)), Some(&f));
    }
    let kept: Vec<_> = p.buffer.iter().map(|x| x.period.index).collect();
    assert_eq!(kept, vec![1, 2]);
    assert_eq!(p.health.errors().get("cloudwatch_dropped_period"), Some(&1));
}

#[tokio::test]
async fn no_observation_means_no_period() {
    let mut p = publisher(2);
    p.claim(regular(minute(1)), None);
    assert_eq!(p.buffered_periods(), 0);
    assert_eq!(p.schedule.last(), None);
}

#[tokio::test]
async fn unsent_periods_stay_ambiguous_and_rejected_ones_go() {
    let f = figures();
    for (failure, left) in [
        (Outcome::NotApplied, 2),
        (Outcome::MaybeApplied, 0),
        (Outcome::Rejected, 0),
    ] {
        let mut p = publisher(5);
        p.claim(regular(minute(1)), Some(&f));
        p.claim(regular(minute(2)), Some(&f));
        assert!(!p.settle(2, Err(failure)));
        assert_eq!(p.buffered_periods(), left, "{failure:?}");
        assert_eq!(p.health.errors().get(health_kind(failure)), Some(&1));
    }
    let mut p = publisher(5);
    p.claim(regular(minute(1)), Some(&f));
    p.claim(regular(minute(2)), Some(&f));
    assert!(p.settle(1, Ok(())), "the backlog goes out at once");
    assert!(!p.settle(1, Ok(())));
    assert_eq!(p.buffered_periods(), 0);
}

#[test]
fn the_default_set_is_what_the_alarms_and_dashboard_read_under_cluster_name_only() {
    let mut f = figures();
    f.removable = Some(true);
    f.placeable = Some(true);
    let d = datums(&f, &CloudWatchConfig::default());
    let mut names: Vec<_> = flat(&d).into_iter().map(|(m, _, _)| m).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        [
            "ContainerCapacity",
            "ContainerCapacityByResource",
            "Draining",
            "Hosts",
            "IdleHostCapacity",
            "IdleHostCapacityByResource",
            "Placeable",
            "RemovableHosts",
        ]
    );
    assert!(
        flat(&d)
            .iter()
            .all(|(_, dims, _)| dims == "ClusterName=prod"
                || dims.starts_with("ClusterName=prod,Resource=")),
        "no InstanceId by default: {:?}",
        flat(&d)
    );
    // One datum per metric (and resource) per period: 6 + 2 × 2 constraining resources.
    assert_eq!(d.len(), 10);
    let per_instance = CloudWatchConfig {
        per_instance: true,
        ..CloudWatchConfig::default()
    };
    assert_eq!(
        find(
            &datums(&f, &per_instance),
            "ContainerCapacity",
            "ClusterName=prod,InstanceId=i-0abc"
        ),
        vec![3.0]
    );
}

#[test]
fn period_and_interval_combinations() {
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    // (period, interval, the key blamed or None when accepted)
    let table: &[(Duration, Duration, Option<&str>)] = &[
        (s(60), s(60), None),
        (s(60), s(30), None),
        (s(60), s(20), None),
        (s(60), s(10), None),
        (s(60), s(1), None),
        (s(10), s(10), None),
        (s(10), s(5), None),
        (s(10), ms(500), None),
        (s(60), s(120), Some("agent.interval")),
        (s(60), s(45), Some("agent.interval")),
        (s(60), s(25), Some("agent.interval")),
        (s(10), s(20), Some("agent.interval")),
        (s(10), s(3), Some("agent.interval")),
        (s(30), s(10), Some("cloudwatch.period")),
        (s(1), s(1), Some("cloudwatch.period")),
        (s(120), s(60), Some("cloudwatch.period")),
    ];
    for (period, interval, blamed) in table {
        let got = check_period(*period, *interval);
        assert_eq!(
            got.as_ref().err().map(|e| e.0),
            *blamed,
            "{period:?} / {interval:?}: {got:?}"
        );
        if let Err((_, message)) = got
            && blamed == &Some("agent.interval")
        {
            assert!(
                message.contains("cloudwatch.period"),
                "names both keys: {message}"
            );
        }
    }
}

fn regular(period: Period) -> Claim {
    Claim {
        period,
        figures: Pick::ObservedIn,
        early: false,
    }
}

fn ten(index: u64) -> Period {
    Period {
        index,
        length_secs: 10,
    }
}

/// Runs a schedule against observations every `interval` (each observation stamped with its own
/// wall time), from `start` for `periods` periods, waking at each send point. Returns each claim's
/// period and the wall time of the observation it carries.
fn simulate(
    length: u64,
    interval: u64,
    offset: u64,
    start: u64,
    periods: u64,
) -> Vec<(Period, u64)> {
    let mut schedule = Schedule::new(Duration::from_secs(length), Duration::from_secs(offset));
    let mut recent = Recent::default();
    let mut out = Vec::new();
    let end = start + periods * length;
    let mut next_obs = start;
    let mut now = start;
    while now < end {
        let wake = now + schedule.until_next(at(now)).as_secs();
        // Observations up to the wake (one landing exactly on the wake comes first).
        while next_obs <= wake {
            let mut f = figures();
            f.at = at(next_obs);
            recent.record(Arc::new(f), Duration::from_secs(length));
            next_obs += interval;
        }
        now = wake;
        for claim in schedule.due(at(now)) {
            if let Some(f) = recent.pick(&claim) {
                schedule.claimed(&claim);
                let obs = f.at.duration_since(UNIX_EPOCH).unwrap().as_secs();
                out.push((claim.period, obs));
            }
        }
    }
    out
}

#[test]
fn one_datum_per_period_carrying_an_observation_made_in_it() {
    // 2026-01-01T00:00:00Z, 7 s into a minute and 3 s into a ten-second period.
    let start = 1_767_225_607;
    for (length, interval) in [(60, 10), (60, 20), (60, 30), (60, 60), (10, 10)] {
        for offset in [0, 1, length / 2 - 1] {
            let claims = simulate(length, interval, offset, start, 12);
            let periods: Vec<u64> = claims.iter().map(|c| c.0.index).collect();
            let first = start / length;
            assert_eq!(
                periods,
                (first..first + periods.len() as u64).collect::<Vec<_>>(),
                "period {length}s interval {interval}s offset {offset}s: each period once, in order"
            );
            assert!(
                periods.len() >= 11,
                "{length}/{interval}/{offset}: {periods:?}"
            );
            for (p, obs) in &claims {
                assert_eq!(
                    Period::containing(at(*obs), Duration::from_secs(length)),
                    *p,
                    "period {length}s interval {interval}s offset {offset}s: the datum of {p:?} carries an observation made in it"
                );
            }
        }
    }
}

#[test]
fn an_early_send_takes_the_current_period_and_its_end_skips() {
    let mut s = Schedule::new(Duration::from_secs(10), Duration::from_secs(3));
    // Period 100 sent at its send point (t = 1013).
    assert_eq!(
        s.due(at(1013)),
        vec![Claim {
            period: ten(100),
            figures: Pick::ObservedIn,
            early: false
        }]
    );
    s.claimed(&regular(ten(100)));
    // A drain starts at t = 1015: period 101 goes now with the latest figures.
    assert_eq!(
        s.early(at(1015)),
        vec![Claim {
            period: ten(101),
            figures: Pick::Latest,
            early: true
        }]
    );
    s.claimed(&s.early(at(1015))[0]);
    // A second change in the same period: already sent, nothing more (never two datums).
    assert_eq!(s.early(at(1018)), vec![]);
    // Period 101's send point finds it sent.
    assert_eq!(s.until_next(at(1018)), Duration::from_secs(5));
    assert_eq!(s.due(at(1023)), vec![]);
    // And period 102 goes at its own send point.
    assert_eq!(s.due(at(1033)), vec![regular(ten(102))]);
}

#[test]
fn an_early_send_before_the_send_point_sends_the_ended_period_first() {
    let mut s = Schedule::new(Duration::from_secs(10), Duration::from_secs(4));
    s.claimed(&regular(ten(99)));
    // t = 1011: period 100 ended, its send point (1014) has not come: both go now, in order.
    assert_eq!(
        s.early(at(1011)),
        vec![
            Claim {
                period: ten(100),
                figures: Pick::ObservedIn,
                early: true
            },
            Claim {
                period: ten(101),
                figures: Pick::Latest,
                early: true
            }
        ]
    );
    for c in s.early(at(1011)) {
        s.claimed(&c);
    }
    assert_eq!(
        s.due(at(1014)),
        vec![],
        "period 100's send point: already sent"
    );
    assert_eq!(
        s.due(at(1024)),
        vec![],
        "period 101's send point: already sent"
    );
    assert_eq!(s.due(at(1034)), vec![regular(ten(102))]);
    // At start (nothing claimed), the change sends the current period; the one before holds no
    // observation then and stays empty.
    let fresh = Schedule::new(Duration::from_secs(10), Duration::ZERO);
    assert_eq!(
        fresh
            .early(at(1011))
            .iter()
            .map(|c| c.period)
            .collect::<Vec<_>>(),
        vec![ten(100), ten(101)]
    );
}

#[test]
fn a_period_with_no_recent_observation_is_not_sent_stale() {
    let mut recent = Recent::default();
    let mut f = figures();
    f.at = at(1001);
    recent.record(Arc::new(f), Duration::from_secs(10));
    assert!(recent.observed_in(ten(100)).is_some());
    assert!(
        recent.observed_in(ten(101)).is_some(),
        "one period late is still the last observation"
    );
    assert!(recent.observed_in(ten(102)).is_none(), "older: stale");
    assert!(
        recent.observed_in(ten(99)).is_none(),
        "not observed yet in 99"
    );
    // The next period's first observation before the send point: 100 keeps its own.
    let mut g = figures();
    g.at = at(1012);
    recent.record(Arc::new(g), Duration::from_secs(10));
    assert_eq!(recent.observed_in(ten(100)).map(|f| f.at), Some(at(1001)));
    assert_eq!(recent.observed_in(ten(101)).map(|f| f.at), Some(at(1012)));
}

/// The clock-step case: the monotonic clock advances by each wait; the wall clock is the
/// monotonic one plus a skew that steps back by `step` seconds once.
fn run_with_step(step: u64) -> Vec<(u64, Option<Period>)> {
    let length = 10;
    let mut s = Schedule::new(Duration::from_secs(length), Duration::from_secs(2));
    let mut mono = 0u64;
    let mut skew = 1_000_000u64;
    let mut wakes = Vec::new();
    for i in 0..60 {
        if i == 10 {
            skew -= step;
        }
        let wait = s.until_next(at(mono + skew));
        assert!(
            wait <= Duration::from_secs(length),
            "no wait beyond a period: {wait:?}"
        );
        mono += wait.as_secs().max(1);
        let claims = s.due(at(mono + skew));
        assert!(
            claims.len() <= 1,
            "one period per send point here: {claims:?}"
        );
        let claim = claims.first().copied();
        if let Some(c) = claim {
            s.claimed(&c);
        }
        wakes.push((mono, claim.map(|c| c.period)));
    }
    wakes
}

#[test]
fn a_backward_clock_step_does_not_stop_publishing_nor_send_a_period_twice() {
    for step in [3, 10, 25, 120] {
        let wakes = run_with_step(step);
        let sent: Vec<Period> = wakes.iter().filter_map(|w| w.1).collect();
        assert!(
            sent.windows(2).all(|w| w[0] < w[1]),
            "step {step}s: every period once, in order: {sent:?}"
        );
        // No gap of more than two periods (20 s of monotonic time) between sends.
        let times: Vec<u64> = wakes
            .iter()
            .filter(|w| w.1.is_some())
            .map(|w| w.0)
            .collect();
        assert!(
            times.windows(2).all(|w| w[1] - w[0] <= 20),
            "step {step}s: publishing goes on: {wakes:?}"
        );
        // Caught up again: the last wakes each send the period that just ended.
        let tail: Vec<_> = wakes[50..].iter().map(|w| w.1.is_some()).collect();
        assert!(
            tail.iter().all(|x| *x),
            "step {step}s: back to one send per period: {wakes:?}"
        );
    }
}

#[test]
fn random_offsets_stay_in_the_first_half_of_the_period() {
    for length in [10, 60] {
        let len = Duration::from_secs(length);
        let offsets: BTreeSet<_> = (0..200).map(|_| Schedule::random_offset(len)).collect();
        assert!(offsets.iter().all(|o| *o < len / 2), "{offsets:?}");
        assert!(offsets.len() > 50, "spread: {} distinct", offsets.len());
    }
}

#[test]
fn a_late_send_point_catches_up_on_the_period_it_missed() {
    let mut s = Schedule::new(Duration::from_secs(10), Duration::from_secs(2));
    s.claimed(&regular(ten(100)));
    // Period 101's send point (1022) came at 1033, past period 102's end: both go, in order.
    assert_eq!(s.due(at(1033)), vec![regular(ten(101)), regular(ten(102))]);
    // Much later (a forward step): only the ended period and the one before are tried.
    assert_eq!(s.due(at(1093)), vec![regular(ten(107)), regular(ten(108))]);
    // The observations kept: the last of each recent period, so the missed one has its own.
    let mut recent = Recent::default();
    for t in [1011, 1015, 1019, 1023, 1027, 1031] {
        let mut f = figures();
        f.at = at(t);
        recent.record(Arc::new(f), Duration::from_secs(10));
    }
    assert_eq!(recent.observed_in(ten(101)).map(|f| f.at), Some(at(1019)));
    assert_eq!(recent.observed_in(ten(102)).map(|f| f.at), Some(at(1027)));
    assert_eq!(recent.latest().map(|f| f.at), Some(at(1031)));
}

#[test]
fn a_backward_step_right_after_an_early_send_does_not_stop_publishing() {
    let mut s = Schedule::new(Duration::from_secs(10), Duration::from_secs(2));
    s.claimed(&regular(ten(100)));
    for c in s.early(at(1015)) {
        s.claimed(&c);
    }
    assert_eq!(s.last(), Some(ten(101)));
    // The wall clock steps back 30 s: the send point at 992 names period 98, long sent; the
    // publisher goes on with period 102 (not a pause until the wall clock passes 101).
    assert_eq!(
        s.due(at(992)),
        vec![Claim {
            period: ten(102),
            figures: Pick::Latest,
            early: false
        }]
    );
}
