//! The artifact store: where published releases live, with the layout and immutability rules
//! of `docs/release-format.md`, over two backends chosen by URL (`file://`/plain path and `s3://`).
//!
//! Per build: `<app>/BuildNNNNNN/<artifact>.tar.gz`, then the optional signature
//! `release.json.minisig`, then `release.json` last — so a release that becomes visible is
//! already signed — and the informational `build-log.json`.
//!
//! Tools for the servers (the installer binary, put there by `builder bootstrap`) live apart from
//! releases, addressed by content: `tools/<name>/<sha256>/<name>`, created once, never replaced.
//!
//! Backends implement the small [`ObjectStore`] trait (create-if-absent, overwrite, get, list);
//! the rules — sidecar last, identical republish is a no-op, a different sidecar is refused,
//! downloads verified against the sidecar — live once, in [`ArtifactStore`].

mod file;
mod s3;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::FileStore;
pub use s3::{validate_bucket_name, S3Store};

use crate::atomic;
use crate::error::{FsError, ManifestError, StoreError};
use crate::hash::{HashingWriter, Sha256Hash, Sha256Writer};
use crate::manifest::{BUILD_LOG_JSON, MAX_SIDECAR_BYTES, RELEASE_JSON, RELEASE_SIGNATURE};
use crate::progress::ProgressWriter;
use crate::{progress, Blake3Hash, BuildNumber, Sidecar};

/// A store given as a plain directory path must not look like a mistyped URL (`s3:/bucket`,
/// `s3//bucket`, `file:/x`): taken as a path, it would quietly become a local directory.
fn check_plain_path(path: &str) -> Result<(), String> {
    let first = path.split('/').next().unwrap_or_default();
    let lower = first.to_ascii_lowercase();
    if let Some((scheme, _)) = lower.split_once(':') {
        let fix = match scheme {
            "s3" => "`s3://bucket/prefix`",
            "file" => "`file:///absolute/path`",
            _ => "`s3://bucket/prefix`, `file:///path`, or a directory path without `:`",
        };
        return Err(format!("this looks like a mistyped URL: write {fix}"));
    }
    if lower == "s3" && path.contains("//") {
        return Err("this looks like a mistyped URL: write `s3://bucket/prefix`".into());
    }
    if path.contains("//") {
        return Err("a directory path with an empty component (`//`): write it without, or as `file:///path`".into());
    }
    Ok(())
}

/// Where tools for the servers live in the store, apart from every application's releases.
pub const TOOLS_PREFIX: &str = "tools/";

/// Result of a create-if-absent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    AlreadyExists,
}

/// A flat key/value object store. Keys are `/`-separated and relative to the store's root.
pub trait ObjectStore: Send + Sync {
    /// Where this store is, for messages: `file:///…` or `s3://bucket/prefix`.
    fn location(&self) -> String;
    /// Uploads a local file under `key` unless an object already has that key.
    fn put_new_file(&self, key: &str, src: &Path) -> Result<PutOutcome, StoreError>;
    /// Writes bytes under `key` unless an object already has that key.
    fn put_new_bytes(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError>;
    /// Writes bytes under `key`, replacing what is there (informational objects only).
    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<(), StoreError>;
    /// Streams the object into `out`; [`StoreError::NotFound`] when absent,
    /// [`StoreError::NotAFile`] when it is not a regular file, [`StoreError::TooLarge`] (with
    /// at most `limit + 1` bytes read) when it holds more than `limit` bytes. Returns its length.
    fn get(&self, key: &str, out: &mut dyn Write, limit: u64) -> Result<u64, StoreError>;
    /// Every key under `prefix` (which ends with `/`), in any order.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// How a server with nothing but a shell, `curl` or `wget`, and coreutils can read `key`
    /// during the next `valid_for`: a presigned URL (S3), or the file's path (a file store,
    /// which servers can only use when it is mounted at the same path there).
    fn download_source(&self, key: &str, valid_for: Duration)
        -> Result<DownloadSource, StoreError>;
}

/// Where a server reads one object from without credentials or an AWS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadSource {
    /// An `https://` (or, with an endpoint override, `http://`) URL that needs no credentials
    /// until it expires: download it with `curl` or `wget`.
    Url(String),
    /// An absolute path on this machine, the same on the server: copy it.
    Path(PathBuf),
}

