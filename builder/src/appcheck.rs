//! An application tree checked against its app profile, as the servers will rely on it: the
//! project, its WSGI and settings modules (before a build: `builder check`), then the collected
//! static files, the version-hash file and the absence of the servers' own files (after it).

use std::fs;
use std::path::Path;

use anyhow::bail;
use common::error::BadInput;
use common::manifest::AppProfile;

use crate::config::DEPLOY_TOML;

fn fix() -> String {
    format!("check `[django]` in `{DEPLOY_TOML}`")
}

/// The project: `manage.py`, the WSGI module, the settings module (which may be a server's own
/// file, linked in on the server).
pub fn project(tree: &Path, profile: &AppProfile) -> anyhow::Result<()> {
    let fix = fix();
    let project = tree.join(&profile.project_dir);
    if !project.join("manage.py").is_file() {
        bail!(BadInput(format!(
            "there is no `{}`: {fix} (`manage_py`)",
            Path::new(&profile.project_dir).join("manage.py").display()
        )));
    }
    for (key, module) in [
        ("wsgi_module", &profile.wsgi_module),
        ("settings_module", &profile.settings_module),
    ] {
        let base = project.join(module.replace('.', "/"));
        let shared = |file: &Path| {
            file.strip_prefix(tree)
                .ok()
                .and_then(Path::to_str)
                .is_some_and(|rel| profile.shared_files.contains_key(rel))
        };
        let module_file = base.with_extension("py");
        if !module_file.is_file() && !shared(&module_file) && !base.join("__init__.py").is_file() {
            bail!(BadInput(format!(
                "the module `{module}` (`{key}`) is not in the project `{}`: {fix}",
                if profile.project_dir.is_empty() {
                    "."
                } else {
                    &profile.project_dir
                }
            )));
        }
    }
    if let Some(t) = profile
        .production_template
        .as_ref()
        .filter(|t| !tree.join(t).is_file())
    {
        bail!(BadInput(format!(
            "there is no `{t}` (`production_template`): {fix}"
        )));
    }
    Ok(())
}

/// What a build must have left: the collected static files and the version-hash file; and none
/// of the servers' own files (it would be replaced on the server anyway, and is most likely a
/// secret committed by mistake).
pub fn built(tree: &Path, profile: &AppProfile) -> anyhow::Result<()> {
    let fix = fix();
    if !tree.join(&profile.static_root).is_dir() {
        bail!(BadInput(format!(
            "collectstatic left no `{}`: {fix} (`static_root` must be the settings' STATIC_ROOT)",
            profile.static_root
        )));
    }
    if !tree.join(&profile.version_hash_file).is_file() {
        bail!(BadInput(format!(
            "the release has no `{}` (`version_hash_file`): {fix}",
            profile.version_hash_file
        )));
    }
    if let Some(inside) = profile
        .shared_files
        .keys()
        .find(|f| fs::symlink_metadata(tree.join(f)).is_ok())
    {
        bail!(BadInput(format!(
            "`{inside}` is in the tag, but it is a server's own file (`shared_files`): remove it from the repository (and add it to `.gitignore`), each server keeps its own in `shared/`"
        )));
    }
    Ok(())
}
