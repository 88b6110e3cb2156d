//! `builder publish`: an artifact, its sidecar and build log into the artifact store.

use std::path::Path;

use anyhow::Context;
use common::error::BadInput;
use common::manifest::{BUILD_LOG_JSON, RELEASE_JSON, RELEASE_SIGNATURE};
use common::report::ExitCode;
use common::store::{ArtifactStore, PublishOutcome, SignatureUpload};
use common::{atomic, Sidecar};

use crate::cli::PublishArgs;
use crate::signing;
use crate::store::open_store;

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
    let signature = local_signature(&sidecar_path, &sidecar)?;
    let store = open_store(&args.store, args.repo.repo.as_deref())?;
    let build = sidecar.manifest.build;
    eprintln!(
        "publishing {build:#} ({}) to {}",
        archive.file_name,
        store.location()
    );
    let published = store.publish_signed(&args.artifact, &sidecar, signature.as_deref())?;
    let signature_json = match &published.signature {
        SignatureUpload::Unsigned => serde_json::json!({ "state": "unsigned" }),
        SignatureUpload::Uploaded { key } => serde_json::json!({ "state": "uploaded", "key": key }),
        SignatureUpload::AlreadyThere { key } => {
            serde_json::json!({ "state": "already_there", "key": key })
        }
    };
    match &published.signature {
        SignatureUpload::Unsigned => {
            eprintln!("unsigned: there is no `{RELEASE_SIGNATURE}` beside the artifact (servers that require signatures will refuse it)")
        }
        SignatureUpload::Uploaded { key } => eprintln!("signature at `{key}`"),
        SignatureUpload::AlreadyThere { key } => {
            eprintln!("the identical signature is already at `{key}`")
        }
    }
    let newly = match &published.outcome {
        PublishOutcome::Published {
            sidecar_key,
            artifact_key,
        } => {
            eprintln!("published `{artifact_key}` and `{sidecar_key}`");
            true
        }
        PublishOutcome::AlreadyPublished { sidecar_key } => {
            eprintln!("{build:#} is already published with the identical release (`{sidecar_key}`): nothing to do");
            false
        }
    };
    let log = dir.join(BUILD_LOG_JSON);
    let mut log_key = None;
    if log.is_file() {
        let bytes =
            std::fs::read(&log).with_context(|| format!("cannot read `{}`", log.display()))?;
        let key = store.put_build_log(&sidecar.manifest.app, build, &bytes)?;
        eprintln!("build log at `{key}`");
        log_key = Some(key);
    }
    let location = format!(
        "{}/{}",
        store.location(),
        ArtifactStore::sidecar_key(&sidecar.manifest.app, build)
    );
    if args.json {
        let out = serde_json::json!({
            "build": build,
            "store": store.location(),
            "sidecar": location,
            "artifact_key": format!(
                "{}{}",
                ArtifactStore::build_prefix(&sidecar.manifest.app, build),
                archive.file_name
            ),
            "published": newly,
            "signature": signature_json,
            "build_log_key": log_key,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{location}");
    }
    Ok(ExitCode::Success)
}

/// The `release.json.minisig` beside the sidecar, if any, after checking that it is for this
/// sidecar (its trusted comment names the archive): a leftover from another packaging would be
/// published only to be refused by every server.
fn local_signature(sidecar_path: &Path, sidecar: &Sidecar) -> anyhow::Result<Option<Vec<u8>>> {
    let path = atomic::parent_of(sidecar_path).join(RELEASE_SIGNATURE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    };
    let text = String::from_utf8_lossy(&bytes);
    let expected = signing::trusted_comment(sidecar);
    let found = text
        .lines()
        .find_map(|l| l.strip_prefix("trusted comment: "))
        .unwrap_or_default();
    if found != expected {
        return Err(BadInput(format!(
            "`{}` does not belong to the `{RELEASE_JSON}` beside it (its trusted comment is `{}`, expected `{}`): sign again with `builder sign {}`, or remove it to publish unsigned",
            path.display(),
            found.escape_debug(),
            expected.escape_debug(),
            sidecar_path.display()
        ))
        .into());
    }
    Ok(Some(bytes))
}
