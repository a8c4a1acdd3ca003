//! Consolidation: which busy host volunteers for the next scale-in, judged from a cluster view.
//!
//! When tasks are spread thin, every host runs something, none lifts its protection and the
//! scale-in alarm (which needs a removable host) never fires, however much room is idle. Then the
//! least-loaded host volunteers: it lifts its own protection so the next scale-in takes it, and
//! the lifecycle-hook drain moves its tasks. [`judge`] is the same pure function on every host
//! over the same view, so the hosts agree on who that is without talking to each other:
//!
//! 1. the cluster has more than a host's worth idle (`IdleHostCapacity` as the alarm sums it:
//!    Σ_h min_r idle_r(h), strictly above 1);
//! 2. no other host of the group is idle (at most `daemon_tasks` tasks: it lifts its own
//!    protection after its grace, or is kept for its launch warm-up) or removable already
//!    (unprotected and InService: an idle host or another volunteer — a volunteer is visible to
//!    the others as the unprotected busy one);
//! 3. this host is the least loaded: fewest tasks, then the least reserved (CPU ‰ + memory ‰ of
//!    what it registers), then the smallest instance id;
//! 4. the rest of the cluster can hold its tasks (first fit, largest first, by the capacity
//!    model's `fits`) and still has room for `scale_out_threshold` copies of the largest task
//!    afterwards, so the move itself does not trigger a scale-out.

use std::cmp::Ordering;
use std::time::Duration;

use crate::capacity::{self, HostInput, Quantity, SCALE_IN_EPSILON, TaskShape};

use super::Settings;

/// One ACTIVE container instance of the cluster, joined with its Auto Scaling state.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewHost {
    pub instance_id: String,
    /// Registered / reserved resources as ECS reports them.
    pub input: HostInput,
    /// Running + pending tasks (ECS counts; daemon tasks count on every host alike).
    pub tasks: u64,
    /// InService in the Auto Scaling group (not Pending, Terminating, Warmed, Standby…).
    pub in_service: bool,
    pub protected: bool,
}

impl ViewHost {
    /// CPU ‰ + memory ‰ reserved of what the host registers.
    fn reserved_permille(&self) -> u64 {
        let permille = |q: Quantity| {
            (q.reserved.min(q.registered) * 1000)
                .checked_div(q.registered)
                .unwrap_or(0)
        };
        permille(self.input.cpu_units) + permille(self.input.memory_mib)
    }

    /// The load order: fewer tasks, then less reserved, then the instance id.
    pub fn load_order(&self, other: &ViewHost) -> Ordering {
        (self.tasks, self.reserved_permille(), &self.instance_id).cmp(&(
            other.tasks,
            other.reserved_permille(),
            &other.instance_id,
        ))
    }
}

/// What the hosts judge over.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// This host's instance id.
    pub me: &'a str,
    pub hosts: &'a [ViewHost],
    /// The tasks this host would have to move (its non-daemon tasks' shapes).
    pub my_tasks: &'a [TaskShape],
    /// The cluster's task shapes (the largest task is planned for).
    pub shapes: &'a [TaskShape],
    pub scale_out_threshold: f64,
    /// Tasks of daemon families on this host (`drain.ignore_families`): a host with no more tasks
    /// than this is idle. ECS's task counts include daemon tasks, which run on every host alike.
    pub daemon_tasks: u64,
}

/// The outcome of one judgement.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// This host should be the volunteer.
    Volunteer,
    /// Not more than a host's worth idle (the alarm's figure).
    NoExcess { idle_host_capacity: f64 },
    /// Another host can go already; `before_me`: it comes before this host in the load order.
    RemovableExists {
        instance_id: String,
        before_me: bool,
    },
    /// Another host is idle (it goes by the idle rule; none need volunteer).
    IdleHostExists { instance_id: String },
    /// A less-loaded busy host exists.
    NotLeastLoaded { instance_id: String },
    /// The others cannot take this host's tasks and keep room for the largest task.
    RestCannotHold,
    /// This host is not an ACTIVE, InService member of the view.
    NotInView,
}

