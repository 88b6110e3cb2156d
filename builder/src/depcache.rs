//! The dependency cache: `deps/` trees as `builder package` installed and compiled them, kept by
//! a key made of everything that decides their bytes (the wheels by content, the target, the
//! Python and pip that installed and compiled them), and the wheel sets that hash-pinned
//! requirements resolve to (keyed by the requirements' hashes), so that packaging a tag whose
//! requirements did not change skips pip and compileall.
//!
//! An entry is the tree itself (`tree/`) and its index (`index.json`: every entry with its kind,
//! mode and BLAKE3). Restoring re-hashes every file against the index and hard-links it into the
//! staging directory (creating thousands of files is what costs; linking them does not); an
//! entry that does not match its index — damaged, edited, or changed through a staging copy — is
//! removed and rebuilt. Entries are never trusted by name alone: the key hashes the wheels'
//! BLAKE3, not their names.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use common::manifest::{validate_relative_path, FileEntry, Mode};
use common::{atomic, Blake3Hash};

/// Environment variable naming the cache directory (default: `$XDG_CACHE_HOME/binarycrate`,
/// else `~/.cache/binarycrate`).
pub const CACHE_DIR_ENV: &str = "BINARYCRATE_CACHE_DIR";

/// Bumped whenever what is cached for a key changes meaning.
const FORMAT: &str = "binarycrate deps cache 2";

/// What a cache holds.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Installed and compiled `deps/` trees, keyed by the wheels' content.
    Deps,
    /// Wheel sets, keyed by requirements that pin every file by hash.
    Wheels,
}

impl Kind {
    fn dir_name(self) -> &'static str {
        match self {
            Kind::Deps => "deps",
            Kind::Wheels => "wheels",
        }
    }
}

/// Where entries live: `<dir>/<kind>/<key>/` holding `tree/` and `index.json`.
pub struct DepCache {
    dir: PathBuf,
}

impl DepCache {
    /// The cache of `kind` this machine uses, if a place for it can be named.
    pub fn open(kind: Kind) -> Option<Self> {
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
            dir: dir.join(kind.dir_name()),
        })
    }

    /// The key for these parts (each a line: what was installed, for what, with what).
    pub fn key(parts: &[String]) -> String {
        let mut text = String::from(FORMAT);
        for p in parts {
            text.push('\n');
            text.push_str(p);
        }
        Blake3Hash::of(text.as_bytes()).to_string()
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Where the archive writer keeps the compressed pieces of entry `key`'s tree (`pieces/`
    /// beside `tree/`: they go when the entry does), once the entry is there.
    pub fn pieces(&self, key: &str) -> Option<PathBuf> {
        let entry = self.entry(key);
        entry
            .join("index.json")
            .is_file()
            .then(|| entry.join("pieces"))
    }

    /// Puts entry `key` at `dest` (which must not exist): each file re-hashed against the index,
    /// then hard-linked (copied when the cache is on another filesystem). `false` when there is
    /// no such entry or it does not match its index (it is removed then, to be rebuilt).
    pub fn restore(&self, key: &str, dest: &Path) -> anyhow::Result<bool> {
        let entry = self.entry(key);
        let Ok(text) = fs::read(entry.join("index.json")) else {
            return Ok(false);
        };
        let restored = serde_json::from_slice::<BTreeMap<String, FileEntry>>(&text)
            .map_err(anyhow::Error::from)
            .and_then(|index| materialise(&entry.join("tree"), &index, dest));
        match restored {
            Ok(()) => Ok(true),
            Err(e) => {
                eprintln!(
                    "warning: the cached dependencies `{}` do not match their index ({e:#}); installing them again",
                    entry.display()
                );
                let _ = atomic::remove_tree(dest);
                let _ = atomic::remove_tree(&entry);
                Ok(false)
            }
        }
    }

    /// Lends entry `key`'s tree to one build at `dest` (which must not exist): every file is
    /// re-hashed against the index and nothing unlisted may be there, then the tree is *moved*
    /// there — thousands of files, and not one created — and moved back when the [`Lent`] is
    /// dropped. Whatever the build did to it meanwhile is found when it is next lent or
    /// restored. On another filesystem it is linked or copied instead. `None` when there is no
    /// such entry, it is lent to another build right now, or it does not match its index (it is
    /// removed then, to be rebuilt).
    pub fn lend(&self, key: &str, dest: &Path) -> anyhow::Result<Option<Lent>> {
        let entry = self.entry(key);
        let tree = entry.join("tree");
        let Ok(text) = fs::read(entry.join("index.json")) else {
            return Ok(None);
        };
        if fs::symlink_metadata(&tree).is_err() {
            // Lent to a build running now, or lost with one that was killed (`store` replaces
            // an entry left without its tree).
            return Ok(None);
        }
        let checked = serde_json::from_slice::<BTreeMap<String, FileEntry>>(&text)
            .map_err(anyhow::Error::from)
            .and_then(|index| check_tree(&tree, &index).map(|()| index));
        let index = match checked {
            Ok(index) => index,
            // Lent to another build while it was being checked.
            Err(_) if fs::symlink_metadata(&tree).is_err() => return Ok(None),
            Err(e) => {
                eprintln!(
                    "warning: the cached dependencies `{}` do not match their index ({e:#}); installing them again",
                    entry.display()
                );
                let _ = atomic::remove_tree(&entry);
                return Ok(None);
            }
        };
        match fs::rename(&tree, dest) {
            Ok(()) => Ok(Some(Lent {
                home: Some(tree),
                at: dest.to_owned(),
            })),
            // The cache is on another filesystem than the build: linked or copied instead.
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                match materialise(&tree, &index, dest) {
                    Ok(()) => Ok(Some(Lent {
                        home: None,
                        at: dest.to_owned(),
                    })),
                    Err(e) => {
                        eprintln!(
                            "warning: cannot copy the cached dependencies `{}` ({e:#}); installing them again",
                            entry.display()
                        );
                        let _ = atomic::remove_tree(dest);
                        Ok(None)
                    }
                }
            }
            // Gone since it was checked: another build borrowed it first.
            Err(_) => Ok(None),
        }
    }

    /// Keeps a copy of `tree` as entry `key` (written beside the entry, renamed into place, so a
    /// reader sees a whole entry or none). An entry already there is kept, unless it lost its
    /// tree (a build it was lent to was killed).
    pub fn store(&self, key: &str, tree: &Path) -> anyhow::Result<()> {
        let entry = self.entry(key);
        if entry.exists() {
            if entry.join("tree").exists() {
                return Ok(());
            }
            atomic::remove_tree(&entry)?;
        }
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create `{}`", self.dir.display()))?;
        let tmp = atomic::temp_sibling(&entry, "store");
        let stored = (|| -> anyhow::Result<()> {
            fs::create_dir(&tmp)?;
            let index = index_of(tree)?;
            // A copy, not links: the staging directory goes away, and nothing may change the
            // cached files through it.
            copy_tree(tree, &index, &tmp.join("tree"))?;
            atomic::write_file(&tmp.join("index.json"), &serde_json::to_vec(&index)?)?;
            atomic::rename(&tmp, &entry)?;
            Ok(())
        })();
        if stored.is_err() {
            let _ = atomic::remove_tree(&tmp);
        }
        stored.with_context(|| format!("cannot keep the dependencies in `{}`", entry.display()))
    }
}

