//! The journal: one JSON line per event of every activation and rollback, appended and fsynced,
//! so "which release was live before" is read from history, never guessed from mtimes; and the
//! state of each release on disk, as that history tells it.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use common::report::{ExitCode, Outcome, ReleaseState};
use common::BuildNumber;
use serde::{Deserialize, Serialize};

/// The commands that write the journal, as it spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Activate,
    Rollback,
    Adopt,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Activate => "activate",
            Command::Rollback => "rollback",
            Command::Adopt => "adopt",
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Started,
    Phase,
    /// The build is live and proven healthy.
    Live,
    Finished,
    /// Bad input refused before anything changed: the only trace such a run leaves. Not an
    /// activation: nothing went live, failed or was rolled back.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unix seconds.
    pub time: i64,
    pub command: Command,
    pub event: Event,
    #[serde(default)]
    pub build: Option<BuildNumber>,
    #[serde(default)]
    pub previous: Option<BuildNumber>,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub pid: u32,
    /// `migrate`: the migrations it was to apply, as the two releases' manifests list them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations_applied: Vec<String>,
    /// `migrate-down`: the migrations it unapplied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations_unapplied: Vec<String>,
}

impl Record {
    pub fn new(command: Command, event: Event, build: Option<BuildNumber>) -> Self {
        Self {
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            command,
            event,
            build,
            previous: None,
            phase: None,
            duration_ms: None,
            outcome: None,
            detail: None,
            user: invoker(),
            pid: std::process::id(),
            migrations_applied: Vec::new(),
            migrations_unapplied: Vec::new(),
        }
    }
}

/// Who runs this command: what `builder deploy` says it is (`alice@laptop (builder deploy)`),
/// else the user behind `sudo`, else the login user; empty when nothing says (SSM's agent runs
/// commands as root with no user of its own).
fn invoker() -> String {
    ["BINARYCRATE_INVOKED_BY", "SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .map(|u| u.chars().filter(|c| !c.is_control()).take(200).collect())
        .unwrap_or_default()
}

/// The journal file.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
    /// While a run is still checking its input, its records wait here: a refusal replaces them
    /// with one `refused` record (see [`Journal::hold`]).
    held: RefCell<Option<Vec<Record>>>,
    /// This process's `started` record that no `finished` record has closed yet.
    open_run: RefCell<Option<Record>>,
}

/// Most bytes of a record's `detail`: it can quote what the store held, and a refusal must not
/// grow the journal by more than a line.
const MAX_DETAIL_BYTES: usize = 4 << 10;

