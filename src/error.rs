//! The error a command ends with, the exit status it maps to, and how an error prints with its causes.

use crate::config::ConfigError;

/// sysexits.h EX_CONFIG: the configuration is wrong.
pub const EX_CONFIG: u8 = 78;
/// sysexits.h EX_UNAVAILABLE: a service this command needs is not there.
pub const EX_UNAVAILABLE: u8 = 69;
/// sysexits.h EX_DATAERR: an input file is malformed.
pub const EX_DATAERR: u8 = 65;
/// sysexits.h EX_NOINPUT: an input file is missing or unreadable.
pub const EX_NOINPUT: u8 = 66;
/// sysexits.h EX_TEMPFAIL: not done yet, try again (`drain --wait --timeout` ran out of time).
pub const EX_TEMPFAIL: u8 = 75;

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
    /// What was asked is under way but did not finish in the time given.
    #[error("{0}")]
    TimedOut(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EX_CONFIG,
            Error::Input(_) => EX_DATAERR,
            Error::NoInput(_) => EX_NOINPUT,
            Error::Unavailable(_) | Error::Listen { .. } => EX_UNAVAILABLE,
            Error::TimedOut(_) => EX_TEMPFAIL,
            Error::Runtime(_) => 1,
        }
    }
}

/// A plain error with its causes, `outer: cause: root cause`, for errors whose Display alone hides why
/// (reqwest's "error sending request for url (…)"). A cause whose text the message already holds is
/// not repeated. AWS SDK errors print with `aws_smithy_types::error::display::DisplayErrorContext`
/// instead, which adds the error metadata (code, message, request id).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |source, text| {
                Some(Layer {
                    text,
                    source: source.map(Box::new),
                })
            })
            .expect("one layer at least")
    }

    #[test]
    fn chain_names_every_cause_once() {
        let e = layers(&[
            "error sending request",
            "client error (Connect)",
            "Connection refused",
        ]);
        assert_eq!(
            chain(&e),
            "error sending request: client error (Connect): Connection refused"
        );
        // A message that already quotes its cause does not print it twice.
        let e = layers(&[
            "tcp connect error: Connection refused",
            "Connection refused",
        ]);
        assert_eq!(chain(&e), "tcp connect error: Connection refused");
        assert_eq!(chain(&layers(&["alone"])), "alone");
    }
}
