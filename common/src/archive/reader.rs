//! Safe archive reader: verifies everything against the sidecar while unpacking into a new tree.
//!
//! Nothing is trusted until checked: entries go into a temporary directory beside the
//! destination, every entry is checked against the manifest as it streams past (path, type,
//! mode, size, BLAKE3), the archive's own BLAKE3 is checked at the end, and only then is the
//! tree made durable and renamed into place. Any error removes the temporary directory.
//!
//! Decompression runs on its own thread, feeding blocks to the thread that parses and writes,
//! so inflating and file creation overlap as they do in `tar xzf` (two processes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use flate2::bufread::GzDecoder;

use crate::archive::links::{check_link_target, find_unsafe_link, LinkProblem, Reserved};
use crate::atomic;
use crate::error::{FsError, UnpackError};
use crate::hash::HashingReader;
use crate::manifest::{FileEntry, Mode, Sidecar, MAX_SIDECAR_BYTES, RELEASE_JSON};
use crate::Blake3Hash;

/// Limits against decompression bombs, and the paths the archive does not decide.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Most bytes the unpacked tree may hold (file contents).
    pub max_unpacked_bytes: u64,
    /// Most the decompressed stream may expand relative to the compressed archive.
    pub max_ratio: u64,
    /// Paths the installer creates or replaces in the unpacked tree (none by default: a plain
    /// archive). Entries at owned paths are refused, and no link may lead to any of them.
    pub reserved: Reserved,
    /// Files already on disk by content and mode (other releases' files): an entry with the
    /// same BLAKE3 and mode becomes a hard link to one of them instead of a new copy, once that
    /// file is re-hashed and found equal (it may have changed since it was verified). The
    /// entry's bytes are still read and checked against the manifest.
    pub reuse: HashMap<(Blake3Hash, u32), PathBuf>,
    /// A directory of the tree kept once outside it for every tree with the same content
    /// (a release's installed dependencies): see [`SharedTree`].
    pub shared: Option<SharedTree>,
}

/// A directory of the archive (`deps`) whose one copy lives outside the unpacked tree, at
/// `store` (`<root>/deps/<key>`, named by its content), and which the unpacked tree holds as
/// a link to it.
///
/// When `store` exists, it is checked against the manifest first — every entry under the
/// directory, and nothing more — and the archive's entries under the directory are checked
/// against the manifest by name, type, mode and size as they stream past, but neither hashed
/// again nor written (the archive as a whole is checked against the sidecar at its end). When
/// it does not exist, they are written into the tree
/// and the directory is moved to `store` once the whole archive has checked out and is on
/// disk, so a `store` only ever appears complete. A `store` that does not match is left alone:
/// the tree then gets its own copy ([`SharedUse::Own`]).
#[derive(Debug, Clone)]
pub struct SharedTree {
    /// The directory's entry in the archive, a top-level name (`deps`).
    pub dir: String,
    /// Where its one copy lives.
    pub store: PathBuf,
    /// The target of the link the tree gets in its place (`../../deps/<key>`): relative, so
    /// the tree can be renamed.
    pub link: String,
}

/// What became of [`UnpackOptions::shared`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedUse {
    /// The copy in the store was there, checked equal, and linked to.
    Reused,
    /// This unpack wrote the copy into the store.
    Created,
    /// The copy in the store differs from the manifest (named here): the tree has its own.
    Own(String),
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 8 << 30,
            max_ratio: 200,
            reserved: Reserved::default(),
            reuse: HashMap::new(),
            shared: None,
        }
    }
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Of `files`, how many are hard links to equal content (an earlier entry of this archive or
    /// a file of [`UnpackOptions::reuse`]) rather than new copies, and their bytes.
    pub linked: u64,
    pub linked_bytes: u64,
    /// What became of [`UnpackOptions::shared`], when asked for.
    pub shared: Option<SharedUse>,
    /// Whether the reused shared directory's entries were only hashed as compressed bytes, not
    /// inflated: they came last in the archive (as the writer now puts them).
    pub shared_not_inflated: bool,
}

/// Decompressed block size handed from the inflating thread to the writing thread.
const BLOCK: usize = 256 * 1024;

