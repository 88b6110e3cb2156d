//! What happened on each instance: the table, the failures, the JSON, and the exit code — one
//! summary for every fleet command, generic over what a command reads from an instance's output
//! ([`Kind`]): the installer's report for `deploy`, `rollback` and `status`, the script's result
//! line for `bootstrap`.
//!
//! Exit code of `builder deploy | rollback | status`:
//! * 0 — every instance succeeded (the installer exited 0: done, or nothing to do);
//! * when some instance did not succeed: the worst installer exit code among them if every one
//!   of them ended with an installer exit code (1–5), worst first 4 (operator needed), 3 (rolled
//!   back by itself), 1 (failed before anything live changed), 5 (locked), 2 (bad input on that
//!   server); an exit code 4 anywhere wins in any case;
//! * otherwise 1 — an instance timed out, was cancelled, was undeliverable, ended without an
//!   installer exit code, or no instance matched the targets.
//!
//! Bad input found before anything was sent (targets, build name, store, unpublished build)
//! exits 2 like every other command.

use std::fmt;
use std::time::Duration;

use common::report::{ExitCode, Outcome, Report};
use common::BuildNumber;
use serde_json::json;

use super::watch::{InstanceRun, Watched};
use super::{Action, Status};

/// One instance's run: what the transport said, its output, and what the command read from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance<R> {
    pub instance: String,
    pub status: Status,
    pub detail: Option<String>,
    pub exit_code: Option<i32>,
    pub duration: Option<Duration>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    /// Where the output came from, or why part of it is missing (see [`InvocationOutput`]).
    ///
    /// [`InvocationOutput`]: super::InvocationOutput
    pub note: Option<String>,
    pub result: R,
}

impl<R> Instance<R> {
    pub fn from_run(run: InstanceRun, read: impl FnOnce(&str) -> R) -> Self {
        Self {
            instance: run.state.instance,
            status: run.state.status,
            detail: run.state.detail,
            exit_code: run.output.exit_code.or(run.state.exit_code),
            duration: run.output.duration.or(run.state.duration),
            result: read(&run.output.stdout),
            stdout: run.output.stdout,
            stderr: run.output.stderr,
            truncated: run.output.truncated,
            note: run.output.note,
        }
    }

    /// The transport finished the command and it exited 0.
    pub fn exited_ok(&self) -> bool {
        self.status == Status::Success && self.exit_code.unwrap_or(0) == 0
    }

    /// Why the instance gave no result: the transport's detail (in words) and the line of its
    /// standard error that says most.
    pub fn why_not(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if let Some(d) = self
            .detail
            .as_deref()
            .filter(|d| *d != self.status.as_str())
        {
            parts.push(explain_detail(d));
        }
        parts
    }
}

/// What a fleet command reads from each instance and how its summary says it.
pub trait Kind: Clone + fmt::Debug + PartialEq {
    /// What the command reads from an instance's standard output.
    type Result: Clone + fmt::Debug + PartialEq;

    fn read(&self, stdout: &str) -> Self::Result;
    /// The instance did what was asked.
    fn ok(&self, i: &Instance<Self::Result>) -> bool;
    /// The exit code when some instance did not (`failed` is never empty).
    fn failure_code(&self, failed: &[&Instance<Self::Result>]) -> ExitCode;
    /// The table's header and one instance's row.
    fn header(&self) -> &'static [&'static str];
    fn row(&self, i: &Instance<Self::Result>) -> Vec<String>;
    /// What the closing line is about (`deploy Build000002`).
    fn subject(&self) -> String;
    /// How the closing line says every instance did it; `only` is the instance when there is one.
    fn all_done(&self, total: usize, only: Option<&str>) -> String;
    /// How it says some did not.
    fn not_done(&self, failed: usize, total: usize, names: &str) -> String;
    /// The `--json` object's fields about the command, and one instance's own fields.
    fn json_head(&self) -> serde_json::Value;
    fn json_instance(&self, i: &Instance<Self::Result>) -> serde_json::Value;
    /// What the exit code meant and what else is known, under a failed instance's line.
    fn failure_lines(&self, _i: &Instance<Self::Result>) -> (Option<String>, Vec<String>) {
        (None, Vec::new())
    }
}

/// The whole fleet's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary<K: Kind> {
    pub kind: K,
    pub transport: &'static str,
    pub command_id: String,
    /// What was targeted, for messages.
    pub targets: String,
    pub instances: Vec<Instance<K::Result>>,
    pub interrupted: bool,
    pub gave_up: Option<String>,
}

/// `deploy`, `rollback` and `status`: the installer's report.
pub type FleetSummary = Summary<Action>;

