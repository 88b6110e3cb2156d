//! The dependency cache: `deps/` trees as `builder package` installed and compiled them, kept by
//! a key made of everything that decides their bytes (the wheels by content, the target, the
//! Python and pip that installed and compiled them), so that packaging a tag whose requirements
//! did not change skips pip and compileall.
//!
//! An entry is a release archive of the tree (the safe writer and reader of `common`): storing
//! it is packing, restoring it is the verified unpack, so an entry that was damaged or edited
//! is refused entry by entry and simply rebuilt. Entries are never trusted by name alone: the
//! key hashes the wheels' BLAKE3, not their names.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use common::archive::reader::{unpack, UnpackOptions};
use common::archive::writer::{pack, PackOptions};
use common::{atomic, BuildNumber, ReleaseManifest, Sidecar};

/// Environment variable naming the cache directory (default: `$XDG_CACHE_HOME/binarycrate`,
/// else `~/.cache/binarycrate`).
pub const CACHE_DIR_ENV: &str = "BINARYCRATE_CACHE_DIR";

/// Bumped whenever what is cached for a key changes meaning.
const FORMAT: &str = "binarycrate deps cache 1";

/// Where entries live: `<dir>/deps/<key>/` holding one artifact and its `release.json`.
pub struct DepCache {
    dir: PathBuf,
}

impl DepCache {
    /// The cache this machine uses, if a place for it can be named.
    pub fn open() -> Option<Self> {
        let dir = std::env::var_os(CACHE_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .filter(|v| !v.is_empty())
                    .map(|d| PathBuf::from(d).join("binarycrate"))
            })
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache/binarycrate"))
            })?;
        Some(Self {
            dir: dir.join("deps"),
        })
    }

    /// The key for these parts (each a line: what was installed, for what, with what).
    pub fn key(parts: &[String]) -> String {
        let mut text = String::from(FORMAT);
        for p in parts {
            text.push('\n');
            text.push_str(p);
        }
        common::Blake3Hash::of(text.as_bytes()).to_string()
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Unpacks entry `key` into `dest` (which must not exist), verified file by file. `false`
    /// when there is no such entry or it does not verify (it is removed then, to be rebuilt).
    pub fn restore(&self, key: &str, dest: &Path) -> anyhow::Result<bool> {
        let entry = self.entry(key);
        let Ok(sidecar) = Sidecar::read(&entry.join(common::manifest::RELEASE_JSON)) else {
            return Ok(false);
        };
        let Some(name) = sidecar.archive.as_ref().map(|a| a.file_name.clone()) else {
            return Ok(false);
        };
        // Into the staging directory, which a crash throws away: no filesystem sync.
        let options = UnpackOptions {
            durable: false,
            ..UnpackOptions::default()
        };
        match unpack(&entry.join(name), &sidecar, dest, &options) {
            Ok(_) => {
                // The archive's own copy of the sidecar is not part of the tree.
                let embedded = dest.join(common::manifest::RELEASE_JSON);
                fs::remove_file(&embedded)
                    .with_context(|| format!("cannot remove `{}`", embedded.display()))?;
                Ok(true)
            }
            Err(e) => {
                eprintln!(
                    "warning: the cached dependencies `{}` do not verify ({e}); installing them again",
                    entry.display()
                );
                let _ = atomic::remove_tree(&entry);
                Ok(false)
            }
        }
    }

    /// Keeps `tree` as entry `key`: packed beside the entry, then renamed into place, so a
    /// reader sees a whole entry or none. An entry already there is kept.
    pub fn store(&self, key: &str, tree: &Path) -> anyhow::Result<()> {
        let entry = self.entry(key);
        if entry.exists() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create `{}`", self.dir.display()))?;
        let tmp = atomic::temp_sibling(&entry, "store");
        let build = BuildNumber::new(1).expect("1 is a build number");
        let packed = pack(
            tree,
            ReleaseManifest::new("deps", build, 0),
            &tmp,
            &PackOptions::default(),
        );
        let stored = packed
            .map_err(anyhow::Error::from)
            .and_then(|_| Ok(atomic::rename(&tmp, &entry)?));
        if stored.is_err() {
            let _ = atomic::remove_tree(&tmp);
        }
        stored.with_context(|| format!("cannot keep the dependencies in `{}`", entry.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_tree_comes_back_whole_and_a_damaged_one_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DepCache {
            dir: tmp.path().join("cache/deps"),
        };
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("pkg/__pycache__")).unwrap();
        fs::write(tree.join("pkg/__init__.py"), b"x = 1\n").unwrap();
        fs::write(
            tree.join("pkg/__pycache__/__init__.cpython-311.pyc"),
            b"pyc",
        )
        .unwrap();
        let key = DepCache::key(&["django-5.2 abc".into()]);
        assert_ne!(key, DepCache::key(&["django-5.2 abd".into()]));
        assert!(!cache.restore(&key, &tmp.path().join("none")).unwrap());

        cache.store(&key, &tree).unwrap();
        let back = tmp.path().join("back");
        assert!(cache.restore(&key, &back).unwrap());
        assert_eq!(fs::read(back.join("pkg/__init__.py")).unwrap(), b"x = 1\n");
        assert!(back
            .join("pkg/__pycache__/__init__.cpython-311.pyc")
            .is_file());
        assert!(!back.join("release.json").exists());

        // Damaged: the archive no longer matches its sidecar; nothing is restored and the
        // entry is gone, to be rebuilt.
        let entry = cache.entry(&key);
        let artifact = fs::read_dir(&entry)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
            .unwrap();
        let mut bytes = fs::read(&artifact).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&artifact, bytes).unwrap();
        let again = tmp.path().join("again");
        assert!(!cache.restore(&key, &again).unwrap());
        assert!(!again.exists() && !entry.exists());
    }
}
