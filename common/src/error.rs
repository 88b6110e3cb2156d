//! Error types of the shared library; each carries the path, key or entry it is about.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::untrusted::shown;

pub use crate::build_number::BuildNumberError;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("`{path}` uses release manifest schema version {found}, but this program understands only up to version {supported}: upgrade builder/installer")]
    UnsupportedSchema {
        path: String,
        found: u32,
        supported: u32,
    },
    /// `message` is the parser's, which quotes the input: it is kept escaped and capped.
    #[error("`{path}` is not a valid release manifest: {message}")]
    Parse { path: String, message: String },
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

/// Why the safe reader refused an archive. Each variant names the entry when there is one;
/// names and targets come from the archive, so they are shown escaped and capped ([`shown`]).
#[derive(Debug, Error)]
pub enum UnpackError {
    #[error("destination `{}` already exists: unpack only into a new directory", .0.display())]
    DestinationExists(PathBuf),
    #[error("entry `{}` has an absolute path", shown(.entry))]
    AbsolutePath { entry: String },
    #[error("entry `{}` has a `..` component", shown(.entry))]
    ParentComponent { entry: String },
    #[error("entry `{}` has an empty, `.` or non-UTF-8 path component", shown(.entry))]
    BadPath { entry: String },
    #[error("entry `{}` {reason}", shown(.entry))]
    BadName { entry: String, reason: String },
    #[error("symlink `{}` points to absolute path `{}`", shown(.entry), shown(.target))]
    AbsoluteLink { entry: String, target: String },
    #[error("symlink `{}` -> `{}` leaves the release tree", shown(.entry), shown(.target))]
    LinkEscapes { entry: String, target: String },
    #[error("symlink `{}` -> `{}` {reason}", shown(.entry), shown(.target))]
    UnsafeLink {
        entry: String,
        target: String,
        reason: String,
    },
    #[error("entry `{}` is inside `{owned}`, which the installer creates on the server: an archive must not contain it", shown(.entry))]
    InstallerOwned { entry: String, owned: String },
    #[error("entry `{}` passes through symlink `{}`", shown(.entry), shown(.link))]
    ThroughSymlink { entry: String, link: String },
    #[error("entry `{}` is a hard link, and not to an earlier file of the archive with the content and mode the manifest lists for it", shown(.entry))]
    HardLink { entry: String },
    #[error("entry `{}` is a {kind}, which release archives never contain", shown(.entry))]
    SpecialFile { entry: String, kind: &'static str },
    #[error("the archive has a GNU sparse entry, which release archives never contain ({})", shown(.0))]
    Sparse(String),
    #[error("entry `{}` has mode {mode:04o} with a setuid, setgid or sticky bit", shown(.entry))]
    PrivilegedMode { entry: String, mode: u32 },
    #[error("entry `{}` has mode {mode:04o}; release archives use only 0644 and 0755", shown(.entry))]
    UnexpectedMode { entry: String, mode: u32 },
    #[error("entry `{}` appears more than once", shown(.entry))]
    Duplicate { entry: String },
    #[error("entry `{}` is not listed in the manifest", shown(.entry))]
    NotInManifest { entry: String },
    #[error("{count} manifest entries are missing from the archive, first `{}`", shown(.first))]
    MissingEntries { first: String, count: usize },
    #[error("entry `{}` does not match the manifest: {}", shown(.entry), shown(.what))]
    ManifestMismatch { entry: String, what: String },
    #[error("the archive's `release.json` differs from the sidecar: the artifact and its sidecar do not belong together")]
    EmbeddedSidecarMismatch,
    #[error("the archive has no `release.json`")]
    EmbeddedSidecarMissing,
    #[error("entry `{}` would take the unpacked size past the limit of {limit} bytes (possible decompression bomb)", shown(.entry))]
    TooLarge { entry: String, limit: u64 },
    #[error("the archive expands more than {limit}:1 (possible decompression bomb)")]
    RatioTooHigh { limit: u64 },
    #[error("archive hash mismatch: the sidecar says {expected}, the file is {actual}")]
    ArchiveHash { expected: String, actual: String },
    #[error("archive size mismatch: the sidecar says {expected} bytes, the file has {actual}")]
    ArchiveSize { expected: u64, actual: u64 },
    #[error("the archive is corrupt or truncated: {}", shown(.0))]
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
    /// More bytes than the object may have: the download stopped one byte past `limit`.
    #[error("`{key}` in `{store}` is larger than {what} ({limit} bytes){}: stopped reading there; it was replaced or appended to after publishing, do not install it — publish the release again from the builder", .actual.map(|n| format!(", it has {n}")).unwrap_or_default())]
    TooLarge {
        store: String,
        key: String,
        /// What sets the limit, e.g. "its sidecar says".
        what: String,
        limit: u64,
        actual: Option<u64>,
    },
    #[error("`{key}` in `{store}` is a {kind}, not a file: no publish writes that; remove it and publish the release again")]
    NotAFile {
        store: String,
        key: String,
        kind: &'static str,
    },
    #[error("`{key}` in `{store}` is the sidecar of {}, not of {wanted}: a replayed or mis-published sidecar; do not install it — publish {wanted} again from the builder, or remove the object", shown(.found))]
    WrongRelease {
        store: String,
        key: String,
        found: String,
        wanted: String,
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

/// The exit code an error deserves (the table in `docs/release-format.md`): 2 when the input was at fault and nothing
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
                        | StoreError::TooLarge { .. }
                        | StoreError::NotAFile { .. }
                        | StoreError::WrongRelease { .. }
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
///
/// Every line goes through [`crate::untrusted::message`]: a message can quote what the store
/// or an archive holds, and must not be able to rewrite the operator's terminal.
pub fn report_failure(err: &(dyn std::error::Error + 'static)) -> crate::report::ExitCode {
    use crate::untrusted::message;
    eprintln!("error: {}", message(&err.to_string()));
    let mut cause = err.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {}", message(&c.to_string()));
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