/// Verifies `archive` against `sidecar` and unpacks it into `dest`, which must not exist.
/// On any error nothing is left behind.
pub fn unpack(
    archive: &Path,
    sidecar: &Sidecar,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<Unpacked, UnpackError> {
    let expected = sidecar.archive.as_ref().ok_or_else(|| {
        UnpackError::Manifest(crate::error::ManifestError::Invalid {
            path: RELEASE_JSON.into(),
            message: "the sidecar has no archive section (is it the copy from inside an archive?)"
                .into(),
        })
    })?;
    if fs::symlink_metadata(dest).is_ok() {
        return Err(UnpackError::DestinationExists(dest.to_owned()));
    }
    let file = File::open(archive).map_err(|e| FsError::new("cannot open", archive, e))?;
    let size = file
        .metadata()
        .map_err(|e| FsError::new("cannot stat", archive, e))?
        .len();
    if size != expected.size {
        return Err(UnpackError::ArchiveSize {
            expected: expected.size,
            actual: size,
        });
    }
    check_declared_size(sidecar, size, options)?;
    check_manifest(sidecar, &options.reserved)?;
    drop(file);
    // Where the shared copy stands decides how its entries are unpacked: a copy that is there
    // is checked while the archive streams (both take a while, and they use different
    // resources), and reused only when it is exactly what the manifest lists.
    let shared = options.shared.as_ref().filter(|tree| {
        matches!(
            sidecar.manifest.files.get(&tree.dir),
            Some(FileEntry::Dir { .. })
        )
    });
    let (shared, own_because) = match shared.map(|t| (t, fs::symlink_metadata(&t.store))) {
        None => (None, None),
        Some((tree, Err(e))) if e.kind() == io::ErrorKind::NotFound => (Some((tree, false)), None),
        Some((tree, Ok(m))) if m.is_dir() => (Some((tree, true)), None),
        Some((tree, Ok(_))) => (
            None,
            Some(format!("`{}` is not a directory", tree.store.display())),
        ),
        Some((tree, Err(e))) => (
            None,
            Some(format!("cannot stat `{}`: {e}", tree.store.display())),
        ),
    };
    match unpack_once(archive, sidecar, dest, options, shared)? {
        Ok(mut summary) => {
            if let Some(why) = own_because {
                summary.shared = Some(SharedUse::Own(why));
            }
            Ok(summary)
        }
        // The copy differs: this tree gets its own, unpacked again from the start.
        Err(why) => {
            let mut summary = unpack_once(archive, sidecar, dest, options, None)?
                .expect("nothing shared, nothing to differ");
            summary.shared = Some(SharedUse::Own(why));
            Ok(summary)
        }
    }
}

/// One pass over the archive into a temporary directory renamed to `dest` at the end. With a
/// shared copy to reuse (`(tree, true)`), its check runs beside the stream; when it finds a
/// difference nothing is left behind and the difference is returned instead.
fn unpack_once(
    archive: &Path,
    sidecar: &Sidecar,
    dest: &Path,
    options: &UnpackOptions,
    shared: Option<(&SharedTree, bool)>,
) -> Result<Result<Unpacked, String>, UnpackError> {
    let file = File::open(archive).map_err(|e| FsError::new("cannot open", archive, e))?;
    let size = file
        .metadata()
        .map_err(|e| FsError::new("cannot stat", archive, e))?
        .len();
    let skip = shared
        .filter(|(_, reused)| *reused)
        .map(|(tree, _)| (tree.dir.as_str(), tree.store.as_path()));
    let tmp = atomic::temp_sibling(dest, "unpack");
    fs::create_dir(&tmp).map_err(|e| FsError::new("cannot create directory", &tmp, e))?;
    let (streamed, checked) = thread::scope(|scope| {
        let check = skip.map(|(dir, store)| scope.spawn(move || check_shared(store, dir, sidecar)));
        let streamed = unpack_into(file, size, sidecar, &tmp, options, skip);
        let checked = check.map_or(Ok(()), |c| {
            c.join()
                .unwrap_or_else(|_| Err("the thread checking it failed".into()))
        });
        (streamed, checked)
    });
    if let (Ok(_), Err(why)) = (&streamed, &checked) {
        atomic::remove_tree(&tmp)?;
        return Ok(Err(why.clone()));
    }
    let result = streamed.and_then(|mut summary| {
        // One filesystem sync makes every new file durable before the tree gets its real name.
        atomic::sync_filesystem(&tmp)?;
        if let Some((tree, reused)) = shared {
            let inside = tmp.join(&tree.dir);
            if !reused {
                // Complete and durable: only now does the copy get its shared name.
                let parent = atomic::parent_of(&tree.store);
                fs::create_dir_all(parent)
                    .map_err(|e| FsError::new("cannot create directory", parent, e))?;
                atomic::rename(&inside, &tree.store)?;
            }
            std::os::unix::fs::symlink(&tree.link, &inside)
                .map_err(|e| FsError::new("cannot create symlink", &inside, e))?;
            atomic::fsync_dir(&tmp)?;
            summary.shared = Some(if reused {
                SharedUse::Reused
            } else {
                SharedUse::Created
            });
        }
        crate::fault::point("unpack:before-rename");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(Mode::DIR.0))
            .map_err(|e| FsError::new("cannot set mode of", &tmp, e))?;
        if fs::symlink_metadata(dest).is_ok() {
            return Err(UnpackError::DestinationExists(dest.to_owned()));
        }
        atomic::rename(&tmp, dest)?;
        Ok(summary)
    });
    if result.is_err() {
        let _ = atomic::remove_tree(&tmp);
    }
    result.map(Ok)
}

/// Most bytes the decompressed stream may hold. Everything decompressed counts: headers and
/// padding too, so a bomb made of huge long-name entries or zero padding is caught as well as
/// one made of file content.
fn stream_limit(compressed_size: u64, options: &UnpackOptions) -> u64 {
    options
        .max_ratio
        .saturating_mul(compressed_size.max(1))
        .min(
            options
                .max_unpacked_bytes
                .saturating_add(options.max_unpacked_bytes / 8 + (64 << 20)),
        )
}

