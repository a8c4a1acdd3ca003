//! The notice paths' content, parsed from the shapes IMDS serves (pure functions, no I/O).
//!
//! - `spot/instance-action`: `{"action": "terminate", "time": "2017-09-18T08:22:00Z"}`
//!   (action is `terminate`, `stop` or `hibernate`; time is RFC 3339 in UTC).
//! - `autoscaling/target-lifecycle-state`: plain text, one of the Auto Scaling steady states
//!   `InService`, `Terminated`, `Detached`, `Standby`, `Warmed:Hibernated|Running|Stopped|Terminated`.
//! - `events/recommendations/rebalance`: `{"noticeTime": "2020-11-05T08:22:00Z"}`.
//! - `events/maintenance/scheduled`: a JSON list of
//!   `{"NotBefore": "21 Jan 2019 09:00:43 GMT", "Code": "system-reboot", "Description": "…",
//!   "EventId": "instance-event-0d59937288b749b32", "NotAfter": "21 Jan 2019 09:17:23 GMT",
//!   "State": "active"}`; a canceled event stays listed with `"State": "canceled"` and a description
//!   starting `[Canceled]`.
//! - `events/maintenance/history`: the same list, of the events that were completed
//!   (`"State": "completed"`, description `[Completed] …`) or canceled (`"State": "canceled"`,
//!   description `[Canceled] …`) ("View scheduled events", Amazon EC2 User Guide).

use std::time::SystemTime;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use crate::notice::{
    LifecycleState, MaintenanceCode, MaintenanceEvent, MaintenanceState, Notice, SpotAction,
};

/// Content a notice path served that is not the documented shape. `reason` says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Malformed {
    pub reason: String,
}

fn malformed(reason: impl Into<String>) -> Malformed {
    Malformed {
        reason: reason.into(),
    }
}

/// What one poll of a notice path found: the notices it announces (possibly none) and the parts of
/// the content that could not be understood (logged and otherwise ignored).
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub notices: Vec<Notice>,
    pub problems: Vec<Malformed>,
}

impl Parsed {
    /// A path that announces at most one notice.
    pub fn one(r: Result<Notice, Malformed>) -> Parsed {
        match r {
            Ok(n) => Parsed {
                notices: vec![n],
                problems: Vec::new(),
            },
            Err(m) => Parsed {
                notices: Vec::new(),
                problems: vec![m],
            },
        }
    }
}

#[derive(Deserialize)]
struct SpotBody {
    action: String,
    time: String,
}

pub fn spot(body: &str) -> Result<Notice, Malformed> {
    let raw: SpotBody = serde_json::from_str(body.trim())
        .map_err(|e| malformed(format!("not a spot instance-action document: {e}")))?;
    let action: SpotAction = raw.action.parse().map_err(malformed)?;
    let time = rfc3339(&raw.time).map_err(|e| malformed(format!("spot time: {e}")))?;
    Ok(Notice::Spot { action, time })
}

/// The Auto Scaling target lifecycle state. `Terminated` is a notice; so is a change from
/// `InService` to `Warmed:*` (`lifecycle_change`).
pub fn lifecycle_state(body: &str) -> Result<LifecycleState, Malformed> {
    body.trim().parse().map_err(malformed)
}

/// `autoscaling/target-lifecycle-state` as notices: `Terminated` → one, anything else → none.
/// `now` stamps when this daemon saw it (the endpoint carries no time of its own).
pub fn lifecycle(body: &str, now: SystemTime) -> Parsed {
    match lifecycle_state(body) {
        Ok(LifecycleState::Terminated) => {
            Parsed::one(Ok(Notice::AutoScalingTerminated { seen_at: now }))
        }
        Ok(_) => Parsed::default(),
        Err(m) => Parsed::one(Err(m)),
    }
}

/// The change from `previous` (what the last answered poll read; `None` at start or after a 404) to
/// `current` that is a notice of its own: `InService` → `Warmed:*`, the group returning the instance
/// to its warm pool on scale in (ReuseOnScaleIn). Starting in `Warmed:*` and going `InService` is not.
pub fn lifecycle_change(
    previous: Option<&LifecycleState>,
    current: &LifecycleState,
    now: SystemTime,
) -> Option<Notice> {
    match (previous, current) {
        (Some(LifecycleState::InService), LifecycleState::Warmed(_)) => {
            Some(Notice::AutoScalingWarmed {
                target: current.clone(),
                seen_at: now,
            })
        }
        _ => None,
    }
}

