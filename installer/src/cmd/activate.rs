//! `installer activate`: fetch, verify, unpack, link, venv, migrate, swap, reload, prove — and
//! roll back by itself when the new build is not what is served.
//!
//! Every phase is idempotent, so re-running an activation that was interrupted anywhere (even by
//! kill -9) completes it: downloads are verified in the cache, an identical unpacked release is
//! reused, a finished venv is kept, migrate is a no-op when done, and the swap is a rename.

use std::time::Duration;

use anyhow::{bail, Context};
use common::archive::reader::{unpack, SharedUse, UnpackOptions};
use common::error::{exit_code_for, BadInput};
use common::manifest::RELEASE_JSON;
use common::report::{ExitCode, Outcome};
use common::store::{ArtifactStore, StoreOptions};
use common::{atomic, Blake3Hash, BuildNumber, Sidecar};

use crate::cli::ActivateArgs;
use crate::config::InstallerConfig;
use crate::journal::{Command, Event, Record};
use crate::layout::Layout;
use crate::run::{Phase, Run};
use crate::switch::{conclude, switch, AppServer, Uwsgi};
use crate::{lock, procs, release};

pub fn run(args: &ActivateArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let server = Uwsgi::new(config);
    let mut run = Run::new(Command::Activate, config);
    run.report.build = Some(args.build);
    let result = activate(args, &mut run, &server).map_err(|e| explain_disk_full(e, &config.root));
    run.finish(result, args.json)
}

pub fn activate(
    args: &ActivateArgs,
    run: &mut Run<'_>,
    server: &dyn AppServer,
) -> anyhow::Result<Outcome> {
    let cache = run.layout.cache_for(args.build);
    let cache_was_there = cache.exists();
    // Until the release is verified and in place its records wait: a refusal leaves one.
    run.journal.hold();
    let result = activate_checked(args, run, server);
    if run.journal.holding() {
        match &result {
            Err(e) if exit_code_for(e.as_ref()) == ExitCode::BadInput => {
                refused(run, args.build, e, (!cache_was_there).then_some(&cache))
            }
            _ => {
                if let Err(e) = run.journal.release() {
                    eprintln!("warning: cannot write the journal: {e:#}");
                }
            }
        }
    }
    result
}

