//! Exit codes shared by every command, and the `--json` report `builder` reads back from SSM.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::BuildNumber;

/// The exit codes, identical for every command of both binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitCode {
    /// Success, or nothing to do (said so).
    Success = 0,
    /// Failed before anything live changed; the previous release is still serving.
    Failed = 1,
    /// Bad input: usage, configuration, validation, verification. Nothing was touched.
    BadInput = 2,
    /// Failed after the swap and rolled back by itself.
    RolledBack = 3,
    /// Failed after the swap and could not restore: an operator is needed.
    OperatorNeeded = 4,
    /// Another activation holds the lock past `--lock-timeout`.
    Locked = 5,
    /// Only `installer os-update --reboot --via-ssm`: the update succeeded and needs a reboot,
    /// which the SSM agent does on this code (the Linux agent's documented "reboot and run the
    /// command again"); the command's final status comes from that second run.
    RebootBySsm = 194,
}

impl ExitCode {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => Self::Success,
            1 => Self::Failed,
            2 => Self::BadInput,
            3 => Self::RolledBack,
            4 => Self::OperatorNeeded,
            5 => Self::Locked,
            194 => Self::RebootBySsm,
            _ => return None,
        })
    }

    /// What the code means, for people reading a fleet's results.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => {
                "failed before anything live changed; the previous release is still serving"
            }
            Self::BadInput => "bad input; nothing was touched",
            Self::RolledBack => {
                "failed after the swap and rolled back; the previous release is serving"
            }
            Self::OperatorNeeded => "failed after the swap and could not restore: operator needed",
            Self::Locked => "another activation holds the lock",
            Self::RebootBySsm => "updated; the SSM agent reboots the server and runs it again",
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c.code())
    }
}

/// How a command ended, in words a machine can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    NothingToDo,
    Failed,
    BadInput,
    RolledBack,
    OperatorNeeded,
    Locked,
}

impl Outcome {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Self::Success | Self::NothingToDo => ExitCode::Success,
            Self::Failed => ExitCode::Failed,
            Self::BadInput => ExitCode::BadInput,
            Self::RolledBack => ExitCode::RolledBack,
            Self::OperatorNeeded => ExitCode::OperatorNeeded,
            Self::Locked => ExitCode::Locked,
        }
    }
}

/// One timed phase of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub name: String,
    pub duration_ms: u64,
    #[serde(default = "default_true")]
    pub ok: bool,
}

fn default_true() -> bool {
    true
}

/// The one JSON object a command prints with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub command: String,
    #[serde(default)]
    pub build: Option<BuildNumber>,
    #[serde(default)]
    pub previous_build: Option<BuildNumber>,
    pub outcome: Outcome,
    pub exit_code: u8,
    #[serde(default)]
    pub phases: Vec<PhaseReport>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// Command-specific details (paths, counts); kept open so new commands need no schema change.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    pub fn new(command: &str) -> Self {
        Self {
            command: command.to_owned(),
            build: None,
            previous_build: None,
            outcome: Outcome::Success,
            exit_code: 0,
            phases: Vec::new(),
            warnings: Vec::new(),
            error: None,
            details: serde_json::Map::new(),
        }
    }

    pub fn phase(&mut self, name: &str, took: Duration, ok: bool) {
        self.phases.push(PhaseReport {
            name: name.to_owned(),
            duration_ms: took.as_millis() as u64,
            ok,
        });
    }

    pub fn finish(&mut self, outcome: Outcome, error: Option<String>) {
        self.outcome = outcome;
        self.exit_code = outcome.exit_code().code();
        // It may quote what the store held: capped, and safe for whoever prints it raw.
        self.error = error.map(|e| crate::untrusted::message(&e));
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// Puts a typed value under `details[key]` (see [`detail`] for the keys others read).
    pub fn set_detail<T: Serialize>(&mut self, key: &str, value: &T) {
        let value = serde_json::to_value(value).expect("report details always serialise");
        self.details.insert(key.to_owned(), value);
    }

    /// The typed value under `details[key]`, when there is one of that shape.
    pub fn detail<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_value(self.details.get(key)?.clone()).ok()
    }

    /// `installer status`: how the last journalled command ended.
    pub fn last_command(&self) -> Option<LastCommand> {
        self.detail(detail::LAST_COMMAND)
    }

    /// `installer activate`: what was checked of the release's signature.
    pub fn signature(&self) -> Option<SignatureCheck> {
        self.detail(detail::SIGNATURE)
    }

    /// `installer list`: every release on the server.
    pub fn releases(&self) -> Option<Vec<ReleaseRow>> {
        self.detail(detail::RELEASES)
    }

    /// Finds the report in mixed output (SSM returns stdout, which may carry other lines).
    /// The last report in `output`: a command the SSM agent ran again after a reboot may
    /// leave the first run's report before its own.
    pub fn find_last_in(output: &str) -> Option<Report> {
        let mut rest = output;
        let mut last = None;
        while let Some(r) = Self::find_in(rest) {
            last = Some(r);
            let start = rest
                .find("{\n  \"command\"")
                .or_else(|| rest.find("{\"command\""))
                .unwrap_or(0);
            rest = &rest[start + 1..];
        }
        last
    }

    pub fn find_in(output: &str) -> Option<Report> {
        let start = output
            .find("{\n  \"command\"")
            .or_else(|| output.find("{\"command\""))?;
        let mut de = serde_json::Deserializer::from_str(&output[start..]).into_iter::<Report>();
        de.next()?.ok()
    }

    /// The head of a report whose end was cut off (SSM keeps the first 24,000 characters of
    /// standard output): every top-level field that is complete, before `details`, which comes
    /// last and is the only part that grows with what a command found. The command, outcome and
    /// exit code come first, so a cut report still says how the command ended. None when even
    /// those are missing, or for a compact (one-line) report, which is never that long.
    pub fn head_in(output: &str) -> Option<Report> {
        let start = output.find("{\n  \"command\"")?;
        let mut fields: Vec<&str> = Vec::new();
        let mut current: Option<(usize, usize)> = None;
        let text = &output[start + 2..];
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let top = line.starts_with("  \"") || line.starts_with('}');
            if top {
                if let Some((from, to)) = current.take() {
                    fields.push(&text[from..to]);
                }
                if line.starts_with('}') || line.starts_with("  \"details\"") {
                    break;
                }
                current = Some((offset, offset + line.len()));
            } else if let Some((_, to)) = current.as_mut() {
                *to = offset + line.len();
            }
            offset += line.len();
        }
        let body: Vec<&str> = fields
            .iter()
            .map(|f| f.trim_end().trim_end_matches(','))
            .collect();
        let json = format!("{{\n{}\n}}", body.join(",\n"));
        serde_json::from_str(&json).ok()
    }
}