pub fn judge(v: &View<'_>) -> Verdict {
    let Some(me) = v.hosts.iter().find(|h| h.instance_id == v.me) else {
        return Verdict::NotInView;
    };
    if !me.in_service {
        return Verdict::NotInView;
    }
    let inputs: Vec<HostInput> = v.hosts.iter().map(|h| h.input.clone()).collect();
    let cluster = capacity::compute(&inputs, v.shapes, v.scale_out_threshold);
    let idle = cluster.idle_host_capacity_conservative;
    if idle <= 1.0 + SCALE_IN_EPSILON {
        return Verdict::NoExcess {
            idle_host_capacity: idle,
        };
    }
    let others = || {
        v.hosts
            .iter()
            .filter(|h| h.instance_id != v.me && h.in_service)
    };
    if let Some(idle) = others().find(|h| h.tasks <= v.daemon_tasks) {
        return Verdict::IdleHostExists {
            instance_id: idle.instance_id.clone(),
        };
    }
    // The removable host first in the load order is the one that matters.
    if let Some(r) = others()
        .filter(|h| !h.protected)
        .min_by(|a, b| a.load_order(b))
    {
        return Verdict::RemovableExists {
            instance_id: r.instance_id.clone(),
            before_me: r.load_order(me) == Ordering::Less,
        };
    }
    if let Some(less) = others()
        .filter(|h| h.load_order(me) == Ordering::Less)
        .min_by(|a, b| a.load_order(b))
    {
        return Verdict::NotLeastLoaded {
            instance_id: less.instance_id.clone(),
        };
    }
    // Any other ACTIVE instance can take tasks, in the group or not.
    let rest: Vec<HostInput> = v
        .hosts
        .iter()
        .filter(|h| h.instance_id != v.me)
        .map(|h| h.input.clone())
        .collect();
    if rest_can_hold(rest, v.my_tasks, v.shapes, v.scale_out_threshold) {
        Verdict::Volunteer
    } else {
        Verdict::RestCannotHold
    }
}

/// Places `tasks` on `rest` (largest first, each on the first host it fits on) and checks that the
/// rest still has room for `threshold` copies of the largest task afterwards.
pub fn rest_can_hold(
    mut rest: Vec<HostInput>,
    tasks: &[TaskShape],
    shapes: &[TaskShape],
    threshold: f64,
) -> bool {
    if rest.is_empty() {
        return false;
    }
    let mut order: Vec<&TaskShape> = tasks.iter().collect();
    order.sort_by(|a, b| {
        (b.cpu_units, b.memory_mib, &b.name).cmp(&(a.cpu_units, a.memory_mib, &a.name))
    });
    for task in order {
        let Some(host) = rest
            .iter_mut()
            .find(|h| capacity::fits(h, task).is_none_or(|n| n >= 1))
        else {
            return false;
        };
        place(host, task);
    }
    let after = capacity::compute(&rest, shapes, threshold);
    after.largest_task.is_none() || !after.scale_out
}

/// What one copy of `task` takes from `host`.
pub fn place(host: &mut HostInput, task: &TaskShape) {
    host.cpu_units.reserved += task.cpu_units;
    host.memory_mib.reserved += task.memory_mib;
    host.taken_tcp_ports.extend(&task.tcp_ports);
    host.taken_udp_ports.extend(&task.udp_ports);
    if task.awsvpc
        && let Some(eni) = host.eni.as_mut()
    {
        eni.reserved += 1;
    }
}

/// One host's volunteering, over time.
#[derive(Debug, Clone, Default)]
pub struct Volunteer {
    /// Since when every verdict said "volunteer".
    eligible_since: Option<Duration>,
    /// Volunteering since.
    since: Option<Duration>,
    /// After a timeout: not again before this.
    resting_until: Option<Duration>,
}

impl Volunteer {
    pub fn on_verdict(&mut self, at: Duration, verdict: &Verdict, s: &Settings) {
        self.expire(at, s);
        let volunteering = self.since.is_some();
        match verdict {
            Verdict::Volunteer => {
                if volunteering || self.resting_until.is_some_and(|r| at < r) {
                    return;
                }
                let since = *self.eligible_since.get_or_insert(at);
                if at.saturating_sub(since) >= s.volunteer_after {
                    self.since = Some(at);
                }
            }
            // A volunteer that comes first in the load order stays; the other one stands down.
            Verdict::RemovableExists {
                before_me: false, ..
            } if volunteering => {}
            _ => self.stand_down(),
        }
    }

    /// Stops volunteering (the host went idle, or the verdict changed).
    pub fn stand_down(&mut self) {
        self.since = None;
        self.eligible_since = None;
    }

    /// Ends a volunteering that was not taken within `volunteer_timeout`.
    pub fn expire(&mut self, at: Duration, s: &Settings) {
        if let Some(since) = self.since
            && at >= since + s.volunteer_timeout
        {
            self.stand_down();
            self.resting_until = Some(at + s.volunteer_after);
        }
    }

    pub fn active(&self, at: Duration, s: &Settings) -> bool {
        self.since
            .is_some_and(|since| at < since + s.volunteer_timeout)
    }
}
