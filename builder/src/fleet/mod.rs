//! Running the installer on a fleet: `builder deploy`, `builder rollback`, `builder status`,
//! `builder os-update`.
//!
//! One installer command line is rendered from argv with every word single-quoted (so nothing in
//! it is ever interpreted by the shell), sent once to every target, and watched until every
//! instance has finished; each instance's `--json` report then says what the installer did.
//!
//! The side effects sit behind [`Transport`] (send → handle, poll the invocations, fetch one
//! instance's output, cancel), implemented by [`ssm::SsmTransport`] (AWS Systems Manager Run
//! Command, document `AWS-RunShellScript`) and [`local::LocalTransport`] (`sh -c LINE` on this
//! machine, as one pseudo-instance `local`). [`watch::watch`] and the summary in [`summary`] are
//! generic over it.
//!
//! Module map:
//! - this module: targets, rates, the shell quoting, the installer command line, the trait.
//! - [`watch`]: the polling loop with backoff, live status lines, Ctrl-C → cancel.
//! - [`summary`]: per-instance results, the table, the JSON, the exit code.
//! - [`run`]: the plan from the arguments, then send, watch and report; [`run::dispatch`] (send
//!   and watch only) also carries `builder bootstrap`'s script, which reports in its own table.
//! - [`rollout`]: `deploy`'s canary, bake and waves, and the rollback of what switched when it
//!   stops.
//! - [`plan`]: `deploy --plan`, what a deploy would change on each live build's instances.
//! - [`rolling`]: `os-update`'s round, one instance after the other, a rebooted one back online
//!   before the next.
//! - [`ssm`], [`local`]: the two transports.

pub mod local;
pub mod plan;
pub mod rolling;
pub mod rollout;
pub mod run;
pub mod ssm;
pub mod summary;
pub mod watch;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use common::error::BadInput;
use common::report::{Outcome, Report};
use common::BuildNumber;

/// SSM accepts at most this many instance ids in one `SendCommand`.
pub const MAX_INSTANCE_IDS: usize = 50;
/// SSM accepts at most this many `Targets` (tag filters) in one `SendCommand`.
pub const MAX_TAG_TARGETS: usize = 5;
/// SSM's limit on a command's `Comment`.
pub const MAX_COMMENT_CHARS: usize = 100;
/// The name of the one pseudo-instance of the local transport.
pub const LOCAL_INSTANCE: &str = "local";

/// Where a command runs: instance ids, or EC2 tag filters (SSM takes one kind or the other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// `i-0123456789abcdef0`, `mi-0123456789abcdef0`; duplicates removed, order kept.
    Instances(Vec<String>),
    /// `tag:Key=Value[,Value…]`: SSM target key `tag:Key` with those values. Several filters
    /// must all match.
    Tags(Vec<TagFilter>),
}

/// One `tag:Key=V1,V2` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter {
    pub key: String,
    pub values: Vec<String>,
}

