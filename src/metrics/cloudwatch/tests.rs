use std::collections::BTreeMap;

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
        running_tasks: 5,
        draining: false,
        placeable: None,
        cpu_reserved_difference: None,
        memory_reserved_difference: None,
        removable: None,
    }
}

fn cfg(asg: bool) -> CloudWatchConfig {
    CloudWatchConfig {
        asg_dimension: asg,
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
        Duration::from_secs(60),
        Arc::new(Health::default()),
    )
}

#[tokio::test]
async fn a_full_buffer_drops_the_oldest_period_and_counts_it() {
    let mut p = publisher(2);
    let f = figures();
    for i in 0..3 {
        p.claim(minute(i), Some(&f));
    }
    let kept: Vec<_> = p.buffer.iter().map(|x| x.period.index).collect();
    assert_eq!(kept, vec![1, 2]);
    assert_eq!(p.health.errors().get("cloudwatch_dropped_period"), Some(&1));
}

#[tokio::test]
async fn no_observation_means_no_period() {
    let mut p = publisher(2);
    p.claim(minute(1), None);
    assert_eq!(p.buffered_periods(), 0);
    assert_eq!(p.claimed, None);
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
        p.claim(minute(1), Some(&f));
        p.claim(minute(2), Some(&f));
        assert!(!p.settle(2, Err(failure)));
        assert_eq!(p.buffered_periods(), left, "{failure:?}");
        assert_eq!(p.health.errors().get(health_kind(failure)), Some(&1));
    }
    let mut p = publisher(5);
    p.claim(minute(1), Some(&f));
    p.claim(minute(2), Some(&f));
    assert!(p.settle(1, Ok(())), "the backlog goes out at once");
    assert!(!p.settle(1, Ok(())));
    assert_eq!(p.buffered_periods(), 0);
}
