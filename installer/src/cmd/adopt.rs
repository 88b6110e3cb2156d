//! `installer adopt`: turns the in-place checkout (the root itself, with its virtualenv
//! in `binarycrate/`) into the release layout without losing a byte, and records the build it
//! runs as a legacy release that `installer rollback` can return to.
//!
//! The checkout's own files are only ever read. Its shared files and directories are copied into
//! `shared/` (each copy built under a temporary name, compared entry by entry — BLAKE3, size,
//! mode, owner, symlink target — with the original, synced, then renamed into place), and
//! `releases/BuildNNNNNN` becomes a directory of two links into the checkout (`binarycrate` and
//! `venv`, both the checkout's `binarycrate/`, which is the project and its virtualenv at once)
//! plus `legacy.json`, so the recommended uWSGI setup serves the checkout through `current` like
//! any release and a rollback to it is the usual swap.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use common::error::BadInput;
use common::report::{ExitCode, Outcome};
use common::{atomic, BuildNumber};

use crate::advice::print_server_changes;
use crate::cli::AdoptArgs;
use crate::config::InstallerConfig;
use crate::journal::{Command, Event, Record};
use crate::layout::Layout;
use crate::legacy::{self, Legacy, PROJECT};
use crate::run::{Phase, Run};
use crate::tree::{copy_verified, differences, entry_of, snapshot, totals, Snapshot};
use crate::{lock, release};

// ---- The plan ----

/// What one shared file or directory needs.
#[derive(Debug)]
enum SharedStep {
    /// Copy the original (its snapshot) into `shared/<name>`.
    Copy { snap: Snapshot },
    /// The original does not exist: an empty directory is made (as `activate` would).
    CreateEmpty,
    /// `shared/<name>` already is an exact copy.
    Done { snap: Snapshot },
}

#[derive(Debug)]
struct SharedItem {
    /// Path in the checkout.
    inside: String,
    /// Name in `shared/`.
    name: String,
    dir: bool,
    step: SharedStep,
}

#[derive(Debug)]
struct Plan {
    build: BuildNumber,
    shared: Vec<SharedItem>,
    create_release: bool,
    set_current: bool,
    journal: bool,
    loader: bool,
}

impl Plan {
    fn is_done(&self) -> bool {
        self.shared
            .iter()
            .all(|s| matches!(s.step, SharedStep::Done { .. }))
            && !self.create_release
            && !self.set_current
            && !self.journal
            && !self.loader
    }
}