impl Targets {
    /// Parses `--targets` words. Each word is an instance id or a `tag:Key=Value[,Value…]`
    /// filter; instance ids may also be separated by commas. Ids and tags cannot be mixed.
    pub fn parse(words: &[String]) -> Result<Self, BadInput> {
        let mut ids: Vec<String> = Vec::new();
        let mut tags: Vec<TagFilter> = Vec::new();
        for word in words {
            let word = word.trim();
            if word.is_empty() {
                continue;
            }
            if let Some(rest) = word.strip_prefix("tag:") {
                tags.push(parse_tag(word, rest)?);
            } else {
                for id in word.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    check_instance_id(id)?;
                    if !ids.iter().any(|i| i == id) {
                        ids.push(id.to_owned());
                    }
                }
            }
        }
        match (ids.is_empty(), tags.is_empty()) {
            (true, true) => Err(BadInput(
                "no targets: name instances (`--targets i-0123456789abcdef0 i-…`) or EC2 tags (`--targets tag:Role=web`)".into(),
            )),
            (false, false) => Err(BadInput(
                "`--targets` mixes instance ids and tags; SSM takes one kind or the other in one command".into(),
            )),
            (false, true) => {
                if ids.len() > MAX_INSTANCE_IDS {
                    return Err(BadInput(format!(
                        "{} instance ids given; SSM takes at most {MAX_INSTANCE_IDS} in one command: target them by tag instead (`--targets tag:Role=web`)",
                        ids.len()
                    )));
                }
                Ok(Self::Instances(ids))
            }
            (true, false) => {
                if tags.len() > MAX_TAG_TARGETS {
                    return Err(BadInput(format!(
                        "{} tag filters given; SSM takes at most {MAX_TAG_TARGETS}",
                        tags.len()
                    )));
                }
                Ok(Self::Tags(tags))
            }
        }
    }

    /// How many invocations to expect, when that is known before sending.
    pub fn expected(&self) -> Option<usize> {
        match self {
            Self::Instances(ids) => Some(ids.len()),
            Self::Tags(_) => None,
        }
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Instances(ids) => write!(f, "{}", ids.join(" ")),
            Self::Tags(tags) => {
                let words: Vec<String> = tags
                    .iter()
                    .map(|t| format!("tag:{}={}", t.key, t.values.join(",")))
                    .collect();
                write!(f, "{}", words.join(" "))
            }
        }
    }
}

fn check_instance_id(id: &str) -> Result<(), BadInput> {
    let hex = |s: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = match id.strip_prefix("i-") {
        Some(rest) => hex(rest, 8..=17),
        None => id
            .strip_prefix("mi-")
            .is_some_and(|rest| hex(rest, 17..=17)),
    };
    if ok {
        Ok(())
    } else {
        Err(BadInput(format!(
            "invalid target `{}`: expected an instance id (`i-` and 8 to 17 lowercase hex digits, or `mi-` and 17 for a managed instance) or an EC2 tag filter `tag:Key=Value`",
            id.escape_debug()
        )))
    }
}

fn parse_tag(word: &str, rest: &str) -> Result<TagFilter, BadInput> {
    let bad = |why: &str| {
        BadInput(format!(
            "invalid target `{}`: {why}; tag filters look like `tag:Role=web` or `tag:Env=staging,production`",
            word.escape_debug()
        ))
    };
    let (key, values) = rest
        .split_once('=')
        .ok_or_else(|| bad("no `=` between the tag key and its value"))?;
    if key.is_empty() || key.chars().count() > 128 {
        return Err(bad("tag keys have 1 to 128 characters"));
    }
    if key.chars().any(char::is_control) {
        return Err(bad("control characters in the tag key"));
    }
    let values: Vec<String> = values.split(',').map(str::to_owned).collect();
    if values
        .iter()
        .any(|v| v.is_empty() || v.chars().count() > 256)
    {
        return Err(bad("tag values have 1 to 256 characters"));
    }
    if values.iter().any(|v| v.chars().any(char::is_control)) {
        return Err(bad("control characters in a tag value"));
    }
    if values.len() > 50 {
        return Err(bad("at most 50 values per tag"));
    }
    Ok(TagFilter {
        key: key.to_owned(),
        values,
    })
}

/// A count or a percentage of the targets, as SSM's `MaxConcurrency` and `MaxErrors` take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Count(u32),
    Percent(u8),
}