impl<K: Kind> Summary<K> {
    pub fn new(
        kind: K,
        transport: &'static str,
        command_id: String,
        targets: String,
        watched: Watched,
    ) -> Self {
        let instances = watched
            .instances
            .into_iter()
            .map(|run| Instance::from_run(run, |out| kind.read(out)))
            .collect();
        Self {
            kind,
            transport,
            command_id,
            targets,
            instances,
            interrupted: watched.interrupted,
            gave_up: watched.gave_up,
        }
    }

    pub fn failed(&self) -> Vec<&Instance<K::Result>> {
        self.instances.iter().filter(|i| !self.kind.ok(i)).collect()
    }

    /// 0 when every instance did it and nothing was cut short; else the kind's code.
    pub fn exit_code(&self) -> ExitCode {
        if self.instances.is_empty() {
            return ExitCode::Failed;
        }
        let failed = self.failed();
        match (
            failed.is_empty(),
            self.interrupted || self.gave_up.is_some(),
        ) {
            (true, false) => ExitCode::Success,
            (true, true) => ExitCode::Failed,
            (false, _) => self.kind.failure_code(&failed),
        }
    }

    /// The table: one row per instance.
    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self.instances.iter().map(|i| self.kind.row(i)).collect();
        render_table(self.kind.header(), &rows)
    }

    /// Each failed instance in full: what its exit code means, what the kind knows, and the end
    /// of its standard error (unless `verbose` shows everything anyway).
    pub fn failure_details(&self, verbose: bool) -> String {
        let mut out = String::new();
        // Instances a command never started are in the table; their line says why.
        let reached = self.failed().into_iter().filter(|i| {
            !(i.status == Status::Cancelled
                && i.detail
                    .as_deref()
                    .is_some_and(|d| d.starts_with("not started")))
        });
        for i in reached {
            let (meaning, lines) = self.kind.failure_lines(i);
            out.push_str(&format!(
                "{} {}{}{}\n",
                i.instance,
                i.status,
                i.exit_code
                    .map(|c| format!(", exit {c}"))
                    .unwrap_or_default(),
                meaning.map(|m| format!(": {m}")).unwrap_or_default()
            ));
            for why in i.why_not() {
                out.push_str(&format!("  {why}\n"));
            }
            for l in lines {
                out.push_str(&format!("  {l}\n"));
            }
            if !verbose {
                let lines: Vec<&str> = i.stderr.lines().collect();
                let tail = &lines[lines.len().saturating_sub(15)..];
                if !tail.is_empty() {
                    out.push_str("  last lines of its standard error:\n");
                    for l in tail {
                        out.push_str(&format!("    {l}\n"));
                    }
                }
            }
        }
        out
    }

    /// Every instance's full output, for `-v`.
    pub fn full_output(&self) -> String {
        let mut out = String::new();
        for i in &self.instances {
            for (name, text) in [
                ("standard output", &i.stdout),
                ("standard error", &i.stderr),
            ] {
                out.push_str(&format!("──── {}: {name} ────\n", i.instance));
                out.push_str(text);
                if !text.is_empty() && !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            if let Some(note) = &i.note {
                out.push_str(&format!("({note})\n"));
            }
        }
        out
    }

    /// The last line: what was done, how many did it, and the exit code's meaning.
    pub fn closing_line(&self) -> String {
        let what = self.kind.subject();
        if self.instances.is_empty() {
            return format!(
                "{what}: no instance matched the targets ({}); nothing ran — exit 1",
                self.targets
            );
        }
        let total = self.instances.len();
        let failed = self.failed();
        let mut text = if failed.is_empty() {
            let only = (total == 1).then(|| self.instances[0].instance.as_str());
            format!("{what}: {}", self.kind.all_done(total, only))
        } else {
            let names: Vec<&str> = failed.iter().map(|i| i.instance.as_str()).collect();
            format!(
                "{what}: {}",
                self.kind.not_done(failed.len(), total, &names.join(", "))
            )
        };
        self.ending(&mut text);
        text
    }

    /// What every closing line ends with: interrupted, gave up, the exit code when not 0.
    fn ending(&self, text: &mut String) {
        if self.interrupted {
            text.push_str("; interrupted and cancelled");
        }
        if let Some(g) = &self.gave_up {
            text.push_str(&format!("; {g}"));
        }
        let code = self.exit_code();
        if code != ExitCode::Success {
            text.push_str(&format!(" — exit {}", code.code()));
        }
    }

    /// Shows the result as every fleet command does: `-v` output, the table, the `--json` object
    /// on stdout (with `extend`'s additions) or the table there, the failures, the closing
    /// line; returns the exit code.
    pub fn show(
        &self,
        verbose: bool,
        json: bool,
        extend: impl FnOnce(&mut serde_json::Value),
    ) -> anyhow::Result<ExitCode> {
        self.show_as(verbose, json, extend, "", &self.closing_line())?;
        Ok(self.exit_code())
    }

    /// [`Self::show`] with a command's own `epilogue` (printed on stderr after the failures)
    /// and closing line.
    pub fn show_as(
        &self,
        verbose: bool,
        json: bool,
        extend: impl FnOnce(&mut serde_json::Value),
        epilogue: &str,
        closing: &str,
    ) -> anyhow::Result<()> {
        if verbose {
            eprint!("{}", self.full_output());
        }
        // No table when no instance matched: the closing line says so.
        let table = if self.instances.is_empty() {
            String::new()
        } else {
            self.table()
        };
        if json {
            eprint!("\n{table}");
            let mut v = self.to_json(verbose);
            extend(&mut v);
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            eprintln!();
            print!("{table}");
        }
        let details = self.failure_details(verbose);
        if !details.is_empty() {
            eprint!("\n{details}");
        }
        let cut: Vec<&Instance<K::Result>> =
            self.instances.iter().filter(|i| i.truncated).collect();
        if !cut.is_empty() {
            let names: Vec<&str> = cut.iter().map(|i| i.instance.as_str()).collect();
            eprintln!(
                "\noutput cut short on {}: {}; results were read from what there is",
                names.join(", "),
                cut[0]
                    .note
                    .as_deref()
                    .unwrap_or("the transport returned only part of it")
            );
        }
        if !epilogue.is_empty() {
            eprint!("\n{epilogue}");
        }
        eprintln!("\n{closing}");
        Ok(())
    }

    /// The `--json` object.
    pub fn to_json(&self, verbose: bool) -> serde_json::Value {
        let instances: Vec<serde_json::Value> = self
            .instances
            .iter()
            .map(|i| {
                let mut v = json!({
                    "instance": i.instance,
                    "status": i.status.as_str(),
                    "status_detail": i.detail,
                    "exit_code": i.exit_code,
                    "duration_ms": i.duration.map(|d| d.as_millis() as u64),
                    "ok": self.kind.ok(i),
                    "output_truncated": i.truncated,
                    "output_note": i.note,
                });
                merge(&mut v, self.kind.json_instance(i));
                if verbose {
                    v["stdout"] = i.stdout.clone().into();
                    v["stderr"] = i.stderr.clone().into();
                }
                v
            })
            .collect();
        let mut v = json!({
            "transport": self.transport,
            "command_id": self.command_id,
            "targets": self.targets,
            "instances": instances,
            "interrupted": self.interrupted,
            "gave_up": self.gave_up,
            "exit_code": self.exit_code().code(),
        });
        merge(&mut v, self.kind.json_head());
        v
    }
}

