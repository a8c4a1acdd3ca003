//! The one integration-test binary (one link of the AWS SDK instead of one per file).

mod support;

mod bad_input;
mod cgroup_real;
mod cluster;
mod cluster_invariant;
mod daemon;
mod drain;
mod drain_state;
mod ecs_accounting;
mod fault_matrix;
mod first_report;
mod foundation;
mod host;
mod imds;
mod install;
mod listener;
mod metrics;
mod protection;
mod scale_sim;
mod start;
mod systemd_notify;
