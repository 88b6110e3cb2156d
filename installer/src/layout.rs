//! The server layout: releases, shared files, the `current` link, static links
//! and the installer's own `.deploy/` directory.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use common::{atomic, BuildNumber};

/// Paths under the root, in one place.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub fn release(&self, build: BuildNumber) -> PathBuf {
        self.releases().join(build.tag())
    }

    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }

    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn static_dir(&self) -> PathBuf {
        self.root.join("static")
    }

    /// Dependency trees shared by the releases that install the same ones, by content.
    pub fn deps_trees(&self) -> PathBuf {
        self.root.join("deps")
    }

    pub fn deploy(&self) -> PathBuf {
        self.root.join(".deploy")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.deploy().join("lock")
    }

    pub fn journal(&self) -> PathBuf {
        self.deploy().join("journal.jsonl")
    }

    pub fn cache(&self) -> PathBuf {
        self.deploy().join("cache")
    }

    /// The cache folder of one build's downloads.
    pub fn cache_for(&self, build: BuildNumber) -> PathBuf {
        self.cache().join(build.tag())
    }

    /// Refuses (bad input, nothing created) a root that does not exist, or, when `releases` is
    /// asked for, one that holds no `releases/`: a mistyped `root` must not become a new,
    /// empty layout.
    pub fn check_exists(&self, releases: bool) -> anyhow::Result<()> {
        if !self.root.is_dir() {
            anyhow::bail!(common::error::BadInput(format!(
                "the root `{}` does not exist: check `root` in the installer configuration (or create the directory for a first activation)",
                self.root.display()
            )));
        }
        if releases && !self.releases().is_dir() {
            anyhow::bail!(common::error::BadInput(format!(
                "`{}` holds no releases (no `releases/`): check `root` in the installer configuration; nothing was changed",
                self.root.display()
            )));
        }
        Ok(())
    }

    /// Creates the directories the installer writes into (not `shared/`'s content).
    pub fn ensure(&self) -> anyhow::Result<()> {
        for dir in [
            self.releases(),
            self.shared(),
            self.static_dir(),
            self.deploy(),
            self.cache(),
        ] {
            fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
        }
        Ok(())
    }

    /// The build `current` points at, if any. A `current` that is not a link to
    /// `releases/BuildNNNNNN` is an error: something other than the installer made it.
    pub fn current_build(&self) -> anyhow::Result<Option<BuildNumber>> {
        let link = self.current();
        let target = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("`{}` is not a symlink", link.display()))
            }
        };
        let text = target.to_string_lossy();
        let name = text.strip_prefix("releases/").unwrap_or(&text);
        BuildNumber::parse(name)
            .ok()
            .filter(|b| b.tag() == name)
            .map(Some)
            .with_context(|| {
                format!(
                    "`{}` points to `{text}`, not to `releases/BuildNNNNNN`",
                    link.display()
                )
            })
    }

    /// Points `current` at a release with one rename (relative link, so the root can move).
    pub fn set_current(&self, build: BuildNumber) -> anyhow::Result<()> {
        let target = Path::new("releases").join(build.tag());
        atomic::replace_symlink(&target, &self.current())?;
        Ok(())
    }

    /// Builds that have a directory under `releases/`, ascending.
    pub fn releases_on_disk(&self) -> anyhow::Result<Vec<BuildNumber>> {
        let mut builds = Vec::new();
        let dir = self.releases();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(builds),
            Err(e) => return Err(e).with_context(|| format!("cannot list `{}`", dir.display())),
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Ok(b) = BuildNumber::parse(&name) {
                if b.tag() == name {
                    builds.push(b);
                }
            }
        }
        builds.sort();
        Ok(builds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_is_a_relative_link_swapped_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.ensure().unwrap();
        assert_eq!(layout.current_build().unwrap(), None);
        let b1 = BuildNumber::parse("Build000001").unwrap();
        let b2 = BuildNumber::parse("Build000002").unwrap();
        fs::create_dir(layout.release(b1)).unwrap();
        fs::create_dir(layout.release(b2)).unwrap();
        layout.set_current(b1).unwrap();
        assert_eq!(
            fs::read_link(layout.current()).unwrap(),
            Path::new("releases/Build000001")
        );
        layout.set_current(b2).unwrap();
        assert_eq!(layout.current_build().unwrap(), Some(b2));
        assert_eq!(layout.releases_on_disk().unwrap(), vec![b1, b2]);
        std::os::unix::fs::symlink("elsewhere", dir.path().join("x")).unwrap();
        fs::rename(dir.path().join("x"), layout.current()).unwrap();
        assert!(layout.current_build().is_err());
    }
}