/// A cached tree lent to a build (see [`DepCache::lend`]): moved back into the cache when
/// dropped. Should the entry have been replaced meanwhile, the lent copy is removed.
pub struct Lent {
    /// Where it goes back to; `None` when the build got a linked copy instead.
    home: Option<PathBuf>,
    at: PathBuf,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(home) = &self.home {
            if fs::rename(&self.at, home).is_err() {
                let _ = atomic::remove_tree(&self.at);
            }
        }
    }
}

/// Whether `tree` holds exactly what `index` lists: every entry of its kind, every file with its
/// size, executable bit and hash, and nothing else.
fn check_tree(tree: &Path, index: &BTreeMap<String, FileEntry>) -> anyhow::Result<()> {
    let mut seen = 0;
    // Sizes and modes first, walking; the contents are hashed together afterwards.
    let mut files = Vec::new();
    for e in walkdir::WalkDir::new(tree).min_depth(1).follow_links(false) {
        let e = e?;
        let rel = e
            .path()
            .strip_prefix(tree)
            .expect("below the tree")
            .to_string_lossy()
            .into_owned();
        let Some(want) = index.get(&rel) else {
            bail!("`{rel}` is not in the index");
        };
        seen += 1;
        let meta = e.path().symlink_metadata()?;
        let ok = match want {
            FileEntry::Dir { .. } => meta.is_dir(),
            FileEntry::Symlink { target } => {
                meta.file_type().is_symlink()
                    && fs::read_link(e.path())?.as_os_str() == target.as_str()
            }
            FileEntry::File { size, mode, blake3 } => {
                files.push((e.path().to_owned(), *size, *blake3));
                meta.is_file()
                    && meta.len() == *size
                    && (meta.permissions().mode() & 0o111 != 0) == (*mode == Mode::EXECUTABLE)
            }
        };
        if !ok {
            bail!("`{rel}` changed");
        }
    }
    if seen != index.len() {
        bail!("{} listed entries are missing", index.len() - seen);
    }
    Blake3Hash::check_files(&files).map_err(|path| {
        let rel = path
            .strip_prefix(tree)
            .unwrap_or(&path)
            .display()
            .to_string();
        anyhow::anyhow!("`{rel}` changed")
    })
}

