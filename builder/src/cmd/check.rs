//! `builder check`: every check `builder package` makes that needs no build, on the working
//! tree — `deploy.toml`, the requirements, the project and its modules, the build-number file,
//! the front end's pieces, and that the servers' own files are not committed.

use anyhow::Context;
use common::build_number::BuildNumberLine;
use common::error::BadInput;
use common::report::ExitCode;

use crate::cli::CheckArgs;
use crate::config::{DeployConfig, DEPLOY_TOML};
use crate::{appcheck, repo, requirements};

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let root = repo::root(args.repo.repo.as_deref())?;
    let config = DeployConfig::load_dir(&root)?;
    let profile = config.django.profile();
    let mut problems: Vec<String> = Vec::new();
    let mut checks: Vec<serde_json::Value> = Vec::new();
    let mut ok = |what: &str, result: anyhow::Result<String>| {
        match &result {
            Ok(detail) => eprintln!("ok       {what}{detail}"),
            Err(e) => {
                eprintln!("problem  {what}: {e:#}");
                problems.push(format!("{what}: {e:#}"));
            }
        }
        checks.push(match result {
            Ok(detail) => serde_json::json!({
                "check": what,
                "ok": true,
                "detail": detail.trim_start_matches([' ', ':']).to_owned(),
            }),
            Err(e) => {
                serde_json::json!({ "check": what, "ok": false, "problem": format!("{e:#}") })
            }
        });
    };
    ok(
        DEPLOY_TOML,
        Ok(format!(
            " (app `{}`, {})",
            config.app,
            if root.join(DEPLOY_TOML).is_file() {
                "read"
            } else {
                "none: the defaults"
            }
        )),
    );
    let req = &config.python.requirements;
    ok(
        req,
        std::fs::read_to_string(root.join(req))
            .context("cannot read it (`python.requirements`)")
            .and_then(|text| requirements::parse(&text, req).map_err(|m| BadInput(m).into()))
            .map(|r| {
                format!(
                    ": {} pinned{}",
                    r.requirements.len(),
                    if r.hashed() {
                        ", with hashes"
                    } else {
                        ", without hashes"
                    }
                )
            }),
    );
    ok(
        "the project",
        appcheck::project(&root, &profile).map(|()| {
            format!(
                ": `{}`, WSGI `{}`, settings `{}`",
                config.django.manage_py, profile.wsgi_module, profile.settings_module
            )
        }),
    );
    let bn = &config.django.build_number_file;
    ok(
        bn,
        std::fs::read(root.join(bn))
            .with_context(|| {
                "cannot read it (`django.build_number_file`; `builder init` creates one)".to_owned()
            })
            .and_then(|bytes| BuildNumberLine::find(&bytes).map_err(|m| BadInput(m).into()))
            .map(|line| format!(": BUILD_NUMBER {:06}", line.value)),
    );
    if config.frontend.enabled {
        let missing: Vec<String> = std::iter::once(config.frontend.bundler.clone())
            .chain(
                config
                    .frontend
                    .modules
                    .iter()
                    .filter(|m| !m.optional)
                    .map(|m| m.path.clone()),
            )
            .filter(|p| !root.join(p).exists())
            .collect();
        ok(
            "the front end",
            if missing.is_empty() {
                Ok(String::new())
            } else {
                Err(BadInput(format!(
                    "missing {} (or set `frontend.enabled = false`)",
                    missing.join(", ")
                ))
                .into())
            },
        );
    }
    let tracked = tracked(&root, profile.shared_files.keys());
    ok(
        "the servers' own files",
        match tracked {
            Ok(list) if list.is_empty() => Ok(": none committed".into()),
            Ok(list) => Err(BadInput(format!(
                "committed: {} — each server keeps its own in `shared/`; remove them from git (`git rm --cached`) and add them to `.gitignore`",
                list.join(", ")
            ))
            .into()),
            Err(e) => Err(e),
        },
    );
    if args.json {
        let out = serde_json::json!({ "passed": problems.is_empty(), "checks": checks });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if problems.is_empty() {
        eprintln!("every check that needs no build passed");
        Ok(ExitCode::Success)
    } else {
        Err(BadInput(format!(
            "{} problem{} to fix before `builder package`:\n  {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  ")
        ))
        .into())
    }
}

/// Which of `paths` git tracks in the repository at `root`.
fn tracked<'a>(
    root: &std::path::Path,
    paths: impl Iterator<Item = &'a String>,
) -> anyhow::Result<Vec<String>> {
    let repo = git2::Repository::open(root)
        .with_context(|| format!("cannot open the git repository `{}`", root.display()))?;
    let index = repo.index().context("cannot read the git index")?;
    Ok(paths
        .filter(|p| index.get_path(std::path::Path::new(p), 0).is_some())
        .cloned()
        .collect())
}
