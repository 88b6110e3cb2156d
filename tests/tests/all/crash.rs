//! The crash matrix: `installer activate` and `installer rollback` are killed with
//! SIGKILL at every phase boundary the installer lists (`installer::run::phase_boundaries`) and
//! inside the long phases, through the fault-injection hook
//! the test build carries (`common::fault`, `BINARYCRATE_FAULT=point[@N]`). After each kill,
//! `current` must resolve to a complete release that `installer verify` accepts and the journal
//! must parse; then the same command, run again, must complete: exit 0, `current` at the
//! target, the real uWSGI serving it, no temporary file or directory left anywhere.
//!
//! Every point runs in its own copy of a prepared server root (Build000001 live for
//! `activate --build Build000002`; Build000002 live after Build000001 for `rollback
//! --migrate-down`, which unapplies Build000002's migration) with its own uWSGI, so points
//! cannot disturb each other. The hook kills only the installer, as a
//! `kill -9 <pid>` would: a pip or migrate it started runs on as an orphan, still holding the
//! deployment lock, and the re-run waits for it.

use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Instant;

use installer::journal::Command;
use installer::run::{phase_boundaries, point_after, Phase};
use tests::published::{self, Published, ServerRoot};
use tests::show;
use tests::uwsgi::UwsgiServer;

/// Which command a point interrupts.
type Cmd = Command;

/// How many points run at the same time.
const PARALLEL: usize = 2;

/// Points inside a phase, where they fire (`common`'s download and unpack, the installer's
/// child processes and health polls), as `name@N`: the Nth hit.
const INSIDE: &[(Cmd, Phase, &str, &str)] = &[
    (
        Command::Activate,
        Phase::Fetch,
        "fetch:download@40",
        "download, ~320 KiB in",
    ),
    (
        Command::Activate,
        Phase::Unpack,
        "unpack:entry@50",
        "unpack, 50 of ~5000 entries in",
    ),
    (
        Command::Activate,
        Phase::Unpack,
        "unpack:before-rename",
        "unpacked, not renamed",
    ),
    (
        Command::Activate,
        Phase::Deps,
        "deps:before-complete",
        "venv over deps/ made, not marked complete",
    ),
    (
        Command::Activate,
        Phase::Migrate,
        "migrate:running@3",
        "migrate running",
    ),
    (
        Command::Activate,
        Phase::Health,
        "health:poll@4",
        "health check",
    ),
    (
        Command::Rollback,
        Phase::MigrateDown,
        "migrate-down:running@3",
        "migrate-down running",
    ),
    (
        Command::Rollback,
        Phase::Health,
        "health:poll@4",
        "health check",
    ),
];

/// Every point of the matrix: for each command, each phase's inside points, then the boundary
/// after it — named by the installer itself ([`point_after`]), from its own phase list.
fn points() -> Vec<(Cmd, String, String)> {
    let mut out = Vec::new();
    for command in [Command::Activate, Command::Rollback] {
        let phases = phase_boundaries(command);
        for (i, phase) in phases.iter().enumerate() {
            for (c, p, point, what) in INSIDE {
                if *c == command && p == phase {
                    out.push((command, (*point).to_owned(), (*what).to_owned()));
                }
            }
            let what = match phases.get(i + 1) {
                Some(next) => format!("{} → {}", phase.name(), next.name()),
                None => format!("{}: healthy, not journalled", phase.name()),
            };
            out.push((command, point_after(command, *phase), what));
        }
    }
    out
}

fn ready() -> bool {
    tests::ready(tests::uwsgi::unavailable().or_else(tests::example::wheelhouse_missing))
}

struct Row {
    command: Cmd,
    point: String,
    what: String,
    after_kill: Result<String, String>,
    after_rerun: Result<String, String>,
}