#[derive(Deserialize)]
struct RebalanceBody {
    #[serde(rename = "noticeTime")]
    notice_time: String,
}

pub fn rebalance(body: &str) -> Result<Notice, Malformed> {
    let raw: RebalanceBody = serde_json::from_str(body.trim())
        .map_err(|e| malformed(format!("not a rebalance recommendation document: {e}")))?;
    let notice_time =
        rfc3339(&raw.notice_time).map_err(|e| malformed(format!("noticeTime: {e}")))?;
    Ok(Notice::Rebalance { notice_time })
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Description", default)]
    description: String,
    #[serde(rename = "EventId")]
    event_id: String,
    #[serde(rename = "NotBefore")]
    not_before: String,
    #[serde(rename = "NotAfter", default)]
    not_after: Option<String>,
    #[serde(rename = "State", default)]
    state: Option<String>,
}

/// `events/maintenance/scheduled`: every well-formed entry becomes a notice; a bad entry is a problem
/// of its own and does not hide the good ones. An empty body or `[]` means no events.
pub fn maintenance(body: &str) -> Parsed {
    let body = body.trim();
    if body.is_empty() {
        return Parsed::default();
    }
    let entries: Vec<serde_json::Value> = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            return Parsed::one(Err(malformed(format!(
                "not a list of scheduled events: {e}"
            ))));
        }
    };
    let mut parsed = Parsed::default();
    for (i, entry) in entries.into_iter().enumerate() {
        match maintenance_event(entry) {
            Ok(e) => parsed.notices.push(Notice::Maintenance(e)),
            Err(m) => parsed
                .problems
                .push(malformed(format!("scheduled event #{i}: {m}"))),
        }
    }
    parsed
}

/// `events/maintenance/history`: the canceled and completed entries, as notices that stand a drain
/// for them down. An entry still marked active there is not a notice (`scheduled` announces those).
pub fn maintenance_history(body: &str) -> Parsed {
    let mut parsed = maintenance(body);
    parsed
        .notices
        .retain(|n| matches!(n, Notice::Maintenance(e) if e.state != MaintenanceState::Active));
    parsed
}

/// The ids a poll of `events/maintenance/scheduled` listed, well-formed or not: an entry that could
/// not be read is still there, and must not be taken for withdrawn. `None` when the document as a
/// whole could not be read (nothing is known about what it lists).
pub fn maintenance_listed(body: &str) -> Option<Notice> {
    let body = body.trim();
    let entries: Vec<serde_json::Value> = if body.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(body).ok()?
    };
    let mut event_ids = std::collections::BTreeSet::new();
    for entry in entries {
        // An entry without a readable EventId cannot be matched to anything scheduled: the
        // listing is not trusted at all rather than taken to have withdrawn every event.
        let id = entry.get("EventId")?.as_str()?.trim();
        if id.is_empty() {
            return None;
        }
        event_ids.insert(id.to_string());
    }
    Some(Notice::MaintenanceListed { event_ids })
}

fn maintenance_event(entry: serde_json::Value) -> Result<MaintenanceEvent, Malformed> {
    let raw: RawEvent = serde_json::from_value(entry).map_err(|e| malformed(e.to_string()))?;
    if raw.event_id.trim().is_empty() {
        return Err(malformed("empty EventId"));
    }
    let code = MaintenanceCode::from(raw.code.as_str());
    let not_before =
        event_date(&raw.not_before).map_err(|e| malformed(format!("NotBefore: {e}")))?;
    let not_after = match raw.not_after.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(event_date(s).map_err(|e| malformed(format!("NotAfter: {e}")))?),
    };
    // The EC2 API documents only the `[Completed]`/`[Canceled]` description prefixes; IMDS also
    // carries State. An entry without State is taken as active, as the user guide's examples are.
    let state = match raw.state.as_deref().map(str::trim) {
        None | Some("") | Some("active") => MaintenanceState::Active,
        Some("canceled") | Some("cancelled") => MaintenanceState::Canceled,
        Some("completed") => MaintenanceState::Completed,
        Some(other) => {
            return Err(malformed(format!(
                "unknown State {other:?} (expected active, canceled or completed)"
            )));
        }
    };
    Ok(MaintenanceEvent {
        event_id: raw.event_id,
        code,
        not_before,
        not_after,
        state,
        description: raw.description,
    })
}

