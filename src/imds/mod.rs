//! IMDSv2: the client (session token, identity look-ups) and the pollers that turn the interruption
//! notice paths into `Notice`s for the drain.

pub mod client;
pub mod parse;
pub mod poller;

pub use client::{Client, Error, NetworkInterface};
pub use poller::{Source, spawn_pollers};
