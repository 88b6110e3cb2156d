//! The legacy release: the in-place checkout, adopted by `installer adopt` as
//! `releases/BuildNNNNNN` — two links into the checkout (`binarycrate` and `venv`, both its
//! `binarycrate/`, the project and its virtualenv at once) and `legacy.json` — so the
//! recommended uWSGI setup serves it through `current` like any release and a rollback to it is
//! the usual swap. It has no manifest: its links and build number are what is checked.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use common::build_number::BuildNumberLine;
use common::error::BadInput;
use common::{atomic, BuildNumber};
use serde::{Deserialize, Serialize};

use crate::config::InstallerConfig;
use crate::layout::Layout;
use crate::release;

/// The marker that makes a `releases/BuildNNNNNN` a legacy release (the adopted checkout).
pub use common::manifest::LEGACY_MARKER;
/// The checkout's Django project, which is also the directory of its virtualenv (`bin/`, `lib/`).
pub const PROJECT: &str = "binarycrate";

/// `releases/BuildNNNNNN/legacy.json`: what was adopted, from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Legacy {
    /// Always `"legacy"`.
    pub kind: String,
    pub build: BuildNumber,
    /// The checkout (the root when adopted).
    pub checkout: PathBuf,
    /// Unix seconds.
    #[serde(default)]
    pub adopted_at: i64,
    /// Shared name → what was copied (`files`, `bytes`).
    #[serde(default)]
    pub shared: BTreeMap<String, serde_json::Value>,
}

impl Legacy {
    /// The legacy marker of a release directory, when it is one.
    pub fn of(release_dir: &Path) -> Option<Legacy> {
        if !release::is_legacy(release_dir) {
            return None;
        }
        let text = fs::read(release_dir.join(LEGACY_MARKER)).ok()?;
        serde_json::from_slice::<Legacy>(&text)
            .ok()
            .filter(|l| l.kind == "legacy")
    }
}

/// Checks a legacy release instead of a manifest: its links still lead into a checkout whose
/// `build_number.py` names this build and whose virtualenv has its Python. Problems as
/// `(path, what)`, like [`release::Drift::changed`].
pub fn verify(
    config: &InstallerConfig,
    release_dir: &Path,
    build: BuildNumber,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    match Legacy::of(release_dir) {
        Some(l) if l.build == build => {}
        Some(l) => problems.push((LEGACY_MARKER.into(), format!("names {:#}", l.build))),
        None => problems.push((LEGACY_MARKER.into(), "missing or unreadable".into())),
    }
    for link in [PROJECT, "venv"] {
        let path = release_dir.join(link);
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            problems.push((link.into(), "not a link into the checkout".into()));
        } else if !path.is_dir() {
            problems.push((link.into(), "leads nowhere (the checkout moved?)".into()));
        }
    }
    if !release_dir.join(PROJECT).join("manage.py").is_file() {
        problems.push((format!("{PROJECT}/manage.py"), "missing".into()));
    }
    if !release_dir.join("venv/bin/python").exists() {
        problems.push(("venv/bin/python".into(), "missing".into()));
    }
    let file = build_number_file(config);
    match read_build_number(&release_dir.join(&file)) {
        Ok(b) if b == build => {}
        Ok(b) => problems.push((file, format!("says {:#}", b))),
        Err(e) => problems.push((file, format!("{e:#}"))),
    }
    problems
}

/// The settings package's `build_number.py`, beside the production template.
pub fn build_number_file(config: &InstallerConfig) -> String {
    let template = Path::new(&config.production_template);
    atomic::parent_of(template)
        .join("build_number.py")
        .display()
        .to_string()
}

/// `BUILD_NUMBER = 'NNNNNN'` from a `build_number.py`.
pub fn read_build_number(path: &Path) -> anyhow::Result<BuildNumber> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(BadInput(format!(
            "`{}` is missing: the checkout must say which build it runs",
            path.display()
        ))),
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    };
    BuildNumberLine::build_in(text.as_bytes())
        .map_err(|m| BadInput(format!("`{}` {m}", path.display())).into())
}

/// `releases/BuildNNNNNN`: `binarycrate` and `venv` link to the checkout's `binarycrate/`, and
/// `legacy.json` says what it is; built under a temporary name and renamed into place.
pub fn create(
    layout: &Layout,
    build: BuildNumber,
    copied: &BTreeMap<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let dir = layout.release(build);
    let tmp = atomic::temp_sibling(&dir, "adopt");
    let result = (|| -> anyhow::Result<()> {
        fs::create_dir(&tmp).with_context(|| format!("cannot create `{}`", tmp.display()))?;
        // Relative, like `current`, so the root can move.
        let target = Path::new("../..").join(PROJECT);
        for link in [PROJECT, "venv"] {
            std::os::unix::fs::symlink(&target, tmp.join(link))
                .with_context(|| format!("cannot create `{}`", tmp.join(link).display()))?;
        }
        let legacy = Legacy {
            kind: "legacy".into(),
            build,
            checkout: layout.root.clone(),
            adopted_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            shared: copied.clone(),
        };
        let mut text = serde_json::to_vec_pretty(&legacy)?;
        text.push(b'\n');
        atomic::write_file(&tmp.join(LEGACY_MARKER), &text)?;
        atomic::fsync_dir(&tmp)?;
        atomic::rename(&tmp, &dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = atomic::remove_tree(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_numbers_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("build_number.py");
        for (text, ok) in [
            ("BUILD_NUMBER = '000003'\n", Some(3)),
            ("# build\nBUILD_NUMBER=\"000042\"\n", Some(42)),
            // As `builder prepare` writes it (and `builder package` reads it).
            ("BUILD_NUMBER = '000006'  # set by builder\n", Some(6)),
            ("BUILD_NUMBER = '3'\n", None),
            ("BUILD_NUMBER = '000000'\n", None),
            ("BUILD_NUMBER = 000003\n", None),
            ("BUILD_NUMBER = '000003'\nBUILD_NUMBER = '000004'\n", None),
            ("VERSION = '000003'\n", None),
        ] {
            fs::write(&p, text).unwrap();
            let got = read_build_number(&p);
            match ok {
                Some(n) => assert_eq!(got.unwrap(), BuildNumber::new(n).unwrap(), "{text}"),
                None => {
                    let e = got.unwrap_err();
                    assert!(e.is::<BadInput>(), "{text}: {e:#}");
                }
            }
        }
        fs::remove_file(&p).unwrap();
        assert!(read_build_number(&p).unwrap_err().is::<BadInput>());
    }
}