/// Bad input refused before anything changed: no download of it stays in the cache, and the
/// journal gets one `refused` record instead of the run's held ones.
fn refused(
    run: &Run<'_>,
    build: BuildNumber,
    error: &anyhow::Error,
    created_cache: Option<&std::path::PathBuf>,
) {
    // Under the lock again, so a run that took it meanwhile keeps its own downloads.
    let lock = lock::acquire(
        &run.layout.lock_file(),
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
    let current = run.layout.current_build().ok().flatten();
    if let Err(e) = run.journal.refuse(
        Command::Activate,
        Some(build),
        current,
        format!("{error:#}"),
    ) {
        eprintln!("warning: cannot write the journal: {e:#}");
    }
}

fn activate_checked(
    args: &ActivateArgs,
    run: &mut Run<'_>,
    server: &dyn AppServer,
) -> anyhow::Result<Outcome> {
    let build = args.build;
    let config = run.config;
    run.layout.check_exists(false)?;
    // Before anything is created: a store URL with a typo is refused here.
    let store = open_store(args.store.as_deref(), args.s3_endpoint.as_deref(), config)?;
    run.layout.ensure()?;

    let timeout = Duration::from_secs(args.lock_timeout.unwrap_or(config.lock_timeout_secs));
    let deploy_lock = run.phase(Phase::Lock, build, |run| {
        lock::acquire(
            &run.layout.lock_file(),
            timeout,
            &format!("installer activate --build {build:#}"),
        )
    })?;

    let layout = run.layout.clone();
    let current = layout.current_build()?;
    run.report.previous_build = current;
    // A run of this build killed after its swap left `current` here: finish it, don't skip it.
    let resumed = run
        .journal
        .unfinished()?
        .filter(|r| current == Some(build) && r.build == Some(build));
    // A `current` whose release directory is gone is repaired, never "nothing to do".
    let current_on_disk = current.filter(|c| layout.release(*c).is_dir());
    if current_on_disk == Some(build) && resumed.is_none() {
        let finished = run.journal.last_finished(build)?;
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
    release::remove_strays(&layout, &mut run.report.warnings)?;

    let mut started = Record::new(Command::Activate, Event::Started, Some(build));
    started.previous = current;
    run.journal.append(&started)?;

    // The release that goes back live if this one fails: what was live before it (while it
    // is still on disk to go back to).
    let previous = match current_on_disk {
        Some(c) if c != build => Some(c),
        _ => run.journal.previous_good(Some(build))?,
    };

    // The sidecar is always fetched: it says whether an unpacked release is this one. Its
    // signature is checked over the exact bytes before a field of it is believed or quoted.
    let release_dir = layout.release(build);
    let (sidecar, artifact) = run.phase(Phase::Fetch, build, |run| {
        let sidecar_bytes = store.fetch_sidecar_bytes(&config.app, build)?;
        crate::signing::check_release(&store, config, build, &sidecar_bytes, &mut run.report)?;
        let sidecar = store.parse_sidecar(&config.app, build, &sidecar_bytes)?;
        // Before anything is downloaded: the server's own files this release needs are there.
        release::check_shared_files(&layout, &config.profile_of(&sidecar.manifest))?;
        release::check_python(config, &sidecar.manifest)?;
        if release_dir.exists() {
            check_reusable(config, &release_dir, &sidecar, build)?;
            return Ok((sidecar, None));
        }
        let artifact = fetch_cached(&store, &layout, build, &sidecar, &sidecar_bytes)?;
        Ok((sidecar, Some(artifact)))
    })?;
    let profile = config.profile_of(&sidecar.manifest);
    let new_release = release::NewRelease::new(&layout, config, build, artifact.is_some());

    // Verified entry by entry, renamed into place only when complete.
    let t = run.begin(Phase::Unpack);
    if let Some(artifact) = &artifact {
        eprintln!("    into `{}`", release_dir.display());
        let options = UnpackOptions {
            reserved: release::reserved(&profile),
            reuse: release::content_on_disk(config, &layout, current_on_disk, build),
            shared: release::shared_deps(&layout, &sidecar.manifest),
            ..UnpackOptions::default()
        };
        let unpacked = unpack(artifact, &sidecar, &release_dir, &options)
            .with_context(|| format!("refused to install {build:#}; nothing changed"))?;
        eprintln!(
            "    {} files, {} of them ({:.1} MiB) already on disk (linked, not written)",
            unpacked.files,
            unpacked.linked,
            unpacked.linked_bytes as f64 / (1 << 20) as f64
        );
        let store = options
            .shared
            .as_ref()
            .map(|t| t.store.display().to_string());
        let shared = match (&unpacked.shared, &store) {
            (Some(SharedUse::Reused), Some(store)) => {
                let read = if unpacked.shared_not_inflated {
                    " (their part of the archive hashed, not inflated)"
                } else {
                    ""
                };
                eprintln!("    its dependencies: the checked tree `{store}` it shares{read}");
                serde_json::json!({"tree": store, "use": "reused", "inflated": !unpacked.shared_not_inflated})
            }
            (Some(SharedUse::Created), Some(store)) => {
                eprintln!("    its dependencies: unpacked into `{store}`, for every release with the same ones");
                serde_json::json!({"tree": store, "use": "created"})
            }
            (Some(SharedUse::Own(why)), Some(store)) => {
                let why = common::untrusted::message(why);
                let warning = format!(
                    "the dependency tree `{store}` does not match the manifest ({why}): {build:#} got its own copy; run `installer verify` on the releases that use it"
                );
                eprintln!("    warning: {warning}");
                run.report.warnings.push(warning);
                serde_json::json!({"tree": store, "use": "own", "why": why})
            }
            _ => serde_json::Value::Null,
        };
        run.report.details.insert(
            "unpack".into(),
            serde_json::json!({
                "files": unpacked.files,
                "bytes": unpacked.bytes,
                "linked_files": unpacked.linked,
                "linked_bytes": unpacked.linked_bytes,
                "deps": shared,
            }),
        );
    } else {
        eprintln!("    `{}` is already this release", release_dir.display());
    }
    // Verified and in place: from here on every record goes straight to the journal.
    run.journal.release()?;
    run.end(Phase::Unpack, build, t, true);

    // Shared files and static, after the template check.
    run.phase(Phase::Link, build, |run| {
        if let Some(c) = current_on_disk.filter(|c| *c != build) {
            if let Some(diff) = release::template_change(config, &layout.release(c), &release_dir)?
            {
                let template = profile.production_template.as_deref().unwrap_or("the production template");
                if !args.template_reviewed {
                    let shared = profile.shared_files.values().next().map_or_else(
                        || "the server's shared settings".to_owned(),
                        |name| format!("`{}`", layout.shared().join(name).display()),
                    );
                    bail!(BadInput(format!(
                        "`{template}` changed since {c:#}:\n{diff}make the same change in {shared}, then run again with `--template-reviewed`",
                    )));
                }
                run.report.warnings.push(format!(
                    "`{template}` changed; confirmed reviewed with --template-reviewed"
                ));
            }
        }
        release::link_shared(&layout, &profile, &release_dir)?;
        release::install_loader(&layout)?;
        // A link another release on disk has (same commit) is taken over only once this one
        // is live: until then it keeps serving what it served.
        let how = if current == Some(build) {
            release::StaticLink::TakeOver
        } else {
            release::StaticLink::Claim
        };
        if let Some(hash) = release::link_static(&layout, config, build, how)? {
            run.report
                .details
                .insert("version_hash".into(), hash.into());
        }
        Ok(())
    })?;

    // Its dependencies importable: the installed ones it carries, or (older releases) a venv
    // from its wheels.
    run.phase(Phase::Deps, build, |_| {
        let ready =
            release::ready_dependencies(config, &release_dir, &deploy_lock).with_context(|| {
                format!(
                    "making the release's dependencies ready failed; {}",
                    still_serving(current)
                )
            })?;
        match ready {
            release::DepsReady::Reused => eprintln!("    reusing its complete environment"),
            release::DepsReady::Linked => eprintln!("    its installed dependencies, without pip"),
            release::DepsReady::Pip => eprintln!("    a venv built from its wheels with pip"),
        }
        Ok(())
    })?;

    // What migrate is about to apply, as the two releases' manifests say (the database may
    // be behind them; Django decides in the end).
    if let Some(graph) = &sidecar.manifest.migrations {
        let live = previous.filter(|p| *p != build);
        let old = live.and_then(|p| release::manifest_of(&layout.release(p)).ok());
        let old_graph = old.as_ref().map(|s| s.manifest.migrations.clone());
        let (apply, known) = match old_graph {
            // A first install: every migration.
            None => (graph.beyond(&Default::default()), true),
            Some(Some(g)) => (graph.beyond(&g), true),
            // Packaged before graphs were recorded: unknown.
            Some(None) => (Vec::new(), false),
        };
        if known {
            if !apply.is_empty() {
                let names: Vec<String> = apply.iter().map(|s| s.id().to_string()).collect();
                eprintln!("    migrations to apply: {}", names.join(", "));
                run.migrations_to_apply = names;
            }
            run.report.set_detail(
                "migrations",
                &serde_json::json!({ "from": live, "apply": apply }),
            );
        }
    }

    // Migrate with the new code, before the swap.
    let migrated = run.phase(Phase::Migrate, build, |_| {
        procs::run_locked(
            &profile.migrate,
            &release_dir,
            &crate::schema::manage_env(config, &profile),
            &deploy_lock,
            "migrate:running",
        )
    });
    if let Err(e) = migrated {
        run.record_finished(build, current, Outcome::Failed, Some(format!("{e:#}")));
        return Err(e.context(format!(
            "migrate failed; `current` was not changed and {}",
            still_serving(current)
        )));
    }
    new_release.keep();

    let switched = switch(run, server, build, previous)?;
    let was_live = resumed.and_then(|r| r.previous).or(current);
    conclude(run, build, was_live, switched)
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
            eprintln!("    using the verified download in the cache");
            return Ok(cached);
        }
        std::fs::remove_file(&cached)?;
    }
    eprintln!("    {} from {}", archive.file_name, store.location());
    let artifact = store.fetch_artifact(sidecar, &dir)?;
    atomic::write_file(&dir.join(RELEASE_JSON), sidecar_bytes)?;
    Ok(artifact)
}