impl Rate {
    /// `N` or `N%`; `min` is the smallest count or percentage allowed (1 for concurrency, 0 for
    /// errors).
    pub fn parse(text: &str, min: u32) -> Result<Self, String> {
        let t = text.trim();
        let (digits, percent) = match t.strip_suffix('%') {
            Some(d) => (d, true),
            None => (t, false),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 7 {
            return Err(format!(
                "`{}` is neither a count `N` nor a percentage `N%` (e.g. `2` or `25%`)",
                text.escape_debug()
            ));
        }
        let n: u32 = digits.parse().map_err(|e| format!("`{text}`: {e}"))?;
        if n < min {
            return Err(format!("`{text}` is below the minimum of {min}"));
        }
        if percent {
            if n > 100 {
                return Err(format!("`{text}`: a percentage runs up to 100%"));
            }
            Ok(Self::Percent(n as u8))
        } else {
            Ok(Self::Count(n))
        }
    }

    /// For clap: `--max-concurrency` (at least 1).
    pub fn parse_concurrency(text: &str) -> Result<Self, String> {
        Self::parse(text, 1)
    }

    /// For clap: `--max-errors` (0 or more).
    pub fn parse_errors(text: &str) -> Result<Self, String> {
        Self::parse(text, 0)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Quotes one word for a POSIX shell: the whole word in single quotes, each `'` as `'\''`.
/// Inside single quotes nothing is special — not `$`, backticks, `\`, `;`, spaces or newlines —
/// so whatever the word holds, the shell passes it through as one argument, unchanged.
pub fn shell_quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Renders argv as one shell command line, every word quoted by [`shell_quote`].
pub fn render_line(argv: &[String]) -> String {
    argv.iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Refuses words that have no business in a command line: control characters (newlines
/// included) and NUL. Quoting would keep them inert; refusing keeps the line one line, which
/// is what SSM's `commands` and every log expect.
pub fn check_word(what: &str, word: &str) -> Result<(), BadInput> {
    if word.is_empty() {
        return Err(BadInput(format!("{what} is empty")));
    }
    if let Some(c) = word.chars().find(|c| c.is_control()) {
        return Err(BadInput(format!(
            "{what} `{}` contains the control character {:?}",
            word.escape_debug(),
            c
        )));
    }
    Ok(())
}

/// What the installer is asked to do on every target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `installer activate --build B [--store URL] [--s3-endpoint URL] …`
    Deploy {
        build: BuildNumber,
        store: Option<String>,
        s3_endpoint: Option<String>,
        template_reviewed: bool,
    },
    /// `installer rollback [--to B] [--migrate-down | --force]`
    Rollback {
        to: Option<BuildNumber>,
        schema: SchemaPolicy,
    },
    /// `installer status [--verify]`
    Status { verify: bool },
    /// `installer status --check`: the live build's health, as the activation proves it (a
    /// rollout's bake asks its canaries).
    Check,
    /// `installer os-update [--reboot [--via-ssm]]`
    OsUpdate { reboot: bool, via_ssm: bool },
}

impl Action {
    /// The `builder` subcommand's name: `deploy`, `rollback`, `status`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Deploy { .. } => "deploy",
            Self::Rollback { .. } => "rollback",
            Self::Status { .. } => "status",
            Self::Check => "check",
            Self::OsUpdate { .. } => "os-update",
        }
    }

    /// The build the command is about, if it names one.
    pub fn build(&self) -> Option<BuildNumber> {
        match self {
            Self::Deploy { build, .. } => Some(*build),
            Self::Rollback { to, .. } => *to,
            Self::Status { .. } | Self::Check | Self::OsUpdate { .. } => None,
        }
    }

    /// Which build is live on the instance after the installer reported `report`; `None` when
    /// the report does not say (e.g. it failed before looking, or an operator is needed).
    pub fn live_after(&self, report: &Report) -> Option<BuildNumber> {
        match report.outcome {
            Outcome::Success | Outcome::NothingToDo => report.build,
            Outcome::OperatorNeeded => None,
            Outcome::Failed | Outcome::BadInput | Outcome::RolledBack | Outcome::Locked => {
                match self {
                    // `status` puts the live build in `build` even when something else failed.
                    Self::Status { .. } | Self::Check | Self::OsUpdate { .. } => report.build,
                    _ => report.previous_build,
                }
            }
        }
    }
}

/// What a rollback does about migrations the database has and the target does not
/// (`installer rollback`'s options).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SchemaPolicy {
    /// Warn; refuse when the target's code cannot run against the schema.
    #[default]
    Warn,
    /// `--migrate-down`: unapply them first with the newer code.
    MigrateDown,
    /// `--force`: switch even when the target's code cannot run against the schema.
    Force,
}

/// How to invoke the installer on the targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallerInvocation {
    /// The installer program: a name looked up in `PATH` or a path on the target.
    pub program: String,
    /// `--config FILE` for the installer, a path on the target.
    pub config: Option<String>,
    /// `--lock-timeout SECS` for `activate`, `rollback` and `os-update`.
    pub lock_timeout: Option<u64>,
}

