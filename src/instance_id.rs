//! The EC2 instance id, checked once where it enters (configuration, the command line, IMDS) and
//! carried as [`InstanceId`] from there on.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// An EC2 instance id: `i-` and 8 (instances launched before 2016) or 17 lowercase hex digits, as
/// EC2 issues them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct InstanceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not an EC2 instance id (\"i-\" and 8 or 17 lowercase hex digits, e.g. \"i-0abc1234def567890\")"
)]
pub struct ParseInstanceIdError {
    pub input: String,
}

impl FromStr for InstanceId {
    type Err = ParseInstanceIdError;

    fn from_str(s: &str) -> Result<InstanceId, ParseInstanceIdError> {
        let valid = s.strip_prefix("i-").is_some_and(|hex| {
            matches!(hex.len(), 8 | 17)
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if valid {
            Ok(InstanceId(s.to_owned()))
        } else {
            Err(ParseInstanceIdError { input: s.into() })
        }
    }
}

impl InstanceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for InstanceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_accepted_and_rejected() {
        let cases = [
            ("i-0abc1234def567890", true),
            ("i-1234abcd", true),
            ("i-00000000000000000", true),
            ("i-0ABC1234DEF567890", false),
            ("i-0abc1234def56789", false),
            ("i-0abc1234def5678901", false),
            ("i-1234abc", false),
            ("i-1234abcde", false),
            ("i-0abc1234def56789g", false),
            ("i-", false),
            ("", false),
            ("0abc1234def567890", false),
            ("I-0abc1234def567890", false),
            (" i-0abc1234def567890", false),
            ("i-0abc1234def567890\n", false),
            ("web-1", false),
            ("mi-0abc1234def567890", false),
        ];
        for (input, ok) in cases {
            let got = input.parse::<InstanceId>();
            assert_eq!(got.is_ok(), ok, "{input:?}: {got:?}");
            match got {
                Ok(id) => assert_eq!(id.as_str(), input),
                Err(e) => assert!(e.to_string().contains(&format!("{input:?}")), "{e}"),
            }
        }
    }
}
