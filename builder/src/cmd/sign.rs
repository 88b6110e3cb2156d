//! `builder sign`: signs an already packaged `release.json` into `release.json.minisig`.

use std::path::PathBuf;

use anyhow::bail;
use common::error::BadInput;
use common::manifest::RELEASE_JSON;
use common::report::ExitCode;

use crate::cli::SignArgs;
use crate::config::{DeployConfig, DEPLOY_TOML};
use crate::{repo, signing};

pub fn run(args: &SignArgs) -> anyhow::Result<ExitCode> {
    let sidecar = sidecar_path(&args.release);
    if !sidecar.is_file() {
        bail!(BadInput(format!(
            "`{}` is not there: name a packaged artifact, its `{RELEASE_JSON}`, or their directory",
            sidecar.display()
        )));
    }
    // `deploy.toml` is consulted only when neither the option nor the environment names a key.
    let (config, origin, root) = match repo::root(args.repo.repo.as_deref()) {
        Ok(root) => (
            DeployConfig::load_dir(&root)?,
            root.join(DEPLOY_TOML).display().to_string(),
            root,
        ),
        Err(e) if args.repo.repo.is_some() => return Err(e),
        Err(_) => (
            DeployConfig::default(),
            DEPLOY_TOML.to_owned(),
            std::env::current_dir()?,
        ),
    };
    let Some(choice) = signing::choose_key(
        args.signing.signing_key.as_deref(),
        args.signing.signing_password_env.as_deref(),
        &config.signing,
        &origin,
        &root,
    )?
    else {
        bail!(BadInput(format!(
            "no signing key: pass `--signing-key FILE`, set `{}`, or `[signing] secret_key` in `{DEPLOY_TOML}` (make one with `builder keygen`)",
            signing::SIGNING_KEY_ENV
        )));
    };
    let key = choice.load()?;
    let written = signing::sign_sidecar(&key, &sidecar)?;
    eprintln!(
        "signed `{}` with key {} (`{}`)",
        sidecar.display(),
        key.key_id(),
        key.path().display()
    );
    if args.json {
        let out = serde_json::json!({
            "sidecar": sidecar,
            "signature": written,
            "key_id": key.key_id(),
            "key": key.path(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", written.display());
    }
    Ok(ExitCode::Success)
}

/// `release.json` for an artifact, a sidecar or a directory.
fn sidecar_path(given: &std::path::Path) -> PathBuf {
    if given.is_dir() {
        given.join(RELEASE_JSON)
    } else if given.file_name().is_some_and(|n| n == RELEASE_JSON) {
        given.to_owned()
    } else {
        common::atomic::parent_of(given).join(RELEASE_JSON)
    }
}
