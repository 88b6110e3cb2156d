//! `installer activate`: fetch, verify, unpack, link, venv, migrate, swap, reload, prove — and
//! roll back by itself when the new build is not what is served.
//!
//! Every phase is idempotent, so re-running an activation that was interrupted anywhere (even by
//! kill -9) completes it: downloads are verified in the cache, an identical unpacked release is
//! reused, a finished venv is kept, migrate is a no-op when done, and the swap is a rename.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::archive::reader::{unpack, UnpackOptions};
use common::error::{exit_code_for, BadInput};
use common::manifest::RELEASE_JSON;
use common::report::{ExitCode, Outcome, Report};
use common::store::{ArtifactStore, StoreOptions};
use common::{atomic, Blake3Hash, BuildNumber, Sidecar};

use crate::cli::ActivateArgs;
use crate::config::InstallerConfig;
use crate::journal::{Event, Journal, Record};
use crate::layout::Layout;
use crate::switch::{conclude, finished, phase_done, switch, AppServer, Server, Uwsgi};
use crate::{lock, procs, release};

pub fn run(args: &ActivateArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let server = Uwsgi::new(config);
    let mut report = Report::new("activate");
    report.build = Some(args.build);
    let result = activate(args, config, &server, &mut report)
        .map_err(|e| explain_disk_full(e, &config.root));
    finish(report, result, args.json)
}

