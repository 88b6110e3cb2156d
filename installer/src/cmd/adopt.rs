//! `installer adopt`: turns the seed's in-place checkout (the root itself, with its virtualenv
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
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use common::error::BadInput;
use common::report::{ExitCode, Outcome, Report};
use common::{atomic, Blake3Hash, BuildNumber};
use serde::{Deserialize, Serialize};

use crate::cli::AdoptArgs;
use crate::cmd::activate::finish;
use crate::config::InstallerConfig;
use crate::journal::{Event, Journal, Record};
use crate::layout::Layout;
use crate::{lock, release};

/// The marker that makes a `releases/BuildNNNNNN` a legacy release (the adopted checkout).
pub use common::manifest::LEGACY_MARKER;
/// The checkout's Django project, which is also the directory of its virtualenv (`bin/`, `lib/`).
const PROJECT: &str = "binarycrate";
const CMD: &str = "adopt";

/// `releases/BuildNNNNNN/legacy.json`: what was adopted, from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Legacy {
    /// Always `"legacy"`.
    pub kind: String,
    pub build: BuildNumber,
    /// The checkout (the root when adopted).
    pub checkout: PathBuf,
    /// Unix seconds.
    #[serde(default)]
    pub adopted_at: i64,
    /// Shared name → what was copied (`files`, `bytes`).
    #[serde(default)]
    pub shared: BTreeMap<String, serde_json::Value>,
}

/// The legacy marker of a release directory, when it is one.
pub fn legacy_of(release_dir: &Path) -> Option<Legacy> {
    if !release::is_legacy(release_dir) {
        return None;
    }
    let text = fs::read(release_dir.join(LEGACY_MARKER)).ok()?;
    serde_json::from_slice::<Legacy>(&text)
        .ok()
        .filter(|l| l.kind == "legacy")
}

/// Checks a legacy release instead of a manifest: its links still lead into a checkout whose
/// `build_number.py` names this build and whose virtualenv has its Python. Problems as
/// `(path, what)`, like [`release::Drift::changed`].
pub fn verify_legacy(
    config: &InstallerConfig,
    release_dir: &Path,
    build: BuildNumber,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    match legacy_of(release_dir) {
        Some(l) if l.build == build => {}
        Some(l) => problems.push((LEGACY_MARKER.into(), format!("names {:#}", l.build))),
        None => problems.push((LEGACY_MARKER.into(), "missing or unreadable".into())),
    }
    for link in [PROJECT, "venv"] {
        let path = release_dir.join(link);
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            problems.push((link.into(), "not a link into the checkout".into()));
        } else if !path.is_dir() {
            problems.push((link.into(), "leads nowhere (the checkout moved?)".into()));
        }
    }
    if !release_dir.join(PROJECT).join("manage.py").is_file() {
        problems.push((format!("{PROJECT}/manage.py"), "missing".into()));
    }
    if !release_dir.join("venv/bin/python").exists() {
        problems.push(("venv/bin/python".into(), "missing".into()));
    }
    let file = build_number_file(config);
    match read_build_number(&release_dir.join(&file)) {
        Ok(b) if b == build => {}
        Ok(b) => problems.push((file, format!("says {:#}", b))),
        Err(e) => problems.push((file, format!("{e:#}"))),
    }
    problems
}

/// The settings package's `build_number.py`, beside the production template.
fn build_number_file(config: &InstallerConfig) -> String {
    let template = Path::new(&config.production_template);
    atomic::parent_of(template)
        .join("build_number.py")
        .display()
        .to_string()
}

