//! CloudWatch: the pure mapping from [`HostFigures`] to `MetricDatum`s, the schedule that says which
//! period is sent when, and the publisher that sends one `PutMetricData` per period.
//!
//! How the cluster aggregate stays right (the scale-out alarm reads `Sum` of `ContainerCapacity` over
//! `{ClusterName}` across all hosts):
//! - **One datum per host per period.** The period is `cloudwatch.period` (60 s, or 10 s at high
//!   resolution), whatever `agent.interval` is (it divides the period). A period is sent once, after
//!   it ended, with the last observation made in it (or in the period before, when an observation came
//!   a little late), stamped with the period's start: a datum carries the period it was observed in.
//! - **An early send replaces the end-of-period one, it never adds to it.** On a material change (a
//!   drain starting: `Draining=1`) the publisher sends the *current* period at once with the new
//!   figures (and first the period before, when its own send was still waiting), and marks it sent;
//!   the end-of-period send of that period is then skipped. The period still has one datum, and
//!   `Draining=1` reaches CloudWatch within one request's time.
//! - **Clocks.** Period numbers come from the wall clock (CloudWatch aligns periods on it, and the
//!   figures' timestamps are wall time); every wait runs on the monotonic clock and is recomputed from
//!   the wall clock at each wake, so no wait is longer than one period whatever the wall clock does. A
//!   wall clock stepped back names periods already sent: the publisher then goes on with the periods
//!   after the last one sent, at every other wake, until the wall clock has caught up (a step of X:
//!   datums up to X early, for about 2X). See [`Schedule`].
//! - **Spread.** Each host sends at its own random offset into the next period (within its first
//!   half, so a period is complete well before the alarms evaluate it), so a fleet does not send at
//!   the same second; timestamps are unchanged.
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
//!   period's request: buffering is not a second retry loop around a call.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt as _;

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

    /// The period before (the first period stays itself).
    pub fn prev(&self) -> Period {
        Period {
            index: self.index.saturating_sub(1),
            ..*self
        }
    }

    /// Standard (60 s) resolution for minute periods and longer; high resolution (1 s) below, so a
    /// short interval (tests, or a deliberate sub-minute setting) keeps its periods apart.
    pub fn storage_resolution(&self) -> i32 {
        if self.length_secs < 60 { 1 } else { 60 }
    }
}

/// The CloudWatch periods a host may publish at: one datum per period.
pub const PERIODS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(10)];

