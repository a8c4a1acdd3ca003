//! systemd service notifications (`Type=notify`): READY=1 once the host has been observed,
//! WATCHDOG=1 while every vital loop turns ([`crate::liveness`]), STOPPING=1 on shutdown.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing. A failed send is logged and
//! otherwise ignored: the daemon's work does not depend on the service manager hearing from it.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the daemon is up (the first observation of the host succeeded).
pub fn notify_ready() {
    send(NotifyState::Ready, "READY=1");
}

/// Keeps systemd's watchdog (`WatchdogSec=`) from restarting the service.
pub fn notify_watchdog() {
    send(NotifyState::Watchdog, "WATCHDOG=1");
}

/// Tells systemd the daemon is shutting down (a drain on shutdown may follow).
pub fn notify_stopping() {
    send(NotifyState::Stopping, "STOPPING=1");
}

/// How often to send WATCHDOG=1: half of the unit's `WatchdogSec=`, or `None` when no watchdog is
/// set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

fn send(state: NotifyState<'_>, what: &str) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot send {what} to systemd (NOTIFY_SOCKET)");
    }
}
