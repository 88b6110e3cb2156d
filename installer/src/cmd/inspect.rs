//! The read-only commands: `status`, `list`, `verify`, and `config`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use common::report::{detail, ExitCode, LastCommand, Outcome, ReleaseRow, Report};

use crate::cli::{JsonArgs, StatusArgs, VerifyArgs};
use crate::config::InstallerConfig;
use crate::journal::{release_state, Event, Journal};
use crate::layout::Layout;
use crate::legacy::{self, Legacy};
use crate::run::finish;
use crate::switch::AppServer;
use crate::{release, schema};

/// The longest `status --check` waits for the site to show the live build: a check, not an
/// activation, so it does not wait out a slow chain reload.
const CHECK_TIMEOUT_SECS: u64 = 15;

/// Prints a line of a read-only command's result: on stdout, unless the JSON report is what
/// goes there, when the human lines go to stderr.
fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// `installer status`: what is live, what was live before, and how the last command ended.
pub fn status(args: &StatusArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let mut report = Report::new("status");
    let json = args.json;
    let result = (|| {
        let layout = Layout::new(&config.root);
        layout.check_exists(false)?;
        let journal = Journal::new(&layout.journal());
        let current = layout.current_build()?;
        let previous = journal.previous_good(current)?;
        report.build = current;
        report.previous_build = previous;
        let records = journal.read()?;
        let live = current.and_then(|c| {
            records
                .iter()
                .rev()
                .find(|r| r.event == Event::Live && r.build == Some(c))
        });
        let last = records.iter().rev().find(|r| r.event == Event::Finished);
        match current {
            Some(c) => say(json, &format!("current: {c:#}")),
            None if layout.releases_on_disk()?.is_empty() => say(
                json,
                &format!(
                    "current: none — no release is installed under `{}` yet (`installer activate --build BuildNNNNNN`)",
                    config.root.display()
                ),
            ),
            None => say(
                json,
                &format!(
                    "current: none (no release is live under `{}`)",
                    config.root.display()
                ),
            ),
        }
        if let Some(r) = live {
            say(
                json,
                &format!(
                    "  made live by `{}` on {} by {}",
                    r.command,
                    common::when::shown(r.time),
                    if r.user.is_empty() {
                        "an unrecorded user"
                    } else {
                        &r.user
                    }
                ),
            );
            report.details.insert("activated_at".into(), r.time.into());
            report
                .details
                .insert("activated_by".into(), r.user.clone().into());
            report
                .details
                .insert("activated_with".into(), r.command.name().into());
        }
        say(
            json,
            &format!(
                "previous good: {}",
                previous.map(|b| b.tag()).unwrap_or_else(|| "none".into())
            ),
        );
        if let Some(r) = last {
            let outcome = r.outcome.map(|o| format!("{o:?}")).unwrap_or_default();
            say(
                json,
                &format!(
                    "last command: {} {} -> {outcome} on {}{}",
                    r.command,
                    r.build.map(|b| b.tag()).unwrap_or_default(),
                    common::when::shown(r.time),
                    r.detail
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
            );
            let last = LastCommand {
                command: r.command.name().to_owned(),
                build: r.build,
                outcome: r.outcome,
                time: r.time,
                detail: r.detail.clone(),
            };
            report.set_detail(detail::LAST_COMMAND, &last);
        }
        // A `current` whose release is gone serves nothing: say so, and fail.
        if let Some(c) = current.filter(|c| !layout.release(*c).is_dir()) {
            anyhow::bail!(
                "`current` points at {c:#}, whose directory `{}` is gone: the site cannot serve it; run `installer activate --build {c:#}` to put it back (or `installer rollback --to` a release on disk)",
                layout.release(c).display()
            );
        }
        // The database against the live release's migrations; not for `--check`, which a
        // rollout's bake repeats and which is about serving.
        if let Some(c) = current.filter(|_| !args.check) {
            let dir = layout.release(c);
            match release::manifest_of(&dir)
                .ok()
                .and_then(|s| s.manifest.migrations)
            {
                None => say(
                    json,
                    &format!("database: not compared ({c:#} carries no migration graph)"),
                ),
                Some(graph) => match schema::applied(config, &dir) {
                    Ok(applied) => {
                        let state = schema::SchemaState::of(&applied, &graph);
                        say(json, &format!("database: {}", state.describe()));
                        report.set_detail("schema", &state);
                    }
                    Err(e) => {
                        say(json, &format!("database: cannot be read: {e:#}"));
                        report.set_detail(
                            "schema",
                            &serde_json::json!({"state": "unknown", "error": format!("{e:#}")}),
                        );
                    }
                },
            }
        }
        if args.check {
            let Some(c) = current else {
                anyhow::bail!("no release is live, so there is no build to check the site for");
            };
            // Workers are fresh when started after `current` last changed: the link is
            // replaced by a rename, so its own time is the swap's.
            let swapped = std::fs::symlink_metadata(layout.current())
                .and_then(|m| m.modified())
                .with_context(|| format!("cannot read `{}`", layout.current().display()))?;
            let timeout = Duration::from_secs(config.health.timeout_secs.min(CHECK_TIMEOUT_SECS));
            let t = std::time::Instant::now();
            crate::switch::Uwsgi::new(config)
                .wait_serving(c, swapped, timeout)
                .with_context(|| format!("the health check of {c:#} failed"))?;
            report.details.insert("health".into(), "ok".into());
            say(
                json,
                &format!(
                    "health: `{}` serves {c:#} from every worker (checked in {:.1}s)",
                    config.health.url,
                    t.elapsed().as_secs_f64()
                ),
            );
        }
        if args.verify {
            let Some(c) = current else {
                anyhow::bail!("no release is live, so there is nothing to verify");
            };
            let t = std::time::Instant::now();
            let (drift, _) = drift_of(config, c, &layout.release(c), &mut report)?;
            report.details.insert("verified".into(), true.into());
            if !drift.is_clean() {
                let refusal = drift.refusal(c).0;
                return Err(common::error::BadInput(format!(
                    "{refusal}: `installer verify` lists them"
                ))
                .into());
            }
            say(
                json,
                &format!(
                    "files: every file of {c:#} matches its manifest (checked in {:.1}s)",
                    t.elapsed().as_secs_f64()
                ),
            );
        }
        Ok(Outcome::Success)
    })();
    finish(report, result, args.json)
}

/// `installer list`: every release on disk with its state, size and activation time.
pub fn list(args: &JsonArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let mut report = Report::new("list");
    let json = args.json;
    let result = (|| {
        let layout = Layout::new(&config.root);
        layout.check_exists(false)?;
        let journal = Journal::new(&layout.journal());
        let records = journal.read()?;
        let current = layout.current_build()?;
        let previous = journal.previous_good(current)?;
        let mut rows = Vec::new();
        for build in layout.releases_on_disk()?.into_iter().rev() {
            let dir = layout.release(build);
            let size: u64 = walkdir::WalkDir::new(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum();
            let activated = records
                .iter()
                .rev()
                .find(|r| r.event == Event::Live && r.build == Some(build))
                .map(|r| r.time);
            let state = release_state(build, current, previous, &records);
            let legacy = Legacy::of(&dir).is_some();
            let line = format!(
                "{:<12} {:<12} {:>10} MB  {}{}",
                build.tag(),
                state.name(),
                size / 1_000_000,
                activated
                    .map(|t| format!("live since {}", common::when::shown(t)))
                    .unwrap_or_default(),
                if legacy {
                    "  (legacy: the adopted checkout)"
                } else {
                    ""
                }
            );
            say(json, line.trim_end());
            rows.push(ReleaseRow {
                build,
                state,
                bytes: size,
                activated_at: activated,
                legacy,
            });
        }
        if rows.is_empty() {
            say(
                json,
                &format!("no release is installed under `{}`", config.root.display()),
            );
        }
        report.set_detail(detail::RELEASES, &rows);
        report.build = current;
        report.previous_build = previous;
        Ok(Outcome::Success)
    })();
    finish(report, result, args.json)
}

/// `installer verify`: re-hash a release; exit 2 when anything drifted.
pub fn verify(args: &VerifyArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let mut report = Report::new("verify");
    let result = (|| {
        let layout = Layout::new(&config.root);
        let build = match args.build {
            Some(b) => b,
            None => layout.current_build()?.ok_or_else(|| {
                common::error::BadInput("no release is live; name one to verify".into())
            })?,
        };
        report.build = Some(build);
        let dir = layout.release(build);
        if !dir.is_dir() {
            return Err(common::error::BadInput(format!(
                "{build:#} is not on this server (`{}`)",
                dir.display()
            ))
            .into());
        }
        let (drift, legacy) = drift_of(config, build, &dir, &mut report)?;
        for (p, what) in &drift.changed {
            eprintln!("changed: {p}: {what}");
        }
        for p in &drift.extra {
            eprintln!("unexpected: {p}");
        }
        if drift.is_clean() {
            if legacy {
                say(args.json, &format!("{build:#} is the adopted checkout: its links, virtualenv and build number check out (a checkout has no manifest to re-hash)"));
            } else {
                say(
                    args.json,
                    &format!("{build:#} verifies: every file matches its manifest"),
                );
            }
            Ok(Outcome::Success)
        } else {
            Err(drift.refusal(build).into())
        }
    })();
    finish(report, result, args.json)
}

/// Re-hashes release `build` in `dir` (an adopted checkout: its links and virtualenv) and puts
/// what drifted into the report's `details` (`changed`: path → what is wrong, `unexpected`:
/// paths), for `verify` and `status --verify` alike; also whether it is the adopted checkout.
fn drift_of(
    config: &InstallerConfig,
    build: common::BuildNumber,
    dir: &std::path::Path,
    report: &mut Report,
) -> anyhow::Result<(release::Drift, bool)> {
    let legacy = Legacy::of(dir).is_some();
    let drift = if legacy {
        report.details.insert("legacy".into(), true.into());
        release::Drift {
            changed: legacy::verify(config, dir, build),
            extra: Vec::new(),
        }
    } else {
        release::verify(config, dir)?
    };
    let changed: BTreeMap<String, String> = drift.changed.iter().cloned().collect();
    report
        .details
        .insert("changed".into(), serde_json::to_value(&changed)?);
    report
        .details
        .insert("unexpected".into(), serde_json::to_value(&drift.extra)?);
    Ok((drift, legacy))
}

/// `installer config`: the effective configuration (as TOML, or with `--json` in a report's
/// `details.config`, with the signing policy in words in `details.signing`).
pub fn config(args: &JsonArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let signing = crate::signing::Policy::from_config(&config.signing)?;
    if args.json {
        let mut report = Report::new("config");
        report.set_detail("config", config);
        report.set_detail("signing", &signing.describe());
        return finish(report, Ok(Outcome::Success), true);
    }
    println!("# {}", signing.describe());
    print!("{}", config.to_toml());
    Ok(ExitCode::Success)
}
