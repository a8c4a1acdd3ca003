//! AWS SDK setup in one place, and what a failed call means for its caller ([`Outcome`]). Region and
//! credentials come from the standard chain (environment, profile, instance role via IMDS); endpoints
//! follow the SDK's standard variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`,
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`), which is how tests point the daemon at local peers.

mod outcome;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

pub use outcome::{Outcome, classify, classify_attempt};

/// The IMDS base URL: `AWS_EC2_METADATA_SERVICE_ENDPOINT` when set (as the SDK reads it), else the
/// link-local default.
pub fn imds_endpoint() -> String {
    std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim_end_matches('/').to_string())
        .unwrap_or_else(|| "http://169.254.169.254".to_string())
}

/// Shared SDK configuration. The SDK's standard retry mode is this daemon's one retry layer for AWS
/// calls: it retries throttling, 5xx and timeouts with jittered backoff and fails 4xx at once. What a
/// call's final error means for its caller is [`classify`]'s answer.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(4))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}
