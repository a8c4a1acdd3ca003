//! CloudWatch: the pure mapping from [`HostFigures`] to `MetricDatum`s, and the publisher that sends
//! one `PutMetricData` per interval.
//!
//! How the cluster aggregate stays right (the scale-out alarm reads `Sum` of `ContainerCapacity` over
//! `{ClusterName}` across all hosts):
//! - **One datum per host per period.** Periods are the interval aligned to the clock (the minute by
//!   default); every datum carries the period's start as its timestamp, so the datums of one host for
//!   one period all fall in the same alarm period, and the publisher claims each period at most once
//!   (a material change publishes early by claiming the *next* period, never the current one again).
//! - **A period is sent once.** CloudWatch does not de-duplicate: the same timestamp, dimensions and
//!   value sent twice is two samples, and `Sum` counts the host twice. So a request is re-sent only
//!   when it certainly did not arrive (connection refused, throttling, 503: see
//!   [`crate::aws::Outcome`]); when it may have arrived (a timeout, a connection cut after the body
//!   went out, a 500) it is not retried, neither by the SDK (see [`NoAmbiguousRetry`]) nor by the
//!   buffer, and its periods are dropped and counted in `Health` as `cloudwatch_ambiguous`. Losing one period of one host is
//!   visible (`Hosts` Sum drops by one, alarms need several periods); a double count is not.
//! - **Retry in one layer.** Each request goes through the SDK's standard retry (configured in
//!   `aws.rs`). Periods that could not be sent wait in a bounded buffer (`cloudwatch.buffer_periods`,
//!   oldest dropped first and counted as `cloudwatch_dropped_period`) and go out with the next
//!   interval's request: buffering is not a second retry loop around a call.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::SdkConfig;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::config::ProvideCredentials as _;
use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::operation::put_metric_data::PutMetricDataError;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};
use aws_smithy_types::DateTime;
use aws_smithy_types::error::display::DisplayErrorContext;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::figures::{HostFigures, METRICS};
use crate::aws::{self, Outcome};
use crate::config::{CloudWatchConfig, Config};
use crate::error::Error;
use crate::health::Health;

/// PutMetricData accepts at most 1,000 datums per request.
pub const MAX_DATUMS_PER_REQUEST: usize = 1000;
/// PutMetricData accepts at most 1 MB per request; we stay under it by an estimate with margin.
pub const MAX_REQUEST_BYTES: usize = 1_000_000;
/// Room kept for the request envelope (namespace, framing) and the estimate's error.
const REQUEST_OVERHEAD_BYTES: usize = 50_000;

// ---------------------------------------------------------------------------------------------
// Periods

/// One publishing period: `[start, start + length)`, aligned to the clock (Unix epoch multiples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    /// Period number: seconds since the epoch / length.
    pub index: u64,
    pub length_secs: u64,
}

impl Period {
    /// The period containing `t`.
    pub fn containing(t: SystemTime, length: Duration) -> Period {
        let length_secs = length.as_secs().max(1);
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Period {
            index: secs / length_secs,
            length_secs,
        }
    }

    pub fn start(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.index * self.length_secs)
    }

    pub fn next(&self) -> Period {
        Period {
            index: self.index + 1,
            ..*self
        }
    }

    /// Standard (60 s) resolution for minute periods and longer; high resolution (1 s) below, so a
    /// short interval (tests, or a deliberate sub-minute setting) keeps its periods apart.
    pub fn storage_resolution(&self) -> i32 {
        if self.length_secs < 60 { 1 } else { 60 }
    }
}

// ---------------------------------------------------------------------------------------------
// The pure mapping

/// The dimension sets every metric is published with: `{ClusterName}` (the cluster aggregate: Sum,
/// Minimum, Maximum across hosts), `{ClusterName, InstanceId}` (per host), and
/// `{ClusterName, AutoScalingGroupName}` when enabled and the group is known.
pub fn dimension_sets(f: &HostFigures, cfg: &CloudWatchConfig) -> Vec<Vec<Dimension>> {
    let dim = |name: &str, value: &str| Dimension::builder().name(name).value(value).build();
    let cluster = dim("ClusterName", &f.cluster);
    let mut sets = vec![
        vec![cluster.clone()],
        vec![cluster.clone(), dim("InstanceId", &f.instance_id)],
    ];
    if cfg.asg_dimension
        && let Some(asg) = &f.autoscaling_group
    {
        sets.push(vec![cluster, dim("AutoScalingGroupName", asg)]);
    }
    sets
}