/// `BUILD_NUMBER = 'NNNNNN'` from a `build_number.py`.
fn read_build_number(path: &Path) -> anyhow::Result<BuildNumber> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(BadInput(format!(
            "`{}` is missing: the checkout must say which build it runs",
            path.display()
        ))),
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("BUILD_NUMBER"))
        .collect();
    let [line] = lines[..] else {
        bail!(BadInput(format!(
            "`{}` must have exactly one `BUILD_NUMBER = 'NNNNNN'` line, it has {}",
            path.display(),
            lines.len()
        )));
    };
    let value = line
        .trim()
        .strip_prefix("BUILD_NUMBER")
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix('='))
        .map(str::trim)
        .and_then(|v| {
            let q = v.chars().next()?;
            (q == '\'' || q == '"')
                .then(|| v[1..].strip_suffix(q))
                .flatten()
        });
    value
        .and_then(|v| BuildNumber::parse(v).ok().filter(|b| b.digits() == v))
        .ok_or_else(|| {
            BadInput(format!(
                "`{}`: `{}` is not `BUILD_NUMBER = 'NNNNNN'` (six digits, 000001-999999)",
                path.display(),
                line.trim()
            ))
            .into()
        })
}

// ---- Tree snapshots: what "the copy is the original" means ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File { size: u64, blake3: Blake3Hash },
    Symlink(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    /// Permission bits (not for symlinks, whose own mode means nothing on Linux).
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Every entry below (and including) a directory, by relative path ("" is the directory).
type Snapshot = BTreeMap<PathBuf, Entry>;

fn entry_of(path: &Path, meta: &fs::Metadata) -> anyhow::Result<Entry> {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink(
            fs::read_link(path).with_context(|| format!("cannot read `{}`", path.display()))?,
        )
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        let (blake3, size) = Blake3Hash::of_file(path)?;
        Kind::File { size, blake3 }
    } else {
        bail!(BadInput(format!(
            "`{}` is neither a file, a directory nor a symlink (a socket, FIFO or device): move it out of the checkout, then run again",
            path.display()
        )));
    };
    let mode = if ft.is_symlink() {
        0
    } else {
        meta.permissions().mode() & 0o7777
    };
    Ok(Entry {
        kind,
        mode,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

fn snapshot(dir: &Path) -> anyhow::Result<Snapshot> {
    let mut out = Snapshot::new();
    for e in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.with_context(|| format!("cannot read `{}`", dir.display()))?;
        let rel = e
            .path()
            .strip_prefix(dir)
            .expect("below the root")
            .to_owned();
        let meta = e
            .path()
            .symlink_metadata()
            .with_context(|| format!("cannot stat `{}`", e.path().display()))?;
        out.insert(rel, entry_of(e.path(), &meta)?);
    }
    Ok(out)
}

/// The first differences between two snapshots, for messages.
fn differences(want: &Snapshot, got: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => out.push(format!("`{}` missing", p.display())),
            Some(g) if g.kind != w.kind => out.push(format!("`{}` content differs", p.display())),
            Some(g) if g.mode != w.mode => out.push(format!(
                "`{}` mode {:04o} instead of {:04o}",
                p.display(),
                g.mode,
                w.mode
            )),
            Some(g) if (g.uid, g.gid) != (w.uid, w.gid) => out.push(format!(
                "`{}` owner {}:{} instead of {}:{}",
                p.display(),
                g.uid,
                g.gid,
                w.uid,
                w.gid
            )),
            Some(_) => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        out.push(format!("`{}` not in the original", p.display()));
    }
    out
}

fn totals(s: &Snapshot) -> (u64, u64) {
    s.values().fold((0, 0), |(n, b), e| match &e.kind {
        Kind::File { size, .. } => (n + 1, b + size),
        _ => (n, b),
    })
}

/// Makes `to` carry `meta`'s owner (when it differs: only root can), mode and mtime.
fn copy_attributes(to: &Path, meta: &fs::Metadata, symlink: bool) -> anyhow::Result<()> {
    let here =
        fs::symlink_metadata(to).with_context(|| format!("cannot stat `{}`", to.display()))?;
    if (here.uid(), here.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).with_context(|| {
            format!(
                "cannot give `{}` the owner {}:{} of the original (run adopt as root)",
                to.display(),
                meta.uid(),
                meta.gid()
            )
        })?;
    }
    if symlink {
        return Ok(());
    }
    fs::set_permissions(
        to,
        fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
    )
    .with_context(|| format!("cannot set the mode of `{}`", to.display()))?;
    if let Ok(mtime) = meta.modified() {
        // Kept for the operator's sake; the verification does not depend on it.
        let _ = fs::File::open(to).and_then(|f| f.set_modified(mtime));
    }
    Ok(())
}