/// Refuses a bomb before a byte is inflated. Every file byte the manifest lists must come out
/// of the stream, so a manifest that declares more than the limits allow would be refused
/// midway anyway — after writing up to the limit to disk.
fn check_declared_size(
    sidecar: &Sidecar,
    compressed_size: u64,
    options: &UnpackOptions,
) -> Result<(), UnpackError> {
    let mut total: u64 = 0;
    for (name, entry) in &sidecar.manifest.files {
        if let FileEntry::File { size, .. } = entry {
            total = total.saturating_add(*size);
            if total > options.max_unpacked_bytes {
                return Err(UnpackError::TooLarge {
                    entry: name.clone(),
                    limit: options.max_unpacked_bytes,
                });
            }
        }
    }
    if total > stream_limit(compressed_size, options) {
        return Err(UnpackError::RatioTooHigh {
            limit: options.max_ratio,
        });
    }
    Ok(())
}

/// Refuses, before a byte is written, a manifest that lists a path the installer owns or a link
/// that does not lead to an entry of the release, or leads to, into or above a reserved path.
/// The archive must match the manifest exactly, so this judges the tree that would be unpacked.
pub fn check_manifest(sidecar: &Sidecar, reserved: &Reserved) -> Result<(), UnpackError> {
    if let Some((entry, owned)) = sidecar
        .manifest
        .files
        .keys()
        .find_map(|k| reserved.owned_by(k).map(|o| (k, o)))
    {
        return Err(UnpackError::InstallerOwned {
            entry: entry.clone(),
            owned: owned.to_owned(),
        });
    }
    // One link's own text first: it names the plainest mistake.
    for (entry, e) in &sidecar.manifest.files {
        if let FileEntry::Symlink { target } = e {
            if target.starts_with('/') {
                return Err(UnpackError::AbsoluteLink {
                    entry: entry.clone(),
                    target: target.clone(),
                });
            }
            if check_link_target(entry, target).is_err() {
                return Err(UnpackError::LinkEscapes {
                    entry: entry.clone(),
                    target: target.clone(),
                });
            }
        }
    }
    match find_unsafe_link(&sidecar.manifest.files, reserved) {
        None => Ok(()),
        Some((entry, target, LinkProblem::Escapes)) => {
            Err(UnpackError::LinkEscapes { entry, target })
        }
        Some((entry, target, problem)) => Err(UnpackError::UnsafeLink {
            entry,
            target,
            reason: problem.reason(),
        }),
    }
}

/// The tar parser's errors name what it choked on only vaguely; a GNU sparse header (which no
/// release contains) is said to be one.
fn parse_error(e: io::Error) -> UnpackError {
    let text = e.to_string();
    if text.contains("sparse") || text.contains("real_size") {
        UnpackError::Sparse(text)
    } else {
        UnpackError::Corrupt(text)
    }
}

/// What the inflating thread reports when it is done.
struct StreamEnd {
    hash: Blake3Hash,
    compressed: u64,
}

