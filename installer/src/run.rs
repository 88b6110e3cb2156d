//! One command's run on the server: the report it prints, the journal it writes, how each phase
//! is timed, announced, journalled and offered to the crash tests, and how the run ends.
//!
//! Every phase boundary of `activate`, `rollback` and `adopt` is a fault point named
//! `<command>:after-<phase>` ([`point_after`]); [`phase_boundaries`] lists them, and the crash
//! tests build their matrix from that list rather than from names typed a second time.

use std::time::Instant;

use common::error::exit_code_for;
use common::report::{ExitCode, Outcome, Report};
use common::BuildNumber;

use crate::config::InstallerConfig;
use crate::journal::{Command, Event, Journal, Record};
use crate::layout::Layout;

/// A phase of `activate`, `rollback` or `adopt`, as the report, the journal and the crash tests
/// name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The deployment lock is held.
    Lock,
    /// `adopt`: what is there and what is to do.
    Plan,
    /// `rollback`: the target re-hashed against its manifest.
    Verify,
    /// The sidecar (and signature) read, the artifact downloaded and verified.
    Fetch,
    /// The artifact unpacked and verified into `releases/`.
    Unpack,
    /// `adopt`: the checkout's persistent files copied into `shared/`.
    Copy,
    /// `adopt`: the checkout recorded as the legacy release.
    Legacy,
    /// Shared files and directories, the loader and the static link in place.
    Link,
    /// The release's dependencies importable (its `venv/` over its installed `deps/`, or built
    /// with pip for releases from before them).
    Deps,
    /// `manage.py migrate` with the new code.
    Migrate,
    /// `rollback --migrate-down`: the migrations the target lacks unapplied with the current
    /// release's code.
    MigrateDown,
    /// `current` renamed to the new release.
    Swap,
    /// The application server asked to reload.
    Reload,
    /// Every worker proven to serve the build.
    Health,
    /// After a failed switch: the previous release swapped back and serving.
    Restore,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Lock => "lock",
            Phase::Plan => "plan",
            Phase::Verify => "verify",
            Phase::Fetch => "fetch",
            Phase::Unpack => "unpack",
            Phase::Copy => "copy",
            Phase::Legacy => "legacy",
            Phase::Link => "link",
            Phase::Deps => "deps",
            Phase::Migrate => "migrate",
            Phase::MigrateDown => "migrate-down",
            Phase::Swap => "swap",
            Phase::Reload => "reload",
            Phase::Health => "health",
            Phase::Restore => "restore",
        }
    }

    /// Whether the journal records it: the lock and adopt's plan come before a run has anything
    /// to record, and adopt journals only its outcome.
    fn journaled(self) -> bool {
        // `migrate-down` journals its own record, with what it unapplied.
        !matches!(
            self,
            Phase::Lock | Phase::Plan | Phase::Copy | Phase::Legacy | Phase::MigrateDown
        )
    }
}

/// The crash tests' fault point fired when `phase` of `command` has ended well:
/// `activate:after-unpack`.
pub fn point_after(command: Command, phase: Phase) -> String {
    format!("{command}:after-{}", phase.name())
}

/// The phase boundaries each command passes, in order; the crash tests kill at every one.
pub fn phase_boundaries(command: Command) -> &'static [Phase] {
    use Phase::*;
    match command {
        Command::Activate => &[
            Lock, Fetch, Unpack, Link, Deps, Migrate, Swap, Reload, Health,
        ],
        // `migrate-down` only with `--migrate-down` (the crash tests pass it).
        Command::Rollback => &[Lock, Verify, MigrateDown, Link, Swap, Reload, Health],
        Command::Adopt => &[Plan, Copy, Legacy],
    }
}

/// A journalled command's run: what it reports and journals, phase by phase.
pub struct Run<'a> {
    pub command: Command,
    pub config: &'a InstallerConfig,
    pub layout: Layout,
    pub journal: Journal,
    pub report: Report,
    /// What the next `migrate` phase record lists as applied.
    pub migrations_to_apply: Vec<String>,
}

impl<'a> Run<'a> {
    pub fn new(command: Command, config: &'a InstallerConfig) -> Self {
        let layout = Layout::new(&config.root);
        let journal = Journal::new(&layout.journal());
        Self {
            command,
            config,
            layout,
            journal,
            report: Report::new(command.name()),
            migrations_to_apply: Vec::new(),
        }
    }

    /// Starts `phase`: announces it on stderr and returns the clock to [`Run::end`] it with.
    pub fn begin(&self, phase: Phase) -> Instant {
        eprintln!("==> {}", phase.name());
        Instant::now()
    }

    /// Ends a phase begun at `started`: its duration and result go into the report and (about
    /// `build`) the journal; when it went well, the crash tests' point after it fires.
    pub fn end(&mut self, phase: Phase, build: BuildNumber, started: Instant, ok: bool) {
        let took = started.elapsed();
        self.report.phase(phase.name(), took, ok);
        if phase.journaled() {
            let mut r = Record::new(self.command, Event::Phase, Some(build));
            r.phase = Some(phase.name().to_owned());
            r.duration_ms = Some(took.as_millis() as u64);
            r.outcome = Some(if ok {
                Outcome::Success
            } else {
                Outcome::Failed
            });
            if phase == Phase::Migrate && ok {
                r.migrations_applied = std::mem::take(&mut self.migrations_to_apply);
            }
            if let Err(e) = self.journal.append(&r) {
                eprintln!("warning: cannot write the journal: {e:#}");
            }
        }
        if ok {
            common::fault::point(&point_after(self.command, phase));
        }
    }