/// Streams one file into a new file (private until its mode is set from the original).
fn copy_file_data(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut src =
        fs::File::open(from).with_context(|| format!("cannot open `{}`", from.display()))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("cannot create `{}`", to.display()))?;
    std::io::copy(&mut src, &mut dst)
        .and_then(|_| dst.flush())
        .with_context(|| format!("cannot copy `{}` to `{}`", from.display(), to.display()))?;
    Ok(())
}

/// Copies a tree into the new directory `to` (which must not exist): files, directories, empty
/// directories and symlinks as they are; directory modes are set last, so a read-only
/// directory is still filled.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut dirs = Vec::new();
    for e in walkdir::WalkDir::new(from)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.with_context(|| format!("cannot read `{}`", from.display()))?;
        let rel = e.path().strip_prefix(from).expect("below the root");
        let dest = to.join(rel);
        let meta = e
            .path()
            .symlink_metadata()
            .with_context(|| format!("cannot stat `{}`", e.path().display()))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&dest).with_context(|| format!("cannot create `{}`", dest.display()))?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o700))?;
            dirs.push((dest, meta));
        } else if ft.is_symlink() {
            let target = fs::read_link(e.path())?;
            std::os::unix::fs::symlink(&target, &dest)
                .with_context(|| format!("cannot create symlink `{}`", dest.display()))?;
            copy_attributes(&dest, &meta, true)?;
        } else if ft.is_file() {
            copy_file_data(e.path(), &dest)?;
            copy_attributes(&dest, &meta, false)?;
        } else {
            bail!(BadInput(format!(
                "`{}` is neither a file, a directory nor a symlink: move it out of the checkout, then run again",
                e.path().display()
            )));
        }
    }
    for (dest, meta) in dirs.iter().rev() {
        copy_attributes(dest, meta, false)?;
    }
    Ok(())
}

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

