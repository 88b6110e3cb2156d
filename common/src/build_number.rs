//! The release identity: a six-digit, zero-padded build number and its `BuildNNNNNN` tag.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use thiserror::Error;

/// Why a text is not a build name.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BuildNumberError {
    #[error("invalid build name `{}`: expected six digits `NNNNNN` or the tag `BuildNNNNNN`, e.g. `Build000034`", .0.escape_debug())]
    Malformed(String),
    #[error("invalid build name `{0}`: build numbers start at 000001 (tag `BuildNNNNNN`)")]
    Zero(String),
    #[error("build number {0} is out of range: build numbers run from 000001 to 999999 (tag `BuildNNNNNN`)")]
    OutOfRange(u64),
}

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

/// The one `BUILD_NUMBER = 'NNNNNN'` line of an app's `build_number.py`: at the start of a line,
/// single or double quotes, any spaces around `=`, a trailing `# comment` allowed. The one reader
/// and writer of that file: `builder prepare` rewrites it, `builder package` checks it against
/// the tag (and the bundled front end's copy), `installer adopt` reads the checkout's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildNumberLine {
    /// The number the file holds; 0 for `000000` (nothing built yet).
    pub value: u32,
    /// The line's number, from 1.
    pub line: usize,
    /// Byte offset of the six digits in the file.
    digits_at: usize,
}

impl BuildNumberLine {
    /// Finds the line; the error says what is wrong in words that follow the file's name.
    pub fn find(content: &[u8]) -> Result<Self, String> {
        const NAME: &[u8] = b"BUILD_NUMBER";
        let mut candidates = Vec::new();
        let mut start = 0;
        for (i, raw) in content.split(|&b| b == b'\n').enumerate() {
            let mut line = raw.strip_suffix(b"\r").unwrap_or(raw);
            let mut offset = start;
            if i == 0 {
                if let Some(rest) = line.strip_prefix(b"\xEF\xBB\xBF") {
                    line = rest;
                    offset += 3;
                }
            }
            if let Some(rest) = line.strip_prefix(NAME) {
                if matches!(rest.first(), Some(b' ' | b'\t' | b'=')) {
                    candidates.push((i + 1, offset, line));
                }
            }
            start += raw.len() + 1;
        }
        let (number, offset, line) = match candidates.as_slice() {
            [] => {
                return Err("has no `BUILD_NUMBER = 'NNNNNN'` line: add one, e.g. \
                            `BUILD_NUMBER = '000001'`"
                    .to_owned())
            }
            [one] => *one,
            many => {
                let lines: Vec<String> = many.iter().map(|c| c.0.to_string()).collect();
                return Err(format!(
                    "has {} `BUILD_NUMBER` lines (lines {}): keep exactly one",
                    many.len(),
                    lines.join(", ")
                ));
            }
        };
        let parsed = parse_assignment(line, NAME.len());
        let Some((at, value)) = parsed else {
            return Err(format!(
                "line {number}, `{}`, is not of the form `BUILD_NUMBER = 'NNNNNN'` (six digits \
                 in quotes): fix it",
                String::from_utf8_lossy(line)
            ));
        };
        Ok(Self {
            value,
            line: number,
            digits_at: offset + at,
        })
    }

    /// The file with only the six digits of this line replaced by `n`'s.
    pub fn rewrite(&self, content: &[u8], n: BuildNumber) -> Vec<u8> {
        let mut out = content.to_vec();
        out[self.digits_at..self.digits_at + 6].copy_from_slice(n.digits().as_bytes());
        out
    }

    /// The build a file names (not `000000`, which means "nothing built yet"); the error says
    /// what is wrong in words that follow the file's name.
    pub fn build_in(content: &[u8]) -> Result<BuildNumber, String> {
        let line = Self::find(content)?;
        BuildNumber::new(line.value).map_err(|_| {
            format!(
                "line {} says `000000`, which names no build: a released tree names its own",
                line.line
            )
        })
    }
}

/// `= 'NNNNNN'` after the name: the digits' offset in the line and their value.
fn parse_assignment(line: &[u8], mut i: usize) -> Option<(usize, u32)> {
    let skip_blanks = |i: &mut usize| {
        while matches!(line.get(*i), Some(b' ' | b'\t')) {
            *i += 1;
        }
    };
    skip_blanks(&mut i);
    if line.get(i) != Some(&b'=') {
        return None;
    }
    i += 1;
    skip_blanks(&mut i);
    let quote = *line.get(i)?;
    if quote != b'\'' && quote != b'"' {
        return None;
    }
    let at = i + 1;
    let digits = line.get(at..at + 6)?;
    if !digits.iter().all(u8::is_ascii_digit) || line.get(at + 6) != Some(&quote) {
        return None;
    }
    let mut rest = at + 7;
    skip_blanks(&mut rest);
    if rest < line.len() && line[rest] != b'#' {
        return None;
    }
    let value = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((at, value))
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

    #[test]
    fn build_number_line_parsing() {
        // As `builder prepare` writes it: a trailing comment is kept and read back.
        let prepared = b"BUILD_NUMBER = '000006'  # set by builder\n";
        assert_eq!(BuildNumberLine::build_in(prepared).unwrap().get(), 6);
        assert!(BuildNumberLine::build_in(b"BUILD_NUMBER = '000000'\n")
            .unwrap_err()
            .contains("names no build"));
        let find = |s: &str| BuildNumberLine::find(s.as_bytes());
        assert_eq!(find("BUILD_NUMBER = '000034'\n").unwrap().value, 34);
        assert_eq!(find("x = 1\nBUILD_NUMBER='000000'").unwrap().value, 0);
        assert_eq!(
            find("a\nb\nBUILD_NUMBER = \"123456\" # c\n").unwrap().line,
            3
        );
        let no_line = find("# BUILD_NUMBER = '000001'\nBUILD_NUMBERS = 1\n").unwrap_err();
        assert!(no_line.contains("has no `BUILD_NUMBER"), "{no_line}");
        let twice = find("BUILD_NUMBER = '000001'\nBUILD_NUMBER = '000002'\n").unwrap_err();
        assert!(twice.contains("lines 1, 2"), "{twice}");
        for bad in [
            "BUILD_NUMBER = 34",
            "BUILD_NUMBER = '34'",
            "BUILD_NUMBER = '0000034'",
            "BUILD_NUMBER = '000034\"",
            "BUILD_NUMBER = '000034' + 1",
            "BUILD_NUMBER == '000034'",
            "BUILD_NUMBER = u'000034'",
        ] {
            let e = find(bad).expect_err(bad);
            assert!(e.contains("is not of the form"), "{e}");
        }
        let text = b"# h\r\nBUILD_NUMBER = '000009'\r\n";
        let line = BuildNumberLine::find(text).unwrap();
        assert_eq!(
            line.rewrite(text, BuildNumber::new(10).unwrap()),
            b"# h\r\nBUILD_NUMBER = '000010'\r\n"
        );
    }
}