impl InstallerInvocation {
    /// The installer's argv for `action`, always with `--json`. Every word is either fixed,
    /// a validated build name or number, or a checked word (no control characters).
    pub fn argv(&self, action: &Action) -> Result<Vec<String>, BadInput> {
        check_word("the installer program", &self.program)?;
        let mut argv = vec![self.program.clone()];
        if let Some(config) = &self.config {
            check_word("the installer configuration path", config)?;
            argv.extend(["--config".into(), config.clone()]);
        }
        match action {
            Action::Deploy {
                build,
                store,
                s3_endpoint,
                template_reviewed,
            } => {
                argv.extend(["activate".into(), "--build".into(), build.tag()]);
                if let Some(store) = store {
                    check_word("the store URL", store)?;
                    argv.extend(["--store".into(), store.clone()]);
                }
                if let Some(endpoint) = s3_endpoint {
                    check_word("the S3 endpoint", endpoint)?;
                    argv.extend(["--s3-endpoint".into(), endpoint.clone()]);
                }
                if *template_reviewed {
                    argv.push("--template-reviewed".into());
                }
            }
            Action::Rollback { to, schema } => {
                argv.push("rollback".into());
                if let Some(to) = to {
                    argv.extend(["--to".into(), to.tag()]);
                }
                match schema {
                    SchemaPolicy::Warn => {}
                    SchemaPolicy::MigrateDown => argv.push("--migrate-down".into()),
                    SchemaPolicy::Force => argv.push("--force".into()),
                }
            }
            Action::Status { verify } => {
                argv.push("status".into());
                if *verify {
                    argv.push("--verify".into());
                }
            }
            Action::Check => argv.extend(["status".into(), "--check".into()]),
            Action::OsUpdate { reboot, via_ssm } => {
                argv.push("os-update".into());
                if *reboot {
                    argv.push("--reboot".into());
                    if *via_ssm {
                        argv.push("--via-ssm".into());
                    }
                }
            }
        }
        if let (
            Some(secs),
            Action::Deploy { .. } | Action::Rollback { .. } | Action::OsUpdate { .. },
        ) = (self.lock_timeout, action)
        {
            argv.extend(["--lock-timeout".into(), secs.to_string()]);
        }
        argv.push("--json".into());
        Ok(argv)
    }
}

/// `Comment` of the SSM command: `builder deploy binarycrate Build000002`, at most 100 chars.
pub fn comment(app: &str, action: &Action) -> String {
    let mut text = format!("builder {} {app}", action.name());
    match action {
        Action::Deploy { build, .. } => text.push_str(&format!(" {build:#}")),
        Action::Rollback { to: Some(to), .. } => text.push_str(&format!(" to {to:#}")),
        Action::Rollback { to: None, .. } => text.push_str(" to previous"),
        Action::Status { verify: false } => {}
        Action::Status { verify: true } => text.push_str(" --verify"),
        Action::Check => text.push_str(" health check"),
        Action::OsUpdate { reboot: true, .. } => text.push_str(" --reboot"),
        Action::OsUpdate { reboot: false, .. } => {}
    }
    text.chars().take(MAX_COMMENT_CHARS).collect()
}