/// The keys of `details` that another program reads, with their types.
pub mod detail {
    /// [`super::LastCommand`], from `installer status`.
    pub const LAST_COMMAND: &str = "last_command";
    /// [`super::SignatureCheck`], from `installer activate`.
    pub const SIGNATURE: &str = "signature";
    /// A list of [`super::ReleaseRow`], from `installer list`.
    pub const RELEASES: &str = "releases";
}

/// How the last journalled command on a server ended (`installer status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastCommand {
    /// `activate`, `rollback` or `adopt`.
    pub command: String,
    #[serde(default)]
    pub build: Option<BuildNumber>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Unix seconds.
    #[serde(default)]
    pub time: i64,
    #[serde(default)]
    pub detail: Option<String>,
}

/// What `installer activate` checked of a release's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum SignatureCheck {
    /// Signed by this trusted key over the sidecar's exact bytes.
    Verified {
        key_id: String,
        trusted_comment: String,
    },
    /// Not signed, and the server does not require it.
    Unsigned,
    /// The server trusts no key, so nothing was checked (the signer, when there is a signature).
    NotChecked {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
    },
}

/// A release's state on a server, as `installer list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseState {
    #[serde(rename = "live")]
    Live,
    /// The previous good release: what `rollback` returns to.
    #[serde(rename = "previous")]
    Previous,
    /// Activated, failed its health check and rolled back without ever serving.
    #[serde(rename = "rolled back")]
    RolledBack,
    /// Its activation failed (before or after the swap) and it never served.
    #[serde(rename = "failed")]
    Failed,
    /// On disk and none of the above: served once, or never tried.
    #[serde(rename = "unused")]
    Unused,
}

impl ReleaseState {
    /// Releases that failed and never served never count toward `prune --keep`.
    pub fn is_failed(self) -> bool {
        matches!(self, Self::RolledBack | Self::Failed)
    }

    /// As `list` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Previous => "previous",
            Self::RolledBack => "rolled back",
            Self::Failed => "failed",
            Self::Unused => "unused",
        }
    }
}