/// Checks the root is a seed-style checkout and works out what is left to do; changes nothing.
fn plan(config: &InstallerConfig, layout: &Layout) -> anyhow::Result<Result<Plan, String>> {
    let root = &layout.root;
    let not_checkout = |what: String| {
        BadInput(format!(
            "`{}` is not an in-place checkout of the application: {what}; `root` in the installer configuration must name the checkout (the seed's `/srv/binarycrate-mvp2`)",
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
    let build = read_build_number(&root.join(build_number_file(config)))?;

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
    let legacy = legacy_of(&release_dir);
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

    let journalled = Journal::new(&layout.journal())
        .read()?
        .iter()
        .any(|r| r.command == CMD && r.event == Event::Live && r.build == Some(build));
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
    let mut report = Report::new(CMD);
    let result = adopt(args, config, &mut report);
    finish(report, result, args.json)
}

fn adopt(
    args: &AdoptArgs,
    config: &InstallerConfig,
    report: &mut Report,
) -> anyhow::Result<Outcome> {
    let layout = Layout::new(&config.root);
    let t = Instant::now();
    let plan = match plan(config, &layout)? {
        Ok(p) => p,
        Err(nothing) => {
            eprintln!("{nothing}");
            return Ok(Outcome::NothingToDo);
        }
    };
    report.phase("plan", t.elapsed(), true);
    let build = plan.build;
    report.build = Some(build);
    describe(&plan, &layout, report);

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
        report.details.insert("dry_run".into(), true.into());
        print_server_changes(config, args.uwsgi_ini.as_deref())?;
        return Ok(Outcome::Success);
    }

    layout.ensure()?;
    let timeout = Duration::from_secs(args.lock_timeout.unwrap_or(config.lock_timeout_secs));
    let _lock = lock::acquire(&layout.lock_file(), timeout, "installer adopt")?;
    remove_own_temporaries(&layout)?;

    let t = Instant::now();
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
    report.phase("copy", t.elapsed(), true);
    report
        .details
        .insert("shared".into(), serde_json::to_value(&copied)?);
    common::fault::point("adopt:after-copy");

    let t = Instant::now();
    if plan.create_release {
        create_legacy_release(&layout, build, &copied)?;
        eprintln!(
            "recorded {build:#} as the legacy release `{}` (links into the checkout)",
            layout.release(build).display()
        );
    }
    if plan.loader {
        release::install_loader(&layout)?;
    }
    if let Some(hash) = release::link_static(&layout, config, build, release::StaticLink::TakeOver)?
    {
        report.details.insert("version_hash".into(), hash.into());
    }
    if plan.set_current {
        layout.set_current(build)?;
        eprintln!("`current` -> releases/{build:#}");
    }
    report.phase("legacy", t.elapsed(), true);

    if plan.journal {
        let journal = Journal::new(&layout.journal());
        let mut live = Record::new(CMD, Event::Live, Some(build));
        live.detail = Some(format!(
            "the in-place checkout `{}` adopted as a legacy release",
            layout.root.display()
        ));
        journal.append(&live)?;
        let mut done = Record::new(CMD, Event::Finished, Some(build));
        done.outcome = Some(Outcome::Success);
        journal.append(&done)?;
    }
    eprintln!(
        "adopted: {build:#} (the checkout) is the current release; `installer rollback` returns to it after the first activation"
    );
    print_server_changes(config, args.uwsgi_ini.as_deref())?;
    Ok(Outcome::Success)
}

/// What the plan will do (or found done), to stderr and the report.
fn describe(plan: &Plan, layout: &Layout, report: &mut Report) {
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

/// Copies a file or tree into `dest` under a temporary name, checks the copy against the
/// original's snapshot, makes it durable and renames it into place.
fn copy_verified(src: &Path, dest: &Path, dir: bool, want: &Snapshot) -> anyhow::Result<()> {
    let tmp = atomic::temp_sibling(dest, "adopt");
    let result = (|| -> anyhow::Result<()> {
        if dir {
            copy_tree(src, &tmp)?;
        } else {
            copy_file_data(src, &tmp)?;
            copy_attributes(&tmp, &fs::symlink_metadata(src)?, false)?;
        }
        common::fault::point("adopt:copied");
        let got = if dir {
            snapshot(&tmp)?
        } else {
            [(
                PathBuf::new(),
                entry_of(&tmp, &fs::symlink_metadata(&tmp)?)?,
            )]
            .into()
        };
        if &got != want {
            bail!(
                "the copy of `{}` does not match the original ({}): did it change meanwhile? run again",
                src.display(),
                differences(want, &got).join(", ")
            );
        }
        atomic::sync_filesystem(&tmp)?;
        if dir {
            // rename(2) replaces an empty directory, never a full one (checked in the plan).
            atomic::rename(&tmp, dest)?;
        } else if !atomic::persist_new(&tmp, dest)? {
            bail!(
                "`{}` appeared while adopt was copying it: run again",
                dest.display()
            );
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = atomic::remove_tree(&tmp);
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `releases/BuildNNNNNN`: `binarycrate` and `venv` link to the checkout's `binarycrate/`, and
/// `legacy.json` says what it is; built under a temporary name and renamed into place.
fn create_legacy_release(
    layout: &Layout,
    build: BuildNumber,
    copied: &BTreeMap<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let dir = layout.release(build);
    let tmp = atomic::temp_sibling(&dir, "adopt");
    let result = (|| -> anyhow::Result<()> {
        fs::create_dir(&tmp).with_context(|| format!("cannot create `{}`", tmp.display()))?;
        // Relative, like `current`, so the root can move.
        let target = Path::new("../..").join(PROJECT);
        for link in [PROJECT, "venv"] {
            std::os::unix::fs::symlink(&target, tmp.join(link))
                .with_context(|| format!("cannot create `{}`", tmp.join(link).display()))?;
        }
        let legacy = Legacy {
            kind: "legacy".into(),
            build,
            checkout: layout.root.clone(),
            adopted_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            shared: copied.clone(),
        };
        let mut text = serde_json::to_vec_pretty(&legacy)?;
        text.push(b'\n');
        atomic::write_file(&tmp.join(LEGACY_MARKER), &text)?;
        atomic::fsync_dir(&tmp)?;
        atomic::rename(&tmp, &dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = atomic::remove_tree(&tmp);
    }
    result
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

// ---- What the operator changes in uWSGI and nginx ----

/// The uWSGI lines of the seed's in-place setup and what replaces each (README "Server setup").
fn uwsgi_changes(root: &Path, old: &str) -> Vec<(String, String)> {
    let r = root.display();
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in old.lines() {
        let t = line.trim();
        let Some((key, _)) = t.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let new = match key {
            "chdir" => "(remove it: the loader changes into the release each worker serves; a chdir pins workers to one release)".to_owned(),
            "home" | "virtualenv" | "venv" | "pyhome" => "(remove it: every release has its own venv/, which the loader puts on sys.path; uWSGI runs from its own venv)".to_owned(),
            "pythonpath" => "(remove it: the loader sets sys.path from `current`)".to_owned(),
            "module" | "wsgi" | "wsgi-file" | "mount" => format!("wsgi-file = {r}/loader.py"),
            "touch-reload" => format!("touch-chain-reload = {r}/.deploy/reload"),
            "need-app" => "(remove it: with lazy-apps one worker that cannot load would stop uWSGI)".to_owned(),
            "lazy-apps" => "lazy-apps = true".to_owned(),
            "master" => "master = true".to_owned(),
            "processes" | "workers" => "processes = 2 (or more: a chain reload replaces one at a time)".to_owned(),
            _ => continue,
        };
        seen.insert(key.to_owned());
        out.push((t.to_owned(), new));
    }
    let missing = [
        ("master", "master = true".to_owned()),
        ("processes", "processes = 2".to_owned()),
        ("lazy-apps", "lazy-apps = true".to_owned()),
        ("wsgi-file", format!("wsgi-file = {r}/loader.py")),
        (
            "touch-chain-reload",
            format!("touch-chain-reload = {r}/.deploy/reload"),
        ),
        (
            "master-fifo",
            format!("master-fifo = {r}/.deploy/uwsgi.fifo"),
        ),
        (
            "stats",
            "stats = 127.0.0.1:9191 and stats-http = true".to_owned(),
        ),
    ];
    for (key, line) in missing {
        let covered = match key {
            "wsgi-file" => ["module", "wsgi", "wsgi-file", "mount"]
                .iter()
                .any(|k| seen.contains(*k)),
            "touch-chain-reload" => seen.contains("touch-reload"),
            "processes" => seen.contains("processes") || seen.contains("workers"),
            k => seen.contains(k),
        };
        if !covered {
            out.push(("(none)".into(), line));
        }
    }
    out
}

fn print_server_changes(config: &InstallerConfig, uwsgi_ini: Option<&Path>) -> anyhow::Result<()> {
    let root = &config.root;
    let r = root.display();
    let (source, old) = match uwsgi_ini {
        Some(p) => (
            format!("`{}`", p.display()),
            fs::read_to_string(p).map_err(|e| {
                BadInput(format!("cannot read the uWSGI configuration `{}`: {e}", p.display()))
            })?,
        ),
        // The seed's Ubuntu uwsgi-emperor app serving the checkout in place.
        None => (
            "the seed's in-place setup (pass `--uwsgi-ini FILE` to compare yours)".to_owned(),
            format!(
                "chdir = {r}/{PROJECT}\nhome = {r}/{PROJECT}\nmodule = binarycrate.wsgi:application\n"
            ),
        ),
    };
    let mut text = String::new();
    text.push_str(&format!(
        "\nuWSGI: change {source} to the README's recommended uwsgi.ini (\"Server setup\"), old line -> new line:\n"
    ));
    for (old, new) in uwsgi_changes(root, &old) {
        text.push_str(&format!("  {old}\n      -> {new}\n"));
    }
    text.push_str(&format!(
        "  then restart uWSGI once; it serves the legacy release through `{r}/current` exactly as before.\n"
    ));
    text.push_str(&format!(
        "\nnginx (the site serving {r}):\n  location /static/ {{ alias {r}/{PROJECT}/public/static/; }}\n      -> location /static/ {{ alias {r}/static/; add_header Cache-Control \"public, max-age=31536000, immutable\"; }}\n  location / {{ uwsgi_pass …; }}\n      -> location / {{ include uwsgi_params; uwsgi_pass binarycrate; uwsgi_read_timeout 60s; add_header Cache-Control \"no-cache\"; }} (upstream binarycrate {{ server unix:/run/binarycrate/uwsgi.sock; }})\n  and deploys no longer stop nginx (`service nginx stop/start` goes away).\n"
    ));
    text.push_str(&format!(
        "\ninstaller.toml: reload_fifo = \"{r}/.deploy/uwsgi.fifo\" and [health] stats_url = \"http://127.0.0.1:9191/\"\n"
    ));
    text.push_str(&format!(
        "\nto go back to the old setup entirely: restore the old uWSGI and nginx files and restart them; the checkout `{r}` and its files were never changed.\n"
    ));
    eprint!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_numbers_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("build_number.py");
        for (text, ok) in [
            ("BUILD_NUMBER = '000003'\n", Some(3)),
            ("# build\nBUILD_NUMBER=\"000042\"\n", Some(42)),
            ("BUILD_NUMBER = '3'\n", None),
            ("BUILD_NUMBER = '000000'\n", None),
            ("BUILD_NUMBER = 000003\n", None),
            ("BUILD_NUMBER = '000003'\nBUILD_NUMBER = '000004'\n", None),
            ("VERSION = '000003'\n", None),
        ] {
            fs::write(&p, text).unwrap();
            let got = read_build_number(&p);
            match ok {
                Some(n) => assert_eq!(got.unwrap(), BuildNumber::new(n).unwrap(), "{text}"),
                None => {
                    let e = got.unwrap_err();
                    assert!(e.is::<BadInput>(), "{text}: {e:#}");
                }
            }
        }
        fs::remove_file(&p).unwrap();
        assert!(read_build_number(&p).unwrap_err().is::<BadInput>());
    }

    #[test]
    fn uwsgi_lines_map_to_the_recommended_setup() {
        let old = "[uwsgi]\nchdir = /srv/x/binarycrate\nhome = /srv/x/binarycrate\nmodule = binarycrate.wsgi:application\nsocket = /tmp/x.sock\n";
        let changes = uwsgi_changes(Path::new("/srv/x"), old);
        assert!(changes
            .iter()
            .any(|(o, n)| o.starts_with("module") && n == "wsgi-file = /srv/x/loader.py"));
        assert!(changes
            .iter()
            .any(|(o, n)| o.starts_with("chdir") && n.starts_with("(remove")));
        assert!(changes
            .iter()
            .any(|(o, n)| o == "(none)" && n == "lazy-apps = true"));
        assert!(!changes.iter().any(|(o, _)| o.starts_with("socket")));
    }
}