/// Checks the root is an in-place checkout and works out what is left to do; changes nothing.
fn plan(config: &InstallerConfig, layout: &Layout) -> anyhow::Result<Result<Plan, String>> {
    let root = &layout.root;
    let not_checkout = |what: String| {
        BadInput(format!(
            "`{}` is not an in-place checkout of the application: {what}; `root` in the installer configuration must name the checkout (e.g. `/srv/binarycrate-mvp2`)",
            root.display()
        ))
    };
    if !root.is_dir() {
        bail!(not_checkout("it is not a directory".into()));
    }
    let manage = root.join(PROJECT).join("manage.py");
    if !manage.is_file() {
        bail!(not_checkout(format!("`{}` is missing", manage.display())));
    }
    let python = root.join(PROJECT).join("bin/python");
    if fs::symlink_metadata(&python).is_err() {
        bail!(not_checkout(format!(
            "its virtualenv's `{}` is missing",
            python.display()
        )));
    }
    let build = legacy::read_build_number(&root.join(legacy::build_number_file(config)))?;

    for dir in [
        layout.releases(),
        layout.shared(),
        layout.static_dir(),
        layout.deploy(),
    ] {
        if fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
            bail!(BadInput(format!(
                "`{}` exists and is not a directory: the release layout needs that name; move it away, then run again",
                dir.display()
            )));
        }
    }
    let current = match fs::symlink_metadata(layout.current()) {
        Ok(m) if !m.file_type().is_symlink() => bail!(BadInput(format!(
            "`{}` exists and is not a symlink: the release layout needs that name; move it away, then run again",
            layout.current().display()
        ))),
        Ok(_) => layout.current_build().map_err(|e| BadInput(format!("{e:#}")))?,
        Err(_) => None,
    };
    let release_dir = layout.release(build);
    let legacy = Legacy::of(&release_dir);
    let create_release = match &legacy {
        Some(l) if l.build == build => false,
        _ if fs::symlink_metadata(&release_dir).is_ok() => bail!(BadInput(format!(
            "`{}` already exists and is not this checkout's legacy release: {build:#} was installed here another way; adopt only a server that still runs the checkout in place",
            release_dir.display()
        ))),
        _ => true,
    };
    match current {
        Some(c) if c != build && !create_release => {
            // Adopted before, and a release went live since: shared/ is the live copy now.
            return Ok(Err(format!(
                "the checkout was adopted as {build:#} and {c:#} is live now: nothing to do"
            )));
        }
        Some(c) if c != build => bail!(BadInput(format!(
            "`current` already points at {c:#}: this server uses the release layout; adopt is for a server that still runs the checkout in place"
        ))),
        _ => {}
    }

    let mut shared = Vec::new();
    for (inside, name) in &config.shared.files {
        let src = root.join(inside);
        let dest = layout.shared().join(name);
        let meta = match fs::symlink_metadata(&src) {
            Ok(m) if m.is_file() => m,
            Ok(_) => bail!(BadInput(format!(
                "`{}` is not a regular file: adopt copies the checkout's own file into `{}`",
                src.display(),
                dest.display()
            ))),
            Err(_) => bail!(BadInput(format!(
                "the checkout has no `{}`: the server's settings must be there to be adopted (or put them in `{}` yourself and leave `shared.files` out of adopt's way)",
                src.display(),
                dest.display()
            ))),
        };
        let want: Snapshot = [(PathBuf::new(), entry_of(&src, &meta)?)].into();
        let step = match fs::symlink_metadata(&dest) {
            Err(_) => SharedStep::Copy { snap: want },
            Ok(m) => {
                let have: Snapshot = [(PathBuf::new(), entry_of(&dest, &m)?)].into();
                if have != want {
                    bail!(BadInput(format!(
                        "`{}` already exists and differs from the checkout's `{}` ({}): compare them, keep the right content in the checkout or move the shared one away, then run again",
                        dest.display(),
                        src.display(),
                        differences(&want, &have).join(", ")
                    )));
                }
                SharedStep::Done { snap: want }
            }
        };
        shared.push(SharedItem {
            inside: inside.clone(),
            name: name.clone(),
            dir: false,
            step,
        });
    }
    for (inside, name) in &config.shared.dirs {
        let src = root.join(inside);
        let dest = layout.shared().join(name);
        let want = match fs::symlink_metadata(&src) {
            Ok(m) if m.is_dir() => Some(snapshot(&src)?),
            Ok(_) => bail!(BadInput(format!(
                "`{}` is not a directory: adopt copies the checkout's directory into `{}`",
                src.display(),
                dest.display()
            ))),
            Err(_) => None,
        };
        let have = match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => Some(snapshot(&dest)?),
            Ok(_) => bail!(BadInput(format!(
                "`{}` exists and is not a directory: move it away, then run again",
                dest.display()
            ))),
            Err(_) => None,
        };
        let empty = |s: &Snapshot| s.len() == 1;
        let step = match (want, have) {
            (None, None) => SharedStep::CreateEmpty,
            (None, Some(h)) => SharedStep::Done { snap: h },
            (Some(w), None) => SharedStep::Copy { snap: w },
            (Some(w), Some(h)) if h == w => SharedStep::Done { snap: w },
            // An empty directory (made by hand, or by `activate`) is replaced by the copy.
            (Some(w), Some(h)) if empty(&h) => SharedStep::Copy { snap: w },
            (Some(w), Some(h)) => {
                let diff = differences(&w, &h);
                bail!(BadInput(format!(
                    "`{}` already exists and differs from the checkout's `{}` ({} differences, e.g. {}): merge them by hand (e.g. `rsync -a --ignore-existing {}/ {}/`) or move the shared one away, then run again",
                    dest.display(),
                    src.display(),
                    diff.len(),
                    diff.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                    src.display(),
                    dest.display()
                )));
            }
        };
        shared.push(SharedItem {
            inside: inside.clone(),
            name: name.clone(),
            dir: true,
            step,
        });
    }

    let journalled = crate::journal::Journal::new(&layout.journal())
        .read()?
        .iter()
        .any(|r| r.command == Command::Adopt && r.event == Event::Live && r.build == Some(build));
    let loader =
        fs::read(root.join("loader.py")).ok().as_deref() != Some(release::LOADER.as_bytes());
    Ok(Ok(Plan {
        build,
        shared,
        create_release,
        set_current: current.is_none(),
        journal: !journalled,
        loader,
    }))
}

// ---- Running it ----

pub fn run(args: &AdoptArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let mut run = Run::new(Command::Adopt, config);
    let result = adopt(args, &mut run);
    run.finish(result, args.json)
}