fn unpack_into(
    file: File,
    compressed_size: u64,
    sidecar: &Sidecar,
    root: &Path,
    options: &UnpackOptions,
    skip: Option<(&str, &Path)>,
) -> Result<Unpacked, UnpackError> {
    let expected = sidecar.archive.as_ref().expect("checked by unpack");
    let stream_limit = stream_limit(compressed_size, options);
    let (tx, rx) = mpsc::sync_channel::<Result<Vec<u8>, UnpackError>>(8);
    let max_ratio = options.max_ratio;
    let stopped = Arc::new(AtomicBool::new(false));
    let rest_unread = Arc::clone(&stopped);
    let inflater = thread::spawn(move || -> Option<StreamEnd> {
        let mut hashed = HashingReader::new(file);
        let mut total: u64 = 0;
        let outcome = (|| -> Result<(), UnpackError> {
            // The `bufread` decoder reads no further than the gzip member's end, so whatever
            // follows stays in this buffer for the check below (the `read` one would swallow
            // up to 32 KiB of it into a private buffer).
            let mut gz = GzDecoder::new(BufReader::with_capacity(BLOCK, &mut hashed));
            loop {
                let mut block = vec![0u8; BLOCK];
                let mut filled = 0;
                while filled < BLOCK {
                    match gz.read(&mut block[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(UnpackError::Corrupt(e.to_string())),
                    }
                }
                total += filled as u64;
                if total > stream_limit {
                    return Err(UnpackError::RatioTooHigh { limit: max_ratio });
                }
                if filled == 0 {
                    break;
                }
                block.truncate(filled);
                if rest_unread.load(Ordering::Acquire) {
                    // The writer needs none of the rest (a shared tree already checked on
                    // disk): it is hashed, for the archive's own check, not inflated.
                    let mut rest = gz.into_inner();
                    io::copy(&mut rest, &mut io::sink())
                        .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
                    return Ok(());
                }
                if tx.send(Ok(block)).is_err() {
                    return Ok(()); // the writer stopped: its own error is reported
                }
            }
            // One gzip member and nothing after it.
            let mut rest = gz.into_inner();
            let mut probe = [0u8; 1];
            if rest
                .read(&mut probe)
                .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                != 0
            {
                return Err(UnpackError::TrailingData);
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                let (_, hash, compressed) = hashed.finish();
                Some(StreamEnd { hash, compressed })
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                None
            }
        }
    });

    let mut source = BlockReader {
        rx,
        current: Vec::new(),
        pos: 0,
        error: None,
    };
    let written = write_entries(&mut source, sidecar, root, options, skip);
    let drained = written.and_then(|(summary, rest)| match rest {
        // Only the shared tree's entries are left: the inflater hashes the rest of the file.
        Rest::Shared => {
            stopped.store(true, Ordering::Release);
            source.discard_rest();
            Ok(Unpacked {
                shared_not_inflated: true,
                ..summary
            })
        }
        // Read what the tar parser left (end-of-archive padding) so the gzip trailer gets
        // checked.
        Rest::Padding => source.drain_zeros().map(|()| summary),
    });
    let stream_error = source.error.take();
    drop(source);
    let end = inflater
        .join()
        .map_err(|_| UnpackError::Corrupt("the decompression thread failed".into()))?;
    // The inflater's own error explains a parse failure better than the parse failure does.
    if let Some(e) = stream_error {
        return Err(e);
    }
    let summary = drained?;
    let end =
        end.ok_or_else(|| UnpackError::Corrupt("the decompression stream ended early".into()))?;
    if end.compressed != expected.size {
        return Err(UnpackError::ArchiveSize {
            expected: expected.size,
            actual: end.compressed,
        });
    }
    if end.hash != expected.blake3 {
        return Err(UnpackError::ArchiveHash {
            expected: expected.blake3.to_hex(),
            actual: end.hash.to_hex(),
        });
    }
    Ok(summary)
}

/// `Read` over the blocks the inflating thread sends; remembers the thread's error.
struct BlockReader {
    rx: Receiver<Result<Vec<u8>, UnpackError>>,
    current: Vec<u8>,
    pos: usize,
    error: Option<UnpackError>,
}

impl BlockReader {
    /// Receives, unread, what the inflating thread still sends until it stops, keeping its
    /// error if it sends one.
    fn discard_rest(&mut self) {
        while let Ok(block) = self.rx.recv() {
            if let Err(e) = block {
                self.error.get_or_insert(e);
            }
        }
    }

    /// After the tar end marker only zero padding may follow.
    fn drain_zeros(&mut self) -> Result<(), UnpackError> {
        let mut buf = vec![0u8; BLOCK];
        loop {
            let n = self
                .read(&mut buf)
                .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
            if n == 0 {
                return Ok(());
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(UnpackError::TrailingData);
            }
        }
    }
}

impl Read for BlockReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    self.current = block;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    self.error = Some(e);
                    return Err(io::Error::other(msg));
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What is left of the stream when [`write_entries`] returns.
enum Rest {
    /// The tar end marker was read: only its padding is left.
    Padding,
    /// The shared tree's entries, last in the archive, and nothing else the manifest lists.
    Shared,
}

/// Parses the tar stream and writes every entry, checking it against the manifest. Entries
/// under `skip`'s directory are checked but not written: its checked copy is `skip`'s store.
///
/// When the skipped directory comes last (as the writer puts it) the parse stops where it
/// begins, once every other entry the manifest lists has been seen: what follows is only what
/// the store already holds, checked against the manifest beside the stream. The embedded
/// manifest, which follows it, is then written from the sidecar (the very bytes its digest is
/// checked against).
fn write_entries(
    source: &mut BlockReader,
    sidecar: &Sidecar,
    root: &Path,
    options: &UnpackOptions,
    skip: Option<(&str, &Path)>,
) -> Result<(Unpacked, Rest), UnpackError> {
    // Where an entry under the skipped directory is on disk: in its store.
    let skipped = |name: &str| -> Option<PathBuf> {
        let (dir, store) = skip?;
        match skipped_name(name, dir)? {
            "" => Some(store.to_owned()),
            rest => Some(store.join(rest)),
        }
    };
    let manifest = &sidecar.manifest;
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(manifest.source_date.max(0) as u64);
    let outside = |name: &str| skip.is_none_or(|(dir, _)| skipped_name(name, dir).is_none());
    // Listed entries outside the skipped directory, and how many of them the stream has shown.
    let mut outside_left = manifest.files.keys().filter(|k| outside(k)).count();
    let mut archive = tar::Archive::new(source);
    let mut seen: HashSet<String> = HashSet::with_capacity(manifest.files.len() + 1);
    let mut dirs: HashSet<String> = HashSet::new();
    let mut links: HashSet<String> = HashSet::new();
    let mut summary = Unpacked::default();
    let mut written: HashMap<(Blake3Hash, u32), PathBuf> = HashMap::new();
    // Regular files so far by name, for the archive's own hard links to them.
    let mut regular: HashMap<String, (Blake3Hash, u32, u64)> = HashMap::new();
    let mut embedded_ok = false;
    let mut buf = vec![0u8; BLOCK];
    let corrupt = |e: io::Error| UnpackError::Corrupt(e.to_string());
    for entry in archive.entries().map_err(parse_error)? {
        let mut entry = entry.map_err(parse_error)?;
        crate::fault::point("unpack:entry");
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if kind.is_gnu_sparse() {
            return Err(UnpackError::Sparse(format!(
                "entry `{}`",
                crate::untrusted::shown_bytes(&raw)
            )));
        }
        let name = check_path(&raw, kind.is_dir())?;
        if outside_left == 0 && skip.is_some_and(|(dir, _)| name == dir) {
            let digest = write_embedded(&root.join(RELEASE_JSON), sidecar, mtime)?;
            if digest != sidecar.embedded_digest() {
                return Err(UnpackError::EmbeddedSidecarMismatch);
            }
            // The shared tree's files are this release's files all the same, already on disk:
            // counted as linked, as when their entries are read.
            for (_, listed) in manifest.files.iter().filter(|(k, _)| !outside(k)) {
                if let FileEntry::File { size, .. } = listed {
                    summary.files += 1;
                    summary.bytes += size;
                    summary.linked += 1;
                    summary.linked_bytes += size;
                }
            }
            return Ok((summary, Rest::Shared));
        }
        if let Some(owned) = options.reserved.owned_by(&name) {
            return Err(UnpackError::InstallerOwned {
                entry: name,
                owned: owned.to_owned(),
            });
        }
        if !seen.insert(name.clone()) {
            return Err(UnpackError::Duplicate { entry: name });
        }
        if name != RELEASE_JSON && outside(&name) && manifest.files.contains_key(&name) {
            outside_left -= 1;
        }
        // Every ancestor must be a directory this archive already created (never a symlink):
        // otherwise a write could land outside the tree.
        if let Some((parent, _)) = name.rsplit_once('/') {
            let mut prefix = String::new();
            for part in parent.split('/') {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                if links.contains(&prefix) {
                    return Err(UnpackError::ThroughSymlink {
                        entry: name,
                        link: prefix,
                    });
                }
            }
            if !dirs.contains(parent) {
                return Err(UnpackError::ManifestMismatch {
                    entry: name.clone(),
                    what: format!(
                        "its directory `{parent}` does not come before it in the archive"
                    ),
                });
            }
        }
        let mode = entry.header().mode().map_err(corrupt)?;
        match kind {
            tar::EntryType::Link => {}
            tar::EntryType::Char => {
                return Err(UnpackError::SpecialFile {
                    entry: name,
                    kind: "character device",
                })
            }
            tar::EntryType::Block => {
                return Err(UnpackError::SpecialFile {
                    entry: name,
                    kind: "block device",
                })
            }
            tar::EntryType::Fifo => {
                return Err(UnpackError::SpecialFile {
                    entry: name,
                    kind: "FIFO",
                })
            }
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Directory
            | tar::EntryType::Symlink => {}
            _ => {
                return Err(UnpackError::SpecialFile {
                    entry: name,
                    kind: "entry of an unsupported type",
                })
            }
        }
        if kind != tar::EntryType::Symlink && mode & 0o7000 != 0 {
            return Err(UnpackError::PrivilegedMode { entry: name, mode });
        }
        // The entry's real size: a PAX `size` record overrides the header's field.
        let size = entry.size();
        if name == RELEASE_JSON {
            if kind.is_dir() || kind == tar::EntryType::Symlink || size > MAX_SIDECAR_BYTES {
                return Err(UnpackError::EmbeddedSidecarMismatch);
            }
            // Compared by hash and length as it streams to disk: it lists every file, so holding
            // two copies in memory would grow with the tree.
            let (hash, n) = write_file(
                &root.join(RELEASE_JSON),
                &mut entry,
                Mode::FILE,
                mtime,
                &mut buf,
            )?;
            if (hash, n) != sidecar.embedded_digest() {
                return Err(UnpackError::EmbeddedSidecarMismatch);
            }
            embedded_ok = true;
            continue;
        }
        // A hard link is said to be one first: one out of the tree (`/etc/passwd`) is the
        // plainest thing wrong with it, whether or not its name is listed.
        if kind == tar::EntryType::Link
            && !entry
                .link_name_bytes()
                .and_then(|t| {
                    std::str::from_utf8(&t)
                        .ok()
                        .map(|t| regular.contains_key(t))
                })
                .unwrap_or(false)
        {
            return Err(UnpackError::HardLink { entry: name });
        }
        let listed = manifest
            .files
            .get(&name)
            .ok_or_else(|| UnpackError::NotInManifest {
                entry: name.clone(),
            })?;
        let mismatch = |what: String| UnpackError::ManifestMismatch {
            entry: name.clone(),
            what,
        };
        let path = root.join(&name);
        if kind == tar::EntryType::Link {
            // Accepted only as the writer makes them: content the archive already holds, stored
            // once — a link to an earlier regular file of this archive whose content and mode
            // are exactly what the manifest lists for this entry. Anything else (a link out of
            // the tree, to a directory, a link, a later entry, or other content) is refused.
            let target = entry
                .link_name_bytes()
                .and_then(|t| String::from_utf8(t.into_owned()).ok());
            let earlier = target.as_ref().and_then(|t| regular.get(t).map(|f| (t, f)));
            let (target, (hash, target_mode, target_size)) = match (earlier, listed) {
                (Some((t, f)), FileEntry::File { size, mode, blake3 })
                    if f.0 == *blake3 && f.1 == mode.0 && f.2 == *size && entry.size() == 0 =>
                {
                    (t.clone(), *f)
                }
                _ => return Err(UnpackError::HardLink { entry: name }),
            };
            if skipped(&name).is_none() {
                let source = skipped(&target).unwrap_or_else(|| root.join(&target));
                fs::hard_link(&source, &path)
                    .map_err(|e| FsError::new("cannot create hard link", &path, e))?;
            }
            regular.insert(name, (hash, target_mode, target_size));
            summary.files += 1;
            summary.bytes += target_size;
            summary.linked += 1;
            summary.linked_bytes += target_size;
            continue;
        }
        match (kind, listed) {
            (tar::EntryType::Directory, FileEntry::Dir { mode: want }) => {
                if mode != Mode::DIR.0 || *want != Mode::DIR {
                    return Err(UnpackError::UnexpectedMode { entry: name, mode });
                }
                if skipped(&name).is_none() {
                    fs::create_dir(&path)
                        .map_err(|e| FsError::new("cannot create directory", &path, e))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(Mode::DIR.0))
                        .map_err(|e| FsError::new("cannot set mode of", &path, e))?;
                }
                dirs.insert(name);
                summary.dirs += 1;
            }
            (tar::EntryType::Symlink, FileEntry::Symlink { target: want }) => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| mismatch("the symlink has no target".into()))?;
                let target = String::from_utf8(target).map_err(|_| UnpackError::BadPath {
                    entry: name.clone(),
                })?;
                if target.starts_with('/') {
                    return Err(UnpackError::AbsoluteLink {
                        entry: name,
                        target,
                    });
                }
                if check_link_target(&name, &target).is_err() {
                    return Err(UnpackError::LinkEscapes {
                        entry: name,
                        target,
                    });
                }
                if &target != want {
                    return Err(mismatch(format!(
                        "links to `{target}`, the manifest says `{want}`"
                    )));
                }
                if skipped(&name).is_none() {
                    std::os::unix::fs::symlink(&target, &path)
                        .map_err(|e| FsError::new("cannot create symlink", &path, e))?;
                }
                links.insert(name);
                summary.symlinks += 1;
            }
            (
                tar::EntryType::Regular | tar::EntryType::Continuous,
                FileEntry::File {
                    size: want_size,
                    mode: want_mode,
                    blake3,
                },
            ) => {
                if mode != Mode::FILE.0 && mode != Mode::EXECUTABLE.0 {
                    return Err(UnpackError::UnexpectedMode { entry: name, mode });
                }
                if mode != want_mode.0 {
                    return Err(mismatch(format!(
                        "mode {mode:04o}, the manifest says {:04o}",
                        want_mode.0
                    )));
                }
                if size != *want_size {
                    return Err(mismatch(format!(
                        "{size} bytes, the manifest says {want_size}"
                    )));
                }
                if summary.bytes.saturating_add(size) > options.max_unpacked_bytes {
                    return Err(UnpackError::TooLarge {
                        entry: name,
                        limit: options.max_unpacked_bytes,
                    });
                }
                let key = (*blake3, mode);
                // Equal content already on disk: the shared copy (checked before the stream
                // began), this archive's own earlier copy (collectstatic duplicates), else
                // another release's file once it hashes equal.
                let in_store = skipped(&name).is_some();
                let source = (!in_store)
                    .then(|| {
                        written.get(&key).cloned().or_else(|| {
                            options
                                .reuse
                                .get(&key)
                                .filter(|p| still_equal(p, *want_size, mode, blake3))
                                .cloned()
                        })
                    })
                    .flatten();
                let linked =
                    in_store || source.is_some_and(|src| fs::hard_link(src, &path).is_ok());
                let (hash, n) = if in_store {
                    // Its copy on disk was checked against the manifest before the stream
                    // began, and the archive as a whole is checked against the sidecar at its
                    // end: the bytes are only read past.
                    (
                        *blake3,
                        io::copy(&mut entry, &mut io::sink()).map_err(corrupt)?,
                    )
                } else if linked {
                    hash_stream(&mut entry, &mut buf)?
                } else {
                    write_file(&path, &mut entry, Mode(mode), mtime, &mut buf)?
                };
                if n != size {
                    return Err(UnpackError::Corrupt(format!("entry `{name}` is truncated")));
                }
                if hash != *blake3 {
                    return Err(mismatch(format!(
                        "BLAKE3 {hash}, the manifest says {blake3}"
                    )));
                }
                if linked {
                    summary.linked += 1;
                    summary.linked_bytes += size;
                    if let (Some(at), false) = (skipped(&name), written.contains_key(&key)) {
                        written.insert(key, at);
                    }
                } else {
                    written.insert(key, path.clone());
                }
                regular.insert(name, (*blake3, mode, size));
                summary.files += 1;
                summary.bytes += size;
            }
            (_, listed) => {
                let found = if kind.is_dir() {
                    "a directory"
                } else if kind == tar::EntryType::Symlink {
                    "a symlink"
                } else {
                    "a file"
                };
                let wanted = match listed {
                    FileEntry::Dir { .. } => "a directory",
                    FileEntry::Symlink { .. } => "a symlink",
                    FileEntry::File { .. } => "a file",
                };
                return Err(mismatch(format!(
                    "it is {found} in the archive but {wanted} in the manifest"
                )));
            }
        }
    }
    if !embedded_ok {
        return Err(UnpackError::EmbeddedSidecarMissing);
    }
    let missing: Vec<&String> = manifest
        .files
        .keys()
        .filter(|k| !seen.contains(*k))
        .collect();
    if let Some(first) = missing.first() {
        return Err(UnpackError::MissingEntries {
            first: (*first).clone(),
            count: missing.len(),
        });
    }
    Ok((summary, Rest::Padding))
}

