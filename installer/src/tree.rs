//! Copies of trees that are proven equal to their original: every entry's type, content
//! (BLAKE3), size, mode, owner and symlink target compared, the copy built under a temporary
//! name, synced and renamed into place — what "nothing lost" means when `adopt` moves the
//! checkout's persistent files into `shared/`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use common::error::BadInput;
use common::{atomic, Blake3Hash};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, blake3: Blake3Hash },
    Symlink(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits (not for symlinks, whose own mode means nothing on Linux).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Every entry below (and including) a directory, by relative path ("" is the directory).
pub type Snapshot = BTreeMap<PathBuf, Entry>;

pub fn entry_of(path: &Path, meta: &fs::Metadata) -> anyhow::Result<Entry> {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink(
            fs::read_link(path).with_context(|| format!("cannot read `{}`", path.display()))?,
        )
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        let (blake3, size) = Blake3Hash::of_file(path)?;
        Kind::File { size, blake3 }
    } else {
        bail!(BadInput(format!(
            "`{}` is neither a file, a directory nor a symlink (a socket, FIFO or device): move it out of the checkout, then run again",
            path.display()
        )));
    };
    let mode = if ft.is_symlink() {
        0
    } else {
        meta.permissions().mode() & 0o7777
    };
    Ok(Entry {
        kind,
        mode,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

pub fn snapshot(dir: &Path) -> anyhow::Result<Snapshot> {
    let mut out = Snapshot::new();
    for e in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.with_context(|| format!("cannot read `{}`", dir.display()))?;
        let rel = e
            .path()
            .strip_prefix(dir)
            .expect("below the root")
            .to_owned();
        let meta = e
            .path()
            .symlink_metadata()
            .with_context(|| format!("cannot stat `{}`", e.path().display()))?;
        out.insert(rel, entry_of(e.path(), &meta)?);
    }
    Ok(out)
}

/// The first differences between two snapshots, for messages.
pub fn differences(want: &Snapshot, got: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => out.push(format!("`{}` missing", p.display())),
            Some(g) if g.kind != w.kind => out.push(format!("`{}` content differs", p.display())),
            Some(g) if g.mode != w.mode => out.push(format!(
                "`{}` mode {:04o} instead of {:04o}",
                p.display(),
                g.mode,
                w.mode
            )),
            Some(g) if (g.uid, g.gid) != (w.uid, w.gid) => out.push(format!(
                "`{}` owner {}:{} instead of {}:{}",
                p.display(),
                g.uid,
                g.gid,
                w.uid,
                w.gid
            )),
            Some(_) => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        out.push(format!("`{}` not in the original", p.display()));
    }
    out
}

pub fn totals(s: &Snapshot) -> (u64, u64) {
    s.values().fold((0, 0), |(n, b), e| match &e.kind {
        Kind::File { size, .. } => (n + 1, b + size),
        _ => (n, b),
    })
}

/// Makes `to` carry `meta`'s owner (when it differs: only root can), mode and mtime.
pub fn copy_attributes(to: &Path, meta: &fs::Metadata, symlink: bool) -> anyhow::Result<()> {
    let here =
        fs::symlink_metadata(to).with_context(|| format!("cannot stat `{}`", to.display()))?;
    if (here.uid(), here.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).with_context(|| {
            format!(
                "cannot give `{}` the owner {}:{} of the original (run adopt as root)",
                to.display(),
                meta.uid(),
                meta.gid()
            )
        })?;
    }
    if symlink {
        return Ok(());
    }
    fs::set_permissions(
        to,
        fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
    )
    .with_context(|| format!("cannot set the mode of `{}`", to.display()))?;
    if let Ok(mtime) = meta.modified() {
        // Kept for the operator's sake; the verification does not depend on it.
        let _ = fs::File::open(to).and_then(|f| f.set_modified(mtime));
    }
    Ok(())
}

/// Streams one file into a new file (private until its mode is set from the original).
pub fn copy_file_data(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut src =
        fs::File::open(from).with_context(|| format!("cannot open `{}`", from.display()))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("cannot create `{}`", to.display()))?;
    std::io::copy(&mut src, &mut dst)
        .and_then(|_| dst.flush())
        .with_context(|| format!("cannot copy `{}` to `{}`", from.display(), to.display()))?;
    Ok(())
}

/// Copies a tree into the new directory `to` (which must not exist): files, directories, empty
/// directories and symlinks as they are; directory modes are set last, so a read-only
/// directory is still filled.
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut dirs = Vec::new();
    for e in walkdir::WalkDir::new(from)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.with_context(|| format!("cannot read `{}`", from.display()))?;
        let rel = e.path().strip_prefix(from).expect("below the root");
        let dest = to.join(rel);
        let meta = e
            .path()
            .symlink_metadata()
            .with_context(|| format!("cannot stat `{}`", e.path().display()))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&dest).with_context(|| format!("cannot create `{}`", dest.display()))?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o700))?;
            dirs.push((dest, meta));
        } else if ft.is_symlink() {
            let target = fs::read_link(e.path())?;
            std::os::unix::fs::symlink(&target, &dest)
                .with_context(|| format!("cannot create symlink `{}`", dest.display()))?;
            copy_attributes(&dest, &meta, true)?;
        } else if ft.is_file() {
            copy_file_data(e.path(), &dest)?;
            copy_attributes(&dest, &meta, false)?;
        } else {
            bail!(BadInput(format!(
                "`{}` is neither a file, a directory nor a symlink: move it out of the checkout, then run again",
                e.path().display()
            )));
        }
    }
    for (dest, meta) in dirs.iter().rev() {
        copy_attributes(dest, meta, false)?;
    }
    Ok(())
}

/// Copies a file or tree into `dest` under a temporary name, checks the copy against the
/// original's snapshot, makes it durable and renames it into place.
pub fn copy_verified(src: &Path, dest: &Path, dir: bool, want: &Snapshot) -> anyhow::Result<()> {
    let tmp = atomic::temp_sibling(dest, "adopt");
    let result = (|| -> anyhow::Result<()> {
        if dir {
            copy_tree(src, &tmp)?;
        } else {
            copy_file_data(src, &tmp)?;
            copy_attributes(&tmp, &fs::symlink_metadata(src)?, false)?;
        }
        common::fault::point("adopt:copied");
        let got = if dir {
            snapshot(&tmp)?
        } else {
            [(
                PathBuf::new(),
                entry_of(&tmp, &fs::symlink_metadata(&tmp)?)?,
            )]
            .into()
        };
        if &got != want {
            bail!(
                "the copy of `{}` does not match the original ({}): did it change meanwhile? run again",
                src.display(),
                differences(want, &got).join(", ")
            );
        }
        atomic::sync_filesystem(&tmp)?;
        if dir {
            // rename(2) replaces an empty directory, never a full one (checked in the plan).
            atomic::rename(&tmp, dest)?;
        } else if !atomic::persist_new(&tmp, dest)? {
            bail!(
                "`{}` appeared while adopt was copying it: run again",
                dest.display()
            );
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = atomic::remove_tree(&tmp);
        let _ = fs::remove_file(&tmp);
    }
    result
}