fn adopt(args: &AdoptArgs, run: &mut Run<'_>) -> anyhow::Result<Outcome> {
    let config = run.config;
    let layout = run.layout.clone();
    let t = run.begin(Phase::Plan);
    let plan = match plan(config, &layout)? {
        Ok(p) => p,
        Err(nothing) => {
            eprintln!("{nothing}");
            return Ok(Outcome::NothingToDo);
        }
    };
    let build = plan.build;
    run.end(Phase::Plan, build, t, true);
    run.report.build = Some(build);
    describe(&plan, &layout, &mut run.report);

    if plan.is_done() {
        eprintln!(
            "nothing to do: the checkout is adopted as {build:#} and every copy in `{}` still matches its original",
            layout.shared().display()
        );
        print_server_changes(config, args.uwsgi_ini.as_deref())?;
        return Ok(Outcome::NothingToDo);
    }
    if args.dry_run {
        eprintln!("dry run: nothing was changed");
        run.report.details.insert("dry_run".into(), true.into());
        print_server_changes(config, args.uwsgi_ini.as_deref())?;
        return Ok(Outcome::Success);
    }

    layout.ensure()?;
    let timeout = Duration::from_secs(args.lock_timeout.unwrap_or(config.lock_timeout_secs));
    let _lock = lock::acquire(&layout.lock_file(), timeout, "installer adopt")?;
    remove_own_temporaries(&layout)?;

    let copied = run.phase(Phase::Copy, build, |run| {
        let mut copied = BTreeMap::new();
        for item in &plan.shared {
            let src = layout.root.join(&item.inside);
            let dest = layout.shared().join(&item.name);
            let snap = match &item.step {
                SharedStep::Done { snap } => snap.clone(),
                SharedStep::CreateEmpty => {
                    fs::create_dir_all(&dest)
                        .with_context(|| format!("cannot create `{}`", dest.display()))?;
                    atomic::fsync_dir(&layout.shared())?;
                    snapshot(&dest)?
                }
                SharedStep::Copy { snap } => {
                    copy_verified(&src, &dest, item.dir, snap)?;
                    eprintln!(
                        "copied and verified `{}` -> `{}`",
                        src.display(),
                        dest.display()
                    );
                    snap.clone()
                }
            };
            let (files, bytes) = totals(&snap);
            copied.insert(
                item.name.clone(),
                serde_json::json!({"from": item.inside, "files": files, "bytes": bytes, "entries": snap.len()}),
            );
        }
        run.report
            .details
            .insert("shared".into(), serde_json::to_value(&copied)?);
        Ok(copied)
    })?;

    run.phase(Phase::Legacy, build, |run| {
        if plan.create_release {
            legacy::create(&layout, build, &copied)?;
            eprintln!(
                "recorded {build:#} as the legacy release `{}` (links into the checkout)",
                layout.release(build).display()
            );
        }
        if plan.loader {
            release::install_loader(&layout)?;
        }
        let how = release::StaticLink::TakeOver;
        if let Some(hash) = release::link_static(&layout, config, build, how)? {
            run.report
                .details
                .insert("version_hash".into(), hash.into());
        }
        if plan.set_current {
            layout.set_current(build)?;
            eprintln!("`current` -> releases/{build:#}");
        }
        Ok(())
    })?;

    if plan.journal {
        let mut live = Record::new(Command::Adopt, Event::Live, Some(build));
        live.detail = Some(format!(
            "the in-place checkout `{}` adopted as a legacy release",
            layout.root.display()
        ));
        run.journal.append(&live)?;
        run.record_finished(build, None, Outcome::Success, None);
    }
    eprintln!(
        "adopted: {build:#} (the checkout) is the current release; `installer rollback` returns to it after the first activation"
    );
    print_server_changes(config, args.uwsgi_ini.as_deref())?;
    Ok(Outcome::Success)
}

/// What the plan will do (or found done), to stderr and the report.
fn describe(plan: &Plan, layout: &Layout, report: &mut common::report::Report) {
    eprintln!("checkout `{}` runs {:#}", layout.root.display(), plan.build);
    let mut steps = Vec::new();
    for item in &plan.shared {
        let dest = layout.shared().join(&item.name);
        let (what, snap) = match &item.step {
            SharedStep::Copy { snap } => ("copy", Some(snap)),
            SharedStep::CreateEmpty => ("create empty (the checkout has none)", None),
            SharedStep::Done { snap } => ("already copied and verified", Some(snap)),
        };
        let (files, bytes) = snap.map(totals).unwrap_or((0, 0));
        let line = format!(
            "{what}: `{}` -> `{}` ({files} files, {bytes} bytes{})",
            item.inside,
            dest.display(),
            snap.map(|s| format!(", {} entries", s.len()))
                .unwrap_or_default()
        );
        eprintln!("  {line}");
        steps.push(line);
    }
    let mut add = |cond: bool, line: String| {
        if cond {
            eprintln!("  {line}");
            steps.push(line);
        }
    };
    add(
        plan.create_release,
        format!(
            "record the legacy release `releases/{:#}` (links to `{PROJECT}/`, the project and its virtualenv)",
            plan.build
        ),
    );
    add(
        plan.loader,
        "install `loader.py` (uWSGI's entry point)".into(),
    );
    add(
        plan.set_current,
        format!("point `current` at releases/{:#}", plan.build),
    );
    add(plan.journal, "journal the legacy build as live".into());
    report.details.insert("steps".into(), steps.into());
}

/// Temporaries of an adopt that was interrupted (`shared/.NAME.adopt-…`,
/// `releases/.BuildNNNNNN.adopt-…`): the copy is redone from the original.
fn remove_own_temporaries(layout: &Layout) -> anyhow::Result<()> {
    for dir in [layout.shared(), layout.releases()] {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".adopt-") {
                eprintln!(
                    "removing `{}` left by an interrupted adopt",
                    e.path().display()
                );
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    atomic::remove_tree(&e.path())?;
                } else {
                    fs::remove_file(e.path())
                        .with_context(|| format!("cannot remove `{}`", e.path().display()))?;
                }
            }
        }
    }
    Ok(())
}
