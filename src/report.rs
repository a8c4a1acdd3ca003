//! What one observation produced, rendered for `status`, the stdout sink and JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::host::Snapshot;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub snapshot: Snapshot,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let s = &self.snapshot;
        let mut out = String::new();
        let _ = writeln!(out, "observed at {}", rfc3339::format(s.taken_at));
        let _ = writeln!(out, "{:<12} {:>12}", "resource", "registered");
        let _ = writeln!(out, "{:<12} {:>12}", "cpu units", s.registered.cpu_units);
        let _ = writeln!(out, "{:<12} {:>12}", "memory MiB", s.registered.memory_mib);
        let ports = |set: &std::collections::BTreeSet<u16>| {
            set.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
        };
        let _ = writeln!(
            out,
            "{:<12} {:>12}",
            "tcp ports",
            ports(&s.registered.reserved_tcp_ports)
        );
        let _ = writeln!(
            out,
            "{:<12} {:>12}",
            "udp ports",
            ports(&s.registered.reserved_udp_ports)
        );
        for u in &s.unavailable {
            let _ = writeln!(out, "unavailable: {u}");
        }
        out
    }
}

/// RFC 3339 UTC timestamps for `SystemTime`.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::Serializer;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn format(t: SystemTime) -> String {
        OffsetDateTime::from(t)
            .format(&Rfc3339)
            .unwrap_or_else(|_| "?".into())
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }
}
