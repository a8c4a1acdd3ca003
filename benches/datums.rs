//! Encoding 1,000 datums (the PutMetricData limit): the pure mapping from HostFigures to MetricDatums
//! plus the request split, for ~16 hosts' worth of figures (63 datums each with the ASG dimension).
//! Target: ≤ 1 ms. Run: `CARGO_TARGET_DIR=/work/bench-target cargo bench --bench datums`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use ecs_capacity_agent::config::CloudWatchConfig;
use ecs_capacity_agent::metrics::HostFigures;
use ecs_capacity_agent::metrics::cloudwatch::{self, Period};

fn host(i: usize) -> HostFigures {
    HostFigures {
        at: SystemTime::now(),
        cluster: "prod".into(),
        instance_id: format!("i-{i:017x}"),
        autoscaling_group: Some("prod-asg".into()),
        spare_tasks: Some(3),
        spare_tasks_by_resource: BTreeMap::from([
            ("cpu", 3),
            ("memory", 7),
            ("ports", 1),
            ("ports_udp", 1),
            ("eni", 2),
        ]),
        idle_fraction: Some(0.5),
        idle_fraction_by_resource: BTreeMap::from([
            ("cpu", 0.5),
            ("memory", 0.875),
            ("ports", 1.0),
            ("ports_udp", 1.0),
            ("eni", 0.66),
        ]),
        cpu_reserved_pct: Some(25.0),
        memory_reserved_pct: Some(12.5),
        cpu_used_pct: Some(3.0),
        memory_used_pct: Some(4.0),
        eni_attached: Some(2),
        eni_limit: Some(4),
        running_tasks: 5,
        draining: false,
    }
}

fn encode_1000(c: &mut Criterion) {
    let cfg = CloudWatchConfig {
        asg_dimension: true,
        ..CloudWatchConfig::default()
    };
    let hosts: Vec<_> = (0..16).map(host).collect();
    let period = Period::containing(SystemTime::now(), Duration::from_secs(60));
    let per_host = cloudwatch::period_datums(&hosts[0], &cfg, period).len();
    assert_eq!(per_host, 63);
    c.bench_function("encode 1000 datums (period_datums + batches)", |b| {
        b.iter(|| {
            let mut all = Vec::with_capacity(1008);
            for h in &hosts {
                all.extend(cloudwatch::period_datums(black_box(h), &cfg, period));
            }
            all.truncate(1000);
            black_box(cloudwatch::batches(all))
        })
    });
}

criterion_group!(benches, encode_1000);
criterion_main!(benches);