/// Adds `extra`'s fields to the object `v`.
fn merge(v: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
}

/// What `deploy`, `rollback` and `status` read from an instance: the installer's report, and
/// the build live there afterwards as the report says.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    pub report: Option<Report>,
    pub live: Option<BuildNumber>,
    /// The output was cut inside the report: `report` is its head, without `details`
    /// ([`Report::head_in`]).
    pub partial: bool,
}

/// What `status --verify` found of an instance's live release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// Every file matches the manifest.
    Clean,
    /// Files changed or missing, and files the manifest does not list.
    Drifted { changed: usize, unexpected: usize },
    /// It does not verify, and the list was cut with the output.
    DriftedUncounted,
    /// Not verified (no live release, the command failed first, or no answer).
    Unknown,
}

/// Worst first.
const SEVERITY: [ExitCode; 5] = [
    ExitCode::OperatorNeeded,
    ExitCode::RolledBack,
    ExitCode::Failed,
    ExitCode::Locked,
    ExitCode::BadInput,
];

/// The installer's exit code when a failed instance ended with one (1–5), from its report or
/// else its exit status.
pub fn installer_code<R>(i: &Instance<R>, report: Option<&Report>) -> Option<ExitCode> {
    if i.status != Status::Failed {
        return None;
    }
    let from_report = report.and_then(|r| ExitCode::from_code(r.exit_code as i32));
    from_report
        .or_else(|| i.exit_code.and_then(ExitCode::from_code))
        .filter(|c| *c != ExitCode::Success)
}

/// The exit code of failed instances with these installer codes: 4 anywhere wins; when every
/// one has a code, the worst; otherwise 1.
pub fn worst_code(codes: &[Option<ExitCode>]) -> ExitCode {
    if codes.contains(&Some(ExitCode::OperatorNeeded)) {
        return ExitCode::OperatorNeeded;
    }
    if codes.iter().all(Option::is_some) {
        for worst in SEVERITY {
            if codes.contains(&Some(worst)) {
                return worst;
            }
        }
    }
    ExitCode::Failed
}

impl Action {
    /// The installer's exit code when the instance failed with one (1–5).
    pub fn installer_code(&self, i: &Instance<Installed>) -> Option<ExitCode> {
        installer_code(i, i.result.report.as_ref())
    }

    /// What the LIVE column shows: the build, `none`, or `?` when the report does not say.
    pub fn live_text(&self, i: &Instance<Installed>) -> String {
        match (&i.result.report, i.result.live) {
            (_, Some(b)) => b.tag(),
            (Some(r), None) if matches!(r.outcome, Outcome::Success | Outcome::NothingToDo) => {
                "none".into()
            }
            _ => "?".into(),
        }
    }