/// Checks that `period` is one of [`PERIODS`] and that observations every `interval` fall evenly in
/// it (the interval divides the period), so every period holds an observation. On error: the key to
/// blame and why.
pub fn check_period(period: Duration, interval: Duration) -> Result<(), (&'static str, String)> {
    if !PERIODS.contains(&period) {
        return Err((
            "cloudwatch.period",
            format!(
                "{} is not allowed: 60s (standard resolution) or 10s (high resolution)",
                humantime::format_duration(period)
            ),
        ));
    }
    let (p, i) = (period.as_nanos(), interval.as_nanos());
    if i == 0 || i > p || p % i != 0 {
        return Err((
            "agent.interval",
            format!(
                "{} does not divide cloudwatch.period ({}): the agent.interval must divide the cloudwatch.period (e.g. 10s, 15s, 20s, 30s or 60s for 60s), or a period would hold no observation",
                humantime::format_duration(interval),
                humantime::format_duration(period)
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The pure mapping

/// The metrics sent by default: what the alarms and the dashboard in `deploy/capacity-alarms.yaml`
/// read (with the `*ByResource` variants of the first two). The others (reservation, utilization,
/// ENIs, running tasks) are on `/metrics`, and in CloudWatch with `cloudwatch.all_metrics`: each
/// metric name × dimension set is a custom metric CloudWatch bills by the month.
pub const ALARM_METRICS: [&str; 6] = [
    "ContainerCapacity",
    "IdleHostCapacity",
    "RemovableHosts",
    "Hosts",
    "Placeable",
    "Draining",
];

/// Whether `name` goes to CloudWatch under this configuration.
pub fn published(name: &str, cfg: &CloudWatchConfig) -> bool {
    cfg.all_metrics || ALARM_METRICS.contains(&name)
}

/// The dimension sets every metric is published with: `{ClusterName}` (the cluster aggregate: Sum,
/// Minimum, Maximum across hosts), `{ClusterName, InstanceId}` (per host) when
/// `cloudwatch.per_instance`, and `{ClusterName, AutoScalingGroupName}` when enabled and the group is
/// known.
pub fn dimension_sets(f: &HostFigures, cfg: &CloudWatchConfig) -> Vec<Vec<Dimension>> {
    let dim = |name: &str, value: &str| Dimension::builder().name(name).value(value).build();
    let cluster = dim("ClusterName", &f.cluster);
    let mut sets = vec![vec![cluster.clone()]];
    if cfg.per_instance {
        sets.push(vec![cluster.clone(), dim("InstanceId", &f.instance_id)]);
    }
    if cfg.asg_dimension
        && let Some(asg) = &f.autoscaling_group
    {
        sets.push(vec![cluster, dim("AutoScalingGroupName", asg)]);
    }
    sets
}

/// The datums of one host for the period (`cloudwatch.period`) containing `f.at`.
pub fn datums(f: &HostFigures, cfg: &CloudWatchConfig) -> Vec<MetricDatum> {
    period_datums(f, cfg, Period::containing(f.at, cfg.period))
}

/// The datums of one host for one period: every known metric that is [`published`], in every
/// dimension set, per-resource metrics (`<Name>ByResource`) once per constraining resource with a
/// `Resource` dimension added; unknown figures are left out (never sent as 0).
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
    for m in METRICS.iter().filter(|m| published(m.name, cfg)) {
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
    Ok(Publisher::new(client, cfg.cloudwatch.clone(), health))
}

// ---------------------------------------------------------------------------------------------
// The schedule

/// The wall clock periods are numbered by; the publisher's waits run on the monotonic clock
/// (`tokio::time`). Injected so tests can step it.
pub trait WallClock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// One period to claim, and which figures it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub period: Period,
    pub figures: Pick,
    /// Claimed by a material change, before the period's own send point.
    pub early: bool,
}

/// Which observation a claimed period carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The last observation made in the period (or in the one before, when none was made in it).
    ObservedIn,
    /// The latest observation: an early send, or a period after a backward clock step.
    Latest,
}

/// Which period is sent when: the pure core of the publisher, over wall-clock instants.
///
/// Period `P` is due at its end plus `offset` (the send point of `P`). Every period is claimed at
/// most once and claims only go forward (`last` is the latest claimed period):
/// - at a send point, the period that just ended is claimed unless it was sent early;
/// - a material change claims the current period at once (and the one before when its send point has
///   not come yet), so its own send point finds it sent and skips;
/// - when the wall clock is behind the periods already sent (stepped back: the period that just
///   ended was sent at a send point, not early), each other send point claims `last + 1` with the
///   latest figures, so publishing goes on and the lead shrinks by one period every two, without a
///   period sent twice; this ends once the wall clock has passed `last`.
#[derive(Debug, Clone)]
pub struct Schedule {
    length: Duration,
    offset: Duration,
    last: Option<Period>,
    /// `last` was claimed by a material change.
    last_early: bool,
    /// Behind the periods already sent: `Some(whether the previous send point claimed)`.
    behind: Option<bool>,
}

impl Schedule {
    /// `length`: the period; `offset`: how far into the next period a period is sent (below `length`).
    pub fn new(length: Duration, offset: Duration) -> Schedule {
        let length = length.max(Duration::from_secs(1));
        Schedule {
            length,
            offset: offset.min(length / 2),
            last: None,
            last_early: false,
            behind: None,
        }
    }

    /// A random offset in the first half of the period: hosts spread their sends over it.
    pub fn random_offset(length: Duration) -> Duration {
        let half = (length / 2).as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(0..half))
    }

    pub fn length(&self) -> Duration {
        self.length
    }

    pub fn offset(&self) -> Duration {
        self.offset
    }

    pub fn period(&self, t: SystemTime) -> Period {
        Period::containing(t, self.length)
    }

    /// The latest period claimed.
    pub fn last(&self) -> Option<Period> {
        self.last
    }

    /// Records that a claim was made.
    pub fn claimed(&mut self, claim: &Claim) {
        if self.last.is_none_or(|l| l < claim.period) {
            self.last = Some(claim.period);
            self.last_early = claim.early;
        }
    }

    /// Time from `now` to the next send point: never more than one period, whatever the wall clock
    /// did since the last wake.
    pub fn until_next(&self, now: SystemTime) -> Duration {
        let current = self.period(now);
        let this = current.start() + self.offset;
        let next = if now < this {
            this
        } else {
            current.next().start() + self.offset
        };
        next.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .clamp(Duration::from_millis(1), self.length)
    }

    /// What a send point at `now` claims: the period that ended, and those before it back to the
    /// last claimed (at most [`CATCH_UP_PERIODS`] in all, when the send point came late).
    pub fn due(&mut self, now: SystemTime) -> Vec<Claim> {
        let ended = self.period(now).prev();
        let Some(last) = self.last.filter(|l| *l >= ended) else {
            self.behind = None;
            let first = ended.index.saturating_sub(CATCH_UP_PERIODS - 1);
            let first = self.last.map_or(ended.index, |l| (l.index + 1).max(first));
            return (first..=ended.index)
                .map(|index| Claim {
                    period: Period { index, ..ended },
                    figures: Pick::ObservedIn,
                    early: false,
                })
                .collect();
        };
        if self.behind.is_none() && (last == ended || (self.last_early && last == ended.next())) {
            // Sent early (or a step back within a period): this send point has nothing to send.
            return Vec::new();
        }
        let claim = !self.behind.unwrap_or(false);
        self.behind = Some(claim);
        claim
            .then(|| Claim {
                period: last.next(),
                figures: Pick::Latest,
                early: false,
            })
            .into_iter()
            .collect()
    }

    /// What a material change at `now` claims: the period before when its send point has not come
    /// yet, then the current period, each only if not claimed yet.
    pub fn early(&self, now: SystemTime) -> Vec<Claim> {
        let current = self.period(now);
        let mut out = Vec::with_capacity(2);
        if self.last.is_some_and(|l| l >= current) {
            return out;
        }
        let before = current.prev();
        if before < current && self.last.is_none_or(|l| l < before) {
            out.push(Claim {
                period: before,
                figures: Pick::ObservedIn,
                early: true,
            });
        }
        out.push(Claim {
            period: current,
            figures: Pick::Latest,
            early: true,
        });
        out
    }
}

/// How many periods a wake may catch up on: the one that ended and the one before (a send point
/// that came late, past the next period's start, on a loaded host).
pub const CATCH_UP_PERIODS: u64 = 2;

/// The last observation of each of the latest few periods (the newest last): enough to send a period
/// after it ended, when the next period's first observations came before the send point or the
/// send point itself came late.
#[derive(Debug, Default, Clone)]
pub struct Recent {
    last_of_period: VecDeque<Arc<HostFigures>>,
}

impl Recent {
    const KEPT: usize = CATCH_UP_PERIODS as usize + 2;

    pub fn record(&mut self, f: Arc<HostFigures>, length: Duration) {
        if let Some(latest) = self.last_of_period.back() {
            if Arc::ptr_eq(latest, &f) {
                return;
            }
            if Period::containing(latest.at, length) >= Period::containing(f.at, length) {
                // The same period (or a wall clock stepped back): the newer observation replaces it.
                self.last_of_period.pop_back();
            }
        }
        self.last_of_period.push_back(f);
        if self.last_of_period.len() > Self::KEPT {
            self.last_of_period.pop_front();
        }
    }

    pub fn latest(&self) -> Option<&Arc<HostFigures>> {
        self.last_of_period.back()
    }

    /// The last observation made in `p`, else in the period before `p` (an observation that came just
    /// late); none when the observer has not observed for longer (stale figures are not sent).
    pub fn observed_in(&self, p: Period) -> Option<&Arc<HostFigures>> {
        let length = Duration::from_secs(p.length_secs);
        self.last_of_period.iter().rev().find(|f| {
            let q = Period::containing(f.at, length);
            q <= p && q.index + 1 >= p.index
        })
    }

    pub fn pick(&self, claim: &Claim) -> Option<&Arc<HostFigures>> {
        match claim.figures {
            Pick::ObservedIn => self.observed_in(claim.period),
            Pick::Latest => self.latest(),
        }
    }
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
    health: Arc<Health>,
    clock: Arc<dyn WallClock>,
    schedule: Schedule,
    recent: Recent,
    buffer: VecDeque<Pending>,
}

type SendResult = (usize, Result<(), Outcome>);

impl Publisher {
    /// A publisher without the startup check (tests, or a caller that checked otherwise), on the
    /// system clock, with a random send offset.
    pub fn new(client: Client, cfg: CloudWatchConfig, health: Arc<Health>) -> Publisher {
        let offset = Schedule::random_offset(cfg.period);
        Publisher {
            client,
            schedule: Schedule::new(cfg.period, offset),
            cfg,
            health,
            clock: Arc::new(SystemClock),
            recent: Recent::default(),
            buffer: VecDeque::new(),
        }
    }

    /// The same publisher on another wall clock.
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> Publisher {
        self.clock = clock;
        self
    }

    /// The same publisher with a fixed send offset into the next period.
    pub fn with_offset(mut self, offset: Duration) -> Publisher {
        self.schedule = Schedule::new(self.cfg.period, offset);
        self
    }

    /// Publishes until `token` is cancelled: each period once after it ended (at the schedule's send
    /// point), or earlier when `publish_now` is notified (a material change). Sends run beside the
    /// clock, never blocking whoever updates `figures`.
    pub async fn run(
        mut self,
        mut figures: watch::Receiver<Option<Arc<HostFigures>>>,
        publish_now: Arc<Notify>,
        token: CancellationToken,
    ) {
        let mut in_flight: Option<tokio::task::JoinHandle<SendResult>> = None;
        let mut observing = true;
        tracing::debug!(period = ?self.schedule.length(), offset = ?self.schedule.offset(), "CloudWatch schedule");
        loop {
            let wait = self.schedule.until_next(self.clock.now());
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(wait) => {
                    self.take(&mut figures);
                    for claim in self.schedule.due(self.clock.now()) {
                        self.claim_pick(claim);
                    }
                }
                changed = figures.changed(), if observing => {
                    observing = changed.is_ok();
                    self.take(&mut figures);
                    continue;
                }
                _ = publish_now.notified() => {
                    self.take(&mut figures);
                    for claim in self.schedule.early(self.clock.now()) {
                        self.claim_pick(claim);
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

    /// Records the newest observation.
    fn take(&mut self, figures: &mut watch::Receiver<Option<Arc<HostFigures>>>) {
        if let Some(f) = figures.borrow_and_update().clone() {
            self.recent.record(f, self.schedule.length());
        }
    }

    /// Claims one period with the observation the schedule asks for.
    fn claim_pick(&mut self, claim: Claim) {
        let f = self.recent.pick(&claim).cloned();
        if f.is_none() && self.recent.latest().is_some() {
            // Observing, but nothing new since the period before this one: no stale figures.
            self.health.error("cloudwatch_no_observation");
            tracing::warn!(period = ?claim.period, "no observation in this period: nothing sent for it");
        }
        self.claim(claim, f.as_deref());
    }

    /// Records a claimed period with these figures (nothing when there is no observation).
    fn claim(&mut self, claim: Claim, figures: Option<&HostFigures>) {
        let Some(f) = figures else {
            return;
        };
        self.schedule.claimed(&claim);
        let period = claim.period;
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

    /// The health this publisher counts its errors and sends in.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
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

#[cfg(test)]
mod tests;