impl Journal {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            held: RefCell::new(None),
            open_run: RefCell::new(None),
        }
    }

    /// Ends this process's run with a `finished` record when an error cut it short after its
    /// `started` record, so `status` tells how it ended instead of showing an earlier run as
    /// the last one. Nothing when the command succeeded or no run is open.
    pub fn close_on_error<T>(&self, result: &anyhow::Result<T>) {
        let Err(e) = result else {
            return;
        };
        let Some(started) = self.open_run.borrow_mut().take() else {
            return;
        };
        let outcome = match common::error::exit_code_for(e.as_ref()) {
            ExitCode::BadInput => Outcome::BadInput,
            ExitCode::Locked => Outcome::Locked,
            _ => Outcome::Failed,
        };
        let detail = format!("{e:#}");
        let mut r = Record::new(started.command, Event::Finished, started.build);
        r.previous = started.previous;
        r.outcome = Some(outcome);
        r.detail = Some(detail);
        if let Err(e) = self.append(&r) {
            eprintln!("warning: cannot write the journal: {e:#}");
        }
    }

    /// From now on [`Journal::append`] keeps records in memory until [`Journal::release`]
    /// writes them or [`Journal::refuse`] drops them, so a run refused for bad input leaves
    /// one record, not a `started` with no end.
    pub fn hold(&self) {
        self.held.borrow_mut().get_or_insert_with(Vec::new);
    }

    /// Whether records are being held back.
    pub fn holding(&self) -> bool {
        self.held.borrow().is_some()
    }

    /// Writes the held records, in order, and appends directly again.
    pub fn release(&self) -> anyhow::Result<()> {
        let held = self.held.borrow_mut().take();
        for record in held.into_iter().flatten() {
            self.write(&record)?;
        }
        Ok(())
    }

    /// Drops the held records and writes nothing: a run refused before it changed anything
    /// leaves the journal as it was (`rollback`).
    pub fn discard(&self) {
        self.held.borrow_mut().take();
        self.open_run.borrow_mut().take();
    }

    /// Drops the held records and appends one `refused` record in their place.
    pub fn refuse(
        &self,
        command: Command,
        build: Option<BuildNumber>,
        previous: Option<BuildNumber>,
        detail: String,
    ) -> anyhow::Result<()> {
        self.held.borrow_mut().take();
        self.open_run.borrow_mut().take();
        let mut r = Record::new(command, Event::Refused, build);
        r.previous = previous;
        r.outcome = Some(Outcome::BadInput);
        r.detail = Some(detail);
        self.write(&r)
    }

    /// Appends one record durably (or holds it, see [`Journal::hold`]). A torn last line
    /// (crash mid-write) is skipped by `read`.
    pub fn append(&self, record: &Record) -> anyhow::Result<()> {
        match record.event {
            Event::Started => *self.open_run.borrow_mut() = Some(record.clone()),
            Event::Finished => *self.open_run.borrow_mut() = None,
            _ => {}
        }
        if let Some(held) = self.held.borrow_mut().as_mut() {
            held.push(record.clone());
            return Ok(());
        }
        self.write(record)
    }

    fn write(&self, record: &Record) -> anyhow::Result<()> {
        let capped;
        let record = match &record.detail {
            Some(d) if d.len() > MAX_DETAIL_BYTES => {
                let mut end = MAX_DETAIL_BYTES;
                while !d.is_char_boundary(end) {
                    end -= 1;
                }
                capped = Record {
                    detail: Some(format!("{}…(cut: {} bytes in all)", &d[..end], d.len())),
                    ..record.clone()
                };
                &capped
            }
            _ => record,
        };
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open the journal `{}`", self.path.display()))?;
        // A crash mid-append leaves a torn last line; start a fresh line so this record parses.
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut last = [b'\n'];
        if len > 0 {
            use std::os::unix::fs::FileExt;
            f.read_exact_at(&mut last, len - 1)
                .with_context(|| format!("cannot read `{}`", self.path.display()))?;
        }
        if last[0] != b'\n' {
            line.insert(0, '\n');
        }
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .with_context(|| format!("cannot append to `{}`", self.path.display()))?;
        Ok(())
    }

    /// Every readable record, oldest first.
    pub fn read(&self) -> anyhow::Result<Vec<Record>> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read `{}`", self.path.display()))
            }
        };
        let mut records = Vec::new();
        for line in BufReader::new(f).lines() {
            let line = line.with_context(|| format!("cannot read `{}`", self.path.display()))?;
            if let Ok(r) = serde_json::from_str::<Record>(&line) {
                records.push(r);
            }
        }
        Ok(records)
    }

    /// Builds that were live, in the order they went live (a build may appear more than once).
    pub fn live_history(&self) -> anyhow::Result<Vec<(BuildNumber, Record)>> {
        Ok(self
            .read()?
            .into_iter()
            .filter(|r| r.event == Event::Live)
            .filter_map(|r| r.build.map(|b| (b, r)))
            .collect())
    }

    /// The build that was live before `current` (the rollback target), from history.
    pub fn previous_good(
        &self,
        current: Option<BuildNumber>,
    ) -> anyhow::Result<Option<BuildNumber>> {
        let history = self.live_history()?;
        // Walk back from the newest: skip the run of `current` at the end, then the next one.
        let mut iter = history
            .iter()
            .rev()
            .map(|(b, _)| *b)
            .skip_while(|b| Some(*b) == current);
        Ok(iter.next())
    }

    /// The newest activation or rollback when it never finished (killed, or failed before its
    /// swap without a word): its `started` record. A caller checks where `current` points to
    /// tell a run killed after its swap, which a re-run must complete, from one that stopped
    /// before it.
    pub fn unfinished(&self) -> anyhow::Result<Option<Record>> {
        Ok(self
            .read()?
            .into_iter()
            .rev()
            .find(|r| matches!(r.event, Event::Started | Event::Finished))
            .filter(|r| r.event == Event::Started))
    }

    /// The newest finished record about `build`.
    pub fn last_finished(&self, build: BuildNumber) -> anyhow::Result<Option<Record>> {
        Ok(self
            .read()?
            .into_iter()
            .rev()
            .find(|r| r.event == Event::Finished && r.build == Some(build)))
    }
}