/// The datums of one host for the minute containing `f.at`.
pub fn datums(f: &HostFigures, cfg: &CloudWatchConfig) -> Vec<MetricDatum> {
    period_datums(f, cfg, Period::containing(f.at, Duration::from_secs(60)))
}

/// The datums of one host for one period: every known metric in every dimension set, per-resource
/// metrics (`<Name>ByResource`) once per constraining resource with a `Resource` dimension added;
/// unknown figures are left out (never sent as 0).
pub fn period_datums(f: &HostFigures, cfg: &CloudWatchConfig, period: Period) -> Vec<MetricDatum> {
    let timestamp = DateTime::from(period.start());
    let resolution = period.storage_resolution();
    let sets = dimension_sets(f, cfg);
    let mut out = Vec::with_capacity(64);
    let datum = |name: &str, unit: &str, dims: Vec<Dimension>, value: f64| {
        MetricDatum::builder()
            .metric_name(name)
            .set_dimensions(Some(dims))
            .timestamp(timestamp)
            .value(value)
            .unit(StandardUnit::from(unit))
            .storage_resolution(resolution)
            .build()
    };
    for m in METRICS.iter() {
        if let Some(v) = f.value(m.name) {
            for dims in &sets {
                out.push(datum(m.name, m.unit, dims.clone(), v));
            }
        }
        if m.by_resource {
            let name = format!("{}ByResource", m.name);
            for (resource, v) in f.by_resource(m.name) {
                for dims in &sets {
                    let mut dims = dims.clone();
                    dims.push(
                        Dimension::builder()
                            .name("Resource")
                            .value(resource)
                            .build(),
                    );
                    out.push(datum(&name, m.unit, dims, v));
                }
            }
        }
    }
    out
}

/// An upper estimate of a datum's encoded size, for the 1 MB request limit.
pub fn estimated_size(d: &MetricDatum) -> usize {
    let dims: usize = d
        .dimensions()
        .iter()
        .map(|x| x.name().map_or(0, str::len) + x.value().map_or(0, str::len) + 24)
        .sum();
    d.metric_name().map_or(0, str::len) + dims + 128
}