    /// The RESULT column: the installer's outcome and first error line, or why there is none.
    pub fn result_text(&self, i: &Instance<Installed>) -> String {
        match &i.result.report {
            Some(r) => {
                let mut text = outcome_name(r.outcome).to_owned();
                if let Some(e) = &r.error {
                    text.push_str(": ");
                    text.push_str(e.lines().next().unwrap_or(""));
                }
                if matches!(self, Action::Status { .. }) {
                    // The database against the live build, when it is not in step.
                    if let Some(state) = r.details.get("schema").and_then(|v| v["state"].as_str()) {
                        if state != "in_step" {
                            text.push_str(&format!("; database {}", state.replace('_', " ")));
                        }
                    }
                    if let Some(last) = r.last_command() {
                        let build = last.build.map(|b| format!(" {b:#}")).unwrap_or_default();
                        let outcome = last.outcome.map_or("?", outcome_name);
                        text.push_str(&format!("; last {}{build}: {outcome}", last.command));
                    }
                }
                if !r.warnings.is_empty() {
                    let n = r.warnings.len();
                    text.push_str(&format!(" ({n} warning{})", plural(n)));
                }
                text
            }
            None => {
                let mut parts = i.why_not();
                if matches!(i.status, Status::Success | Status::Failed) {
                    parts.push("no installer report".into());
                }
                if let Some(line) = last_line(&i.stderr) {
                    parts.push(line.to_owned());
                }
                if parts.is_empty() {
                    i.status.to_string()
                } else {
                    parts.join(": ")
                }
            }
        }
    }
}

impl Kind for Action {
    type Result = Installed;

    fn read(&self, stdout: &str) -> Installed {
        let (report, partial) = match Report::find_in(stdout) {
            Some(r) => (Some(r), false),
            None => match Report::head_in(stdout) {
                Some(r) => (Some(r), true),
                None => (None, false),
            },
        };
        let live = report.as_ref().and_then(|r| self.live_after(r));
        Installed {
            report,
            live,
            partial,
        }
    }

    fn ok(&self, i: &Instance<Installed>) -> bool {
        i.exited_ok()
    }

    fn failure_code(&self, failed: &[&Instance<Installed>]) -> ExitCode {
        let codes: Vec<Option<ExitCode>> = failed.iter().map(|i| self.installer_code(i)).collect();
        worst_code(&codes)
    }

    fn header(&self) -> &'static [&'static str] {
        match self {
            Action::Status { verify: false } => &[
                "INSTANCE", "STATUS", "EXIT", "DURATION", "LIVE", "PREVIOUS", "SWITCHED", "BY",
                "RESULT",
            ],
            Action::Status { verify: true } => &[
                "INSTANCE", "STATUS", "EXIT", "DURATION", "LIVE", "PREVIOUS", "SWITCHED", "BY",
                "FILES", "RESULT",
            ],
            _ => &["INSTANCE", "STATUS", "EXIT", "DURATION", "LIVE", "RESULT"],
        }
    }

    fn row(&self, i: &Instance<Installed>) -> Vec<String> {
        let mut row = vec![
            i.instance.clone(),
            i.status.to_string(),
            i.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            format_duration(i.duration),
            self.live_text(i),
        ];
        if let Action::Status { verify } = self {
            let switch = Switch::of(i.result.report.as_ref());
            row.push(
                i.result
                    .report
                    .as_ref()
                    .map(|r| r.previous_build.map_or("none".into(), |b| b.tag()))
                    .unwrap_or_else(|| "?".into()),
            );
            row.push(
                switch
                    .at
                    .map(|t| common::when::age(t, common::when::now()))
                    .unwrap_or_else(|| "-".into()),
            );
            row.push(match (&switch.by, &switch.with) {
                (Some(by), Some(with)) => truncate(&format!("{with} by {by}"), 60),
                (None, Some(with)) => with.clone(),
                _ => "-".into(),
            });
            if *verify {
                row.push(drift_text(&drift_of(i)));
            }
        }
        row.push(truncate(&self.result_text(i), 100));
        row
    }

    fn subject(&self) -> String {
        match self.build() {
            Some(b) => format!("{} {b:#}", self.name()),
            None => self.name().to_owned(),
        }
    }

    fn all_done(&self, total: usize, only: Option<&str>) -> String {
        match only {
            Some(name) => format!("{name} succeeded"),
            None => format!("all {total} instances succeeded"),
        }
    }

    fn not_done(&self, failed: usize, total: usize, names: &str) -> String {
        format!(
            "{failed} of {total} instance{} did not succeed ({names})",
            plural(total)
        )
    }

    fn json_head(&self) -> serde_json::Value {
        json!({"command": self.name(), "build": self.build()})
    }

    fn json_instance(&self, i: &Instance<Installed>) -> serde_json::Value {
        let mut v = json!({
            "live_build": i.result.live,
            "result": self.result_text(i),
            "report": i.result.report,
            "report_partial": i.result.partial,
        });
        if let Action::Status { verify } = self {
            let switch = Switch::of(i.result.report.as_ref());
            v["answered"] = matches!(i.status, Status::Success | Status::Failed).into();
            v["previous_build"] = json!(i.result.report.as_ref().and_then(|r| r.previous_build));
            v["switched_at"] = json!(switch.at);
            v["switched_by"] = json!(switch.by);
            v["switched_with"] = json!(switch.with);
            if *verify {
                v["drift"] = match drift_of(i) {
                    Drift::Clean => json!({"clean": true, "changed": 0, "unexpected": 0}),
                    Drift::Drifted {
                        changed,
                        unexpected,
                    } => json!({"clean": false, "changed": changed, "unexpected": unexpected}),
                    Drift::DriftedUncounted => {
                        json!({"clean": false, "changed": null, "unexpected": null})
                    }
                    Drift::Unknown => serde_json::Value::Null,
                };
            }
        }
        v
    }

    fn failure_lines(&self, i: &Instance<Installed>) -> (Option<String>, Vec<String>) {
        let meaning = self.installer_code(i).map(|c| c.meaning().to_owned());
        let mut lines = Vec::new();
        if let Some(r) = &i.result.report {
            if let Some(e) = &r.error {
                lines.extend(e.lines().map(|l| format!("error: {l}")));
            }
            lines.extend(r.warnings.iter().map(|w| format!("warning: {w}")));
        }
        (meaning, lines)
    }
}

