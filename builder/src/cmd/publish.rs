//! `builder publish`: an artifact, its sidecar and build log into the artifact store.

use std::path::Path;

use anyhow::Context;
use common::error::BadInput;
use common::manifest::{BUILD_LOG_JSON, RELEASE_JSON};
use common::report::ExitCode;
use common::store::{ArtifactStore, PublishOutcome, StoreOptions};
use common::{atomic, Sidecar};

use crate::cli::{PublishArgs, StoreArgs};
use crate::config::DeployConfig;
use crate::repo;

pub fn run(args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let dir = atomic::parent_of(&args.artifact);
    let sidecar_path = dir.join(RELEASE_JSON);
    let sidecar = Sidecar::read(&sidecar_path)
        .context("cannot publish without the artifact's `release.json` beside it")?;
    let archive = sidecar.archive.as_ref().ok_or_else(|| {
        BadInput(format!(
            "`{}` has no archive section",
            sidecar_path.display()
        ))
    })?;
    let name = args
        .artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name != archive.file_name {
        return Err(BadInput(format!(
            "`{}` beside it describes `{}`, not `{name}`: publish the artifact its sidecar names",
            sidecar_path.display(),
            archive.file_name
        ))
        .into());
    }
    let store = open_store(&args.store, args.repo.repo.as_deref())?;
    let build = sidecar.manifest.build;
    eprintln!(
        "publishing {build:#} ({}) to {}",
        archive.file_name,
        store.location()
    );
    match store.publish(&args.artifact, &sidecar)? {
        PublishOutcome::Published {
            sidecar_key,
            artifact_key,
        } => {
            eprintln!("published `{artifact_key}` and `{sidecar_key}`");
        }
        PublishOutcome::AlreadyPublished { sidecar_key } => {
            eprintln!("{build:#} is already published with the identical release (`{sidecar_key}`): nothing to do");
        }
    }
    let log = dir.join(BUILD_LOG_JSON);
    if log.is_file() {
        let bytes =
            std::fs::read(&log).with_context(|| format!("cannot read `{}`", log.display()))?;
        let key = store.put_build_log(&sidecar.manifest.app, build, &bytes)?;
        eprintln!("build log at `{key}`");
    }
    println!(
        "{}/{}",
        store.location(),
        ArtifactStore::sidecar_key(&sidecar.manifest.app, build)
    );
    Ok(ExitCode::Success)
}

/// `--store`, else `store` in the repository's `deploy.toml`, else `artifacts/` at its root;
/// relative paths are relative to the repository root.
pub fn open_store(args: &StoreArgs, repo_arg: Option<&Path>) -> anyhow::Result<ArtifactStore> {
    let options = StoreOptions {
        s3_endpoint: args.s3_endpoint.clone(),
        s3_path_style: args.s3_endpoint.is_some(),
        ..Default::default()
    };
    let url = match &args.store {
        Some(url) => url.clone(),
        None => {
            let root = repo::root(repo_arg).context(
                "no `--store` given, and the default store is found through the repository",
            )?;
            let configured = DeployConfig::load_dir(&root)?.store;
            if configured.contains("://") || Path::new(&configured).is_absolute() {
                configured
            } else {
                root.join(configured).display().to_string()
            }
        }
    };
    Ok(ArtifactStore::open(&url, &options)?)
}
