//! RFC 3339 UTC timestamps for `SystemTime` in whole seconds (`2024-05-01T12:00:00Z`), the one form
//! `status` (table and JSON), the stdout sink and the logs print.

use std::time::SystemTime;

use serde::Serializer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn format(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "?".into())
}

/// For `#[serde(with = "crate::rfc3339")]`.
pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*t))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn whole_seconds_in_utc_with_z() {
        let t = UNIX_EPOCH + Duration::from_millis(1_714_564_800_750);
        assert_eq!(super::format(t), "2024-05-01T12:00:00Z");
    }
}
