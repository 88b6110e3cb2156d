//! `installer rollback`: back to the previous good release (from the journal) or the one named.

use std::time::Duration;

use anyhow::bail;
use common::error::BadInput;
use common::migrations::MigrationStep;
use common::report::{ExitCode, Outcome};
use common::BuildNumber;

use crate::cli::RollbackArgs;
use crate::config::InstallerConfig;
use crate::journal::{Command, Event, Record};
use crate::run::{Phase, Run};
use crate::switch::{conclude, switch, AppServer, Uwsgi};
use crate::{legacy, lock, procs, release, schema};

pub fn run(args: &RollbackArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let server = Uwsgi::new(config);
    let mut run = Run::new(Command::Rollback, config);
    // Until the rollback is past its checks (the target's files, the database's migrations):
    // a refusal leaves the journal as it was.
    run.journal.hold();
    let result = rollback(args, &mut run, &server);
    if run.journal.holding() {
        let refused = matches!(&result, Err(e) if common::error::exit_code_for(e.as_ref()) == ExitCode::BadInput);
        if refused {
            run.journal.discard();
        } else if let Err(e) = run.journal.release() {
            eprintln!("warning: cannot write the journal: {e:#}");
        }
    }
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

    // The database against the target's code: what it has that the target does not know.
    // Skipped when finishing a rollback that already swapped.
    if let Some(live) = was_live.filter(|b| *b != target && resumed.is_none()) {
        schema_for_target(args, run, live, target, &deploy_lock)?;
    }

    run.journal.release()?;
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

    let switched = switch(run, server, target, was_live)?;
    conclude(run, target, was_live, switched)
}

/// What the database has beyond `target` (as the live release `live` sees it), and what the
/// rollback does about it: with `--migrate-down`, unapply it with the live code (refused when
/// any of it cannot be undone); without, warn — or refuse, unless `--force`, when the
/// target's code cannot run against it. Fails before anything live changed.
fn schema_for_target(
    args: &RollbackArgs,
    run: &mut Run<'_>,
    live: BuildNumber,
    target: BuildNumber,
    deploy_lock: &lock::DeployLock,
) -> anyhow::Result<()> {
    let config = run.config;
    let layout = run.layout.clone();
    let (live_dir, target_dir) = (layout.release(live), layout.release(target));
    // The target's migrations are listed once: unapplying changes the database, not them.
    let compared = schema::known(config, &target_dir).and_then(|known| {
        let applied = schema::applied_outside(config, &live_dir, &known)?;
        Ok((applied, known))
    });
    let (applied, known) = match compared {
        Ok(pair) => pair,
        Err(e) if args.migrate_down => {
            return Err(e.context(format!(
            "cannot tell which migrations the database has beyond {target:#}; nothing was changed"
        )))
        }
        Err(e) => {
            run.report
                .warnings
                .push(format!("could not compare migrations: {e:#}"));
            return Ok(());
        }
    };
    let graphs = (
        release::manifest_of(&live_dir)
            .ok()
            .and_then(|s| s.manifest.migrations),
        release::manifest_of(&target_dir)
            .ok()
            .and_then(|s| s.manifest.migrations),
    );
    // The applied ones, in the order they were applied, judged from the live release's graph.
    let ahead: Vec<MigrationStep> = match &graphs {
        (Some(new), Some(old)) => new
            .beyond(old)
            .into_iter()
            .filter(|s| applied.contains(&s.id().to_string()))
            .collect(),
        _ => Vec::new(),
    };
    run.report.set_detail(
        "migrations",
        &serde_json::json!({ "ahead_of_target": applied, "steps": ahead }),
    );
    match judge(
        args,
        live,
        target,
        &applied,
        &ahead,
        graphs.0.is_some() && graphs.1.is_some(),
    )? {
        Judgement::Nothing => return Ok(()),
        Judgement::Warn(w) => {
            eprintln!("warning: {w}");
            run.report.warnings.push(w);
            return Ok(());
        }
        Judgement::MigrateDown => {}
    }
    let (Some(new), Some(old)) = (&graphs.0, &graphs.1) else {
        unreachable!("`judge` refuses --migrate-down without both graphs");
    };
    // Per app, latest first: Django unapplies an app's later migrations, and those of other
    // apps that depend on them, when asked to go back to one.
    let mut apps: Vec<String> = Vec::new();
    for s in ahead.iter().rev() {
        if !apps.contains(&s.app) {
            apps.push(s.app.clone());
        }
    }
    let targets = new.down_targets(old);
    let profile = release::profile_at(config, &live_dir);
    let env = schema::manage_env(config, &profile);
    let prefix = schema::manage_argv(&profile);
    let names: Vec<String> = ahead.iter().map(|s| s.id().to_string()).collect();
    eprintln!(
        "==> migrate-down: unapplying {} with {live:#}'s code before the swap",
        names.join(", ")
    );
    let went = run.phase(Phase::MigrateDown, target, |_| {
        for app in &apps {
            let to = targets
                .iter()
                .find(|(a, _)| a == app)
                .and_then(|(_, t)| t.clone())
                .unwrap_or_else(|| "zero".to_owned());
            let mut argv = prefix.clone();
            argv.extend(["migrate".into(), app.clone(), to, "--noinput".into()]);
            procs::run_locked(&argv, &live_dir, &env, deploy_lock, "migrate-down:running")?;
        }
        Ok(())
    });
    // What is applied now, whatever happened: the report says exactly.
    let still = schema::applied_outside(config, &live_dir, &known);
    let (unapplied, still_applied): (Vec<String>, Vec<String>) = match &still {
        Ok(now) => names.iter().cloned().partition(|n| !now.contains(n)),
        Err(_) => (Vec::new(), names.clone()),
    };
    run.report.set_detail(
        "migrate_down",
        &serde_json::json!({ "unapplied": unapplied, "still_applied": still_applied }),
    );
    let mut done = Record::new(Command::Rollback, Event::Phase, Some(target));
    done.previous = Some(live);
    done.phase = Some(Phase::MigrateDown.name().to_owned());
    done.outcome = Some(if still_applied.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failed
    });
    done.migrations_unapplied = unapplied.clone();
    done.detail = Some(format!(
        "unapplied: {}; still applied: {}",
        names_or_none(&unapplied),
        names_or_none(&still_applied)
    ));
    if let Err(e) = run.journal.append(&done) {
        eprintln!("warning: cannot write the journal: {e:#}");
    }
    match (went, still) {
        (Ok(()), Ok(_)) if still_applied.is_empty() => {
            eprintln!("    unapplied: {}", unapplied.join(", "));
            Ok(())
        }
        (Err(e), _) => Err(e.context(format!(
            "migrating down failed: unapplied {}; still applied {}; `current` was not changed and {live:#} is still serving",
            names_or_none(&unapplied),
            still_applied.join(", ")
        ))),
        (Ok(()), Err(e)) => Err(e.context(
            "cannot tell what the database has after migrating down; `current` was not changed",
        )),
        (Ok(()), Ok(_)) => bail!(
            "migrate reported success but the database still has {}; `current` was not changed and {live:#} is still serving",
            still_applied.join(", ")
        ),
    }
}

