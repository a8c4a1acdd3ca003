//! Managed scale-in protection, decided by the host itself: the pure decision core.
//!
//! Auto Scaling terminates only instances that are not protected from scale-in (instance
//! protection, `SetInstanceProtection`), so the group's own choice falls on a host this core left
//! unprotected:
//!
//! - a host that runs a non-daemon task, or is within `launch_warmup` of its launch, wants to be
//!   protected, at once;
//! - a host idle for `idle_grace` without a break lifts its protection (and counts as removable);
//! - a busy host lifts it only as the cluster's one **volunteer** ([`volunteer`]): when the cluster
//!   has held more than a host's worth idle for `volunteer_after`, no host is removable, this host
//!   is the least loaded and the rest can hold its tasks. A volunteer not taken within
//!   `volunteer_timeout` protects itself again and waits `volunteer_after` before it may again;
//! - a draining host keeps what it has: it is leaving already, and its drain runs either way.
//!
//! Debounce: protection goes on at once and comes off only after `idle_grace` of uninterrupted
//! idleness, so each lift costs at least one grace; the adapter calls AWS only when the wanted
//! state differs from the one last confirmed. Times are offsets from any fixed origin, so the
//! same core runs in the daemon and in the simulation.

pub mod aws;
pub mod volunteer;

use std::time::Duration;

pub use volunteer::{Verdict, ViewHost, Volunteer};

/// The `[scale_in]` durations the core needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub idle_grace: Duration,
    pub launch_warmup: Duration,
    /// Volunteering at all (`scale_in.volunteer`).
    pub volunteer: bool,
    pub volunteer_after: Duration,
    pub volunteer_timeout: Duration,
}

impl Settings {
    pub fn from_config(c: &crate::config::ScaleInConfig) -> Settings {
        Settings {
            idle_grace: c.idle_grace,
            launch_warmup: c.launch_warmup,
            volunteer: c.volunteer,
            volunteer_after: c.volunteer_after,
            volunteer_timeout: c.volunteer_timeout,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_config(&crate::config::ScaleInConfig::default())
    }
}

/// What the host knows at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub at: Duration,
    /// Runs a task that is not of a daemon family; `None` = unknown (no task listing yet).
    pub busy: Option<bool>,
    /// A drain of this host is in progress.
    pub draining: bool,
}

/// Why the host wants what it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Runs non-daemon tasks.
    Busy,
    /// Within `launch_warmup` of its launch.
    WarmingUp,
    /// Idle, but not yet for `idle_grace`.
    IdleInGrace,
    /// Idle for `idle_grace`: may go.
    Idle,
    /// Busy, but the cluster's volunteer for the next scale-in.
    Volunteering,
    /// No task listing yet: keep what it has.
    Unknown,
    /// Draining: keep what it has.
    Draining,
    /// `scale_in.protection = "off"`: the agent does not touch protection; any host may go.
    Unmanaged,
}

/// The core's answer for one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// `None` = leave the protection as it is.
    pub protect: Option<bool>,
    /// Counts in `RemovableHosts`: unprotected and idle, or volunteering.
    pub removable: bool,
    pub reason: Reason,
}

/// One host's protection state.
#[derive(Debug, Clone)]
pub struct Protection {
    settings: Settings,
    launched_at: Duration,
    idle_since: Option<Duration>,
    volunteer: Volunteer,
}

impl Protection {
    pub fn new(settings: Settings, launched_at: Duration) -> Protection {
        Protection {
            settings,
            launched_at,
            idle_since: None,
            volunteer: Volunteer::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A fresh view of the cluster, judged by [`volunteer::judge`]; only a busy host's verdicts
    /// matter (an idle host never volunteers, it just goes).
    pub fn on_verdict(&mut self, at: Duration, verdict: &Verdict) {
        if self.settings.volunteer {
            self.volunteer.on_verdict(at, verdict, &self.settings);
        }
    }

    /// Whether this host is the cluster's volunteer now.
    pub fn volunteering(&self, at: Duration) -> bool {
        self.volunteer.active(at, &self.settings)
    }

    pub fn decide(&mut self, o: Observation) -> Decision {
        let keep = |reason| Decision {
            protect: None,
            removable: false,
            reason,
        };
        self.volunteer.expire(o.at, &self.settings);
        if o.draining {
            return keep(Reason::Draining);
        }
        let Some(busy) = o.busy else {
            return keep(Reason::Unknown);
        };
        if busy {
            self.idle_since = None;
            if self.volunteer.active(o.at, &self.settings) {
                return Decision {
                    protect: Some(false),
                    removable: true,
                    reason: Reason::Volunteering,
                };
            }
            return Decision {
                protect: Some(true),
                removable: false,
                reason: Reason::Busy,
            };
        }
        // An idle host is not a volunteer: it goes by the idle rule.
        self.volunteer.stand_down();
        let idle_since = *self.idle_since.get_or_insert(o.at);
        let protected = |reason| Decision {
            protect: Some(true),
            removable: false,
            reason,
        };
        if o.at < self.launched_at + self.settings.launch_warmup {
            return protected(Reason::WarmingUp);
        }
        if o.at.saturating_sub(idle_since) < self.settings.idle_grace {
            return protected(Reason::IdleInGrace);
        }
        Decision {
            protect: Some(false),
            removable: true,
            reason: Reason::Idle,
        }
    }
}

#[cfg(test)]
mod tests;