/// Where `name` is inside the directory `dir` (`""` for the directory itself), if it is.
fn skipped_name<'a>(name: &'a str, dir: &str) -> Option<&'a str> {
    if name == dir {
        return Some("");
    }
    name.strip_prefix(dir)?.strip_prefix('/')
}

/// Writes the embedded manifest from the sidecar, returning its digest.
fn write_embedded(
    path: &Path,
    sidecar: &Sidecar,
    mtime: SystemTime,
) -> Result<(Blake3Hash, u64), UnpackError> {
    let err = |e| FsError::new("cannot write", path, e);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(Mode::FILE.0)
        .open(path)
        .map_err(err)?;
    let mut out = crate::hash::HashingWriter::new(io::BufWriter::new(file));
    Sidecar::write_embedded(sidecar.schema_version, &sidecar.manifest, &mut out).map_err(err)?;
    let (buffered, hash, len) = out.finish();
    let file = buffered.into_inner().map_err(|e| err(e.into_error()))?;
    file.set_permissions(fs::Permissions::from_mode(Mode::FILE.0))
        .map_err(err)?;
    file.set_modified(mtime).map_err(err)?;
    Ok((hash, len))
}

/// Validates an entry's path and returns it without a trailing `/`.
fn check_path(raw: &[u8], is_dir: bool) -> Result<String, UnpackError> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    let text = std::str::from_utf8(raw).map_err(|_| UnpackError::BadPath { entry: lossy() })?;
    if text.starts_with('/') {
        return Err(UnpackError::AbsolutePath {
            entry: text.to_owned(),
        });
    }
    let trimmed = if is_dir {
        text.strip_suffix('/').unwrap_or(text)
    } else {
        text
    };
    if trimmed.split('/').any(|c| c == "..") {
        return Err(UnpackError::ParentComponent {
            entry: text.to_owned(),
        });
    }
    if trimmed.is_empty()
        || trimmed.split('/').any(|c| c.is_empty() || c == ".")
        || trimmed.contains('\0')
        || trimmed.contains('\\')
    {
        return Err(UnpackError::BadPath {
            entry: text.to_owned(),
        });
    }
    crate::manifest::check_name_text(trimmed).map_err(|reason| UnpackError::BadName {
        entry: text.to_owned(),
        reason: format!("is refused: the name {reason}"),
    })?;
    Ok(trimmed.to_owned())
}

