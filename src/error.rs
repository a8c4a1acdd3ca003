//! The error a command ends with, and the exit status it maps to.

use crate::config::ConfigError;

/// sysexits.h EX_CONFIG: the configuration is wrong.
pub const EX_CONFIG: u8 = 78;
/// sysexits.h EX_UNAVAILABLE: a service this command needs is not there.
pub const EX_UNAVAILABLE: u8 = 69;
/// sysexits.h EX_DATAERR: an input file is malformed.
pub const EX_DATAERR: u8 = 65;
/// sysexits.h EX_NOINPUT: an input file is missing or unreadable.
pub const EX_NOINPUT: u8 = 66;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen for Prometheus scrapes on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    NoInput(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EX_CONFIG,
            Error::Input(_) => EX_DATAERR,
            Error::NoInput(_) => EX_NOINPUT,
            Error::Unavailable(_) | Error::Listen { .. } => EX_UNAVAILABLE,
            Error::Runtime(_) => 1,
        }
    }
}