/// One release on a server (`installer list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRow {
    pub build: BuildNumber,
    pub state: ReleaseState,
    /// The size of its files.
    pub bytes: u64,
    /// When it last went live (Unix seconds).
    #[serde(default)]
    pub activated_at: Option<i64>,
    /// The adopted checkout.
    #[serde(default)]
    pub legacy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn outcome_maps_to_spec_codes() {
        assert_eq!(Outcome::Success.exit_code().code(), 0);
        assert_eq!(Outcome::NothingToDo.exit_code().code(), 0);
        assert_eq!(Outcome::Failed.exit_code().code(), 1);
        assert_eq!(Outcome::BadInput.exit_code().code(), 2);
        assert_eq!(Outcome::RolledBack.exit_code().code(), 3);
        assert_eq!(Outcome::OperatorNeeded.exit_code().code(), 4);
        assert_eq!(Outcome::Locked.exit_code().code(), 5);
        for c in 0..=5 {
            assert_eq!(ExitCode::from_code(c).unwrap().code() as i32, c);
        }
        assert_eq!(ExitCode::from_code(6), None);
    }

    #[test]
    fn a_cut_report_still_says_how_the_command_ended() {
        let mut r = Report::new("status");
        r.build = Some(BuildNumber::parse("000003").unwrap());
        r.previous_build = Some(BuildNumber::parse("000002").unwrap());
        r.phase("verify", Duration::from_millis(12), true);
        r.warnings.push("a warning".into());
        let changed: BTreeMap<String, String> = (0..2000)
            .map(|n| {
                (
                    format!("deps/pkg/module{n}.py"),
                    "content changed".to_owned(),
                )
            })
            .collect();
        r.set_detail("changed", &changed);
        r.finish(
            Outcome::BadInput,
            Some("Build000003 does not verify".into()),
        );
        let whole = format!("noise\n{}\n", r.to_json());
        assert!(whole.len() > 24_000);
        let cut: String = whole.chars().take(24_000).collect();
        assert_eq!(Report::find_in(&cut), None);
        let head = Report::head_in(&cut).unwrap();
        assert_eq!(head.build, r.build);
        assert_eq!(head.previous_build, r.previous_build);
        assert_eq!(head.outcome, Outcome::BadInput);
        assert_eq!(head.exit_code, 2);
        assert_eq!(head.phases, r.phases);
        assert_eq!(head.warnings, r.warnings);
        assert_eq!(head.error, r.error);
        assert!(head.details.is_empty());
        // Cut inside the warnings: what came before them is still read; the cut field is not.
        let at = whole.find("a warning").unwrap();
        let head = Report::head_in(&whole[..at]).unwrap();
        assert_eq!((head.exit_code, head.warnings.len()), (2, 0));
        // Cut before the exit code: nothing to trust.
        let at = whole.find("\"exit_code\"").unwrap();
        assert_eq!(Report::head_in(&whole[..at]), None);
        // A whole report reads the same through the head (without its details).
        let head = Report::head_in(&whole).unwrap();
        assert_eq!((head.outcome, head.error.clone()), (r.outcome, r.error));
    }

    #[test]
    fn report_round_trips_and_is_found_in_noise() {
        let mut r = Report::new("activate");
        r.build = Some(BuildNumber::parse("000003").unwrap());
        r.phase("fetch", Duration::from_millis(12), true);
        r.warnings.push("cache miss".into());
        r.finish(Outcome::RolledBack, Some("health check failed".into()));
        let text = format!("some log line\n{}\ntrailing\n", r.to_json());
        let back = Report::find_in(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.exit_code, 3);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["outcome"], "rolled_back");
        assert_eq!(v["build"], "000003");
    }

    #[test]
    fn the_details_other_programs_read_keep_their_shape() {
        let b = |n| BuildNumber::new(n).unwrap();
        let mut status = Report::new("status");
        status.build = Some(b(2));
        status.previous_build = Some(b(1));
        let last = LastCommand {
            command: "activate".into(),
            build: Some(b(2)),
            outcome: Some(Outcome::Success),
            time: 1_764_000_000,
            detail: None,
        };
        status.set_detail(detail::LAST_COMMAND, &last);
        status.finish(Outcome::Success, None);
        assert_eq!(status.last_command(), Some(last));

        let mut activate = Report::new("activate");
        activate.build = Some(b(2));
        activate.phase("fetch", Duration::from_millis(15), true);
        let unchecked = SignatureCheck::NotChecked { key_id: None };
        activate.set_detail(detail::SIGNATURE, &unchecked);
        assert_eq!(
            activate.details["signature"],
            serde_json::json!({"status": "not-checked"})
        );
        let signature = SignatureCheck::Verified {
            key_id: "F1065003BC0190DE".into(),
            trusted_comment: "app:binarycrate\tbuild:Build000002".into(),
        };
        activate.set_detail(detail::SIGNATURE, &signature);
        activate.finish(Outcome::Success, None);
        assert_eq!(activate.signature(), Some(signature));

        let mut list = Report::new("list");
        let rows = vec![
            ReleaseRow {
                build: b(2),
                state: ReleaseState::Live,
                bytes: 41_000_000,
                activated_at: Some(1_764_000_000),
                legacy: false,
            },
            ReleaseRow {
                build: b(1),
                state: ReleaseState::RolledBack,
                bytes: 40_000_000,
                activated_at: None,
                legacy: true,
            },
        ];
        list.set_detail(detail::RELEASES, &rows);
        list.finish(Outcome::Success, None);
        assert_eq!(list.releases(), Some(rows));

        insta::assert_snapshot!(format!(
            "{}\n{}\n{}",
            status.to_json(),
            activate.to_json(),
            list.to_json()
        ));
    }
}