/// Creates a new file (never following or replacing anything), copies `content` into it while
/// hashing, and sets its mode and mtime exactly (the umask must not change what was verified).
fn write_file(
    path: &PathBuf,
    mut content: impl Read,
    mode: Mode,
    mtime: SystemTime,
    buf: &mut [u8],
) -> Result<(Blake3Hash, u64), UnpackError> {
    let err = |e| FsError::new("cannot write", path, e);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode.0)
        .open(path)
        .map_err(err)?;
    let mut hasher = blake3::Hasher::new();
    let mut n = 0u64;
    loop {
        let got = match content.read(buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Corrupt(e.to_string())),
        };
        hasher.update(&buf[..got]);
        f.write_all(&buf[..got]).map_err(err)?;
        n += got as u64;
    }
    f.set_permissions(fs::Permissions::from_mode(mode.0))
        .map_err(err)?;
    f.set_modified(mtime).map_err(err)?;
    Ok((hasher.finalize().into(), n))
}

/// Reads an entry's content only to hash it (its file is a link to equal content).
fn hash_stream(mut content: impl Read, buf: &mut [u8]) -> Result<(Blake3Hash, u64), UnpackError> {
    let mut hasher = blake3::Hasher::new();
    let mut n = 0u64;
    loop {
        match content.read(buf) {
            Ok(0) => break,
            Ok(got) => {
                hasher.update(&buf[..got]);
                n += got as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Corrupt(e.to_string())),
        }
    }
    Ok((hasher.finalize().into(), n))
}

