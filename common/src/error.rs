//! Error types of the shared library; each carries the path, key or entry it is about.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BuildNumberError {
    #[error("invalid build name `{}`: expected six digits `NNNNNN` or the tag `BuildNNNNNN`, e.g. `Build000034`", .0.escape_debug())]
    Malformed(String),
    #[error("invalid build name `{0}`: build numbers start at 000001 (tag `BuildNNNNNN`)")]
    Zero(String),
    #[error("build number {0} is out of range: build numbers run from 000001 to 999999 (tag `BuildNNNNNN`)")]
    OutOfRange(u64),
}

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("`{path}` uses release manifest schema version {found}, but this program understands only up to version {supported}: upgrade builder/installer")]
    UnsupportedSchema {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("`{path}` is not a valid release manifest: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{path}`: {message}")]
    Invalid { path: String, message: String },
    #[error("cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A failed filesystem operation, with the path it was about.
#[derive(Debug, Error)]
#[error("{op} `{}`", path.display())]
pub struct FsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Errors of the deterministic archive writer.
#[derive(Debug, Error)]
pub enum PackError {
    #[error("cannot pack `{}`: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    #[error(
        "the staged tree must not contain `release.json` at its root: the archive writer adds it"
    )]
    ReservedName,
    #[error("`{}` is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("a compression worker failed")]
    Worker,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Why the safe reader refused an archive. Each variant names the entry when there is one.