/// Everything one send needs; transports take what applies to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// The one shell line to run.
    pub line: String,
    pub comment: String,
    /// `None` for the local transport.
    pub targets: Option<Targets>,
    pub max_concurrency: Rate,
    pub max_errors: Rate,
    /// How long the command may run on one instance.
    pub execution_timeout: Duration,
    /// How long SSM keeps trying to start it on an instance (`TimeoutSeconds`).
    pub delivery_timeout: Duration,
    /// `OutputS3BucketName` and `OutputS3KeyPrefix`.
    pub output_s3: Option<OutputS3>,
}

/// Where SSM keeps every instance's complete output: `s3://bucket[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputS3 {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl OutputS3 {
    /// Parses `s3://bucket/prefix`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            format!(
                "`{}` is not an S3 location: write it `s3://bucket/prefix`",
                url.escape_debug()
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        common::store::validate_bucket_name(bucket)
            .map_err(|e| format!("`{}`: {e}", url.escape_debug()))?;
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            check_word("the S3 output prefix", prefix).map_err(|e| e.0)?;
        }
        // SSM's limit on `OutputS3KeyPrefix`.
        if prefix.len() > 500 {
            return Err(format!(
                "`{}`: the key prefix has {} characters; SSM takes at most 500",
                url.escape_debug(),
                prefix.len()
            ));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// Where the SSM agent puts one instance's `stream` (`stdout`, `stderr`) of an
    /// `AWS-RunShellScript` command: `prefix/CommandId/InstanceId/awsrunShellScript/0.awsrunShellScript/stream`.
    pub fn stream_key(&self, command_id: &str, instance: &str, stream: &str) -> String {
        let key = format!("{command_id}/{instance}/awsrunShellScript/0.awsrunShellScript/{stream}");
        if self.prefix.is_empty() {
            key
        } else {
            format!("{}/{key}", self.prefix)
        }
    }
}

impl fmt::Display for OutputS3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// The state of one instance's invocation, as SSM names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    InProgress,
    Delayed,
    Success,
    Failed,
    TimedOut,
    Cancelling,
    Cancelled,
    /// A state this program does not know; treated as still running.
    Other(String),
}

impl Status {
    /// From SSM's spelling (`InProgress`, `TimedOut`, …).
    pub fn from_ssm(text: &str) -> Self {
        match text {
            "Pending" => Self::Pending,
            "InProgress" => Self::InProgress,
            "Delayed" => Self::Delayed,
            "Success" => Self::Success,
            "Failed" => Self::Failed,
            "TimedOut" => Self::TimedOut,
            "Cancelling" => Self::Cancelling,
            "Cancelled" => Self::Cancelled,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Delayed => "Delayed",
            Self::Success => "Success",
            Self::Failed => "Failed",
            Self::TimedOut => "TimedOut",
            Self::Cancelling => "Cancelling",
            Self::Cancelled => "Cancelled",
            Self::Other(s) => s,
        }
    }

    /// Finished: nothing more will happen on that instance.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failed | Self::TimedOut | Self::Cancelled
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One instance's invocation as a poll sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationState {
    pub instance: String,
    pub status: Status,
    /// SSM's `StatusDetails` (`Delivery Timed Out`, `Undeliverable`, …) when it says more.
    pub detail: Option<String>,
    pub exit_code: Option<i32>,
    pub duration: Option<Duration>,
}

/// What one poll learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollResult {
    pub invocations: Vec<InvocationState>,
    /// The command as a whole has finished (SSM's command status is terminal).
    pub command_done: bool,
    /// How many instances the command targets, when the transport knows.
    pub target_count: Option<usize>,
}

/// A finished instance's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvocationOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub duration: Option<Duration>,
    /// Set when the transport only had part of the output (SSM keeps 24,000 characters).
    pub truncated: bool,
    /// Where the output came from or why part of it is missing, when that is worth saying.
    pub note: Option<String>,
}

/// A sent command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandHandle {
    /// SSM's `CommandId`, or a local id.
    pub id: String,
}