/// Whether a file to link to is still a plain file with the content and mode it was listed with.
fn still_equal(path: &Path, size: u64, mode: u32, blake3: &Blake3Hash) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file()
        && meta.len() == size
        && meta.permissions().mode() & 0o7777 == mode
        && Blake3Hash::of_file(path).is_ok_and(|(h, n)| h == *blake3 && n == size)
}

/// Whether the shared copy of `dir` at `store` is exactly what the manifest lists under `dir`:
/// every entry there with its type, mode, size, BLAKE3 and link target, and nothing else (a
/// stray `.pth` file would run in every worker). The files are hashed on a few threads: they
/// are thousands of small ones, and nothing else runs yet. Says what differs, first found.
pub fn check_shared(store: &Path, dir: &str, sidecar: &Sidecar) -> Result<(), String> {
    let prefix = format!("{dir}/");
    let listed: HashMap<&str, &FileEntry> = sidecar
        .manifest
        .files
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (&k[prefix.len()..], v))
        .collect();
    let mut files: Vec<(PathBuf, u64, Blake3Hash)> = Vec::new();
    let mut seen = 0usize;
    for entry in walkdir::WalkDir::new(store)
        .min_depth(1)
        .follow_links(false)
    {
        let entry = entry.map_err(|e| format!("cannot read `{}`: {e}", store.display()))?;
        let rel = entry
            .path()
            .strip_prefix(store)
            .expect("below the store")
            .to_string_lossy()
            .into_owned();
        let shown = format!("{dir}/{rel}");
        let listed = listed
            .get(rel.as_str())
            .ok_or_else(|| format!("`{shown}` is not in the manifest"))?;
        seen += 1;
        let meta = entry
            .metadata()
            .map_err(|e| format!("cannot stat `{shown}`: {e}"))?;
        let mode = meta.permissions().mode() & 0o7777;
        match listed {
            FileEntry::Dir { mode: want } if meta.is_dir() && mode == want.0 => {}
            FileEntry::Symlink { target } if meta.file_type().is_symlink() => {
                let t = fs::read_link(entry.path()).map_err(|e| format!("`{shown}`: {e}"))?;
                if t.to_str() != Some(target.as_str()) {
                    return Err(format!("`{shown}` links elsewhere"));
                }
            }
            FileEntry::File {
                size,
                mode: want,
                blake3,
            } if meta.is_file() && mode == want.0 && meta.len() == *size => {
                files.push((entry.into_path(), *size, *blake3));
            }
            _ => return Err(format!("`{shown}` differs in type, mode or size")),
        }
    }
    if seen != listed.len() {
        return Err(format!(
            "{} listed entries are missing",
            listed.len() - seen
        ));
    }
    Blake3Hash::check_files(&files).map_err(|path| {
        format!(
            "`{dir}/{}` changed",
            path.strip_prefix(store).unwrap_or(&path).display()
        )
    })
}