/// Options for opening a store; the defaults suit real servers.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// S3 endpoint override (otherwise `AWS_ENDPOINT_URL` or AWS's own).
    pub s3_endpoint: Option<String>,
    /// Path-style S3 addressing (`http://host/bucket/key`), needed by most S3 stand-ins.
    /// Always on when an endpoint override is in effect.
    pub s3_path_style: bool,
    /// Uploads larger than this use multipart upload (0: the backend's default).
    pub multipart_threshold: u64,
    /// Part size for multipart uploads (0: the backend's default).
    pub part_size: u64,
}

/// What [`ArtifactStore::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    Published {
        sidecar_key: String,
        artifact_key: String,
    },
    /// The identical sidecar was already there: nothing was written.
    AlreadyPublished { sidecar_key: String },
}

/// What [`ArtifactStore::publish_signed`] did with the release and with its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPublish {
    pub outcome: PublishOutcome,
    pub signature: SignatureUpload,
}

/// What happened to a release's signature on publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureUpload {
    /// No signature was given: the release is published unsigned (or keeps the one it has).
    Unsigned,
    Uploaded {
        key: String,
    },
    /// The identical signature was already there.
    AlreadyThere {
        key: String,
    },
}

/// Signatures are a few hundred bytes; anything much larger is not one, and is not read whole.
pub const MAX_SIGNATURE_BYTES: usize = 16 << 10;

/// A release fetched into a local directory and verified against its sidecar.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub sidecar: Sidecar,
    pub sidecar_bytes: Vec<u8>,
    pub artifact_path: PathBuf,
}

/// The store with the release rules on top of a backend.
pub struct ArtifactStore {
    backend: Box<dyn ObjectStore>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArtifactStore({})", self.backend.location())
    }
}

impl ArtifactStore {
    pub fn new(backend: Box<dyn ObjectStore>) -> Self {
        Self { backend }
    }