    /// Runs `body` as `phase` about `build` ([`Run::begin`], then [`Run::end`] with its result).
    pub fn phase<T>(
        &mut self,
        phase: Phase,
        build: BuildNumber,
        body: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let t = self.begin(phase);
        let result = body(self);
        self.end(phase, build, t, result.is_ok());
        result
    }

    /// Journals that `build` went live (healthy), `previous` having been live before.
    pub fn live(&self, build: BuildNumber, previous: Option<BuildNumber>) -> anyhow::Result<()> {
        let mut r = Record::new(self.command, Event::Live, Some(build));
        r.previous = previous;
        self.journal.append(&r)
    }

    /// Journals how the command ended about `build`.
    pub fn record_finished(
        &self,
        build: BuildNumber,
        previous: Option<BuildNumber>,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let mut r = Record::new(self.command, Event::Finished, Some(build));
        r.previous = previous;
        r.outcome = Some(outcome);
        r.detail = detail;
        if let Err(e) = self.journal.append(&r) {
            eprintln!("warning: cannot write the journal: {e:#}");
        }
    }

    /// Ends the run: a run an error cut short after its `started` record gets its `finished`
    /// one, then the report, the error and the exit code as for every command ([`finish`]).
    pub fn finish(self, result: anyhow::Result<Outcome>, json: bool) -> anyhow::Result<ExitCode> {
        self.journal.close_on_error(&result);
        finish(self.report, result, json)
    }
}

/// How every command ends: the outcome into the report, the error (with its causes) on stderr,
/// the report on stdout with `--json`, and the exit code the outcome deserves.
pub fn finish(
    mut report: Report,
    result: anyhow::Result<Outcome>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (outcome, error) = match result {
        Ok(o) => (o, None),
        Err(e) => (outcome_of(&e), Some(e)),
    };
    report.finish(outcome, error.as_ref().map(|e| format!("{e:#}")));
    if let Some(e) = &error {
        common::error::report_failure(e.as_ref());
    }
    if json {
        println!("{}", report.to_json());
    }
    Ok(outcome.exit_code())
}

/// The outcome an error stands for: bad input, the lock held elsewhere, or a failure.
pub fn outcome_of(e: &anyhow::Error) -> Outcome {
    match exit_code_for(e.as_ref()) {
        ExitCode::BadInput => Outcome::BadInput,
        ExitCode::Locked => Outcome::Locked,
        _ => Outcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_points_are_named_from_the_command_and_the_phase() {
        assert_eq!(
            point_after(Command::Activate, Phase::Unpack),
            "activate:after-unpack"
        );
        assert_eq!(
            point_after(Command::Rollback, Phase::Swap),
            "rollback:after-swap"
        );
        // Every command's boundaries are distinct, and journalled phases are named as the
        // report names them.
        for c in [Command::Activate, Command::Rollback, Command::Adopt] {
            let b = phase_boundaries(c);
            let names: std::collections::BTreeSet<_> = b.iter().map(|p| p.name()).collect();
            assert_eq!(names.len(), b.len(), "{c}");
        }
    }

    #[test]
    fn a_phase_is_reported_journalled_and_timed() {
        let dir = tempfile::tempdir().unwrap();
        let config = InstallerConfig {
            root: dir.path().to_owned(),
            ..Default::default()
        };
        let mut run = Run::new(Command::Activate, &config);
        run.layout.ensure().unwrap();
        let build = BuildNumber::new(7).unwrap();
        let got: anyhow::Result<u8> = run.phase(Phase::Fetch, build, |_| Ok(3));
        assert_eq!(got.unwrap(), 3);
        let failed: anyhow::Result<()> = run.phase(Phase::Deps, build, |_| anyhow::bail!("no pip"));
        assert!(failed.is_err());
        run.phase(Phase::Lock, build, |_| Ok(())).unwrap();
        let phases: Vec<(String, bool)> = run
            .report
            .phases
            .iter()
            .map(|p| (p.name.clone(), p.ok))
            .collect();
        assert_eq!(
            phases,
            [
                ("fetch".to_owned(), true),
                ("deps".to_owned(), false),
                ("lock".to_owned(), true)
            ]
        );
        // The lock is not journalled; the others are, with their outcome.
        let records = run.journal.read().unwrap();
        let journalled: Vec<(Option<String>, Option<Outcome>)> = records
            .iter()
            .map(|r| (r.phase.clone(), r.outcome))
            .collect();
        assert_eq!(
            journalled,
            [
                (Some("fetch".into()), Some(Outcome::Success)),
                (Some("deps".into()), Some(Outcome::Failed))
            ]
        );
    }
}