#[test]
fn crash_matrix_every_kill_leaves_a_complete_release_and_the_rerun_completes() {
    if !ready() {
        return;
    }
    let published = published::builds();
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();

    // The two starting points, each made once by real activations.
    let base = ServerRoot::new(&tmp.path().join("base"), &published, 300).unwrap();
    let server = base.first_activation("Build000001").unwrap();
    let one_live = base
        .copy_to(&tmp.path().join("one-live"), &published, 300)
        .unwrap();
    // Build000001 with its own `deps/`, as an installer from before shared dependency trees
    // unpacked it: Build000002's activation then creates the shared tree, so the points inside
    // it (`unpack:entry`, `unpack:before-rename`) interrupt that too.
    let deps = one_live.root.join("releases/Build000001/deps");
    let tree = one_live.root.join(
        fs::read_link(&deps)
            .unwrap()
            .strip_prefix("../../")
            .unwrap(),
    );
    fs::remove_file(&deps).unwrap();
    fs::rename(&tree, &deps).unwrap();
    let out = base.installer(&["activate", "--build", "Build000002"], &[]);
    published::succeeded(&out, "activate Build000002").unwrap();
    server.kill();
    let two_live = base;
    show(&format!(
        "crash-matrix: prepared the server roots in {:.1}s",
        t.elapsed().as_secs_f64()
    ));

    // Points are independent (own root, own uWSGI, own ports): two at a time.
    let points = points();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let rows = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some((command, point, what)) = points.get(i).cloned() else {
                    break;
                };
                let t = Instant::now();
                let dir = tmp.path().join(format!("point{i:02}"));
                let (start, args, target): (&ServerRoot, &[&str], &str) = match command {
                    // Build000002's migration is unapplied on the way back.
                    Command::Rollback => (&two_live, &["rollback", "--migrate-down"], "000001"),
                    _ => (&one_live, &["activate", "--build", "Build000002"], "000002"),
                };
                let (after_kill, after_rerun) =
                    run_point(&published, start, &dir, args, &point, target);
                show(&format!(
                    "crash-matrix: {command:?} {point}: {:.1}s",
                    t.elapsed().as_secs_f64()
                ));
                // Each point's root is large (two releases with their venvs).
                let _ = fs::remove_dir_all(&dir);
                let row = Row {
                    command,
                    point,
                    what,
                    after_kill,
                    after_rerun,
                };
                rows.lock().unwrap().push((i, row));
            });
        }
    });
    let mut rows = rows.into_inner().unwrap();
    rows.sort_by_key(|(i, _)| *i);
    let rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();

    let points = rows.len();
    let consistent = rows.iter().filter(|r| r.after_kill.is_ok()).count();
    let recovered = rows.iter().filter(|r| r.after_rerun.is_ok()).count();
    let cell = |r: &Result<String, String>| match r {
        Ok(s) => format!("ok: {s}"),
        Err(s) => format!("FAILED: {s}"),
    };
    let mut table = String::from(
        "crash-matrix: command  | point                   | interrupts                 | state after kill | state after re-run\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "crash-matrix: {:<8} | {:<23} | {:<26} | {} | {}\n",
            r.command.name(),
            r.point,
            r.what,
            cell(&r.after_kill),
            cell(&r.after_rerun)
        ));
    }
    show(&table);
    let summary =
        format!("crash-matrix: points={points} consistent={consistent} recovered={recovered}");
    show(&summary);
    assert!(points >= 12, "{summary}");
    assert!(
        consistent == points && recovered == points,
        "{summary}\n{table}"
    );
}