/// The state of `build` on this server, given what is live and what was live before, from the
/// journal's `records`.
pub fn release_state(
    build: BuildNumber,
    current: Option<BuildNumber>,
    previous: Option<BuildNumber>,
    records: &[Record],
) -> ReleaseState {
    if Some(build) == current {
        return ReleaseState::Live;
    }
    if Some(build) == previous {
        return ReleaseState::Previous;
    }
    let last = records.iter().rev().find(|r| {
        r.event == Event::Finished && r.build == Some(build) && r.command == Command::Activate
    });
    let was_live = records
        .iter()
        .any(|r| r.event == Event::Live && r.build == Some(build));
    match last.and_then(|r| r.outcome) {
        Some(Outcome::RolledBack) if !was_live => ReleaseState::RolledBack,
        Some(Outcome::Failed) | Some(Outcome::OperatorNeeded) if !was_live => ReleaseState::Failed,
        _ => ReleaseState::Unused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: u32) -> BuildNumber {
        BuildNumber::new(n).unwrap()
    }

    #[test]
    fn previous_good_comes_from_history_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(&dir.path().join("journal.jsonl"));
        assert_eq!(j.previous_good(None).unwrap(), None);
        for n in [1, 2, 3] {
            j.append(&Record::new(Command::Activate, Event::Live, Some(b(n))))
                .unwrap();
        }
        assert_eq!(j.previous_good(Some(b(3))).unwrap(), Some(b(2)));
        j.append(&Record::new(Command::Rollback, Event::Live, Some(b(2))))
            .unwrap();
        assert_eq!(j.previous_good(Some(b(2))).unwrap(), Some(b(3)));
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.jsonl"))
            .unwrap()
            .write_all(b"{\"time\": 1, \"comm")
            .unwrap();
        assert_eq!(j.read().unwrap().len(), 4);
        let mut done = Record::new(Command::Activate, Event::Finished, Some(b(3)));
        done.outcome = Some(Outcome::RolledBack);
        j.append(&done).unwrap();
        assert_eq!(
            j.last_finished(b(3)).unwrap().unwrap().outcome,
            Some(Outcome::RolledBack)
        );
        assert_eq!(j.unfinished().unwrap(), None);
        let started = Record::new(Command::Rollback, Event::Started, Some(b(2)));
        j.append(&started).unwrap();
        let mut phase = Record::new(Command::Rollback, Event::Phase, Some(b(2)));
        phase.phase = Some("swap".into());
        j.append(&phase).unwrap();
        assert_eq!(j.unfinished().unwrap(), Some(started));
        j.append(&Record::new(Command::Rollback, Event::Finished, Some(b(2))))
            .unwrap();
        assert_eq!(j.unfinished().unwrap(), None);
    }

    #[test]
    fn held_records_are_written_on_release_or_replaced_by_one_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let j = Journal::new(&path);
        j.append(&Record::new(Command::Activate, Event::Live, Some(b(1))))
            .unwrap();
        let before = std::fs::read(&path).unwrap();

        j.hold();
        j.append(&Record::new(Command::Activate, Event::Started, Some(b(2))))
            .unwrap();
        j.append(&Record::new(Command::Activate, Event::Phase, Some(b(2))))
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before, "held, not written");
        j.refuse(Command::Activate, Some(b(2)), Some(b(1)), "bad".into())
            .unwrap();
        let records = j.read().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].event, Event::Refused);
        assert_eq!(records[1].outcome, Some(Outcome::BadInput));
        // A refusal is no activation: history and "previous good" ignore it.
        assert_eq!(j.previous_good(Some(b(2))).unwrap(), Some(b(1)));
        assert_eq!(j.last_finished(b(2)).unwrap(), None);

        j.hold();
        j.append(&Record::new(Command::Activate, Event::Started, Some(b(3))))
            .unwrap();
        assert!(j.holding());
        j.release().unwrap();
        assert!(!j.holding());
        j.append(&Record::new(Command::Activate, Event::Live, Some(b(3))))
            .unwrap();
        let events: Vec<Event> = j.read().unwrap().iter().map(|r| r.event).collect();
        assert_eq!(
            events,
            [Event::Live, Event::Refused, Event::Started, Event::Live]
        );
    }
}