/// Every entry below `root` with its kind, mode and content hash.
fn index_of(root: &Path) -> anyhow::Result<BTreeMap<String, FileEntry>> {
    let mut index = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let e = e?;
        let rel = e
            .path()
            .strip_prefix(root)
            .expect("below root")
            .to_str()
            .context("a path that is not UTF-8")?
            .to_owned();
        let meta = e.path().symlink_metadata()?;
        let entry = if meta.is_dir() {
            FileEntry::Dir { mode: Mode::DIR }
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(e.path())?;
            FileEntry::Symlink {
                target: target
                    .to_str()
                    .context("a link that is not UTF-8")?
                    .to_owned(),
            }
        } else if meta.is_file() {
            let (blake3, size) = Blake3Hash::of_file(e.path())?;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                Mode::EXECUTABLE
            } else {
                Mode::FILE
            };
            FileEntry::File { size, mode, blake3 }
        } else {
            bail!("`{}` is not a file, directory or link", e.path().display());
        };
        index.insert(rel, entry);
    }
    Ok(index)
}

fn copy_tree(from: &Path, index: &BTreeMap<String, FileEntry>, to: &Path) -> anyhow::Result<()> {
    fs::create_dir(to)?;
    for (rel, entry) in index {
        let (src, dst) = (from.join(rel), to.join(rel));
        match entry {
            FileEntry::Dir { .. } => fs::create_dir(&dst)?,
            FileEntry::Symlink { target } => std::os::unix::fs::symlink(target, &dst)?,
            FileEntry::File { .. } => {
                fs::copy(&src, &dst)?;
            }
        }
    }
    Ok(())
}

/// `dest` made from the cached `tree` as `index` lists it (BTreeMap order puts a directory
/// before what is in it). Paths are checked before use: the index is a file on disk.
fn materialise(
    tree: &Path,
    index: &BTreeMap<String, FileEntry>,
    dest: &Path,
) -> anyhow::Result<()> {
    fs::create_dir(dest).with_context(|| format!("cannot create `{}`", dest.display()))?;
    for (rel, entry) in index {
        validate_relative_path(rel).map_err(|m| anyhow::anyhow!("`{rel}`: {m}"))?;
        let (src, dst) = (tree.join(rel), dest.join(rel));
        match entry {
            FileEntry::Dir { .. } => fs::create_dir(&dst)?,
            FileEntry::Symlink { target } => std::os::unix::fs::symlink(target, &dst)?,
            FileEntry::File { size, mode, blake3 } => {
                let meta = fs::symlink_metadata(&src)?;
                let (got, n) = Blake3Hash::of_file(&src)?;
                if !meta.is_file() || got != *blake3 || n != *size {
                    bail!("`{rel}` changed");
                }
                if fs::hard_link(&src, &dst).is_err() {
                    fs::copy(&src, &dst)?;
                }
                fs::set_permissions(&dst, fs::Permissions::from_mode(mode.0))?;
            }
        }
    }
    Ok(())
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

        // Damaged: a cached file no longer matches the index (here through the restored
        // copy, which shares it); nothing is restored and the entry is gone, to be rebuilt.
        fs::write(back.join("pkg/__init__.py"), b"x = 2\n").unwrap();
        let entry = cache.entry(&key);
        let again = tmp.path().join("again");
        assert!(!cache.restore(&key, &again).unwrap());
        assert!(!again.exists() && !entry.exists());
    }

    #[test]
    fn a_lent_tree_comes_back_and_what_was_done_to_it_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DepCache {
            dir: tmp.path().join("cache/deps"),
        };
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("pkg")).unwrap();
        fs::write(tree.join("pkg/__init__.py"), b"x = 1\n").unwrap();
        let key = DepCache::key(&["lend".into()]);
        cache.store(&key, &tree).unwrap();
        let stage = tmp.path().join("stage");
        fs::create_dir(&stage).unwrap();
        let at = stage.join("deps");
        {
            let lent = cache.lend(&key, &at).unwrap().expect("lent");
            assert_eq!(fs::read(at.join("pkg/__init__.py")).unwrap(), b"x = 1\n");
            // While it is out, another build finds nothing to borrow and installs its own.
            assert!(cache
                .lend(&key, &tmp.path().join("other"))
                .unwrap()
                .is_none());
            assert!(cache.entry(&key).join("index.json").is_file());
            drop(lent);
        }
        assert!(!at.exists(), "moved back");
        assert!(cache.entry(&key).join("tree/pkg/__init__.py").is_file());

        // A file planted while it was out is found at the next loan: no loan, entry gone.
        let lent = cache.lend(&key, &at).unwrap().expect("lent again");
        fs::write(at.join("pkg/planted.pth"), b"import os\n").unwrap();
        drop(lent);
        assert!(cache.lend(&key, &at).unwrap().is_none());
        assert!(!cache.entry(&key).exists() && !at.exists());

        // An entry that lost its tree (its build was killed) is replaced by the next store.
        cache.store(&key, &tree).unwrap();
        fs::rename(cache.entry(&key).join("tree"), tmp.path().join("lost")).unwrap();
        assert!(cache.lend(&key, &at).unwrap().is_none());
        cache.store(&key, &tree).unwrap();
        assert!(cache.lend(&key, &at).unwrap().is_some());
    }
}