/// Where the installer runs. Implementations do I/O only; the logic is in [`watch`].
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// `ssm` or `local`, for messages.
    fn name(&self) -> &'static str;
    /// Sends the command to every target (or starts it locally).
    async fn send(&self, request: &SendRequest) -> anyhow::Result<CommandHandle>;
    /// Every invocation's current state.
    async fn poll(&self, handle: &CommandHandle) -> anyhow::Result<PollResult>;
    /// The output of an instance whose invocation is terminal.
    async fn output(
        &self,
        handle: &CommandHandle,
        instance: &str,
    ) -> anyhow::Result<InvocationOutput>;
    /// Asks every unfinished invocation to stop.
    async fn cancel(&self, handle: &CommandHandle) -> anyhow::Result<()>;
    /// The instances whose tags match every filter, sorted: for a command that goes one
    /// instance at a time and must know them in advance.
    async fn instances(&self, tags: &[TagFilter]) -> anyhow::Result<Vec<String>> {
        let _ = tags;
        anyhow::bail!(
            "the {} transport cannot look instances up by tag",
            self.name()
        )
    }
    /// Whether the instance's agent is connected (SSM's `PingStatus` `Online`).
    async fn online(&self, instance: &str) -> anyhow::Result<bool> {
        let _ = instance;
        Ok(true)
    }
}

/// Which transport `--transport` chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// AWS Systems Manager Run Command (`AWS-RunShellScript`) on the targets.
    Ssm,
    /// `sh -c LINE` on this machine, as one pseudo-instance `local` (no `--targets`).
    Local,
}

