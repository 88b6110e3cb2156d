//! `builder deploy`: check the build is published, then have the installer activate it on every
//! target (see [`crate::fleet`]).

use std::path::Path;

use common::error::{BadInput, StoreError};
use common::report::ExitCode;
use common::store::ArtifactStore;

use crate::cli::{DeployArgs, StoreArgs};
use crate::cmd::publish::open_store;
use crate::config::DeployConfig;
use crate::fleet::{self, Action, TransportKind};
use crate::repo;

pub fn run(args: &DeployArgs) -> anyhow::Result<ExitCode> {
    let targets = fleet::run::targets(&args.fleet.reach)?;
    let app = app_name(args.repo.repo.as_deref())?;
    let build = args.build;

    // The store the installer will read: checked here, passed to it as an absolute URL.
    let store = open_store_for_servers(
        &args.store,
        args.repo.repo.as_deref(),
        args.fleet.reach.transport,
    )?;
    let location = store.location();
    match store.fetch_sidecar(&app, build) {
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => {
            return Err(BadInput(format!(
                "{build:#} of {app} is not published in `{location}`: package and publish it first \
                 (`builder package --tag {build:#}`, then `builder publish`), or name the store it is in with `--store`"
            ))
            .into());
        }
        Err(e) => return Err(e.into()),
    }
    eprintln!("{build:#} of {app} is published in {location}");
    // The S3 store owns an I/O runtime of its own: drop it before the fleet's starts.
    drop(store);

    let action = Action::Deploy {
        build,
        store: Some(location),
        s3_endpoint: args.store.s3_endpoint.clone(),
        template_reviewed: args.template_reviewed,
    };
    let plan = fleet::run::plan(&args.fleet, targets, action, &app, args.lock_timeout)?;
    fleet::run::execute(plan)
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
    Ok(match repo::root(repo_arg) {
        Ok(root) => DeployConfig::load_dir(&root)?.app,
        Err(_) if repo_arg.is_none() => common::DEFAULT_APP.to_owned(),
        Err(e) => return Err(e),
    })
}
