//! ecs-capacity-agent: observes an ECS container instance, reports its spare capacity and drains it
//! before it goes away. README.md describes what it does and how it is configured.

pub mod aws;
pub mod bounded;
pub mod capacity;
pub mod cgroup;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod drain;
pub mod ecs;
pub mod ecs_agent;
pub mod eni;
pub mod error;
pub mod health;
pub mod host;
pub mod imds;
pub mod instance_id;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod notice;
pub mod observation;
pub mod protection;
pub mod retry;
pub mod rfc3339;
pub mod status;
pub mod systemd;

pub use error::Error;