/// A local path as the installer will see it: refused when it is not valid UTF-8.
pub fn path_word(what: &str, path: &std::path::Path) -> Result<String, BadInput> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        BadInput(format!(
            "{what} `{}` is not valid UTF-8",
            PathBuf::from(path).display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// What `sh` makes of a rendered line: each argument on its own, NUL-separated.
    fn sh_args(line: &str) -> Vec<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\0' {line}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut v: Vec<String> = text.split('\0').map(str::to_owned).collect();
        v.pop();
        v
    }

    #[test]
    fn quoting_keeps_every_word_inert() {
        let nasty = [
            "plain",
            "with space",
            "it's",
            "''",
            "'",
            "$(touch /tmp/builder-quoting-pwned)",
            "`touch /tmp/builder-quoting-pwned`",
            "${HOME}",
            "$HOME",
            "a\nb; touch /tmp/builder-quoting-pwned",
            "s3://b/p\n$(id)",
            "back\\slash",
            "semi;colon && or || pipe | amp &",
            "glob * ? [a]",
            "~",
            "#comment",
            "\"double\"",
            "ünïcode",
            "",
        ];
        let argv = words(&nasty);
        let line = render_line(&argv);
        assert_eq!(sh_args(&line), argv);
        assert!(!std::path::Path::new("/tmp/builder-quoting-pwned").exists());
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn renders_the_installer_command_lines() {
        let inv = InstallerInvocation {
            program: "installer".into(),
            config: None,
            lock_timeout: None,
        };
        let b2 = BuildNumber::parse("Build000002").unwrap();
        let deploy = Action::Deploy {
            build: b2,
            store: Some("s3://b/p".into()),
            s3_endpoint: None,
            template_reviewed: false,
        };
        assert_eq!(
            render_line(&inv.argv(&deploy).unwrap()),
            "'installer' 'activate' '--build' 'Build000002' '--store' 's3://b/p' '--json'"
        );
        let inv2 = InstallerInvocation {
            program: "/opt/bin/installer".into(),
            config: Some("/etc/it's/installer.toml".into()),
            lock_timeout: Some(30),
        };
        let deploy2 = Action::Deploy {
            build: b2,
            store: None,
            s3_endpoint: Some("http://127.0.0.1:5000".into()),
            template_reviewed: true,
        };
        assert_eq!(
            render_line(&inv2.argv(&deploy2).unwrap()),
            r"'/opt/bin/installer' '--config' '/etc/it'\''s/installer.toml' 'activate' '--build' 'Build000002' '--s3-endpoint' 'http://127.0.0.1:5000' '--template-reviewed' '--lock-timeout' '30' '--json'"
        );
        assert_eq!(
            render_line(
                &inv.argv(&Action::Rollback {
                    to: None,
                    schema: SchemaPolicy::Warn
                })
                .unwrap()
            ),
            "'installer' 'rollback' '--json'"
        );
        assert_eq!(
            render_line(
                &inv2
                    .argv(&Action::OsUpdate {
                        reboot: true,
                        via_ssm: true
                    })
                    .unwrap()
            ),
            r"'/opt/bin/installer' '--config' '/etc/it'\''s/installer.toml' 'os-update' '--reboot' '--via-ssm' '--lock-timeout' '30' '--json'"
        );
        assert_eq!(
            render_line(
                &inv2
                    .argv(&Action::Rollback {
                        to: Some(BuildNumber::parse("000001").unwrap()),
                        schema: SchemaPolicy::MigrateDown,
                    })
                    .unwrap()
            ),
            r"'/opt/bin/installer' '--config' '/etc/it'\''s/installer.toml' 'rollback' '--to' 'Build000001' '--migrate-down' '--lock-timeout' '30' '--json'"
        );
        assert_eq!(
            render_line(&inv2.argv(&Action::Status { verify: false }).unwrap()),
            r"'/opt/bin/installer' '--config' '/etc/it'\''s/installer.toml' 'status' '--json'"
        );
        // Control characters are refused outright, even though quoting would keep them inert.
        let bad = Action::Deploy {
            build: b2,
            store: Some("s3://b/p\n$(reboot)".into()),
            s3_endpoint: None,
            template_reviewed: false,
        };
        assert!(inv.argv(&bad).unwrap_err().0.contains("control character"));
        let bad_prog = InstallerInvocation {
            program: "".into(),
            ..inv.clone()
        };
        assert!(bad_prog.argv(&Action::Status { verify: false }).is_err());
    }

    #[test]
    fn parses_targets() {
        assert_eq!(
            Targets::parse(&words(&[
                "i-0123456789abcdef0",
                "i-01234567,i-0123456789abcdef0"
            ]))
            .unwrap(),
            Targets::Instances(words(&["i-0123456789abcdef0", "i-01234567"]))
        );
        assert_eq!(
            Targets::parse(&words(&["mi-0123456789abcdef0"])).unwrap(),
            Targets::Instances(words(&["mi-0123456789abcdef0"]))
        );
        let t = Targets::parse(&words(&["tag:Role=web", "tag:Env=staging,production"])).unwrap();
        assert_eq!(
            t,
            Targets::Tags(vec![
                TagFilter {
                    key: "Role".into(),
                    values: words(&["web"])
                },
                TagFilter {
                    key: "Env".into(),
                    values: words(&["staging", "production"])
                },
            ])
        );
        assert_eq!(t.to_string(), "tag:Role=web tag:Env=staging,production");
        assert_eq!(t.expected(), None);
        assert_eq!(
            Targets::parse(&words(&["tag:Name=a b=c"])).unwrap(),
            Targets::Tags(vec![TagFilter {
                key: "Name".into(),
                values: words(&["a b=c"])
            }])
        );
        for bad in [
            "i-xyz",
            "i-0123456",
            "i-0123456789ABCDEF0",
            "i-0123456789abcdef01",
            "mi-0123",
            "web1",
            "tag:",
            "tag:Role",
            "tag:=web",
            "tag:Role=",
            "tag:Role=a,,b",
            "tag:Ro\nle=x",
            "$(reboot)",
        ] {
            let err = Targets::parse(&words(&[bad])).unwrap_err();
            assert!(err.0.contains("target"), "{bad}: {}", err.0);
        }
        assert!(Targets::parse(&[]).unwrap_err().0.contains("no targets"));
        assert!(Targets::parse(&words(&["i-01234567", "tag:Role=web"]))
            .unwrap_err()
            .0
            .contains("mixes"));
        let many: Vec<String> = (0..51).map(|n| format!("i-{n:08x}")).collect();
        assert!(Targets::parse(&many).unwrap_err().0.contains("at most 50"));
        let tags: Vec<String> = (0..6).map(|n| format!("tag:K{n}=v")).collect();
        assert!(Targets::parse(&tags).unwrap_err().0.contains("at most 5"));
    }

    #[test]
    fn parses_rates() {
        assert_eq!(Rate::parse_concurrency("1"), Ok(Rate::Count(1)));
        assert_eq!(Rate::parse_concurrency("25%"), Ok(Rate::Percent(25)));
        assert_eq!(Rate::parse_concurrency("100%"), Ok(Rate::Percent(100)));
        assert_eq!(Rate::parse_errors("0"), Ok(Rate::Count(0)));
        assert_eq!(Rate::parse_errors("0%"), Ok(Rate::Percent(0)));
        assert_eq!(Rate::parse_errors(" 10% "), Ok(Rate::Percent(10)));
        for bad in [
            "0", "0%", "101%", "-1", "1.5", "%", "", "abc", "5%%", "99999999",
        ] {
            assert!(Rate::parse_concurrency(bad).is_err(), "{bad}");
        }
        for bad in ["101%", "-1", "x%", "1 0"] {
            assert!(Rate::parse_errors(bad).is_err(), "{bad}");
        }
        assert_eq!(Rate::Percent(50).to_string(), "50%");
        assert_eq!(Rate::Count(3).to_string(), "3");
    }

    #[test]
    fn comments_name_app_and_build_within_the_limit() {
        let b = BuildNumber::parse("000002").unwrap();
        let deploy = Action::Deploy {
            build: b,
            store: None,
            s3_endpoint: None,
            template_reviewed: false,
        };
        assert_eq!(
            comment("binarycrate", &deploy),
            "builder deploy binarycrate Build000002"
        );
        assert_eq!(
            comment(
                "binarycrate",
                &Action::Rollback {
                    to: None,
                    schema: SchemaPolicy::Warn
                }
            ),
            "builder rollback binarycrate to previous"
        );
        assert_eq!(comment(&"x".repeat(200), &deploy).chars().count(), 100);
    }

    #[test]
    fn live_build_follows_the_outcome() {
        let b1 = BuildNumber::parse("000001").unwrap();
        let b2 = BuildNumber::parse("000002").unwrap();
        let deploy = Action::Deploy {
            build: b2,
            store: None,
            s3_endpoint: None,
            template_reviewed: false,
        };
        let mut r = Report::new("activate");
        r.build = Some(b2);
        r.previous_build = Some(b1);
        r.finish(Outcome::Success, None);
        assert_eq!(deploy.live_after(&r), Some(b2));
        r.finish(Outcome::RolledBack, Some("health".into()));
        assert_eq!(deploy.live_after(&r), Some(b1));
        r.finish(Outcome::OperatorNeeded, Some("stuck".into()));
        assert_eq!(deploy.live_after(&r), None);
        let mut s = Report::new("status");
        s.build = Some(b1);
        s.previous_build = Some(b2);
        assert_eq!(Action::Status { verify: false }.live_after(&s), Some(b1));
    }

    #[test]
    fn statuses() {
        for s in [
            "Pending",
            "InProgress",
            "Delayed",
            "Success",
            "Failed",
            "TimedOut",
            "Cancelling",
            "Cancelled",
            "Weird",
        ] {
            assert_eq!(Status::from_ssm(s).as_str(), s);
        }
        assert!(Status::Success.is_terminal());
        assert!(Status::Cancelled.is_terminal());
        assert!(!Status::Cancelling.is_terminal());
        assert!(!Status::Other("New".into()).is_terminal());
    }
}
