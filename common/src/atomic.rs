//! Crash-safe filesystem changes: every change that must survive a crash goes through here.
//!
//! The pattern is always the same: build the new thing under a temporary name in the same
//! directory (so the rename cannot cross filesystems), make its data durable, rename it over the
//! old name (atomic on POSIX), then fsync the directory so the rename itself is durable.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::FsError;

/// Makes a directory's entries (creations, renames, deletions) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    let d = File::open(dir).map_err(|e| FsError::new("cannot open directory", dir, e))?;
    d.sync_all()
        .map_err(|e| FsError::new("cannot fsync directory", dir, e))
}

/// The directory containing `path` (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A unique temporary name beside `path`, hidden and recognisable for clean-up.
pub fn temp_sibling(path: &Path, purpose: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent_of(path).join(format!(".{name}.{purpose}-{}-{n}", std::process::id()))
}

/// Writes `data` to `path` atomically: readers see the old content or the new, never a mix.
pub fn write_file(path: &Path, data: &[u8]) -> Result<(), FsError> {
    write_file_with(path, |f| f.write_all(data))
}

/// Like [`write_file`] but the content is produced by `fill` writing into the temporary file.
pub fn write_file_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), FsError> {
    let tmp = temp_sibling(path, "tmp");
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| FsError::new("cannot create", &tmp, e))?;
        fill(&mut f).map_err(|e| FsError::new("cannot write", &tmp, e))?;
        f.sync_all()
            .map_err(|e| FsError::new("cannot fsync", &tmp, e))?;
        drop(f);
        rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a new file with permission bits `mode`, set before any byte is written so a secret is
/// never readable by others, not even for a moment. An existing file is replaced only when
/// `replace`; otherwise it is left alone and `false` is returned (also when another writer
/// created it meanwhile).
pub fn write_file_mode(
    path: &Path,
    data: &[u8],
    mode: u32,
    replace: bool,
) -> Result<bool, FsError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if !replace && fs::symlink_metadata(path).is_ok() {
        return Ok(false);
    }
    let tmp = temp_sibling(path, "tmp");
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| FsError::new("cannot create", &tmp, e))?;
        // The umask may have taken bits away from `mode`; the caller asked for exactly these.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| FsError::new("cannot set permissions of", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| FsError::new("cannot write", &tmp, e))?;
        f.sync_all()
            .map_err(|e| FsError::new("cannot fsync", &tmp, e))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if replace {
        rename(&tmp, path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        Ok(true)
    } else {
        persist_new(&tmp, path)
    }
}

/// Renames `from` over `to` and makes the rename durable.
pub fn rename(from: &Path, to: &Path) -> Result<(), FsError> {
    fs::rename(from, to).map_err(|e| FsError::new("cannot rename into", to, e))?;
    fsync_dir(parent_of(to))
}

/// Moves a fully written file to `to` only if nothing is there yet; returns false when `to`
/// already exists (and leaves it alone). The source is consumed either way.
///
/// A hard link is created atomically and fails on an existing name, which makes this safe
/// against a concurrent writer of the same name.
pub fn persist_new(from: &Path, to: &Path) -> Result<bool, FsError> {
    let created = match fs::hard_link(from, to) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            let _ = fs::remove_file(from);
            return Err(FsError::new("cannot create", to, e));
        }
    };
    fs::remove_file(from).map_err(|e| FsError::new("cannot remove", from, e))?;
    fsync_dir(parent_of(to))?;
    Ok(created)
}

/// Points `link` at `target` atomically: a temporary link renamed over the old one, so there is
/// never a moment with no link or a half-written one.
pub fn replace_symlink(target: &Path, link: &Path) -> Result<(), FsError> {
    let tmp = temp_sibling(link, "link");
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(|e| FsError::new("cannot create symlink", &tmp, e))?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(FsError::new("cannot replace symlink", link, e));
    }
    fsync_dir(parent_of(link))
}

/// Flushes the whole filesystem holding `path` (like `sync -f`): one call instead of an fsync
/// per file when thousands of new files must become durable together.
pub fn sync_filesystem(path: &Path) -> Result<(), FsError> {
    let f = File::open(path).map_err(|e| FsError::new("cannot open", path, e))?;
    rustix::fs::syncfs(&f).map_err(|e| FsError::new("cannot sync filesystem of", path, e.into()))
}

/// Removes a file if it exists, durably (the directory is synced): a marker that must not
/// come back after a crash.
pub fn remove_file_if_exists(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(parent_of(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::new("cannot remove", path, e)),
    }
}

/// Removes a directory tree if it exists; used to clean up temporary trees after a failure.
pub fn remove_tree(path: &Path) -> Result<(), FsError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::new("cannot remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn failed_fill_keeps_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_file(&p, b"old").unwrap();
        let err = write_file_with(&p, |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert!(err.to_string().contains("cannot write"));
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_files_get_their_mode_and_are_not_replaced_unless_asked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.key");
        assert!(write_file_mode(&p, b"one", 0o600, false).unwrap());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        assert!(!write_file_mode(&p, b"two", 0o600, false).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert!(write_file_mode(&p, b"three", 0o644, true).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"three");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn symlink_swap_is_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("a")).unwrap();
        fs::create_dir(dir.path().join("b")).unwrap();
        let link = dir.path().join("current");
        replace_symlink(Path::new("a"), &link).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("a"));
        replace_symlink(Path::new("b"), &link).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("b"));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn persist_new_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("obj");
        let t1 = dir.path().join("t1");
        fs::write(&t1, b"first").unwrap();
        assert!(persist_new(&t1, &to).unwrap());
        let t2 = dir.path().join("t2");
        fs::write(&t2, b"second").unwrap();
        assert!(!persist_new(&t2, &to).unwrap());
        assert_eq!(fs::read(&to).unwrap(), b"first");
        assert!(!t1.exists() && !t2.exists());
        sync_filesystem(dir.path()).unwrap();
    }
}
