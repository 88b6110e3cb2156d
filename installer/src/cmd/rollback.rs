//! `installer rollback`: back to the previous good release (from the journal) or the one named.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use common::error::BadInput;
use common::report::{ExitCode, Outcome};

use crate::cli::RollbackArgs;
use crate::config::InstallerConfig;
use crate::journal::{Command, Event, Record};
use crate::run::{Phase, Run};
use crate::switch::{conclude, switch, AppServer, Uwsgi};
use crate::{legacy, lock, procs, release};

pub fn run(args: &RollbackArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let server = Uwsgi::new(config);
    let mut run = Run::new(Command::Rollback, config);
    let result = rollback(args, &mut run, &server);
    run.finish(result, args.json)
}

pub fn rollback(
    args: &RollbackArgs,
    run: &mut Run<'_>,
    server: &dyn AppServer,
) -> anyhow::Result<Outcome> {
    let config = run.config;
    let layout = run.layout.clone();
    layout.check_exists(true)?;
    layout.ensure()?;
    let timeout = Duration::from_secs(args.lock_timeout.unwrap_or(config.lock_timeout_secs));
    let t = run.begin(Phase::Lock);
    let deploy_lock = lock::acquire(&layout.lock_file(), timeout, "installer rollback")?;
    release::remove_strays(&layout, &mut run.report.warnings)?;

    let current = layout.current_build()?;
    // A rollback killed after its swap left `current` at its target: the same command finishes
    // it (reload, health, journal) instead of "rolling back" once more, to the build it left.
    let resumed = run.journal.unfinished()?.filter(|r| {
        r.command == Command::Rollback
            && r.build.is_some()
            && r.build == current
            && args.to.is_none_or(|to| r.build == Some(to))
    });
    let was_live = resumed.as_ref().and_then(|r| r.previous).or(current);
    run.report.previous_build = was_live;
    let target = match (args.to, &resumed) {
        (Some(b), _) => b,
        (None, Some(r)) => r.build.expect("filtered above"),
        (None, None) => run.journal.previous_good(current)?.ok_or_else(|| {
            BadInput("the journal has no release that was live before the current one: name one with `--to BuildNNNNNN`".into())
        })?,
    };
    run.report.build = Some(target);
    run.end(Phase::Lock, target, t, true);
    if current == Some(target) && resumed.is_none() {
        eprintln!("{target:#} is already the current release: nothing to do");
        return Ok(Outcome::NothingToDo);
    }
    let dir = layout.release(target);
    if !dir.is_dir() {
        bail!(BadInput(format!(
            "{target:#} is not on this server (`{}`): activate it instead",
            dir.display()
        )));
    }

    // The adopted checkout has no manifest: its links and build number are checked instead.
    let is_legacy = legacy::Legacy::of(&dir).is_some();
    let t = run.begin(Phase::Verify);
    let drift = if is_legacy {
        release::Drift {
            changed: legacy::verify(config, &dir, target),
            extra: Vec::new(),
        }
    } else {
        release::verify(config, &dir)?
    };
    if !drift.changed.is_empty() {
        let list: Vec<String> = drift
            .changed
            .iter()
            .take(10)
            .map(|(p, what)| format!("  {p}: {what}"))
            .collect();
        bail!(BadInput(format!(
            "{target:#} does not verify against its manifest ({} changed or missing), refusing to make it live:\n{}\nre-activate it with `installer activate --build {target:#}` after moving the directory away",
            drift.changed.len(),
            list.join("\n")
        )));
    }
    run.end(Phase::Verify, target, t, true);

    let mut started = Record::new(Command::Rollback, Event::Started, Some(target));
    started.previous = was_live;
    run.journal.append(&started)?;

    run.phase(Phase::Link, target, |run| {
        if is_legacy {
            // Its links lead into the checkout: linking shared files there would replace the
            // checkout's own files, and its virtualenv is the checkout's.
            let w = format!(
                "{target:#} is the adopted checkout: it serves the checkout's own settings, media and private files, not `shared/` (copy back what was added there since if it must be served)"
            );
            eprintln!("warning: {w}");
            run.report.warnings.push(w);
        } else {
            release::link_shared(&layout, &release::profile_at(config, &dir), &dir)?;
            release::ready_dependencies(config, &dir, &deploy_lock)?;
        }
        // Taken over at the swap if another release has it (see `switch`).
        release::link_static(&layout, config, target, release::StaticLink::Claim)?;
        Ok(())
    })?;

    if let Some(current) = was_live.filter(|b| *b != target) {
        let unknown = unknown_migrations(config, &layout.release(current), &dir);
        match unknown {
            Ok(list) if !list.is_empty() => {
                let w = format!(
                    "the database has migrations {target:#} does not know (applied by {current:#}): {}; the old code may fail on the newer schema",
                    list.join(", ")
                );
                eprintln!("warning: {w}");
                run.report.warnings.push(w);
            }
            Ok(_) => {}
            Err(e) => run
                .report
                .warnings
                .push(format!("could not compare migrations: {e:#}")),
        }
    }

    let switched = switch(run, server, target, was_live)?;
    conclude(run, target, was_live, switched)
}

/// Migrations applied in the database (as the current release sees them) that the target
/// release does not contain, as `app.name`.
fn unknown_migrations(
    config: &InstallerConfig,
    current: &Path,
    target: &Path,
) -> anyhow::Result<Vec<String>> {
    let list = |dir: &Path| -> anyhow::Result<Vec<(String, bool)>> {
        // The release's own migrate command, with `showmigrations --list` for `migrate …`.
        let profile = release::profile_at(config, dir);
        let mut argv: Vec<String> = profile
            .migrate
            .iter()
            .take_while(|a| !a.starts_with("migrate"))
            .cloned()
            .collect();
        argv.extend(["showmigrations".to_owned(), "--list".to_owned()]);
        let mut env: Vec<(&str, &str)> = vec![("DJANGO_SETTINGS_MODULE", &profile.settings_module)];
        env.extend(
            config
                .migrate_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let out = procs::output(&argv, dir, &env)?;
        let mut app = String::new();
        let mut found = Vec::new();
        for line in out.lines() {
            if !line.starts_with(' ') {
                app = line.trim().to_owned();
            } else if let Some(rest) = line.trim().strip_prefix("[X] ") {
                found.push((format!("{app}.{}", rest.trim()), true));
            } else if let Some(rest) = line.trim().strip_prefix("[ ] ") {
                found.push((format!("{app}.{}", rest.trim()), false));
            }
        }
        Ok(found)
    };
    let applied: Vec<String> = list(current)?
        .into_iter()
        .filter(|(_, a)| *a)
        .map(|(n, _)| n)
        .collect();
    let known: std::collections::BTreeSet<String> =
        list(target)?.into_iter().map(|(n, _)| n).collect();
    Ok(applied.into_iter().filter(|m| !known.contains(m)).collect())
}
