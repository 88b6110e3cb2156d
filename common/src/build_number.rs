//! The release identity: a six-digit, zero-padded build number and its `BuildNNNNNN` tag.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::BuildNumberError;

/// A build number in `000001`–`999999`.
///
/// It is the only way a build name enters the system, so every place that takes one from the
/// outside (CLI, configuration, store keys, directory names) goes through [`BuildNumber::parse`]
/// and nothing unvalidated can reach a path or a shell.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildNumber(u32);

impl BuildNumber {
    pub const MIN: u32 = 1;
    pub const MAX: u32 = 999_999;
    /// The prefix of tags, release directories and store folders.
    pub const TAG_PREFIX: &'static str = "Build";

    /// Builds from an integer, refusing 0 and anything above 999999.
    pub fn new(n: u32) -> Result<Self, BuildNumberError> {
        if (Self::MIN..=Self::MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(BuildNumberError::OutOfRange(n as u64))
        }
    }

    /// Parses `000034` or `Build000034`: exactly six ASCII digits, optionally after `Build`.
    pub fn parse(input: &str) -> Result<Self, BuildNumberError> {
        let digits = input.strip_prefix(Self::TAG_PREFIX).unwrap_or(input);
        if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BuildNumberError::Malformed(input.to_owned()));
        }
        // Six ASCII digits always fit; the range check rejects 000000.
        let n: u32 = digits
            .parse()
            .map_err(|_| BuildNumberError::Malformed(input.to_owned()))?;
        if n == 0 {
            return Err(BuildNumberError::Zero(input.to_owned()));
        }
        Ok(Self(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The following build number; 999999 has none.
    pub fn next(self) -> Result<Self, BuildNumberError> {
        Self::new(self.0 + 1)
    }

    /// The six digits, e.g. `000034`.
    pub fn digits(self) -> String {
        format!("{:06}", self.0)
    }

    /// The tag and directory name, e.g. `Build000034`.
    pub fn tag(self) -> String {
        format!("{}{:06}", Self::TAG_PREFIX, self.0)
    }
}

/// Displays the six digits; `{:#}` displays the tag form `Build000034`.
impl fmt::Display for BuildNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            write!(f, "{}{:06}", Self::TAG_PREFIX, self.0)
        } else {
            write!(f, "{:06}", self.0)
        }
    }
}

impl fmt::Debug for BuildNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Build{:06}", self.0)
    }
}

impl FromStr for BuildNumber {
    type Err = BuildNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Serialised as the six digits, the form `build_number.py` and the page use.
impl Serialize for BuildNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.digits())
    }
}

impl<'de> Deserialize<'de> for BuildNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_both_forms() {
        let a = BuildNumber::parse("000034").unwrap();
        let b = BuildNumber::parse("Build000034").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get(), 34);
        assert_eq!(a.to_string(), "000034");
        assert_eq!(format!("{a:#}"), "Build000034");
        assert_eq!(a.tag(), "Build000034");
    }

    #[test]
    fn range_edges() {
        assert_eq!(BuildNumber::parse("000001").unwrap().get(), 1);
        assert_eq!(BuildNumber::parse("999999").unwrap().get(), 999_999);
        assert!(matches!(
            BuildNumber::parse("000000"),
            Err(BuildNumberError::Zero(_))
        ));
        assert!(matches!(
            BuildNumber::parse("999999").unwrap().next(),
            Err(BuildNumberError::OutOfRange(1_000_000))
        ));
        assert_eq!(
            BuildNumber::parse("000009")
                .unwrap()
                .next()
                .unwrap()
                .digits(),
            "000010"
        );
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "Build",
            "34",
            "00034",
            "0000034",
            "Build00034",
            "Build0000034",
            "+00034",
            "-00034",
            " 000034",
            "000034 ",
            "00 034",
            "build000034",
            "BUILD000034",
            "Build-000034",
            "Build 000034",
            "٠٠٠٠٣٤",
            "００００３４",
            "000034;rm -rf /",
            "$(id)0000",
            "`id`00",
            "00003\n",
            "Build000034\0",
            "0x0022",
            "1e5000",
        ] {
            let err = BuildNumber::parse(bad).expect_err(bad);
            let msg = err.to_string();
            assert!(
                msg.contains("BuildNNNNNN"),
                "message should teach the format: {msg}"
            );
        }
    }

    #[test]
    fn serde_uses_digits_and_validates() {
        let b = BuildNumber::parse("Build000007").unwrap();
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"000007\"");
        assert!(serde_json::from_str::<BuildNumber>("\"00007;\"").is_err());
    }

    proptest! {
        #[test]
        fn every_valid_number_round_trips(n in 1u32..=999_999) {
            let b = BuildNumber::new(n).unwrap();
            prop_assert_eq!(BuildNumber::parse(&b.digits()).unwrap(), b);
            prop_assert_eq!(BuildNumber::parse(&b.tag()).unwrap(), b);
            prop_assert_eq!(b.digits().len(), 6);
            if n < 999_999 {
                prop_assert_eq!(b.next().unwrap().get(), n + 1);
                prop_assert!(b.next().unwrap() > b);
            }
        }

        #[test]
        fn arbitrary_strings_parse_only_when_canonical(s in "\\PC{0,12}") {
            if let Ok(b) = BuildNumber::parse(&s) {
                prop_assert!(s == b.digits() || s == b.tag());
            }
        }

        #[test]
        fn out_of_range_integers_are_refused(n in 1_000_000u32..) {
            prop_assert!(BuildNumber::new(n).is_err());
        }
    }
}