#[derive(Debug, Error)]
pub enum UnpackError {
    #[error("destination `{}` already exists: unpack only into a new directory", .0.display())]
    DestinationExists(PathBuf),
    #[error("entry `{entry}` has an absolute path")]
    AbsolutePath { entry: String },
    #[error("entry `{entry}` has a `..` component")]
    ParentComponent { entry: String },
    #[error("entry `{entry}` has an empty, `.` or non-UTF-8 path component")]
    BadPath { entry: String },
    #[error("symlink `{entry}` points to absolute path `{target}`")]
    AbsoluteLink { entry: String, target: String },
    #[error("symlink `{entry}` -> `{target}` leaves the release tree")]
    LinkEscapes { entry: String, target: String },
    #[error("entry `{entry}` passes through symlink `{link}`")]
    ThroughSymlink { entry: String, link: String },
    #[error("entry `{entry}` is a hard link, which release archives never contain")]
    HardLink { entry: String },
    #[error("entry `{entry}` is a {kind}, which release archives never contain")]
    SpecialFile { entry: String, kind: &'static str },
    #[error("entry `{entry}` has mode {mode:04o} with a setuid, setgid or sticky bit")]
    PrivilegedMode { entry: String, mode: u32 },
    #[error("entry `{entry}` has mode {mode:04o}; release archives use only 0644 and 0755")]
    UnexpectedMode { entry: String, mode: u32 },
    #[error("entry `{entry}` appears more than once")]
    Duplicate { entry: String },
    #[error("entry `{entry}` is not listed in the manifest")]
    NotInManifest { entry: String },
    #[error("{count} manifest entries are missing from the archive, first `{first}`")]
    MissingEntries { first: String, count: usize },
    #[error("entry `{entry}` does not match the manifest: {what}")]
    ManifestMismatch { entry: String, what: String },
    #[error("the archive's `release.json` differs from the sidecar: the artifact and its sidecar do not belong together")]
    EmbeddedSidecarMismatch,
    #[error("the archive has no `release.json`")]
    EmbeddedSidecarMissing,
    #[error("entry `{entry}` would take the unpacked size past the limit of {limit} bytes (possible decompression bomb)")]
    TooLarge { entry: String, limit: u64 },
    #[error("the archive expands more than {limit}:1 (possible decompression bomb)")]
    RatioTooHigh { limit: u64 },
    #[error("archive hash mismatch: the sidecar says {expected}, the file is {actual}")]
    ArchiveHash { expected: String, actual: String },
    #[error("archive size mismatch: the sidecar says {expected} bytes, the file has {actual}")]
    ArchiveSize { expected: u64, actual: u64 },
    #[error("the archive is corrupt or truncated: {0}")]
    Corrupt(String),
    #[error("the archive has data after its end")]
    TrailingData,
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

impl UnpackError {
    /// True for refusals caused by the input, as opposed to local I/O trouble.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, UnpackError::Fs(_))
    }
}

/// Errors of the artifact store.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid store URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("`{key}` is not in the store `{store}`")]
    NotFound { store: String, key: String },
    #[error("{build:#} is already published in `{store}` with a different archive: published {existing}, refusing {new}; build numbers are immutable, prepare a new build instead")]
    Conflict {
        store: String,
        build: crate::BuildNumber,
        existing: String,
        new: String,
    },
    #[error("{build:#} already has a different signature `{key}` in `{store}`: {reason}")]
    SignatureConflict {
        store: String,
        build: crate::BuildNumber,
        key: String,
        reason: String,
    },
    #[error("`{key}` in `{store}` is corrupt or truncated: {reason}")]
    Corrupt {
        store: String,
        key: String,
        reason: String,
    },
    #[error("store `{store}`: {op} `{key}` failed: {message}")]
    Backend {
        store: String,
        op: &'static str,
        key: String,
        message: String,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Input the user must fix (a bad argument or file) that no other error type describes.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The path whose write failed because its filesystem is full (ENOSPC), if that is somewhere
/// in `err`'s chain of causes (an empty path when the error does not say which).
pub fn disk_full_at(err: &(dyn std::error::Error + 'static)) -> Option<PathBuf> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        // The `Fs` variants are transparent: their `source()` skips the `FsError` and its path.
        let fs = e
            .downcast_ref::<FsError>()
            .or_else(|| match e.downcast_ref::<UnpackError>() {
                Some(UnpackError::Fs(f)) => Some(f),
                _ => None,
            })
            .or_else(|| match e.downcast_ref::<StoreError>() {
                Some(StoreError::Fs(f)) => Some(f),
                _ => None,
            });
        if let Some(fs) = fs.filter(|f| f.source.kind() == io::ErrorKind::StorageFull) {
            return Some(fs.path.clone());
        }
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::StorageFull)
        {
            return Some(PathBuf::new());
        }
        cur = e.source();
    }
    None
}

/// The exit code an error deserves (SPEC section 5): 2 when the input was at fault and nothing
/// was touched, 1 for everything else that failed before anything live changed.
pub fn exit_code_for(err: &(dyn std::error::Error + 'static)) -> crate::report::ExitCode {
    use crate::report::ExitCode;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<Locked>() {
            return ExitCode::Locked;
        }
        let bad = e.is::<BadInput>()
            || e.is::<BuildNumberError>()
            || e.is::<ManifestError>()
            || e.downcast_ref::<UnpackError>()
                .is_some_and(UnpackError::is_bad_input)
            || e.downcast_ref::<PackError>().is_some_and(|p| {
                matches!(
                    p,
                    PackError::Unsupported { .. }
                        | PackError::ReservedName
                        | PackError::NotADirectory(_)
                )
            })
            || e.downcast_ref::<StoreError>().is_some_and(|s| {
                matches!(
                    s,
                    StoreError::BadUrl { .. }
                        | StoreError::Conflict { .. }
                        | StoreError::SignatureConflict { .. }
                        | StoreError::Corrupt { .. }
                        | StoreError::NotFound { .. }
                        // Transparent: its source is the manifest error's source, not the
                        // manifest error, so the walk below would never see it.
                        | StoreError::Manifest(_)
                )
            });
        if bad {
            return ExitCode::BadInput;
        }
        cur = e.source();
    }
    ExitCode::Failed
}

/// Prints an error and its causes to stderr the way both binaries do, and returns the exit
/// code it deserves (see [`exit_code_for`]).
pub fn report_failure(err: &(dyn std::error::Error + 'static)) -> crate::report::ExitCode {
    eprintln!("error: {err}");
    let mut cause = err.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
    exit_code_for(err)
}

/// Another process holds the deployment lock (exit code 5).
#[derive(Debug, Error)]
#[error("another activation holds the lock `{}` (pid {pid}: {command}); waited {waited_secs}s — try again when it has finished, or raise `--lock-timeout`", path.display())]
pub struct Locked {
    pub path: PathBuf,
    pub pid: String,
    pub command: String,
    pub waited_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ExitCode;

    #[test]
    fn a_bad_sidecar_from_the_store_is_bad_input() {
        // As `ArtifactStore::fetch_sidecar` returns it for a sidecar from a newer builder.
        let future = StoreError::Manifest(ManifestError::UnsupportedSchema {
            path: "release.json".into(),
            found: 2,
            supported: 1,
        });
        assert_eq!(exit_code_for(&future), ExitCode::BadInput);
        let io = StoreError::Fs(FsError::new(
            "cannot write",
            "/x",
            io::Error::from(io::ErrorKind::StorageFull),
        ));
        assert_eq!(exit_code_for(&io), ExitCode::Failed);
    }

    #[test]
    fn a_full_disk_is_found_with_its_path_through_transparent_wrappers() {
        let full = || io::Error::from(io::ErrorKind::StorageFull);
        let unpack = UnpackError::Fs(FsError::new("cannot write", "/srv/releases/x", full()));
        assert_eq!(
            disk_full_at(&unpack),
            Some(PathBuf::from("/srv/releases/x"))
        );
        let store = StoreError::Fs(FsError::new("cannot create", "/srv/cache/y", full()));
        assert_eq!(disk_full_at(&store), Some(PathBuf::from("/srv/cache/y")));
        assert_eq!(disk_full_at(&full()), Some(PathBuf::new()));
        let other = UnpackError::Fs(FsError::new(
            "cannot write",
            "/srv/z",
            io::Error::from(io::ErrorKind::PermissionDenied),
        ));
        assert_eq!(disk_full_at(&other), None);
        // A full disk is a failure (exit 1), not bad input.
        assert_eq!(exit_code_for(&unpack), crate::report::ExitCode::Failed);
    }
}
