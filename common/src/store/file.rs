//! The file-system backend: a directory tree, used as the builder's default store and in tests.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{DownloadSource, ObjectStore, PutOutcome};
use crate::atomic;
use crate::error::{FsError, StoreError};
use crate::manifest::validate_relative_path;

/// Objects are files under `root`; a key `a/b/c` is the file `root/a/b/c`.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        Self { root }
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_relative_path(key).map_err(|reason| StoreError::Backend {
            store: self.location(),
            op: "resolve",
            key: key.to_owned(),
            message: reason,
        })?;
        Ok(self.root.join(key))
    }

    fn create_parent(&self, path: &Path) -> Result<(), StoreError> {
        let parent = atomic::parent_of(path);
        fs::create_dir_all(parent)
            .map_err(|e| FsError::new("cannot create directory", parent, e))?;
        Ok(())
    }

    fn put_new_with(
        &self,
        key: &str,
        fill: impl FnOnce(&mut File, &Path) -> Result<(), FsError>,
    ) -> Result<PutOutcome, StoreError> {
        let path = self.path_of(key)?;
        if path.exists() {
            return Ok(PutOutcome::AlreadyExists);
        }
        self.create_parent(&path)?;
        let tmp = atomic::temp_sibling(&path, "upload");
        let written = (|| {
            let mut f = File::create(&tmp).map_err(|e| FsError::new("cannot create", &tmp, e))?;
            fill(&mut f, &tmp)?;
            f.sync_all()
                .map_err(|e| FsError::new("cannot fsync", &tmp, e))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        // The hard link fails if another writer created the key meanwhile: only one wins.
        Ok(if atomic::persist_new(&tmp, &path)? {
            PutOutcome::Created
        } else {
            PutOutcome::AlreadyExists
        })
    }
}

impl ObjectStore for FileStore {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put_new_file(&self, key: &str, src: &Path) -> Result<PutOutcome, StoreError> {
        self.put_new_with(key, |f, tmp| {
            let mut from = File::open(src).map_err(|e| FsError::new("cannot open", src, e))?;
            io::copy(&mut from, f).map_err(|e| FsError::new("cannot write", tmp, e))?;
            Ok(())
        })
    }

    fn put_new_bytes(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.put_new_with(key, |f, tmp| {
            f.write_all(data)
                .map_err(|e| FsError::new("cannot write", tmp, e))
        })
    }

    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        self.create_parent(&path)?;
        atomic::write_file(&path, data)?;
        Ok(())
    }

    fn get(&self, key: &str, out: &mut dyn Write, limit: u64) -> Result<u64, StoreError> {
        let path = self.path_of(key)?;
        // Non-blocking, so a FIFO planted under the key cannot hang the reader (and the deploy
        // lock it holds); only a regular file is an object.
        let f = match File::options()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    store: self.location(),
                    key: key.to_owned(),
                })
            }
            Err(e) => return Err(FsError::new("cannot open", &path, e).into()),
        };
        let meta = f
            .metadata()
            .map_err(|e| FsError::new("cannot stat", &path, e))?;
        let ft = meta.file_type();
        if !ft.is_file() {
            let kind = if ft.is_dir() {
                "directory"
            } else if ft.is_fifo() {
                "FIFO"
            } else if ft.is_char_device() {
                "character device"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_socket() {
                "socket"
            } else {
                "special file"
            };
            return Err(StoreError::NotAFile {
                store: self.location(),
                key: key.to_owned(),
                kind,
            });
        }
        let too_large = |actual| StoreError::TooLarge {
            store: self.location(),
            key: key.to_owned(),
            what: "allowed".into(),
            limit,
            actual,
        };
        if meta.len() > limit {
            return Err(too_large(Some(meta.len())));
        }
        let n = io::copy(&mut (&f).take(limit.saturating_add(1)), out)
            .map_err(|e| FsError::new("cannot read", &path, e))?;
        if n > limit {
            return Err(too_large(None)); // it grew while being read
        }
        Ok(n)
    }

    fn download_source(
        &self,
        key: &str,
        _valid_for: std::time::Duration,
    ) -> Result<DownloadSource, StoreError> {
        let path = self.path_of(key)?;
        if !path.is_file() {
            return Err(StoreError::NotFound {
                store: self.location(),
                key: key.to_owned(),
            });
        }
        Ok(DownloadSource::Path(path))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).follow_links(false) {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(&dir).to_owned();
                FsError::new("cannot list", path, e.into())
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy();
            if name.starts_with('.') {
                continue; // temporary uploads in flight
            }
            if let Ok(rel) = entry.path().strip_prefix(&self.root) {
                keys.push(rel.to_string_lossy().into_owned());
            }
        }
        Ok(keys)
    }
}