/// Turns the outcome into the report, the journal's last word and the exit code.
pub fn finish(
    mut report: Report,
    result: anyhow::Result<Outcome>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (outcome, error) = match result {
        Ok(o) => (o, None),
        Err(e) => {
            let code = exit_code_for(e.as_ref());
            let outcome = match code {
                ExitCode::BadInput => Outcome::BadInput,
                ExitCode::Locked => Outcome::Locked,
                _ => Outcome::Failed,
            };
            (outcome, Some(e))
        }
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

pub fn activate(
    args: &ActivateArgs,
    config: &InstallerConfig,
    server: &dyn AppServer,
    report: &mut Report,
) -> anyhow::Result<Outcome> {
    let layout = Layout::new(&config.root);
    let journal = Journal::new(&layout.journal());
    let cache = layout.cache_for(args.build);
    let cache_was_there = cache.exists();
    // Until the release is verified and in place its records wait: a refusal leaves one.
    journal.hold();
    let result = activate_checked(args, config, server, report, &journal);
    if !journal.holding() {
        journal.close_on_error(&result);
        return result;
    }
    match &result {
        Err(e) if exit_code_for(e.as_ref()) == ExitCode::BadInput => refused(
            &layout,
            &journal,
            args.build,
            e,
            (!cache_was_there).then_some(&cache),
        ),
        _ => {
            if let Err(e) = journal.release() {
                eprintln!("warning: cannot write the journal: {e:#}");
            }
            journal.close_on_error(&result);
        }
    }
    result
}

/// Bad input refused before anything changed: no download of it stays in the cache, and the
/// journal gets one `refused` record instead of the run's held ones.
fn refused(
    layout: &Layout,
    journal: &Journal,
    build: BuildNumber,
    error: &anyhow::Error,
    created_cache: Option<&std::path::PathBuf>,
) {
    // Under the lock again, so a run that took it meanwhile keeps its own downloads.
    let lock = lock::acquire(
        &layout.lock_file(),
        Duration::ZERO,
        &format!("installer activate --build {build:#} (refused)"),
    );
    if let (Ok(_), Some(cache)) = (&lock, created_cache) {
        if cache.exists() {
            if let Err(e) = atomic::remove_tree(cache) {
                eprintln!("warning: cannot remove `{}`: {e:#}", cache.display());
            }
        }
    }
    let current = layout.current_build().ok().flatten();
    if let Err(e) = journal.refuse("activate", Some(build), current, format!("{error:#}")) {
        eprintln!("warning: cannot write the journal: {e:#}");
    }
}

fn activate_checked(
    args: &ActivateArgs,
    config: &InstallerConfig,
    server: &dyn AppServer,
    report: &mut Report,
    journal: &Journal,
) -> anyhow::Result<Outcome> {
    const CMD: &str = "activate";
    let build = args.build;
    let layout = Layout::new(&config.root);
    layout.ensure()?;

    let t = Instant::now();
    let timeout = Duration::from_secs(args.lock_timeout.unwrap_or(config.lock_timeout_secs));
    let deploy_lock = lock::acquire(
        &layout.lock_file(),
        timeout,
        &format!("installer activate --build {build:#}"),
    )?;
    report.phase("lock", t.elapsed(), true);
    common::fault::point("activate:after-lock");

    let current = layout.current_build()?;
    report.previous_build = current;
    // A run of this build killed after its swap left `current` here: finish it, don't skip it.
    let resumed = journal
        .unfinished()?
        .filter(|r| current == Some(build) && r.build == Some(build));
    if current == Some(build) && resumed.is_none() {
        let finished = journal.last_finished(build)?;
        if finished.as_ref().and_then(|r| r.outcome) == Some(Outcome::Success) {
            eprintln!("{build:#} is already the current release: nothing to do");
            return Ok(Outcome::NothingToDo);
        }
    }
    // The adopted checkout has no artifact in the store: going back to it is a rollback.
    if release::is_legacy(&layout.release(build)) {
        bail!(BadInput(format!(
            "{build:#} is the adopted checkout (a legacy release, not a packaged build): return to it with `installer rollback --to {build:#}`"
        )));
    }
    // Before anything changes: the server's own files must be in place.
    release::check_shared_files(&layout, config)?;
    release::remove_strays(&layout, &mut report.warnings)?;

    let mut started = Record::new(CMD, Event::Started, Some(build));
    started.previous = current;
    journal.append(&started)?;

    // The release that goes back live if this one fails: what was live before it.
    let previous = match current {
        Some(c) if c != build => Some(c),
        _ => journal.previous_good(Some(build))?,
    };

    // Phase: fetch the sidecar (always: it says whether an unpacked release is this one). Its
    // signature is checked over the exact bytes before a field of it is believed or quoted.
    let t = Instant::now();
    let release_dir = layout.release(build);
    let store = open_store(args.store.as_deref(), args.s3_endpoint.as_deref(), config)?;
    let sidecar_bytes = store.fetch_sidecar_bytes(&config.app, build)?;
    crate::signing::check_release(&store, config, build, &sidecar_bytes, report)?;
    let sidecar = store.parse_sidecar(&config.app, build, &sidecar_bytes)?;
    let reuse = if release_dir.exists() {
        check_reusable(config, &release_dir, &sidecar, build)?;
        true
    } else {
        false
    };
    let new_release = release::NewRelease::new(&layout, config, build, !reuse);
    let artifact = if reuse {
        None
    } else {
        Some(fetch_cached(
            &store,
            &layout,
            build,
            &sidecar,
            &sidecar_bytes,
        )?)
    };
    phase_done(journal, report, CMD, build, "fetch", t, true);
    common::fault::point("activate:after-fetch");

    // Phase: unpack (verified entry by entry, renamed into place only when complete).
    let t = Instant::now();
    if let Some(artifact) = &artifact {
        eprintln!("==> unpack into `{}`", release_dir.display());
        let options = UnpackOptions {
            reserved: release::reserved(config),
            ..UnpackOptions::default()
        };
        unpack(artifact, &sidecar, &release_dir, &options)
            .with_context(|| format!("refused to install {build:#}; nothing changed"))?;
    } else {
        eprintln!(
            "==> unpack: `{}` is already this release",
            release_dir.display()
        );
    }
    phase_done(journal, report, CMD, build, "unpack", t, true);
    // Verified and in place: from here on every record goes straight to the journal.
    journal.release()?;
    common::fault::point("activate:after-unpack");

    // Phase: link shared files and static, after the template check.
    let t = Instant::now();
    if let Some(c) = current.filter(|c| *c != build) {
        if let Some(diff) = release::template_change(config, &layout.release(c), &release_dir)? {
            if !args.template_reviewed {
                bail!(BadInput(format!(
                    "`{}` changed since {c:#}:\n{diff}make the same change in `{}`, then run again with `--template-reviewed`",
                    config.production_template,
                    layout.shared().join(config.shared.files.values().next().map(String::as_str).unwrap_or("production.py")).display()
                )));
            }
            report.warnings.push(format!(
                "`{}` changed; confirmed reviewed with --template-reviewed",
                config.production_template
            ));
        }
    }
    release::link_shared(&layout, config, &release_dir)?;
    release::install_loader(&layout)?;
    // A link another release on disk has (same commit) is taken over only once this one is
    // live: until then it keeps serving what it served.
    let how = if current == Some(build) {
        release::StaticLink::TakeOver
    } else {
        release::StaticLink::Claim
    };
    if let Some(hash) = release::link_static(&layout, config, build, how)? {
        report.details.insert("version_hash".into(), hash.into());
    }
    phase_done(journal, report, CMD, build, "link", t, true);
    common::fault::point("activate:after-link");

    // Phase: venv from the release's own wheels.
    let t = Instant::now();
    eprintln!("==> venv");
    let built = release::build_venv(config, &release_dir, &deploy_lock).with_context(|| {
        format!(
            "building the release's virtualenv failed; {}",
            still_serving(current)
        )
    })?;
    if !built {
        eprintln!("    reusing the complete venv");
    }
    phase_done(journal, report, CMD, build, "venv", t, true);
    common::fault::point("activate:after-venv");

    // Phase: migrate with the new code, before the swap.
    let t = Instant::now();
    eprintln!("==> migrate");
    if let Err(e) = procs::run_locked(
        &config.migrate,
        &release_dir,
        &[("DJANGO_SETTINGS_MODULE", &config.settings_module)],
        &deploy_lock,
        "migrate:running",
    ) {
        phase_done(journal, report, CMD, build, "migrate", t, false);
        finished(
            journal,
            CMD,
            build,
            current,
            Outcome::Failed,
            Some(format!("{e:#}")),
        );
        return Err(e.context(format!(
            "migrate failed; `current` was not changed and {}",
            still_serving(current)
        )));
    }
    phase_done(journal, report, CMD, build, "migrate", t, true);
    common::fault::point("activate:after-migrate");
    new_release.keep();

    let live = Server {
        layout: &layout,
        config,
        app: server,
        journal,
    };
    let switched = switch(&live, report, CMD, build, previous)?;
    let was_live = resumed.and_then(|r| r.previous).or(current);
    conclude(&live, report, CMD, build, was_live, switched)
}

/// What serves after a failure before the swap.
fn still_serving(current: Option<BuildNumber>) -> String {
    match current {
        Some(c) => format!("{c:#}, the previous release, is still serving"),
        None => "no release was live before this one, and none is now".into(),
    }
}

/// A release directory already on disk may be made live again only when it is exactly this
/// build: the same manifest as the store's, and every file still matching it under today's
/// rules (an edited file, or a link into `shared/` from before those rules, is refused).
fn check_reusable(
    config: &InstallerConfig,
    dir: &std::path::Path,
    sidecar: &Sidecar,
    build: BuildNumber,
) -> anyhow::Result<()> {
    let on_disk = release::manifest_of(dir).with_context(|| {
        format!(
            "`{}` exists but is not a complete release: move it away",
            dir.display()
        )
    })?;
    if on_disk.manifest != sidecar.manifest {
        bail!(BadInput(format!(
            "`{}` exists with different content than {build:#} in the store: build numbers are immutable; move the directory away if it is a leftover",
            dir.display()
        )));
    }
    let drift = release::verify(config, dir)?;
    if !drift.changed.is_empty() {
        let list: Vec<String> = drift
            .changed
            .iter()
            .take(10)
            .map(|(p, what)| format!("  {}: {what}", common::untrusted::shown(p)))
            .collect();
        bail!(BadInput(format!(
            "`{}` no longer matches {build:#}'s manifest ({} changed or missing), refusing to make it live:\n{}\nmove the directory away and run again: it is unpacked afresh from the store",
            dir.display(),
            drift.changed.len(),
            list.join("\n")
        )));
    }
    Ok(())
}

/// Says so when the error is a full disk, naming the path that could not be written.
fn explain_disk_full(e: anyhow::Error, root: &std::path::Path) -> anyhow::Error {
    match common::error::disk_full_at(e.as_ref()) {
        Some(path) => {
            let what = if path.as_os_str().is_empty() {
                String::new()
            } else {
                format!(" for `{}`", path.display())
            };
            e.context(format!(
                "the disk is full: no space left{what} (server root `{}`); free space there (e.g. `installer prune --keep 2`), then run again",
                root.display()
            ))
        }
        None => e,
    }
}

pub fn open_store(
    url: Option<&str>,
    endpoint: Option<&str>,
    config: &InstallerConfig,
) -> anyhow::Result<ArtifactStore> {
    let url = url.or(config.store.as_deref()).ok_or_else(|| {
        BadInput("no artifact store: pass `--store s3://bucket/prefix` or set `store` in the installer configuration".into())
    })?;
    let endpoint = endpoint
        .map(str::to_owned)
        .or_else(|| config.s3_endpoint.clone());
    let options = StoreOptions {
        s3_path_style: endpoint.is_some(),
        s3_endpoint: endpoint,
        ..Default::default()
    };
    Ok(ArtifactStore::open(url, &options)?)
}

/// The artifact in `.deploy/cache/BuildNNNNNN/`, downloaded unless a verified copy is there;
/// checked against `sidecar`, the one fetched (and its signature checked) before.
fn fetch_cached(
    store: &ArtifactStore,
    layout: &Layout,
    build: BuildNumber,
    sidecar: &Sidecar,
    sidecar_bytes: &[u8],
) -> anyhow::Result<std::path::PathBuf> {
    let archive = sidecar
        .archive
        .as_ref()
        .expect("store sidecars have an archive section");
    let dir = layout.cache_for(build);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let cached = dir.join(&archive.file_name);
    if cached.is_file() {
        let (hash, size) = Blake3Hash::of_file(&cached)?;
        if hash == archive.blake3 && size == archive.size {
            eprintln!("==> fetch: using the verified download in the cache");
            return Ok(cached);
        }
        std::fs::remove_file(&cached)?;
    }
    eprintln!("==> fetch {} from {}", archive.file_name, store.location());
    let artifact = store.fetch_artifact(sidecar, &dir)?;
    atomic::write_file(&dir.join(RELEASE_JSON), sidecar_bytes)?;
    Ok(artifact)
}