/// When, by whom and with which command an instance's live build went live, from its
/// `installer status` report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switch {
    /// Unix seconds.
    pub at: Option<i64>,
    /// Who ran it (`user@host (builder deploy)`).
    pub by: Option<String>,
    /// `activate`, `rollback` or `adopt`.
    pub with: Option<String>,
}

impl Switch {
    pub fn of(report: Option<&Report>) -> Self {
        let Some(r) = report else {
            return Self::default();
        };
        let text = |key: &str| {
            r.details
                .get(key)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Self {
            at: r.details.get("activated_at").and_then(|v| v.as_i64()),
            by: text("activated_by"),
            with: text("activated_with"),
        }
    }
}

/// What `installer status --verify` reported of the live release's files.
pub fn drift_of(i: &Instance<Installed>) -> Drift {
    let Some(r) = &i.result.report else {
        return Drift::Unknown;
    };
    let count = |key: &str| -> Option<usize> {
        r.details.get(key).and_then(|v| match v {
            serde_json::Value::Object(m) => Some(m.len()),
            serde_json::Value::Array(a) => Some(a.len()),
            _ => None,
        })
    };
    match (count("changed"), count("unexpected")) {
        (Some(0), Some(0)) => Drift::Clean,
        (Some(changed), Some(unexpected)) => Drift::Drifted {
            changed,
            unexpected,
        },
        _ if r.outcome == Outcome::BadInput
            && r.error
                .as_deref()
                .is_some_and(|e| e.contains("does not verify")) =>
        {
            Drift::DriftedUncounted
        }
        _ => Drift::Unknown,
    }
}

/// The FILES column.
pub fn drift_text(d: &Drift) -> String {
    match d {
        Drift::Clean => "ok".into(),
        Drift::Drifted {
            changed,
            unexpected,
        } => format!("DRIFT: {changed} changed, {unexpected} unexpected"),
        Drift::DriftedUncounted => "DRIFT (list cut)".into(),
        Drift::Unknown => "-".into(),
    }
}

impl FleetSummary {
    /// `builder status`'s last line: how many answered, which did not, and (`--verify`) which
    /// drifted.
    pub fn status_closing(&self) -> String {
        let verify = matches!(self.kind, Action::Status { verify: true });
        let total = self.instances.len();
        if total == 0 {
            return self.closing_line();
        }
        // Did not answer: the command never completed there (not run, timed out, cancelled).
        let silent: Vec<&str> = self
            .instances
            .iter()
            .filter(|i| !matches!(i.status, Status::Success | Status::Failed))
            .map(|i| i.instance.as_str())
            .collect();
        let drifted: Vec<&str> = self
            .instances
            .iter()
            .filter(|i| matches!(drift_of(i), Drift::Drifted { .. } | Drift::DriftedUncounted))
            .map(|i| i.instance.as_str())
            .collect();
        let mut builds: std::collections::BTreeMap<String, usize> = Default::default();
        for i in self.instances.iter().filter(|i| i.result.report.is_some()) {
            *builds.entry(self.kind.live_text(i)).or_default() += 1;
        }
        let live: Vec<String> = builds.iter().map(|(b, n)| format!("{b} on {n}")).collect();
        let mut text = format!(
            "status: {} of {total} instance{} answered",
            total - silent.len(),
            plural(total)
        );
        if !live.is_empty() {
            text.push_str(&format!(" ({})", live.join(", ")));
        }
        if !silent.is_empty() {
            text.push_str(&format!("; no answer from {}", silent.join(", ")));
        }
        if verify {
            if drifted.is_empty() {
                text.push_str("; every answering instance's files match its manifest");
            } else {
                text.push_str(&format!(
                    "; files drifted on {} (`installer verify` there lists them)",
                    drifted.join(", ")
                ));
            }
        }
        let errors: Vec<&str> = self
            .failed()
            .iter()
            .map(|i| i.instance.as_str())
            .filter(|n| !silent.contains(n) && !drifted.contains(n))
            .collect();
        if !errors.is_empty() {
            text.push_str(&format!("; failed on {}", errors.join(", ")));
        }
        self.ending(&mut text);
        text
    }
}

pub fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::NothingToDo => "nothing to do",
        Outcome::Failed => "failed",
        Outcome::BadInput => "bad input",
        Outcome::RolledBack => "rolled back",
        Outcome::OperatorNeeded => "OPERATOR NEEDED",
        Outcome::Locked => "locked",
    }
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut out = String::new();
        for (n, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if n + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// SSM's `StatusDetails` in words, for the ones that need them.
pub fn explain_detail(detail: &str) -> String {
    let squashed: String = detail.chars().filter(|c| !c.is_whitespace()).collect();
    match squashed.as_str() {
        "Terminated" => "not run: too many servers failed (--max-errors) (Terminated)".into(),
        "DeliveryTimedOut" => {
            "not run: never delivered in time (agent offline, or waited too long for its turn; see --delivery-timeout)".into()
        }
        "ExecutionTimedOut" => "stopped: ran longer than --timeout".into(),
        "Undeliverable" => "not run: the instance is not managed by SSM or was terminated (Undeliverable)".into(),
        _ => detail.to_owned(),
    }
}

/// The line of standard error that best says what went wrong: the first `error: …` line,
/// else the last line that is not the SSM agent's own `failed to run commands: …`.
pub fn last_line(text: &str) -> Option<&str> {
    let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    lines
        .clone()
        .find(|l| l.starts_with("error: "))
        .or_else(|| {
            lines
                .rev()
                .find(|l| !l.starts_with("failed to run commands: "))
        })
}

/// `41.2s`, `3m07s`, `-`.
pub fn format_duration(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d.as_secs() < 60 => format!("{:.1}s", d.as_secs_f64()),
        Some(d) => format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60),
    }
}

pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut t: String = text.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{InvocationOutput, InvocationState};

    fn b(n: &str) -> BuildNumber {
        BuildNumber::parse(n).unwrap()
    }

    fn deploy() -> Action {
        Action::Deploy {
            build: b("000002"),
            store: None,
            s3_endpoint: None,
            template_reviewed: false,
        }
    }

    fn report(outcome: Outcome, error: Option<&str>) -> String {
        let mut r = Report::new("activate");
        r.build = Some(b("000002"));
        r.previous_build = Some(b("000001"));
        r.finish(outcome, error.map(str::to_owned));
        r.to_json()
    }

    fn run(
        instance: &str,
        status: Status,
        code: Option<i32>,
        stdout: &str,
        stderr: &str,
    ) -> InstanceRun {
        InstanceRun {
            state: InvocationState {
                instance: instance.into(),
                status,
                detail: None,
                exit_code: code,
                duration: Some(Duration::from_millis(41_230)),
            },
            output: InvocationOutput {
                stdout: stdout.into(),
                stderr: stderr.into(),
                exit_code: code,
                duration: None,
                truncated: false,
                note: None,
            },
        }
    }

    fn summary(runs: Vec<InstanceRun>) -> FleetSummary {
        FleetSummary::new(
            deploy(),
            "ssm",
            "cmd-1".into(),
            "tag:Role=web".into(),
            Watched {
                instances: runs,
                interrupted: false,
                gave_up: None,
            },
        )
    }

    #[test]
    fn table_and_closing_line() {
        let s = summary(vec![
            run(
                "i-0123456789abcdef0",
                Status::Success,
                Some(0),
                &format!("noise\n{}", report(Outcome::Success, None)),
                "",
            ),
            run(
                "i-0fedcba9876543210",
                Status::Failed,
                Some(3),
                &report(
                    Outcome::RolledBack,
                    Some("health check failed: no Build number\nmore"),
                ),
                "activating\nhealth check failed",
            ),
            run("i-00000000", Status::TimedOut, None, "", ""),
        ]);
        let table = s.table();
        assert_eq!(
            table,
            "\
INSTANCE             STATUS    EXIT  DURATION  LIVE         RESULT
i-0123456789abcdef0  Success   0     41.2s     Build000002  success
i-0fedcba9876543210  Failed    3     41.2s     Build000001  rolled back: health check failed: no Build number
i-00000000           TimedOut  -     41.2s     ?            TimedOut
"
        );
        assert_eq!(
            s.closing_line(),
            "deploy Build000002: 2 of 3 instances did not succeed (i-0fedcba9876543210, i-00000000) — exit 1"
        );
        let details = s.failure_details(false);
        assert!(
            details.contains(
                "i-0fedcba9876543210 Failed, exit 3: failed after the swap and rolled back"
            ),
            "{details}"
        );
        assert!(details.contains("  error: more"), "{details}");
        assert!(details.contains("    health check failed"), "{details}");
        let v = s.to_json(false);
        assert_eq!(v["exit_code"], 1);
        assert_eq!(v["instances"][0]["live_build"], "000002");
        assert_eq!(v["instances"][1]["report"]["outcome"], "rolled_back");
        assert!(v["instances"][0].get("stdout").is_none());
        assert!(s.to_json(true)["instances"][0]["stdout"]
            .as_str()
            .unwrap()
            .contains("noise"));
    }

    #[test]
    fn exit_codes() {
        let ok = || {
            run(
                "a",
                Status::Success,
                Some(0),
                &report(Outcome::Success, None),
                "",
            )
        };
        let code =
            |c: i32, o: Outcome| run("x", Status::Failed, Some(c), &report(o, Some("e")), "");
        assert_eq!(summary(vec![ok()]).exit_code(), ExitCode::Success);
        assert_eq!(summary(vec![]).exit_code(), ExitCode::Failed);
        assert!(summary(vec![])
            .closing_line()
            .contains("no instance matched"));
        assert_eq!(
            summary(vec![ok(), code(3, Outcome::RolledBack)]).exit_code(),
            ExitCode::RolledBack
        );
        assert_eq!(
            summary(vec![code(1, Outcome::Failed), code(3, Outcome::RolledBack)]).exit_code(),
            ExitCode::RolledBack
        );
        assert_eq!(
            summary(vec![code(2, Outcome::BadInput), code(5, Outcome::Locked)]).exit_code(),
            ExitCode::Locked
        );
        assert_eq!(
            summary(vec![code(2, Outcome::BadInput)]).exit_code(),
            ExitCode::BadInput
        );
        // Not every failure is an installer exit: 1, unless an operator is needed somewhere.
        let timed_out = || run("t", Status::TimedOut, None, "", "");
        assert_eq!(
            summary(vec![code(3, Outcome::RolledBack), timed_out()]).exit_code(),
            ExitCode::Failed
        );
        assert_eq!(
            summary(vec![code(4, Outcome::OperatorNeeded), timed_out()]).exit_code(),
            ExitCode::OperatorNeeded
        );
        let agent = run(
            "g",
            Status::Failed,
            Some(2),
            "",
            "human text\nerror: configuration file `x` does not exist\n  caused by: y\nfailed to run commands: exit status 2\n",
        );
        let s = summary(vec![agent]);
        assert_eq!(s.exit_code(), ExitCode::BadInput);
        assert_eq!(
            s.kind.result_text(&s.instances[0]),
            "no installer report: error: configuration file `x` does not exist"
        );
        let mut terminated = run("z", Status::Cancelled, None, "", "");
        terminated.state.detail = Some("Terminated".into());
        let s = summary(vec![code(3, Outcome::RolledBack), terminated]);
        assert_eq!(s.exit_code(), ExitCode::Failed);
        assert_eq!(
            s.kind.result_text(&s.instances[1]),
            "not run: too many servers failed (--max-errors) (Terminated)"
        );
        let not_found = run(
            "n",
            Status::Failed,
            Some(127),
            "",
            "sh: 1: installer: not found",
        );
        let s = summary(vec![not_found]);
        assert_eq!(s.exit_code(), ExitCode::Failed);
        assert_eq!(
            s.kind.result_text(&s.instances[0]),
            "no installer report: sh: 1: installer: not found"
        );
        // Interrupted with everything finished fine still is not a success.
        let mut s = summary(vec![ok()]);
        s.interrupted = true;
        assert_eq!(s.exit_code(), ExitCode::Failed);
    }

    #[test]
    fn status_rows_show_previous_and_last_command() {
        let mut r = Report::new("status");
        r.build = Some(b("000002"));
        r.previous_build = Some(b("000001"));
        r.details.insert(
            "last_command".into(),
            json!({"command": "activate", "build": "000002", "outcome": "success"}),
        );
        r.finish(Outcome::Success, None);
        let s = FleetSummary::new(
            Action::Status { verify: false },
            "local",
            "local".into(),
            "local".into(),
            Watched {
                instances: vec![run("local", Status::Success, Some(0), &r.to_json(), "")],
                interrupted: false,
                gave_up: None,
            },
        );
        assert_eq!(s.kind.live_text(&s.instances[0]), "Build000002");
        assert_eq!(
            s.kind.result_text(&s.instances[0]),
            "success; last activate Build000002: success"
        );
        let mut ahead = r.clone();
        ahead.details.insert(
            "schema".into(),
            json!({"state": "ahead", "ahead": ["dashboard.0003_fill"]}),
        );
        let s2 = FleetSummary::new(
            Action::Status { verify: false },
            "local",
            "local".into(),
            "local".into(),
            Watched {
                instances: vec![run("local", Status::Success, Some(0), &ahead.to_json(), "")],
                interrupted: false,
                gave_up: None,
            },
        );
        assert_eq!(
            s2.kind.result_text(&s2.instances[0]),
            "success; database ahead; last activate Build000002: success"
        );
        assert_eq!(s.closing_line(), "status: local succeeded");
        let mut none = Report::new("status");
        none.finish(Outcome::Success, None);
        let s = FleetSummary::new(
            Action::Status { verify: false },
            "local",
            "local".into(),
            "local".into(),
            Watched {
                instances: vec![run("local", Status::Success, Some(0), &none.to_json(), "")],
                interrupted: false,
                gave_up: None,
            },
        );
        assert_eq!(s.kind.live_text(&s.instances[0]), "none");
    }

    #[test]
    fn status_verify_counts_drift_and_silence() {
        let status = |build: &str, drift: Option<(usize, usize)>, outcome: Outcome| {
            let mut r = Report::new("status");
            r.build = Some(b(build));
            r.details
                .insert("activated_at".into(), json!(1_764_691_440));
            r.details
                .insert("activated_by".into(), json!("ops@laptop (builder deploy)"));
            r.details.insert("activated_with".into(), json!("activate"));
            if let Some((changed, unexpected)) = drift {
                let changed: serde_json::Map<String, serde_json::Value> = (0..changed)
                    .map(|n| (format!("f{n}"), json!("content changed")))
                    .collect();
                r.details.insert("changed".into(), changed.into());
                let extra: Vec<String> = (0..unexpected).map(|n| format!("x{n}")).collect();
                r.details.insert("unexpected".into(), json!(extra));
            }
            let error =
                (outcome == Outcome::BadInput).then(|| format!("Build{build} does not verify: …"));
            r.finish(outcome, error);
            r.to_json()
        };
        let clean = status("000002", Some((0, 0)), Outcome::Success);
        let drifted = status("000002", Some((2, 1)), Outcome::BadInput);
        // A report cut inside its details: only the head says it drifted.
        let cut_text = status("000001", Some((3000, 0)), Outcome::BadInput);
        let cut: String = cut_text.chars().take(24_000).collect();
        let mut runs = vec![
            run("i-1", Status::Success, Some(0), &clean, ""),
            run("i-2", Status::Failed, Some(2), &drifted, ""),
            run("i-3", Status::Failed, Some(2), &cut, ""),
            run("i-4", Status::TimedOut, None, "", ""),
        ];
        runs[2].output.truncated = true;
        let s = FleetSummary::new(
            Action::Status { verify: true },
            "ssm",
            "c".into(),
            "tag:Role=web".into(),
            Watched {
                instances: runs,
                interrupted: false,
                gave_up: None,
            },
        );
        let drift: Vec<Drift> = s.instances.iter().map(drift_of).collect();
        assert_eq!(
            drift,
            [
                Drift::Clean,
                Drift::Drifted {
                    changed: 2,
                    unexpected: 1
                },
                Drift::DriftedUncounted,
                Drift::Unknown
            ]
        );
        assert!(s.instances[2].result.partial);
        assert_eq!(s.kind.live_text(&s.instances[2]), "Build000001");
        let row = s.kind.row(&s.instances[0]);
        assert_eq!(row[5], "none");
        assert_eq!(row[7], "activate by ops@laptop (builder deploy)");
        assert_eq!(row[8], "ok");
        assert_eq!(s.exit_code(), ExitCode::Failed);
        assert_eq!(
            s.status_closing(),
            "status: 3 of 4 instances answered (Build000001 on 1, Build000002 on 2); no answer from i-4; files drifted on i-2, i-3 (`installer verify` there lists them) — exit 1"
        );
        let v = s.to_json(false);
        assert_eq!(v["instances"][1]["drift"]["unexpected"], 1);
        assert_eq!(
            v["instances"][2]["drift"]["changed"],
            serde_json::Value::Null
        );
        assert_eq!(v["instances"][2]["output_truncated"], true);
        assert_eq!(v["instances"][3]["answered"], false);
        assert_eq!(v["instances"][0]["switched_at"], 1_764_691_440);
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(None), "-");
        assert_eq!(format_duration(Some(Duration::from_millis(1500))), "1.5s");
        assert_eq!(format_duration(Some(Duration::from_secs(187))), "3m07s");
    }
}