/// Copies `start` into `dir`, kills `installer ARGS` at `point`, checks the state, runs the same
/// command again and checks that it completed.
fn run_point(
    published: &Published,
    start: &ServerRoot,
    dir: &Path,
    args: &[&str],
    point: &str,
    target: &str,
) -> (Result<String, String>, Result<String, String>) {
    let site = match start.copy_to(dir, published, 300) {
        Ok(s) => s,
        Err(e) => return (Err(format!("cannot copy the root: {e:#}")), Err("-".into())),
    };
    let server = match site.start_uwsgi() {
        Ok(s) => s,
        Err(e) => return (Err(format!("uWSGI did not start: {e:#}")), Err("-".into())),
    };
    let err_log = dir.join("killed.stderr");
    // Output into files, not pipes: an orphaned child must not keep the test waiting here.
    let status = site
        .installer_command(args, &[(common::fault::ENV, point)])
        .stdout(File::create(dir.join("killed.stdout")).unwrap())
        .stderr(File::create(&err_log).unwrap())
        .status()
        .unwrap();
    let stderr = fs::read_to_string(&err_log).unwrap_or_default();
    let name = point.split('@').next().unwrap_or(point);
    let after_kill = if status.signal() != Some(9)
        || !stderr.contains(&format!("fault injection: SIGKILL at {name}"))
    {
        Err(format!(
            "not killed at the point ({status}; is the installer built with `--features {}`?):\n{}",
            tests::bins::FAULT_FEATURE,
            tail(&stderr)
        ))
    } else {
        state_after_kill(&site, &server)
    };

    let t = Instant::now();
    let out = site.installer(args, &[]);
    let after_rerun = if out.status.code() != Some(0) {
        Err(format!(
            "re-run exited {}:\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr))
        ))
    } else {
        state_after_rerun(&site, &server, target, t)
    };
    if after_kill.is_err() || after_rerun.is_err() {
        eprintln!(
            "{point}: the killed run's stderr:\n{stderr}\nthe re-run's stderr:\n{}{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_tail()
        );
    }
    server.kill();
    (after_kill, after_rerun)
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// `current` is a complete release that verifies, the journal parses; what the site serves.
fn state_after_kill(site: &ServerRoot, server: &UwsgiServer) -> Result<String, String> {
    let current = site.current().ok_or_else(|| "no `current`".to_owned())?;
    let build = current
        .strip_prefix("releases/")
        .filter(|b| site.root.join("releases").join(b).is_dir())
        .ok_or_else(|| format!("`current` -> `{current}` is not a release directory"))?;
    verify(site)?;
    let records = journal_records(site)?;
    let served = match server.request("/") {
        Ok(r) if r.status == 200 => {
            format!("serves {}", r.build_number().unwrap_or("no build number"))
        }
        Ok(r) => format!("HTTP {}", r.status),
        Err(e) => format!("no answer ({e:#})"),
    };
    Ok(format!(
        "current={build} verified, journal {records} records, {served}"
    ))
}

/// Exit 0 was checked; `current` is the target and verifies, every request gets it, no stray
/// temporary is left, and the journal ends with a successful finish.
fn state_after_rerun(
    site: &ServerRoot,
    server: &UwsgiServer,
    target: &str,
    started: Instant,
) -> Result<String, String> {
    let took = started.elapsed().as_secs_f64();
    let want = format!("releases/Build{target}");
    if site.current().as_deref() != Some(want.as_str()) {
        return Err(format!("`current` is {:?}, not {want}", site.current()));
    }
    verify(site)?;
    let n = 10;
    for _ in 0..n {
        let r = server
            .request("/")
            .map_err(|e| format!("no answer: {e:#}"))?;
        if r.status != 200 || r.build_number() != Some(target) {
            return Err(format!(
                "HTTP {} with build {:?}, not {target}",
                r.status,
                r.build_number()
            ));
        }
    }
    let strays = strays(&site.root);
    if !strays.is_empty() {
        return Err(format!("temporaries left: {strays:?}"));
    }
    let records = journal_records(site)?;
    let last = fs::read_to_string(site.root.join(".deploy/journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_default();
    if last["event"] != "finished" || last["outcome"] != "success" {
        return Err(format!("the journal ends with {last}"));
    }
    Ok(format!(
        "exit 0 in {took:.1}s, current=Build{target} verified, serves it {n}/{n}, no strays, journal {records} records"
    ))
}

fn verify(site: &ServerRoot) -> Result<(), String> {
    let out = site.installer(&["verify"], &[]);
    if out.status.code() == Some(0) {
        Ok(())
    } else {
        Err(format!(
            "`installer verify` exited {}: {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr))
        ))
    }
}

/// How many lines the journal has; every one must be a JSON object.
fn journal_records(site: &ServerRoot) -> Result<usize, String> {
    let path = site.root.join(".deploy/journal.jsonl");
    let text = fs::read_to_string(&path).map_err(|e| format!("journal: {e}"))?;
    for (i, line) in text.lines().enumerate() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => {}
            _ => {
                return Err(format!(
                    "journal line {} does not parse: {line:.120}",
                    i + 1
                ))
            }
        }
    }
    Ok(text.lines().count())
}

/// Temporary names of the atomic helpers, the unpacker and the downloader under `root` (venvs
/// left out: pip's own business).
pub fn strays(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut walk = walkdir::WalkDir::new(root).min_depth(1).into_iter();
    while let Some(Ok(entry)) = walk.next() {
        let name = entry.file_name().to_string_lossy();
        if entry.file_type().is_dir() && name == "venv" {
            walk.skip_current_dir();
            continue;
        }
        let temporary = name.starts_with('.')
            && [
                ".unpack-",
                ".download-",
                ".link-",
                ".tmp-",
                ".remove-",
                ".upload-",
            ]
            .iter()
            .any(|m| name.contains(m));
        if temporary {
            found.push(entry.path().display().to_string());
        }
    }
    found
}