/// `a.0001, b.0002`, or `none`.
fn names_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// What a rollback does about the migrations the database has beyond its target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Judgement {
    Nothing,
    /// Go on, with this warning.
    Warn(String),
    /// Unapply them first (`--migrate-down`, every one known and reversible).
    MigrateDown,
}

/// Decides from what is applied beyond the target (`applied`, as `app.name`), what the live
/// release's graph says of those it explains (`ahead`) and whether both releases carry a
/// graph; refusals are bad input, since nothing has changed yet.
fn judge(
    args: &RollbackArgs,
    live: BuildNumber,
    target: BuildNumber,
    applied: &[String],
    ahead: &[MigrationStep],
    graphs: bool,
) -> Result<Judgement, BadInput> {
    if applied.is_empty() {
        if args.migrate_down {
            eprintln!(
                "the database has no migration {target:#} does not know: nothing to migrate down"
            );
        }
        return Ok(Judgement::Nothing);
    }
    if !args.migrate_down {
        let destructive: Vec<String> = ahead
            .iter()
            .flat_map(|s| s.destructive.iter().map(move |d| format!("{} {d}", s.id())))
            .collect();
        if !destructive.is_empty() && !args.force {
            return Err(BadInput(format!(
                "{target:#} cannot run against this database: {}; nothing was changed: roll back with `--migrate-down` to unapply them first (or restore the database), or `--force` to switch anyway",
                destructive.join("; ")
            )));
        }
        return Ok(Judgement::Warn(format!(
            "the database has migrations {target:#} does not know (applied by {live:#}): {}; the old code may fail on the newer schema (`--migrate-down` unapplies them)",
            applied.join(", ")
        )));
    }
    // --migrate-down: everything must be known and reversible before anything is touched.
    if !graphs {
        return Err(BadInput(format!(
            "{live:#} or {target:#} was packaged without a migration graph, so whether {} can be undone is unknown; nothing was changed: unapply them by hand (`manage.py migrate <app> <migration>`) or restore the database",
            applied.join(", ")
        )));
    }
    let unjudged: Vec<&str> = applied
        .iter()
        .filter(|a| !ahead.iter().any(|s| &s.id().to_string() == *a))
        .map(String::as_str)
        .collect();
    if !unjudged.is_empty() {
        return Err(BadInput(format!(
            "the database has migrations neither release's graph explains: {}; nothing was changed",
            unjudged.join(", ")
        )));
    }
    let irreversible: Vec<String> = ahead
        .iter()
        .filter(|s| !s.irreversible.is_empty())
        .map(|s| format!("{} ({})", s.id(), s.irreversible.join("; ")))
        .collect();
    if !irreversible.is_empty() {
        return Err(BadInput(format!(
            "refusing to migrate down to {target:#}: {} cannot be undone; nothing was changed: restore the database from a backup taken before it, or roll back to a build that has it",
            irreversible.join(", ")
        )));
    }
    Ok(Judgement::MigrateDown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(migrate_down: bool, force: bool) -> RollbackArgs {
        RollbackArgs {
            to: None,
            migrate_down,
            force,
            lock_timeout: None,
            json: false,
        }
    }

    fn step(name: &str, destructive: &[&str], irreversible: &[&str]) -> MigrationStep {
        MigrationStep {
            app: "dashboard".into(),
            name: name.into(),
            destructive: destructive.iter().map(|s| s.to_string()).collect(),
            irreversible: irreversible.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_rollback_warns_refuses_or_migrates_down() {
        let (live, target) = (
            BuildNumber::parse("000004").unwrap(),
            BuildNumber::parse("000003").unwrap(),
        );
        let applied = |names: &[&str]| -> Vec<String> {
            names.iter().map(|n| format!("dashboard.{n}")).collect()
        };
        let judge = |a: RollbackArgs, names: &[&str], ahead: &[MigrationStep], graphs| {
            judge(&a, live, target, &applied(names), ahead, graphs)
        };
        let harmless = [step("0004_add", &[], &[])];
        let drop = [step("0005_drop", &["removes the field project.stars"], &[])];
        let one_way = [step("0006_fill", &[], &["RunPython without reverse_code"])];

        // Nothing beyond the target: nothing to do, whatever was asked.
        for a in [args(false, false), args(true, false), args(false, true)] {
            assert_eq!(judge(a, &[], &[], true).unwrap(), Judgement::Nothing);
        }
        // Without options: a warning, unless the target's code cannot run on the schema.
        assert!(matches!(
            judge(args(false, false), &["0004_add"], &harmless, true),
            Ok(Judgement::Warn(w)) if w.contains("dashboard.0004_add")
        ));
        let refused = judge(args(false, false), &["0005_drop"], &drop, true).unwrap_err();
        assert!(
            refused.0.contains("removes the field project.stars")
                && refused.0.contains("--migrate-down")
                && refused.0.contains("--force"),
            "{}",
            refused.0
        );
        // --force goes on, with the warning.
        assert!(matches!(
            judge(args(false, true), &["0005_drop"], &drop, true),
            Ok(Judgement::Warn(_))
        ));
        // Without graphs there is nothing to judge destructiveness by: a warning.
        assert!(matches!(
            judge(args(false, false), &["0005_drop"], &[], false),
            Ok(Judgement::Warn(_))
        ));
        // --migrate-down: reversible ones are unapplied (destructive or not)…
        assert_eq!(
            judge(args(true, false), &["0005_drop"], &drop, true).unwrap(),
            Judgement::MigrateDown
        );
        // …an irreversible one, one no graph explains, or no graph at all refuse.
        let e = judge(args(true, false), &["0006_fill"], &one_way, true).unwrap_err();
        assert!(
            e.0.contains("dashboard.0006_fill (RunPython without reverse_code) cannot be undone"),
            "{}",
            e.0
        );
        let e = judge(args(true, false), &["0004_add", "0007_x"], &harmless, true).unwrap_err();
        assert!(e.0.contains("dashboard.0007_x"), "{}", e.0);
        let e = judge(args(true, false), &["0004_add"], &[], false).unwrap_err();
        assert!(e.0.contains("without a migration graph"), "{}", e.0);
    }
}