fn rfc3339(s: &str) -> Result<SystemTime, String> {
    OffsetDateTime::parse(s.trim(), &Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

/// Scheduled-event dates: `21 Jan 2019 09:00:43 GMT` (the day may come unpadded: `2 Feb 2019 …`).
pub fn event_date(s: &str) -> Result<SystemTime, String> {
    let fmt = format_description!(
        "[day padding:none] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), fmt)
        .map(|t| SystemTime::from(t.assume_utc()))
        .map_err(|e| format!("{s:?} is not a date like \"21 Jan 2019 09:00:43 GMT\": {e}"))
}

/// A short, printable excerpt of content for a log line.
pub fn excerpt(body: &str) -> String {
    const MAX: usize = 160;
    let mut s: String = body.chars().take(MAX).collect();
    if body.chars().count() > MAX {
        s.push('…');
    }
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    // 2017-09-18T08:22:00Z
    const SPOT_TIME: u64 = 1_505_722_920;

    #[test]
    fn spot_terminate_as_documented() {
        let n = spot(r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#).unwrap();
        assert_eq!(
            n,
            Notice::Spot {
                action: SpotAction::Terminate,
                time: at(SPOT_TIME)
            }
        );
    }

    #[test]
    fn spot_stop_and_hibernate_compact_and_with_newline() {
        let n = spot("{\"action\":\"stop\",\"time\":\"2017-09-18T08:22:00Z\"}\n").unwrap();
        assert!(matches!(
            n,
            Notice::Spot {
                action: SpotAction::Stop,
                ..
            }
        ));
        let n = spot(r#"{"action":"hibernate","time":"2017-09-18T08:22:00.000Z"}"#).unwrap();
        assert_eq!(
            n,
            Notice::Spot {
                action: SpotAction::Hibernate,
                time: at(SPOT_TIME)
            }
        );
    }

    #[test]
    fn spot_garbage_is_malformed_naming_what_is_wrong() {
        for (body, says) in [
            ("", "not a spot"),
            ("<html>502 Bad Gateway</html>", "not a spot"),
            (
                r#"{"action":"explode","time":"2017-09-18T08:22:00Z"}"#,
                "explode",
            ),
            (r#"{"action":"terminate","time":"tomorrow"}"#, "tomorrow"),
            (r#"{"action":"terminate"}"#, "time"),
            ("[1,2,3]", "not a spot"),
            ("\u{0}\u{1}\u{2}", "not a spot"),
        ] {
            let e = spot(body).unwrap_err();
            assert!(e.reason.contains(says), "{body:?}: {e}");
        }
    }

    #[test]
    fn lifecycle_terminated_is_a_notice_in_service_and_warmed_are_not() {
        let now = at(1_700_000_000);
        assert_eq!(
            lifecycle("Terminated", now).notices,
            vec![Notice::AutoScalingTerminated { seen_at: now }]
        );
        for body in [
            "InService",
            "InService\n",
            "Standby",
            "Detached",
            "Warmed:Stopped",
            "Warmed:Running",
            "Warmed:Hibernated",
            "Warmed:Terminated",
        ] {
            assert_eq!(lifecycle(body, now), Parsed::default(), "{body:?}");
        }
    }

    #[test]
    fn lifecycle_garbage_is_malformed() {
        for body in [
            "",
            "terminated",
            "Warmed:",
            "In Service",
            "{\"state\":\"Terminated\"}",
        ] {
            let p = lifecycle(body, SystemTime::now());
            assert!(p.notices.is_empty(), "{body:?}");
            assert_eq!(p.problems.len(), 1, "{body:?}");
        }
    }

    #[test]
    fn rebalance_as_documented() {
        let n = rebalance(r#"{"noticeTime": "2020-11-05T08:22:00Z"}"#).unwrap();
        assert_eq!(
            n,
            Notice::Rebalance {
                notice_time: at(1_604_564_520)
            }
        );
        assert!(rebalance(r#"{"noticeTime": 1604564520}"#).is_err());
        assert!(rebalance("null").is_err());
    }

    const SCHEDULED: &str = r#"[
  {
    "NotBefore" : "21 Jan 2019 09:00:43 GMT",
    "Code" : "system-reboot",
    "Description" : "scheduled reboot",
    "EventId" : "instance-event-0d59937288b749b32",
    "NotAfter" : "21 Jan 2019 09:17:23 GMT",
    "State" : "active"
  }
]"#;

    #[test]
    fn maintenance_as_documented() {
        let p = maintenance(SCHEDULED);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        // 2019-01-21T09:00:43Z and 09:17:23Z
        assert_eq!(
            p.notices,
            vec![Notice::Maintenance(MaintenanceEvent {
                event_id: "instance-event-0d59937288b749b32".into(),
                code: MaintenanceCode::SystemReboot,
                not_before: at(1_548_061_243),
                not_after: Some(at(1_548_062_243)),
                state: MaintenanceState::Active,
                description: "scheduled reboot".into(),
            })]
        );
    }

    #[test]
    fn maintenance_canceled_and_every_code() {
        let body = r#"[
          {"NotBefore":"2 Feb 2019 09:00:43 GMT","Code":"instance-stop","Description":"[Canceled] scheduled stop",
           "EventId":"instance-event-1","NotAfter":"","State":"canceled"},
          {"NotBefore":"02 Feb 2019 09:00:43 GMT","Code":"instance-retirement","Description":"x","EventId":"instance-event-2","State":"active"},
          {"NotBefore":"3 Mar 2019 10:00:00 GMT","Code":"instance-reboot","EventId":"instance-event-3","State":"completed"},
          {"NotBefore":"3 Mar 2019 10:00:00 GMT","Code":"system-maintenance","EventId":"instance-event-4"},
          {"NotBefore":"3 Mar 2019 10:00:00 GMT","Code":"future-thing","EventId":"instance-event-5"}
        ]"#;
        let p = maintenance(body);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let events: Vec<_> = p
            .notices
            .into_iter()
            .map(|n| match n {
                Notice::Maintenance(e) => e,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(events[0].state, MaintenanceState::Canceled);
        assert_eq!(events[0].code, MaintenanceCode::InstanceStop);
        assert_eq!(events[0].not_after, None);
        assert_eq!(
            events[0].not_before, events[1].not_before,
            "padded and unpadded day"
        );
        assert_eq!(events[1].code, MaintenanceCode::InstanceRetirement);
        assert_eq!(events[2].state, MaintenanceState::Completed);
        assert_eq!(events[2].code, MaintenanceCode::InstanceReboot);
        assert_eq!(events[3].state, MaintenanceState::Active);
        assert_eq!(events[3].code, MaintenanceCode::SystemMaintenance);
        assert_eq!(
            events[4].code,
            MaintenanceCode::Other("future-thing".into())
        );
    }

    #[test]
    fn maintenance_empty_means_no_events() {
        assert_eq!(maintenance(""), Parsed::default());
        assert_eq!(maintenance("[]"), Parsed::default());
        assert_eq!(maintenance(" [ ]\n"), Parsed::default());
    }

    #[test]
    fn maintenance_bad_entry_is_reported_and_good_ones_kept() {
        let body = r#"[
          {"NotBefore":"2019-01-21T09:00:43Z","Code":"system-reboot","EventId":"instance-event-bad","State":"active"},
          {"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","EventId":"instance-event-good","State":"active"},
          {"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","EventId":"instance-event-odd","State":"pending"},
          {"Code":"system-reboot","EventId":"instance-event-nodate"},
          42
        ]"#;
        let p = maintenance(body);
        assert_eq!(p.notices.len(), 1);
        assert_eq!(p.notices[0].id(), "maintenance:instance-event-good");
        assert_eq!(p.problems.len(), 4, "{:?}", p.problems);
        assert!(
            p.problems[0].reason.contains("NotBefore"),
            "{}",
            p.problems[0]
        );
        assert!(
            p.problems[1].reason.contains("pending"),
            "{}",
            p.problems[1]
        );
    }

    #[test]
    fn maintenance_garbage_document_is_one_problem() {
        for body in [
            "{}",
            "not json",
            "[",
            "{\"EventId\":\"x\"}",
            "\u{feff}\u{0}",
        ] {
            let p = maintenance(body);
            assert!(p.notices.is_empty(), "{body:?}");
            assert_eq!(p.problems.len(), 1, "{body:?}");
        }
    }

    #[test]
    fn event_dates_reject_other_shapes() {
        for s in [
            "2019-01-21T09:00:43Z",
            "21 January 2019 09:00:43 GMT",
            "21 Jan 2019 09:00:43",
            "32 Jan 2019 09:00:43 GMT",
            "21 Jan 2019 25:00:43 GMT",
        ] {
            assert!(event_date(s).is_err(), "{s}");
        }
    }

    #[test]
    fn excerpt_is_short_and_escaped() {
        let long = "x".repeat(1000);
        assert!(excerpt(&long).chars().count() < 170);
        assert_eq!(excerpt("a\nb"), "\"a\\nb\"");
    }

    /// The user guide's example of `events/maintenance/history`: one canceled, one completed event.
    const HISTORY: &str = r#"[
  {
    "NotBefore" : "21 Jan 2019 09:00:43 GMT",
    "Code" : "system-reboot",
    "Description" : "[Canceled] scheduled reboot",
    "EventId" : "instance-event-0d59937288b749b32",
    "NotAfter" : "21 Jan 2019 09:17:23 GMT",
    "State" : "canceled"
  },
  {
    "NotBefore" : "29 Jan 2019 09:00:43 GMT",
    "Code" : "system-reboot",
    "Description" : "[Completed] scheduled reboot",
    "EventId" : "instance-event-0e439355b779n26",
    "NotAfter" : "29 Jan 2019 09:17:23 GMT",
    "State" : "completed"
  }
]"#;

    #[test]
    fn maintenance_history_as_documented_is_canceled_and_completed_events() {
        let p = maintenance_history(HISTORY);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let states: Vec<_> = p
            .notices
            .iter()
            .map(|n| match n {
                Notice::Maintenance(e) => (e.event_id.as_str(), e.code.clone(), e.state),
                other => panic!("not a maintenance event: {other:?}"),
            })
            .collect();
        assert_eq!(
            states,
            [
                (
                    "instance-event-0d59937288b749b32",
                    MaintenanceCode::SystemReboot,
                    MaintenanceState::Canceled
                ),
                (
                    "instance-event-0e439355b779n26",
                    MaintenanceCode::SystemReboot,
                    MaintenanceState::Completed
                ),
            ]
        );
    }

    #[test]
    fn maintenance_history_ignores_an_entry_still_active_and_reports_garbage() {
        assert!(maintenance_history(SCHEDULED).notices.is_empty());
        assert_eq!(maintenance_history("[]"), Parsed::default());
        assert_eq!(maintenance_history(""), Parsed::default());
        assert_eq!(maintenance_history("<html>").problems.len(), 1);
    }

    #[test]
    fn maintenance_listed_names_every_entry_even_a_malformed_one() {
        let ids = |n: Option<Notice>| match n {
            Some(Notice::MaintenanceListed { event_ids }) => {
                Some(event_ids.into_iter().collect::<Vec<_>>())
            }
            other => panic!("not a listing: {other:?}"),
        };
        assert_eq!(
            ids(maintenance_listed(SCHEDULED)),
            Some(vec!["instance-event-0d59937288b749b32".to_string()])
        );
        assert_eq!(ids(maintenance_listed("[]")), Some(vec![]));
        assert_eq!(ids(maintenance_listed("")), Some(vec![]));
        // A bad NotBefore is a malformed event, but the event is still listed.
        assert_eq!(
            ids(maintenance_listed(
                r#"[{"EventId":"ev-x","Code":"system-reboot","NotBefore":"tomorrow"}]"#
            )),
            Some(vec!["ev-x".to_string()])
        );
        // Nothing known: not a listing at all.
        for body in [
            "<html>",
            r#"[{"Code":"system-reboot"}]"#,
            r#"[{"EventId":""}]"#,
        ] {
            assert_eq!(maintenance_listed(body), None, "{body}");
        }
    }

    #[test]
    fn in_service_to_warmed_is_a_notice_and_warmed_to_in_service_is_not() {
        let now = at(1_700_000_000);
        let state = |s: &str| s.parse::<LifecycleState>().unwrap();
        for warmed in ["Warmed:Stopped", "Warmed:Hibernated", "Warmed:Running"] {
            assert_eq!(
                lifecycle_change(Some(&state("InService")), &state(warmed), now),
                Some(Notice::AutoScalingWarmed {
                    target: state(warmed),
                    seen_at: now
                }),
                "{warmed}"
            );
            // Started in the warm pool (or first seen there), then put in service: no notice.
            assert_eq!(lifecycle_change(None, &state(warmed), now), None);
            assert_eq!(
                lifecycle_change(Some(&state(warmed)), &state("InService"), now),
                None
            );
            assert_eq!(
                lifecycle_change(Some(&state(warmed)), &state(warmed), now),
                None
            );
        }
        assert_eq!(
            lifecycle_change(Some(&state("InService")), &state("InService"), now),
            None
        );
        assert_eq!(
            lifecycle_change(Some(&state("Standby")), &state("Warmed:Stopped"), now),
            None
        );
    }
}