    /// Opens `file:///path`, a plain path, or `s3://bucket/prefix`.
    pub fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if url.trim().is_empty() {
            return Err(bad(
                "empty; use `file:///path`, a directory path, or `s3://bucket/prefix`",
            ));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return Ok(Self::new(Box::new(
                S3Store::connect(bucket, prefix, options).map_err(|e| match e {
                    StoreError::BadUrl { reason, .. } => bad(&reason),
                    other => other,
                })?,
            )));
        }
        let path = if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    "a file URL needs an absolute path: `file:///path/to/store`",
                ));
            }
            PathBuf::from(rest)
        } else if let Some((scheme, _)) = url.split_once("://") {
            let known = ["s3", "file"]
                .into_iter()
                .find(|k| k.eq_ignore_ascii_case(scheme));
            return Err(bad(&match known {
                Some(k) => format!("the scheme is written `{k}://` (lowercase)"),
                None => "unsupported scheme; use `file:///path`, a directory path, or `s3://bucket/prefix`".to_owned(),
            }));
        } else {
            check_plain_path(url).map_err(|reason| bad(&reason))?;
            PathBuf::from(url)
        };
        Ok(Self::new(Box::new(FileStore::new(path))))
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    pub fn backend(&self) -> &dyn ObjectStore {
        self.backend.as_ref()
    }

    /// `<app>/BuildNNNNNN/`
    pub fn build_prefix(app: &str, build: BuildNumber) -> String {
        format!("{app}/{build:#}/")
    }

    pub fn sidecar_key(app: &str, build: BuildNumber) -> String {
        format!("{}{RELEASE_JSON}", Self::build_prefix(app, build))
    }

    /// `<app>/BuildNNNNNN/release.json.minisig`: the signature of the sidecar's exact bytes.
    pub fn signature_key(app: &str, build: BuildNumber) -> String {
        format!("{}{RELEASE_SIGNATURE}", Self::build_prefix(app, build))
    }

    /// `tools/<name>/<sha256>/<name>`: a tool for the servers, addressed by its content.
    pub fn tool_key(name: &str, sha256: &Sha256Hash) -> String {
        format!("{TOOLS_PREFIX}{name}/{sha256}/{name}")
    }

    /// Uploads `src` (whose SHA-256 is `sha256`) as the tool `name` unless it is there already;
    /// an object already under that key must have that SHA-256, or it is reported corrupt.
    pub fn put_tool(
        &self,
        name: &str,
        src: &Path,
        sha256: &Sha256Hash,
    ) -> Result<(String, PutOutcome), StoreError> {
        let key = Self::tool_key(name, sha256);
        let outcome = self.backend.put_new_file(&key, src)?;
        if outcome == PutOutcome::AlreadyExists {
            let mut w = Sha256Writer::new(std::io::sink());
            let size = std::fs::metadata(src)
                .map_err(|e| FsError::new("cannot stat", src, e))?
                .len();
            match self.backend.get(&key, &mut w, size) {
                Err(StoreError::TooLarge { .. }) => {
                    return Err(StoreError::Corrupt {
                        store: self.location(),
                        key,
                        reason: format!(
                            "it is larger than the {size}-byte tool its key names: delete the object and upload again"
                        ),
                    })
                }
                other => other?,
            };
            let (_, existing, _) = w.finish();
            if existing != *sha256 {
                return Err(StoreError::Corrupt {
                    store: self.location(),
                    key,
                    reason: format!(
                        "its SHA-256 is {existing}, not the {sha256} its key names: delete the object and upload again"
                    ),
                });
            }
        }
        Ok((key, outcome))
    }

    /// Publishes an artifact and its sidecar: artifact first, sidecar last, both only if absent.
    ///
    /// The sidecar's key is fixed per build, so writing it is the commit point: readers either
    /// see no release or a complete one, and of two racing publishers only one can win.
    pub fn publish(
        &self,
        artifact: &Path,
        sidecar: &Sidecar,
    ) -> Result<PublishOutcome, StoreError> {
        Ok(self.publish_signed(artifact, sidecar, None)?.outcome)
    }

    /// Like [`ArtifactStore::publish`], with the sidecar's signature written after the artifact
    /// and before the sidecar (only if absent, like the rest). A published release without a
    /// signature gets this one; a different signature already there is refused.
    pub fn publish_signed(
        &self,
        artifact: &Path,
        sidecar: &Sidecar,
        signature: Option<&[u8]>,
    ) -> Result<SignedPublish, StoreError> {
        let m = &sidecar.manifest;
        let archive = sidecar
            .archive
            .as_ref()
            .ok_or_else(|| ManifestError::Invalid {
                path: RELEASE_JSON.into(),
                message:
                    "the sidecar has no archive section (is it the copy from inside an archive?)"
                        .into(),
            })?;
        let (hash, size) = Blake3Hash::of_file(artifact)?;
        if hash != archive.blake3 || size != archive.size {
            return Err(StoreError::Corrupt {
                store: "local".into(),
                key: artifact.display().to_string(),
                reason: format!(
                    "the file is {size} bytes with BLAKE3 {hash}, its sidecar says {} bytes with {}",
                    archive.size, archive.blake3
                ),
            });
        }
        let sidecar_key = Self::sidecar_key(&m.app, m.build);
        let artifact_key = format!(
            "{}{}",
            Self::build_prefix(&m.app, m.build),
            archive.file_name
        );
        let bytes = sidecar.to_bytes();

        if let Some(existing) = self.get_optional(&sidecar_key)? {
            let outcome = self.compare_published(sidecar, &existing, &bytes, sidecar_key)?;
            let signature = self.put_signature(m.build, &m.app, signature)?;
            return Ok(SignedPublish { outcome, signature });
        }
        if self.backend.put_new_file(&artifact_key, artifact)? == PutOutcome::AlreadyExists {
            // A previous publish stopped before its sidecar, or a racing publisher of the same
            // archive got here first: fine if the bytes are the ones we hold.
            let mut w = HashingWriter::new(std::io::sink());
            self.get_limited(&artifact_key, &mut w, archive.size, "the local artifact")?;
            let (_, existing_hash, existing_size) = w.finish();
            if existing_hash != archive.blake3 || existing_size != archive.size {
                return Err(StoreError::Corrupt {
                    store: self.location(),
                    key: artifact_key,
                    reason: format!("an object with this name already exists with BLAKE3 {existing_hash}, not {}", archive.blake3),
                });
            }
        }
        let signature = self.put_signature(m.build, &m.app, signature)?;
        let outcome = match self.backend.put_new_bytes(&sidecar_key, &bytes)? {
            PutOutcome::Created => PublishOutcome::Published {
                sidecar_key,
                artifact_key,
            },
            PutOutcome::AlreadyExists => {
                let existing = self.get_optional(&sidecar_key)?.unwrap_or_default();
                self.compare_published(sidecar, &existing, &bytes, sidecar_key)?
            }
        };
        Ok(SignedPublish { outcome, signature })
    }

    fn put_signature(
        &self,
        build: BuildNumber,
        app: &str,
        signature: Option<&[u8]>,
    ) -> Result<SignatureUpload, StoreError> {
        let Some(signature) = signature else {
            return Ok(SignatureUpload::Unsigned);
        };
        let key = Self::signature_key(app, build);
        if self.backend.put_new_bytes(&key, signature)? == PutOutcome::Created {
            return Ok(SignatureUpload::Uploaded { key });
        }
        if self.get_optional(&key)?.as_deref() == Some(signature) {
            return Ok(SignatureUpload::AlreadyThere { key });
        }
        Err(StoreError::SignatureConflict {
            store: self.location(),
            build,
            key,
            reason: format!(
                "it is not the local `{RELEASE_SIGNATURE}` (signed with another key, or for another sidecar); signatures are immutable like the release: if it was left by an interrupted publish of an unpublished build remove it, otherwise keep the published one"
            ),
        })
    }

    fn compare_published(
        &self,
        sidecar: &Sidecar,
        existing: &[u8],
        ours: &[u8],
        sidecar_key: String,
    ) -> Result<PublishOutcome, StoreError> {
        if existing == ours {
            return Ok(PublishOutcome::AlreadyPublished { sidecar_key });
        }
        let existing_hash = Sidecar::from_bytes(existing, &sidecar_key)
            .ok()
            .and_then(|s| s.archive.map(|a| a.blake3.to_hex()))
            .unwrap_or_else(|| {
                format!(
                    "an unreadable sidecar (BLAKE3 of its bytes {})",
                    Blake3Hash::of(existing)
                )
            });
        Err(StoreError::Conflict {
            store: self.location(),
            build: sidecar.manifest.build,
            existing: existing_hash,
            new: sidecar
                .archive
                .as_ref()
                .map(|a| a.blake3.to_hex())
                .unwrap_or_default(),
        })
    }

    /// A small object (a sidecar or a signature), `None` when absent.
    fn get_optional(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut buf = Vec::new();
        match self.get_limited(key, &mut buf, MAX_SIDECAR_BYTES, "any sidecar may be") {
            Ok(_) => Ok(Some(buf)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`ObjectStore::get`] with `limit`, saying in a refusal what sets it.
    fn get_limited(
        &self,
        key: &str,
        out: &mut dyn Write,
        limit: u64,
        what: &str,
    ) -> Result<u64, StoreError> {
        self.backend.get(key, out, limit).map_err(|e| match e {
            StoreError::TooLarge {
                store,
                key,
                limit,
                actual,
                ..
            } => StoreError::TooLarge {
                store,
                key,
                what: what.to_owned(),
                limit,
                actual,
            },
            other => other,
        })
    }

    /// Writes the informational build log beside the release (may be overwritten).
    pub fn put_build_log(
        &self,
        app: &str,
        build: BuildNumber,
        bytes: &[u8],
    ) -> Result<String, StoreError> {
        let key = format!("{}{BUILD_LOG_JSON}", Self::build_prefix(app, build));
        self.backend.put_bytes(&key, bytes)?;
        Ok(key)
    }

    /// Reads and validates a build's sidecar; it must describe exactly that app and build.
    pub fn fetch_sidecar(
        &self,
        app: &str,
        build: BuildNumber,
    ) -> Result<(Sidecar, Vec<u8>), StoreError> {
        let bytes = self.fetch_sidecar_bytes(app, build)?;
        let sidecar = self.parse_sidecar(app, build, &bytes)?;
        Ok((sidecar, bytes))
    }

    /// A build's sidecar exactly as the store holds it, unparsed and at most
    /// [`MAX_SIDECAR_BYTES`]: a signature is checked over these bytes before anything in them
    /// is believed (or quoted in a message).
    pub fn fetch_sidecar_bytes(
        &self,
        app: &str,
        build: BuildNumber,
    ) -> Result<Vec<u8>, StoreError> {
        let key = Self::sidecar_key(app, build);
        let mut bytes = Vec::new();
        self.get_limited(&key, &mut bytes, MAX_SIDECAR_BYTES, "any sidecar may be")?;
        Ok(bytes)
    }

    /// Parses the sidecar fetched for `app` and `build`; it must describe exactly that release.
    pub fn parse_sidecar(
        &self,
        app: &str,
        build: BuildNumber,
        bytes: &[u8],
    ) -> Result<Sidecar, StoreError> {
        let key = Self::sidecar_key(app, build);
        let origin = format!("{}/{key}", self.location());
        let sidecar = Sidecar::from_bytes(bytes, &origin)?;
        if sidecar.manifest.app != app || sidecar.manifest.build != build {
            return Err(StoreError::WrongRelease {
                store: self.location(),
                key,
                found: format!("{} {:#}", sidecar.manifest.app, sidecar.manifest.build),
                wanted: format!("{app} {build:#}"),
            });
        }
        if sidecar.archive.is_none() {
            return Err(StoreError::Corrupt {
                store: self.location(),
                key,
                reason: "it has no archive section (it is the copy from inside an archive)".into(),
            });
        }
        Ok(sidecar)
    }

    /// The signature of a build's sidecar, `None` when the build is published unsigned.
    pub fn fetch_signature(
        &self,
        app: &str,
        build: BuildNumber,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = Self::signature_key(app, build);
        let mut out = Vec::new();
        match self.get_limited(
            &key,
            &mut out,
            MAX_SIGNATURE_BYTES as u64,
            "any minisign signature is",
        ) {
            Ok(_) => Ok(Some(out)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Fetches a build's sidecar, then the artifact it names, streamed into `dest_dir` and
    /// verified (size and BLAKE3) before it appears under its final name.
    pub fn fetch(
        &self,
        app: &str,
        build: BuildNumber,
        dest_dir: &Path,
    ) -> Result<Fetched, StoreError> {
        let (sidecar, sidecar_bytes) = self.fetch_sidecar(app, build)?;
        let artifact_path = self.fetch_artifact(&sidecar, dest_dir)?;
        Ok(Fetched {
            sidecar,
            sidecar_bytes,
            artifact_path,
        })
    }

    /// Downloads the artifact a sidecar (already fetched and checked, e.g. its signature)
    /// names into `dest_dir`, verified against that sidecar — not against whatever the store
    /// holds by then — before it appears under its final name.
    pub fn fetch_artifact(
        &self,
        sidecar: &Sidecar,
        dest_dir: &Path,
    ) -> Result<PathBuf, StoreError> {
        let (app, build) = (sidecar.manifest.app.as_str(), sidecar.manifest.build);
        let archive = sidecar
            .archive
            .clone()
            .ok_or_else(|| ManifestError::Invalid {
                path: RELEASE_JSON.into(),
                message: "the sidecar has no archive section".into(),
            })?;
        let key = format!("{}{}", Self::build_prefix(app, build), archive.file_name);
        let final_path = dest_dir.join(&archive.file_name);
        let tmp = atomic::temp_sibling(&final_path, "download");
        let result = (|| {
            let file = File::create(&tmp).map_err(|e| FsError::new("cannot create", &tmp, e))?;
            let bar = progress::bytes_bar(archive.size, &format!("download {}", archive.file_name));
            let mut w = HashingWriter::new(ProgressWriter::new(
                BufWriter::with_capacity(1 << 20, file),
                bar,
            ));
            // At most one byte past the declared size is read: an object replaced by a larger
            // one cannot fill the server's disk.
            self.get_limited(
                &key,
                &mut DownloadFaultPoint(&mut w),
                archive.size,
                "its sidecar says",
            )?;
            let (inner, hash, size) = w.finish();
            let corrupt = |reason: String| StoreError::Corrupt {
                store: self.location(),
                key: key.clone(),
                reason,
            };
            if size != archive.size {
                return Err(corrupt(format!(
                    "got {size} bytes, the sidecar says {} (truncated or replaced)",
                    archive.size
                )));
            }
            if hash != archive.blake3 {
                return Err(corrupt(format!(
                    "BLAKE3 is {hash}, the sidecar says {} (altered or replaced)",
                    archive.blake3
                )));
            }
            let file = inner
                .into_inner()
                .into_inner()
                .map_err(|e| FsError::new("cannot write", &tmp, e.into_error()))?;
            file.sync_all()
                .map_err(|e| FsError::new("cannot fsync", &tmp, e))?;
            atomic::rename(&tmp, &final_path)?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(final_path)
    }

    /// The builds whose sidecar is present (i.e. completely published), ascending.
    pub fn list_builds(&self, app: &str) -> Result<Vec<BuildNumber>, StoreError> {
        let prefix = format!("{app}/");
        let mut builds: Vec<BuildNumber> = self
            .backend
            .list(&prefix)?
            .iter()
            .filter_map(|k| {
                k.strip_prefix(&prefix)?
                    .strip_suffix(&format!("/{RELEASE_JSON}"))
                    .map(str::to_owned)
            })
            .filter_map(|dir| BuildNumber::parse(&dir).ok().filter(|b| b.tag() == dir))
            .collect();
        builds.sort();
        builds.dedup();
        Ok(builds)
    }
}

/// Each write of a download is a hit of the crash tests' `fetch:download` point, so a test
/// can kill the installer part-way through a download (a no-op without `fault-injection`).
struct DownloadFaultPoint<W>(W);

impl<W: Write> Write for DownloadFaultPoint<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::fault::point("fetch:download");
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_created_once_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(Box::new(FileStore::new(dir.path())));
        let build = BuildNumber::parse("Build000003").unwrap();
        assert_eq!(store.fetch_signature("app", build).unwrap(), None);
        assert_eq!(
            store.put_signature(build, "app", None).unwrap(),
            SignatureUpload::Unsigned
        );
        let key = "app/Build000003/release.json.minisig".to_owned();
        assert_eq!(ArtifactStore::signature_key("app", build), key);
        assert_eq!(
            store.put_signature(build, "app", Some(b"sig one")).unwrap(),
            SignatureUpload::Uploaded { key: key.clone() }
        );
        assert_eq!(
            store.put_signature(build, "app", Some(b"sig one")).unwrap(),
            SignatureUpload::AlreadyThere { key: key.clone() }
        );
        let err = store
            .put_signature(build, "app", Some(b"sig two"))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::SignatureConflict { .. }) && err.to_string().contains(&key),
            "{err}"
        );
        assert_eq!(
            store.fetch_signature("app", build).unwrap().as_deref(),
            Some(&b"sig one"[..])
        );
        // Something far larger than a signature is refused without being read whole.
        std::fs::write(dir.path().join(&key), vec![b'x'; MAX_SIGNATURE_BYTES + 1]).unwrap();
        let err = store.fetch_signature("app", build).unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn tools_are_stored_once_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(Box::new(FileStore::new(dir.path())));
        let src = dir.path().join("installer.bin");
        std::fs::write(&src, b"an installer").unwrap();
        let (sha, _) = Sha256Hash::of_file(&src).unwrap();
        let (key, outcome) = store.put_tool("installer", &src, &sha).unwrap();
        assert_eq!(key, format!("tools/installer/{sha}/installer"));
        assert_eq!(outcome, PutOutcome::Created);
        assert_eq!(
            store.put_tool("installer", &src, &sha).unwrap().1,
            PutOutcome::AlreadyExists
        );
        assert_eq!(
            store
                .backend()
                .download_source(&key, Duration::from_secs(60))
                .unwrap(),
            DownloadSource::Path(dir.path().join(&key))
        );
        // An object under the key with other bytes is never taken for the tool.
        std::fs::write(dir.path().join(&key), b"something else").unwrap();
        let err = store.put_tool("installer", &src, &sha).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn urls_choose_backends_or_say_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        assert!(ArtifactStore::open(&url, &StoreOptions::default())
            .unwrap()
            .location()
            .starts_with("file:///"));
        assert!(ArtifactStore::open("artifacts", &StoreOptions::default()).is_ok());
        for (bad, says) in [
            ("", "empty"),
            ("file://relative/x", "absolute path"),
            ("ftp://host/x", "unsupported scheme"),
            ("http://127.0.0.1/x", "unsupported scheme"),
            ("S3://bucket/x", "`s3://` (lowercase)"),
            ("File:///x", "`file://` (lowercase)"),
            ("s3:/bucket/x", "mistyped URL: write `s3://bucket/prefix`"),
            ("s3:bucket", "mistyped URL"),
            ("s3//bucket", "mistyped URL: write `s3://bucket/prefix`"),
            (
                "file:/srv/store",
                "mistyped URL: write `file:///absolute/path`",
            ),
            ("gs:bucket", "mistyped URL"),
            ("artifacts//x", "empty component"),
        ] {
            let err = ArtifactStore::open(bad, &StoreOptions::default()).unwrap_err();
            assert!(
                matches!(err, StoreError::BadUrl { .. }) && err.to_string().contains(says),
                "{bad}: {err}"
            );
        }
        assert!(ArtifactStore::open("dist/store", &StoreOptions::default()).is_ok());
    }
}
