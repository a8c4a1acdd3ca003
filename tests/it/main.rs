//! The one integration-test binary (one link of the AWS SDK instead of one per file).

mod support;

mod cluster;
mod foundation;
mod host;
mod metrics;