/// Splits datums into requests, only where a request would pass 1,000 datums or ~1 MB.
pub fn batches(datums: Vec<MetricDatum>) -> Vec<Vec<MetricDatum>> {
    let mut out: Vec<Vec<MetricDatum>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for d in datums {
        let size = estimated_size(&d);
        if !current.is_empty()
            && (current.len() == MAX_DATUMS_PER_REQUEST
                || bytes + size > MAX_REQUEST_BYTES - REQUEST_OVERHEAD_BYTES)
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(d);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Failures

/// The `Health` error a failed `PutMetricData` is counted as: its periods are kept and sent again
/// (not applied), dropped as maybe stored, or dropped as refused.
pub fn health_kind(failure: Outcome) -> &'static str {
    match failure {
        Outcome::NotApplied => "cloudwatch_unsent",
        Outcome::MaybeApplied => "cloudwatch_ambiguous",
        Outcome::Rejected => "cloudwatch_rejected",
    }
}

/// An SDK retry classifier for `PutMetricData`: forbids the SDK's retry when the failed attempt may
/// have reached CloudWatch ([`Outcome::MaybeApplied`]: a timeout, a connection that broke after it
/// was established, a 500), because a second copy of the same datums would be counted twice by
/// `Sum`. Failures that certainly did not deliver keep the standard retry.
#[derive(Debug, Default)]
pub struct NoAmbiguousRetry;

impl ClassifyRetry for NoAmbiguousRetry {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match aws::classify_attempt::<PutMetricDataError>(ctx) {
            Some(Outcome::MaybeApplied) => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "NoAmbiguousRetry"
    }
}

/// The CloudWatch client the publisher uses: the shared SDK configuration (standard retry) plus
/// [`NoAmbiguousRetry`].
pub fn client(sdk: &SdkConfig) -> Client {
    let conf = aws_sdk_cloudwatch::config::Builder::from(sdk)
        .retry_classifier(NoAmbiguousRetry)
        .build();
    Client::from_conf(conf)
}

// ---------------------------------------------------------------------------------------------
// Startup check

/// Checks that this daemon can publish, failing fast with a message that says what to fix: a region
/// is configured, credentials resolve, and `cloudwatch:PutMetricData` is allowed in the namespace.
///
/// The probe is a real `PutMetricData` of one `AgentStarts` datum (value 1, `{ClusterName}`): it is
/// the only call that proves the permission the daemon needs, including the policy's
/// `cloudwatch:namespace` condition. `ListMetrics` would need a permission the daemon otherwise does
/// not (least privilege) and says nothing about PutMetricData; PutMetricData has no dry-run flag.
/// `AgentStarts` feeds no alarm, so the probe cannot disturb the aggregate.
pub async fn start(sdk: &SdkConfig, cfg: &Config, health: Arc<Health>) -> Result<Publisher, Error> {
    let Some(region) = sdk.region().map(|r| r.to_string()) else {
        return Err(Error::Unavailable(
            "CloudWatch: no AWS region configured: set AWS_REGION (or AWS_DEFAULT_REGION), or run on EC2 where IMDS provides it".into(),
        ));
    };
    let Some(provider) = sdk.credentials_provider() else {
        return Err(Error::Unavailable(format!(
            "CloudWatch (region {region}): no AWS credentials provider: attach an instance role with deploy/iam-policy.json, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )));
    };
    if let Err(e) = provider.provide_credentials().await {
        return Err(Error::Unavailable(format!(
            "CloudWatch (region {region}): no AWS credentials: {}: attach an instance role with deploy/iam-policy.json, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            DisplayErrorContext(&e)
        )));
    }
    let client = client(sdk);
    let namespace = cfg.cloudwatch.namespace.clone();
    let probe = MetricDatum::builder()
        .metric_name("AgentStarts")
        .dimensions(
            Dimension::builder()
                .name("ClusterName")
                .value(&cfg.agent.cluster)
                .build(),
        )
        .value(1.0)
        .unit(StandardUnit::Count)
        .build();
    match client
        .put_metric_data()
        .namespace(&namespace)
        .metric_data(probe)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) => {
            let detail = DisplayErrorContext(&e);
            let denied = e
                .as_service_error()
                .and_then(|s| s.code())
                .is_some_and(|c| c.contains("AccessDenied") || c.contains("NotAuthorized"))
                || e.raw_response().is_some_and(|r| r.status().as_u16() == 403);
            let msg = if denied {
                format!(
                    "CloudWatch (region {region}) denied cloudwatch:PutMetricData in namespace {namespace:?} to these credentials: {detail}. \
                     The instance role needs the policy in deploy/iam-policy.json (its cloudwatch:namespace condition must name {namespace:?})"
                )
            } else if matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) {
                format!(
                    "CloudWatch in region {region:?} cannot be reached: {detail}. Is the region right (AWS_REGION), and is there a route to the endpoint?"
                )
            } else if matches!(e, SdkError::ConstructionFailure(_)) {
                format!(
                    "CloudWatch request for region {region:?} cannot be built (bad region?): {detail}"
                )
            } else {
                format!(
                    "CloudWatch startup check (PutMetricData in {namespace:?}, region {region}) failed: {detail}"
                )
            };
            return Err(Error::Unavailable(msg));
        }
    }
    health.published();
    tracing::info!(%region, %namespace, "CloudWatch reachable and PutMetricData allowed");
    Ok(Publisher::new(
        client,
        cfg.cloudwatch.clone(),
        cfg.agent.interval,
        health,
    ))
}

// ---------------------------------------------------------------------------------------------
// The publisher

/// One period waiting to be sent.
#[derive(Debug, Clone)]
struct Pending {
    period: Period,
    datums: Vec<MetricDatum>,
}

pub struct Publisher {
    client: Client,
    cfg: CloudWatchConfig,
    interval: Duration,
    health: Arc<Health>,
    buffer: VecDeque<Pending>,
    /// The latest period already claimed (sent or buffered): never claimed twice.
    claimed: Option<Period>,
}

type SendResult = (usize, Result<(), Outcome>);

impl Publisher {
    /// A publisher without the startup check (tests, or a caller that checked otherwise).
    pub fn new(
        client: Client,
        cfg: CloudWatchConfig,
        interval: Duration,
        health: Arc<Health>,
    ) -> Publisher {
        Publisher {
            client,
            cfg,
            interval: interval.max(Duration::from_secs(1)),
            health,
            buffer: VecDeque::new(),
            claimed: None,
        }
    }

    /// Publishes until `token` is cancelled: at every period boundary (the interval aligned to the
    /// clock), and at once when `publish_now` is notified (a material change) by claiming the next
    /// period early. Sends run beside the clock, never blocking whoever updates `figures`.
    pub async fn run(
        mut self,
        mut figures: watch::Receiver<Option<Arc<HostFigures>>>,
        publish_now: Arc<Notify>,
        token: CancellationToken,
    ) {
        let mut in_flight: Option<tokio::task::JoinHandle<SendResult>> = None;
        let mut next = Period::containing(SystemTime::now(), self.interval).next();
        loop {
            let sleep = until(next.start());
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(sleep) => {
                    let due = next;
                    next = Period::containing(SystemTime::now(), self.interval).next().max(due.next());
                    let f = figures.borrow_and_update().clone();
                    self.claim(due, f.as_deref());
                }
                _ = publish_now.notified() => {
                    let now = Period::containing(SystemTime::now(), self.interval);
                    let f = figures.borrow_and_update().clone();
                    // The current period if still free, else the next one (sent early, timestamped
                    // with its own start); if that is claimed too, the change waits for the clock.
                    let target = match self.claimed {
                        Some(c) if c >= now => now.next(),
                        _ => now,
                    };
                    if self.claimed.is_none_or(|c| c < target) {
                        self.claim(target, f.as_deref());
                        if target > now {
                            next = next.max(target.next());
                        }
                    }
                }
                done = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    let (n, result) = done.unwrap_or((0, Err(Outcome::MaybeApplied)));
                    let resend_now = self.settle(n, result);
                    if resend_now {
                        in_flight = self.send_next();
                    }
                    continue;
                }
            }
            if in_flight.is_none() {
                in_flight = self.send_next();
            }
        }
        if let Some(h) = in_flight {
            h.abort();
        }
        if !self.buffer.is_empty() {
            tracing::warn!(
                periods = self.buffer.len(),
                "stopping with unsent CloudWatch periods"
            );
        }
    }

    /// Records `period` with the current figures (nothing when there is no observation yet).
    fn claim(&mut self, period: Period, figures: Option<&HostFigures>) {
        let Some(f) = figures else {
            return;
        };
        self.claimed = Some(period);
        let datums = period_datums(f, &self.cfg, period);
        if datums.is_empty() {
            return;
        }
        if self.buffer.len() >= self.cfg.buffer_periods {
            let dropped = self.buffer.pop_front().map(|p| p.period.start());
            self.health.error("cloudwatch_dropped_period");
            tracing::warn!(
                limit = self.cfg.buffer_periods,
                period = ?dropped.map(crate::rfc3339::format),
                "CloudWatch buffer full: dropped the oldest unsent period"
            );
        }
        self.buffer.push_back(Pending { period, datums });
    }

    /// Starts one `PutMetricData` with the oldest buffered periods that fit in one request.
    fn send_next(&mut self) -> Option<tokio::task::JoinHandle<SendResult>> {
        let (n, datums) = take_request(&self.buffer);
        if n == 0 {
            return None;
        }
        let client = self.client.clone();
        let namespace = self.cfg.namespace.clone();
        Some(tokio::spawn(async move {
            let sent = client
                .put_metric_data()
                .namespace(namespace)
                .set_metric_data(Some(datums))
                .send()
                .await;
            match sent {
                Ok(_) => (n, Ok(())),
                Err(e) => {
                    let failure = aws::classify(&e);
                    tracing::warn!(error = %DisplayErrorContext(&e), ?failure, periods = n, "PutMetricData failed");
                    (n, Err(failure))
                }
            }
        }))
    }

    /// Applies a send's outcome to the buffer; true when more periods are waiting and the endpoint
    /// just answered (after an outage: the backlog goes out now, one request per ~1,000 datums).
    fn settle(&mut self, n: usize, result: Result<(), Outcome>) -> bool {
        match result {
            Ok(()) => {
                self.buffer.drain(..n.min(self.buffer.len()));
                self.health.published();
                !self.buffer.is_empty()
            }
            Err(f) => {
                self.health.error(health_kind(f));
                if f != Outcome::NotApplied {
                    self.buffer.drain(..n.min(self.buffer.len()));
                }
                false
            }
        }
    }

    pub fn buffered_periods(&self) -> usize {
        self.buffer.len()
    }
}

/// The longest prefix of whole buffered periods that fits one request (at least the first period;
/// a single period never comes near the limits: 12 metrics + 10 per-resource × 3 dimension sets).
fn take_request(buffer: &VecDeque<Pending>) -> (usize, Vec<MetricDatum>) {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut n = 0;
    for p in buffer {
        let size: usize = p.datums.iter().map(estimated_size).sum();
        if n > 0
            && (out.len() + p.datums.len() > MAX_DATUMS_PER_REQUEST
                || bytes + size > MAX_REQUEST_BYTES - REQUEST_OVERHEAD_BYTES)
        {
            break;
        }
        out.extend(p.datums.iter().take(MAX_DATUMS_PER_REQUEST).cloned());
        bytes += size;
        n += 1;
    }
    (n, out)
}

/// Time from now until `t` (zero when past).
fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests;
