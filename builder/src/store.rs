//! Where releases are published and read, as the builder opens the store (`--store`, else
//! `deploy.toml`, else `artifacts/`) and as the servers will read it; and whose releases they
//! are (the app name from `deploy.toml`).

use std::path::Path;

use anyhow::Context;
use common::error::BadInput;
use common::store::{ArtifactStore, StoreOptions};

use crate::cli::StoreArgs;
use crate::config::DeployConfig;
use crate::fleet::TransportKind;
use crate::repo;

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

/// The store the servers will read, opened and checked. Through SSM the builder's default store
/// (a directory on this machine) is refused: servers cannot read it.
pub fn open_store_for_servers(
    args: &StoreArgs,
    repo: Option<&Path>,
    transport: TransportKind,
) -> anyhow::Result<ArtifactStore> {
    let store = open_store(args, repo)?;
    let location = store.location();
    if transport == TransportKind::Ssm && args.store.is_none() && !location.starts_with("s3://") {
        return Err(BadInput(format!(
            "the default store `{location}` is on this machine, where the servers cannot read it: \
             pass `--store s3://bucket/prefix` (or set `store` in deploy.toml), or \
             `--store file:///path` explicitly for a store at the same path on every server"
        ))
        .into());
    }
    Ok(store)
}

/// The application's name from `deploy.toml` in the repository, else the default.
pub fn app_name(repo_arg: Option<&Path>) -> anyhow::Result<String> {
    Ok(app_config(repo_arg)?.app)
}

/// `deploy.toml` of the repository, else the defaults (a fleet command run outside any
/// repository still works, for the default app).
pub fn app_config(repo_arg: Option<&Path>) -> anyhow::Result<DeployConfig> {
    Ok(match repo::root(repo_arg) {
        Ok(root) => DeployConfig::load_dir(&root)?,
        Err(_) if repo_arg.is_none() => DeployConfig::default(),
        Err(e) => return Err(e),
    })
}
