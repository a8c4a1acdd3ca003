//! Encoding 1,000 datums (the PutMetricData limit), for ~16 hosts' worth of figures (63 datums each
//! with the ASG dimension). Target: ≤ 1 ms.
//!
//! - `encode 1000 datums (period_datums + batches)`: the pure mapping from HostFigures to the SDK's
//!   MetricDatums plus the request split — the daemon's own code.
//! - `encode + serialize 1000 datums (PutMetricData body)`: the same, then the SDK turns them into
//!   the request body (Smithy RPC v2 CBOR) as `send()` does. An interceptor stops the request right
//!   after serialization, before signing and any network; it checks the body is there.
//!
//! Run: `cargo bench --bench datums`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_cloudwatch::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_cloudwatch::types::MetricDatum;
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
        running_tasks: Some(5),
        draining: false,
        placeable: None,
        cpu_reserved_difference: None,
        memory_reserved_difference: None,
        removable: Some(false),
        scale_in_protected: Some(true),
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

/// Ends every request once its body is serialized, failing it with the body's size.
#[derive(Debug)]
struct StopAfterSerialization;

#[derive(Debug)]
struct Serialized(usize);

impl std::fmt::Display for Serialized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "serialized {} bytes", self.0)
    }
}

impl std::error::Error for Serialized {}

impl Intercept for StopAfterSerialization {
    fn name(&self) -> &'static str {
        "StopAfterSerialization"
    }

    fn read_after_serialization(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let len = context.request().body().bytes().map_or(0, <[u8]>::len);
        Err(Box::new(Serialized(len)))
    }
}

/// Serializes one PutMetricData request of `datums`; returns the body's length.
async fn serialize(client: &aws_sdk_cloudwatch::Client, datums: Vec<MetricDatum>) -> usize {
    let err = client
        .put_metric_data()
        .namespace("ECS/CapacityAgent")
        .set_metric_data(Some(datums))
        .send()
        .await
        .expect_err("the interceptor stops every request");
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cause {
        if let Some(Serialized(len)) = e.downcast_ref::<Serialized>() {
            return *len;
        }
        cause = e.source();
    }
    panic!("stopped for another reason: {err:?}")
}

fn encode_and_serialize_1000(c: &mut Criterion) {
    let cfg = CloudWatchConfig {
        asg_dimension: true,
        ..CloudWatchConfig::default()
    };
    let hosts: Vec<_> = (0..16).map(host).collect();
    let period = Period::containing(SystemTime::now(), Duration::from_secs(60));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_cloudwatch::config::SharedCredentialsProvider::new(
            aws_sdk_cloudwatch::config::Credentials::new("bench", "bench", None, None, "bench"),
        ))
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let client = aws_sdk_cloudwatch::Client::from_conf(
        aws_sdk_cloudwatch::config::Builder::from(&sdk)
            .interceptor(StopAfterSerialization)
            .build(),
    );
    let datums = |hosts: &[HostFigures]| {
        let mut all = Vec::with_capacity(1008);
        for h in hosts {
            all.extend(cloudwatch::period_datums(black_box(h), &cfg, period));
        }
        all.truncate(1000);
        cloudwatch::batches(all)
    };
    let batches = datums(&hosts);
    assert_eq!(batches.len(), 1, "1,000 datums are one request");
    let body = rt.block_on(serialize(&client, batches.into_iter().next().unwrap()));
    assert!(body > 10_000, "a 1,000-datum body of {body} bytes");
    println!("PutMetricData body for 1,000 datums: {body} bytes");
    c.bench_function("encode + serialize 1000 datums (PutMetricData body)", |b| {
        b.iter(|| {
            let mut total = 0;
            for batch in datums(&hosts) {
                total += rt.block_on(serialize(&client, batch));
            }
            black_box(total)
        })
    });
}

criterion_group!(benches, encode_1000, encode_and_serialize_1000);
criterion_main!(benches);