/// Checks an unpacked tree against its manifest without changing it (`installer verify`, tests).
/// `allow_extra` accepts paths the manifest does not list (e.g. a release's own virtualenv).
pub fn verify_tree(
    root: &Path,
    sidecar: &Sidecar,
    allow_extra: impl Fn(&str) -> bool,
) -> Result<(), UnpackError> {
    let mut on_disk = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| FsError::new("cannot read", root, e.into()))?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("below root")
            .to_string_lossy()
            .into_owned();
        on_disk.insert(rel, entry);
    }
    for (name, listed) in &sidecar.manifest.files {
        let mismatch = |what: &str| UnpackError::ManifestMismatch {
            entry: name.clone(),
            what: what.to_owned(),
        };
        let entry = on_disk
            .remove(name)
            .ok_or_else(|| mismatch("missing on disk"))?;
        let meta = fs::symlink_metadata(entry.path())
            .map_err(|e| FsError::new("cannot stat", entry.path(), e))?;
        match listed {
            FileEntry::Dir { .. } if meta.is_dir() => {}
            FileEntry::Symlink { target } if meta.file_type().is_symlink() => {
                let t = fs::read_link(entry.path())
                    .map_err(|e| FsError::new("cannot read symlink", entry.path(), e))?;
                if t.to_str() != Some(target.as_str()) {
                    return Err(mismatch("symlink target differs"));
                }
            }
            FileEntry::File { size, mode, blake3 } if meta.is_file() => {
                if meta.len() != *size || meta.permissions().mode() & 0o7777 != mode.0 {
                    return Err(mismatch("size or mode differs"));
                }
                let (h, _) = Blake3Hash::of_file(entry.path())?;
                if h != *blake3 {
                    return Err(mismatch("content differs"));
                }
            }
            _ => return Err(mismatch("type differs")),
        }
    }
    on_disk.remove(RELEASE_JSON);
    if let Some((extra, _)) = on_disk.into_iter().find(|(k, _)| !allow_extra(k)) {
        return Err(UnpackError::NotInManifest { entry: extra });
    }
    Ok(())
}
