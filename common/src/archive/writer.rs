//! Deterministic archive writer: a staged tree to a byte-reproducible `.tar.gz` plus manifest.
//!
//! One pass over the tree: files are read once, hashed (BLAKE3) and framed as tar entries into a
//! stream that is cut into fixed-size chunks. Worker threads deflate the chunks in parallel, each
//! primed with the last 32 KiB of the chunk before it and ended with a sync flush, so the
//! concatenation is one valid deflate stream — the same idea as pigz. Chunk boundaries depend only
//! on byte offsets, never on timing or the number of threads, so the output is byte-identical
//! for any `threads`. A writer thread puts compressed chunks back in order, hashing the archive as
//! it goes.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::archive::links::{check_link_target, find_unsafe_link, Reserved};
use crate::atomic;
use crate::error::{FsError, PackError};
use crate::hash::HashingWriter;
use crate::manifest::{
    ArchiveInfo, ArtifactRef, FileEntry, Mode, ReleaseManifest, Sidecar, RELEASE_JSON,
    SCHEMA_VERSION,
};
use crate::Blake3Hash;

/// Uncompressed bytes per compression job. Larger chunks compress slightly better (fewer
/// dictionary restarts), smaller ones spread better over cores; 512 KiB costs under 0.1 % in size.
const CHUNK: usize = 512 * 1024;
/// Files at least this large are compressed as segments of their own (see [`Pipeline`]).
const SEGMENT_MIN: u64 = 32 * 1024;
/// Deflate's window: how much of the previous chunk primes the next one.
const WINDOW: usize = 32 * 1024;
/// Compression level; zlib-rs at 6 matches `gzip -6` in size.
const LEVEL: u32 = 6;
/// Level for chunks that are already compressed data (images, fonts): searching them for
/// matches at level 6 costs several times the CPU and saves nothing.
const FAST_LEVEL: u32 = 1;
/// Order-0 entropy (bits per byte) above which a chunk counts as incompressible.
const INCOMPRESSIBLE_BITS: f64 = 7.9;
/// Gzip header with no name, no time and an "unknown" OS, so no host detail leaks in.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// An empty final fixed-Huffman block: closes the deflate stream after the last sync flush.
const DEFLATE_END: [u8; 2] = [0x03, 0x00];

/// The mtime in the tar headers of the dependencies' section (1980-01-01, the wheels' own
/// epoch): with the commit's time there, no two builds would share a byte of that section.
/// Readers take every mtime from the manifest's source date, never from a header.
pub const SECTION_MTIME: i64 = 315_532_800;

/// Tuning that never changes the output bytes.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// Compression threads (0: one per core). The archive is identical for any value.
    pub threads: usize,
    /// A directory of compressed pieces of the dependencies' section kept from earlier packs,
    /// by the content that precedes and makes them (see [`Pipeline`]); pieces found there are
    /// copied instead of compressed, pieces made are added. The output is the same with or
    /// without it.
    pub pieces: Option<PathBuf>,
}

/// What [`pack`] produced.
#[derive(Debug, Clone)]
pub struct Packed {
    /// `<out_dir>/<app>-BuildNNNNNN-<hash16>.tar.gz`
    pub artifact_path: PathBuf,
    /// `<out_dir>/release.json`
    pub sidecar_path: PathBuf,
    pub sidecar: Sidecar,
}

/// Packs `staged` into `out_dir`. `base` supplies the identity (app, build, commit, source date,
/// steps, wheels); its `files` are filled in from the tree.
///
/// The artifact is written under a temporary name and renamed once its hash (and so its name)
/// is known; the sidecar is written last. On error neither is left behind.
pub fn pack(
    staged: &Path,
    mut base: ReleaseManifest,
    out_dir: &Path,
    options: &PackOptions,
) -> Result<Packed, PackError> {
    base.validate("release manifest")?;
    if !staged.is_dir() {
        return Err(PackError::NotADirectory(staged.to_owned()));
    }
    fs::create_dir_all(out_dir).map_err(|e| FsError::new("cannot create directory", out_dir, e))?;
    let tmp = atomic::temp_sibling(
        &out_dir.join(format!("{}-{:#}.tar.gz", base.app, base.build)),
        "pack",
    );
    let result = pack_to(staged, &mut base, &tmp, options)
        .and_then(|archive| finish(out_dir, &tmp, base, archive));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn finish(
    out_dir: &Path,
    tmp: &Path,
    manifest: ReleaseManifest,
    (blake3, size): (Blake3Hash, u64),
) -> Result<Packed, PackError> {
    let file_name = ArtifactRef::new(&manifest.app, manifest.build, blake3).file_name();
    let artifact_path = out_dir.join(&file_name);
    atomic::rename(tmp, &artifact_path)?;
    let sidecar = Sidecar::new(
        manifest,
        Some(ArchiveInfo {
            file_name,
            blake3,
            size,
        }),
    );
    let sidecar_path = out_dir.join(RELEASE_JSON);
    atomic::write_file(&sidecar_path, &sidecar.to_bytes())?;
    Ok(Packed {
        artifact_path,
        sidecar_path,
        sidecar,
    })
}

/// Writes the archive to `dest`, filling `manifest.files`; returns the archive's hash and size.
fn pack_to(
    staged: &Path,
    manifest: &mut ReleaseManifest,
    dest: &Path,
    options: &PackOptions,
) -> Result<(Blake3Hash, u64), PackError> {
    // Readable too: repeated pieces are copied back from what was already written.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dest)
        .map_err(|e| FsError::new("cannot create", dest, e))?;
    let threads = match options.threads {
        0 => thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let mut pipeline = Pipeline::start(file, dest.to_owned(), threads, options.pieces.clone())?;
    let mut tar = tar::Builder::new(&mut pipeline);
    let last = manifest.deps.as_ref().map(|d| d.dir.clone());
    let entries =
        add_tree(&mut tar, staged, manifest.source_date, last.as_deref()).and_then(|files| {
            // A link can escape through another link that only comes later in the walk; and
            // what every installer refuses is refused here, where it can still be fixed.
            match find_unsafe_link(&files, &Reserved::installer_owned()) {
                Some((entry, target, problem)) => Err(unsupported(
                    &staged.join(entry),
                    &format!("symlink to `{target}` {}", problem.reason()),
                )),
                None => Ok(files),
            }
        });
    let written = entries.and_then(|files| {
        manifest.files = files;
        // The embedded copy goes last: only now are all file hashes known. It has no archive
        // section, since an archive cannot contain its own hash.
        // Serialised twice (length, then content) rather than held: it lists every file.
        let mut counter = crate::hash::HashingWriter::new(io::sink());
        Sidecar::write_embedded(SCHEMA_VERSION, manifest, &mut counter)
            .map_err(|e| FsError::new("cannot write archive", dest, e))?;
        let (_, _, len) = counter.finish();
        let io_err = |e| FsError::new("cannot write archive", dest, e);
        let mut header = header(
            tar::EntryType::Regular,
            Mode::FILE,
            len,
            manifest.source_date,
        );
        tar.append_data(&mut header, RELEASE_JSON, io::empty())
            .map_err(io_err)?;
        let pipeline = tar.get_mut();
        Sidecar::write_embedded(SCHEMA_VERSION, manifest, &mut **pipeline).map_err(io_err)?;
        pad_block(pipeline, len).map_err(io_err)?;
        tar.finish()
            .map_err(|e| FsError::new("cannot write archive", dest, e))?;
        Ok(())
    });
    drop(tar);
    match written {
        Ok(()) => pipeline.finish(),
        Err(e) => {
            pipeline.abort();
            Err(e)
        }
    }
}

fn header(kind: tar::EntryType, mode: Mode, size: u64, mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode.0);
    h.set_size(size);
    h.set_mtime(mtime.max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    // Empty owner names: the packing user's name must not reach the archive.
    let _ = h.set_username("");
    let _ = h.set_groupname("");
    h
}

/// Appends every entry below `root` in sorted order (directories before their contents) and
/// returns the manifest's file list.
///
/// The top-level directory `last` (the installed dependencies), if any, comes after everything
/// else: a server that already holds an equal, checked copy of it stops inflating the archive
/// where it begins, and only hashes the rest (see the reader's `SharedTree`). Its entries are
/// one section of the stream whose bytes depend on nothing else (their own mtime, hard links
/// only to each other, compression started afresh), so the builder can keep its compressed
/// pieces for the next build with the same dependencies.
fn add_tree(
    tar: &mut tar::Builder<&mut Pipeline>,
    root: &Path,
    mtime: i64,
    last: Option<&str>,
) -> Result<BTreeMap<String, FileEntry>, PackError> {
    let mut files = BTreeMap::new();
    let mut stored: HashMap<(Blake3Hash, u32), String> = HashMap::new();
    let mut buf = vec![0u8; CHUNK];
    let mut in_section = false;
    let last = last.map(std::ffi::OsString::from);
    let section = last.clone();
    let is_last =
        move |e: &walkdir::DirEntry| e.depth() == 1 && Some(e.file_name()) == last.as_deref();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by(move |a, b| (is_last(a), a.file_name()).cmp(&(is_last(b), b.file_name())));
    for entry in walk {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_owned();
            FsError::new("cannot read", path, e.into())
        })?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("walkdir stays below its root");
        let name = rel
            .to_str()
            .ok_or_else(|| unsupported(path, "its name is not valid UTF-8"))?
            .to_owned();
        if name == RELEASE_JSON {
            return Err(PackError::ReservedName);
        }
        if let Some(owned) = Reserved::installer_owned().owned_by(&name) {
            return Err(unsupported(
                path,
                &format!("`{owned}` is created by the installer on each server; leave it out of the release (exclude it in `deploy.toml`)"),
            ));
        }
        if name.contains('\\') || name.chars().any(char::is_control) {
            return Err(unsupported(
                path,
                "its name contains a backslash or a control character",
            ));
        }
        let meta = entry
            .metadata()
            .map_err(|e| FsError::new("cannot stat", path, e.into()))?;
        let ft = meta.file_type();
        let io_err = |e: io::Error| FsError::new("cannot write archive entry for", path, e);
        // Sorted last, the section runs from its directory's entry to the end of the walk.
        if !in_section && entry.depth() == 1 && Some(entry.file_name()) == section.as_deref() {
            in_section = true;
            stored.clear();
            tar.get_mut().begin_section().map_err(io_err)?;
        }
        let mtime = if in_section { SECTION_MTIME } else { mtime };
        if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, Mode::DIR, 0, mtime);
            tar.append_data(&mut h, &name, io::empty())
                .map_err(io_err)?;
            files.insert(name, FileEntry::Dir { mode: Mode::DIR });
        } else if ft.is_symlink() {
            let target =
                fs::read_link(path).map_err(|e| FsError::new("cannot read symlink", path, e))?;
            let target = target
                .to_str()
                .ok_or_else(|| unsupported(path, "its target is not valid UTF-8"))?
                .to_owned();
            check_link_target(&name, &target).map_err(|reason| unsupported(path, &reason))?;
            append_symlink(tar, &name, &target, mtime).map_err(io_err)?;
            files.insert(name, FileEntry::Symlink { target });
        } else if ft.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                Mode::EXECUTABLE
            } else {
                Mode::FILE
            };
            let size = meta.len();
            // Content the archive already holds (collectstatic's copies) is stored once: a hard
            // link entry to its first copy, which the reader accepts only as exactly that.
            let (known, _) = Blake3Hash::of_file(path)?;
            if let Some(first) = stored.get(&(known, mode.0)) {
                append_link(tar, tar::EntryType::Link, mode, &name, first, mtime)
                    .map_err(io_err)?;
                files.insert(
                    name,
                    FileEntry::File {
                        size,
                        mode,
                        blake3: known,
                    },
                );
                continue;
            }
            let mut f = File::open(path).map_err(|e| FsError::new("cannot open", path, e))?;
            // The header alone (an empty reader writes no content and no padding); the size in
            // it is fixed before the content is read, so a file that changes while being packed
            // is an error, not a silently inconsistent archive.
            let mut h = header(tar::EntryType::Regular, mode, size, mtime);
            tar.append_data(&mut h, &name, io::empty())
                .map_err(io_err)?;
            let pipeline = tar.get_mut();
            let segment = size >= SEGMENT_MIN;
            if segment {
                pipeline.begin_segment().map_err(io_err)?;
            }
            let mut hasher = blake3::Hasher::new();
            let mut n = 0u64;
            let mut content = (&mut f).take(size);
            loop {
                let got = match content.read(&mut buf) {
                    Ok(0) => break,
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(FsError::new("cannot read", path, e).into()),
                };
                hasher.update(&buf[..got]);
                pipeline.write_all(&buf[..got]).map_err(io_err)?;
                n += got as u64;
            }
            let blake3: Blake3Hash = hasher.finalize().into();
            if n != size || f.read(&mut [0u8; 1]).map_err(io_err)? != 0 || blake3 != known {
                return Err(unsupported(path, "it changed while being packed"));
            }
            stored.insert((blake3, mode.0), name.clone());
            if segment {
                pipeline.end_segment().map_err(io_err)?;
            }
            let pad = (512 - size % 512) % 512;
            pipeline
                .write_all(&[0u8; 512][..pad as usize])
                .map_err(io_err)?;
            files.insert(name, FileEntry::File { size, mode, blake3 });
        } else {
            return Err(unsupported(path, "it is a device, FIFO or socket; releases hold only files, directories and symlinks"));
        }
    }
    if in_section {
        tar.get_mut()
            .end_section()
            .map_err(|e| FsError::new("cannot write archive", root, e))?;
    }
    Ok(files)
}

/// Appends a symlink entry whose target is stored byte for byte, as the manifest records it.
/// (`tar::Builder::append_link` normalises targets that fit the header: `a/./b` would become
/// `a/b` and `dir/` `dir`, and the reader would then refuse the archive.)
fn append_symlink<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    target: &str,
    mtime: i64,
) -> io::Result<()> {
    append_link(
        tar,
        tar::EntryType::Symlink,
        Mode(0o777),
        name,
        target,
        mtime,
    )
}

/// Appends a link entry (symbolic, or hard to an earlier file of the archive).
fn append_link<W: Write>(
    tar: &mut tar::Builder<W>,
    kind: tar::EntryType,
    mode: Mode,
    name: &str,
    target: &str,
    mtime: i64,
) -> io::Result<()> {
    let mut h = header(kind, mode, 0, mtime);
    if h.set_link_name_literal(target).is_err() {
        // Longer than the header's 100 bytes: a GNU long-link entry first, as GNU tar writes it.
        let mut long = tar::Header::new_gnu();
        long.as_gnu_mut().expect("a GNU header").name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_uid(0);
        long.set_gid(0);
        long.set_mtime(0);
        long.set_size(target.len() as u64 + 1);
        long.set_entry_type(tar::EntryType::GNULongLink);
        long.set_cksum();
        tar.append(&long, target.as_bytes().chain(&[0u8][..]))?;
        h.set_link_name_literal(&target.as_bytes()[..100])?;
    }
    tar.append_data(&mut h, name, io::empty())
}

/// Pads an entry's content of `len` bytes to tar's 512-byte blocks.
fn pad_block(out: &mut impl Write, len: u64) -> io::Result<()> {
    let pad = (512 - len % 512) % 512;
    out.write_all(&[0u8; 512][..pad as usize])
}

fn unsupported(path: &Path, reason: &str) -> PackError {
    PackError::Unsupported {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A chunk of the uncompressed stream, with the window that primes its compression.
struct Job {
    seq: u64,
    data: Arc<Vec<u8>>,
    dict: Option<Arc<Vec<u8>>>,
    /// Keep the compressed bytes' place in the output so a later identical piece can reuse them.
    remember: bool,
    /// Keep the compressed bytes in the piece store too, under this key.
    keep: Option<(Arc<PieceStore>, blake3::Hash)>,
}

/// Compressed pieces of the dependencies' section kept between packs: one file per piece,
/// named by its key (the piece's content and everything before it in its section, and how it
/// is compressed), holding its uncompressed length and CRC and the BLAKE3 of its compressed
/// bytes, which are checked on every read. A piece that cannot be read or does not match is
/// compressed again.
struct PieceStore {
    dir: PathBuf,
}

/// What decides a piece's compressed bytes besides its content: the chunking, the level and
/// the deflate implementation's version (checked against `Cargo.lock` by a test).
const PIECE_FORMAT: &str =
    "binarycrate piece 1; chunk 524288; window 32768; level 6/1; zlib-rs 0.6.8";
const PIECE_MAGIC: &[u8; 8] = b"BCPIECE1";

impl PieceStore {
    fn path(&self, key: &blake3::Hash) -> PathBuf {
        let mut h = blake3::Hasher::new();
        h.update(PIECE_FORMAT.as_bytes());
        h.update(key.as_bytes());
        self.dir.join(h.finalize().to_hex().as_str())
    }

    fn get(&self, key: &blake3::Hash) -> Option<(Vec<u8>, u32, usize)> {
        let mut bytes = fs::read(self.path(key)).ok()?;
        if bytes.len() < 52 || &bytes[..8] != PIECE_MAGIC {
            return None;
        }
        let ulen = u64::from_le_bytes(bytes[8..16].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
        let want: [u8; 32] = bytes[20..52].try_into().ok()?;
        if *blake3::hash(&bytes[52..]).as_bytes() != want || ulen > CHUNK {
            return None;
        }
        bytes.drain(..52);
        Some((bytes, crc, ulen))
    }

    /// Best effort: a piece not kept is compressed again next time. Written under a temporary
    /// name and renamed, so a reader sees a whole piece or none (and a damaged one is
    /// replaced); not synced, since every read checks the piece's hash.
    fn put(&self, key: &blake3::Hash, bytes: &[u8], crc: u32, ulen: usize) {
        let path = self.path(key);
        let mut file = Vec::with_capacity(52 + bytes.len());
        file.extend_from_slice(PIECE_MAGIC);
        file.extend_from_slice(&(ulen as u64).to_le_bytes());
        file.extend_from_slice(&crc.to_le_bytes());
        file.extend_from_slice(blake3::hash(bytes).as_bytes());
        file.extend_from_slice(bytes);
        let tmp = atomic::temp_sibling(&path, "piece");
        if fs::write(&tmp, &file).is_err() || fs::rename(&tmp, &path).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

/// A piece of the output, in stream order by `seq`.
enum Done {
    Compressed {
        seq: u64,
        bytes: Vec<u8>,
        crc: crc32fast::Hasher,
        len: usize,
        remember: bool,
    },
    /// The same compressed bytes as the earlier piece `of` (identical content and context).
    Repeat { seq: u64, of: u64 },
}

impl Done {
    fn seq(&self) -> u64 {
        match self {
            Done::Compressed { seq, .. } | Done::Repeat { seq, .. } => *seq,
        }
    }
}

/// The parallel gzip stream: `Write` the uncompressed tar bytes into it.
///
/// Large files are "segments": compressed in pieces that start fresh at the file's first byte
/// (no dictionary from what came before), so a file whose content appeared earlier in the
/// archive — collectstatic leaves a second copy of every static file — produces the very same
/// compressed pieces, which are copied instead of compressed again. Whether a piece repeats
/// depends only on content, so the bytes are the same for any thread count.
///
/// The dependencies' section is one segment from its first byte to its last (the large files
/// in it do not start their own), and its pieces are also looked up in, and added to, the
/// piece store: the next build with the same dependencies copies them instead of compressing
/// 30 MB again.
struct Pipeline {
    buf: Vec<u8>,
    prev: Option<Arc<Vec<u8>>>,
    seq: u64,
    in_segment: bool,
    in_section: bool,
    pieces: Option<Arc<PieceStore>>,
    /// Identity of the segment piece chain so far (content of this piece and all before it).
    chain: Option<blake3::Hash>,
    seen: HashMap<blake3::Hash, u64>,
    jobs: Option<SyncSender<Job>>,
    done: Option<SyncSender<Done>>,
    workers: Vec<thread::JoinHandle<()>>,
    writer: Option<thread::JoinHandle<Result<(Blake3Hash, u64), FsError>>>,
}

impl Pipeline {
    fn start(
        file: File,
        path: PathBuf,
        threads: usize,
        pieces: Option<PathBuf>,
    ) -> Result<Self, PackError> {
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 2);
        let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::sync_channel::<Done>(threads * 4);
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&job_rx);
                let tx = done_tx.clone();
                thread::spawn(move || loop {
                    let job = match rx.lock().expect("job queue").recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    if tx.send(compress_chunk(job)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        let writer = thread::spawn(move || write_in_order(file, &path, done_rx));
        Ok(Self {
            buf: Vec::with_capacity(CHUNK),
            prev: None,
            seq: 0,
            in_segment: false,
            in_section: false,
            // Made once here; should that fail, no piece is kept and the archive is the same.
            pieces: pieces.map(|dir| {
                let _ = fs::create_dir_all(&dir);
                Arc::new(PieceStore { dir })
            }),
            chain: None,
            seen: HashMap::new(),
            jobs: Some(job_tx),
            done: Some(done_tx),
            workers,
            writer: Some(writer),
        })
    }

    fn closed() -> io::Error {
        io::Error::other("the archive writer stopped (see the next error)")
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        let data = Arc::new(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let seq = self.seq;
        self.seq += 1;
        let dict = self.prev.replace(Arc::clone(&data));
        if !self.in_segment {
            let job = Job {
                seq,
                data,
                dict,
                remember: false,
                keep: None,
            };
            return self
                .jobs
                .as_ref()
                .expect("pipeline open")
                .send(job)
                .map_err(|_| Self::closed());
        }
        let first = self.chain.is_none();
        let mut key = blake3::Hasher::new();
        if let Some(prev) = &self.chain {
            key.update(prev.as_bytes());
        }
        key.update(&data);
        let key = key.finalize();
        self.chain = Some(key);
        if let Some(&of) = self.seen.get(&key) {
            return self
                .done
                .as_ref()
                .expect("pipeline open")
                .send(Done::Repeat { seq, of })
                .map_err(|_| Self::closed());
        }
        self.seen.insert(key, seq);
        let store = self.pieces.as_ref().filter(|_| self.in_section);
        if let Some((bytes, crc, len)) = store.and_then(|p| p.get(&key)) {
            if len == data.len() {
                return self
                    .done
                    .as_ref()
                    .expect("pipeline open")
                    .send(Done::Compressed {
                        seq,
                        bytes,
                        crc: crc32fast::Hasher::new_with_initial_len(crc, len as u64),
                        len,
                        remember: true,
                    })
                    .map_err(|_| Self::closed());
            }
        }
        // The first piece of a segment starts without a dictionary, so its output does not
        // depend on whatever preceded the file.
        let dict = if first { None } else { dict };
        let job = Job {
            seq,
            data,
            dict,
            remember: true,
            keep: store.map(|p| (Arc::clone(p), key)),
        };
        self.jobs
            .as_ref()
            .expect("pipeline open")
            .send(job)
            .map_err(|_| Self::closed())
    }

    fn begin_segment(&mut self) -> io::Result<()> {
        if self.in_section {
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.send_chunk()?;
        }
        self.in_segment = true;
        self.chain = None;
        Ok(())
    }

    fn end_segment(&mut self) -> io::Result<()> {
        if self.in_section {
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.send_chunk()?;
        }
        self.in_segment = false;
        self.chain = None;
        Ok(())
    }

    /// The dependencies' section: one segment whose pieces the piece store keeps.
    fn begin_section(&mut self) -> io::Result<()> {
        self.begin_segment()?;
        self.in_section = true;
        Ok(())
    }

    fn end_section(&mut self) -> io::Result<()> {
        self.in_section = false;
        self.end_segment()
    }

    fn finish(mut self) -> Result<(Blake3Hash, u64), PackError> {
        if !self.buf.is_empty() || self.seq == 0 {
            self.send_chunk().map_err(|_| PackError::Worker)?;
        }
        self.close()
    }

    fn abort(mut self) {
        let _ = self.close();
    }

    fn close(&mut self) -> Result<(Blake3Hash, u64), PackError> {
        self.jobs = None;
        for w in self.workers.drain(..) {
            w.join().map_err(|_| PackError::Worker)?;
        }
        self.done = None;
        let writer = self.writer.take().expect("writer joined once");
        Ok(writer.join().map_err(|_| PackError::Worker)??)
    }
}

impl Write for Pipeline {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_chunk()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn compress_chunk(job: Job) -> Done {
    // A fresh compressor per chunk: reusing one through `reset` was seen to make the output
    // depend on which chunks a worker had compressed before (zlib-rs 0.6), breaking
    // reproducibility.
    let level = if looks_incompressible(&job.data) {
        FAST_LEVEL
    } else {
        LEVEL
    };
    let mut c = Compress::new(Compression::new(level), false);
    if let Some(dict) = &job.dict {
        let start = dict.len().saturating_sub(WINDOW);
        c.set_dictionary(&dict[start..])
            .expect("raw deflate accepts a dictionary");
    }
    let mut out = Vec::with_capacity(job.data.len() / 2 + 1024);
    let mut input = &job.data[..];
    loop {
        if out.capacity() - out.len() < 64 * 1024 {
            out.reserve(256 * 1024);
        }
        let before = c.total_in();
        let status = c
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .expect("deflate cannot fail on valid input");
        input = &input[(c.total_in() - before) as usize..];
        // Done when all input is consumed and the sync flush fit (room left in `out`).
        if input.is_empty() && out.len() < out.capacity() && status == Status::Ok {
            break;
        }
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&job.data);
    if let Some((store, key)) = &job.keep {
        store.put(key, &out, crc.clone().finalize(), job.data.len());
    }
    Done::Compressed {
        seq: job.seq,
        bytes: out,
        crc,
        len: job.data.len(),
        remember: job.remember,
    }
}

/// Whether a chunk's byte distribution is that of compressed or random data. The decision
/// depends only on the chunk's bytes, so the output stays the same for any thread count.
fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < 64 * 1024 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    bits > INCOMPRESSIBLE_BITS
}

/// Where a remembered piece sits in the output, to copy it for a repeat.
struct Placed {
    offset: u64,
    len: usize,
    crc: crc32fast::Hasher,
    ulen: usize,
}

/// Receives compressed chunks in any order and writes them in sequence, framed as gzip.
fn write_in_order(
    file: File,
    path: &Path,
    done: Receiver<Done>,
) -> Result<(Blake3Hash, u64), FsError> {
    use std::os::unix::fs::FileExt;
    let err = |e| FsError::new("cannot write archive", path, e);
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    out.write_all(&GZIP_HEADER).map_err(err)?;
    let mut pending = BTreeMap::new();
    let mut placed: HashMap<u64, Placed> = HashMap::new();
    let mut next = 0u64;
    let mut crc = crc32fast::Hasher::new();
    let mut isize: u64 = 0;
    let mut copy = Vec::new();
    for d in done {
        pending.insert(d.seq(), d);
        while let Some(d) = pending.remove(&next) {
            match d {
                Done::Compressed {
                    bytes,
                    crc: c,
                    len,
                    remember,
                    ..
                } => {
                    if remember {
                        placed.insert(
                            next,
                            Placed {
                                offset: out.len(),
                                len: bytes.len(),
                                crc: c.clone(),
                                ulen: len,
                            },
                        );
                    }
                    out.write_all(&bytes).map_err(err)?;
                    crc.combine(&c);
                    isize += len as u64;
                }
                Done::Repeat { of, .. } => {
                    let p = placed
                        .get(&of)
                        .expect("a repeated piece was written before");
                    // The original bytes are in the file already; read them back (page cache).
                    out.get_mut().flush().map_err(err)?;
                    copy.resize(p.len, 0);
                    out.get_mut()
                        .get_ref()
                        .read_exact_at(&mut copy, p.offset)
                        .map_err(err)?;
                    out.write_all(&copy).map_err(err)?;
                    crc.combine(&p.crc);
                    isize += p.ulen as u64;
                }
            }
            next += 1;
        }
    }
    out.write_all(&DEFLATE_END).map_err(err)?;
    out.write_all(&crc.clone().finalize().to_le_bytes())
        .map_err(err)?;
    // ISIZE is the uncompressed length modulo 2^32, as RFC 1952 says.
    out.write_all(&(isize as u32).to_le_bytes()).map_err(err)?;
    let (buffered, hash, size) = out.finish();
    let file = buffered.into_inner().map_err(|e| err(e.into_error()))?;
    file.sync_all()
        .map_err(|e| FsError::new("cannot fsync", path, e))?;
    Ok((hash, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kept pieces are only valid for the deflate implementation that made them: the format
    /// string must name the version the workspace builds with.
    #[test]
    fn piece_format_names_the_locked_deflate_version() {
        let lock = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))
            .unwrap();
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"zlib-rs\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .map(|v| v.trim_end_matches('"'))
            .expect("zlib-rs in Cargo.lock");
        assert!(
            PIECE_FORMAT.ends_with(&format!("zlib-rs {version}")),
            "Cargo.lock has zlib-rs {version}: update PIECE_FORMAT ({PIECE_FORMAT})"
        );
    }

    #[test]
    fn a_kept_piece_is_read_back_only_whole_and_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let store = PieceStore {
            dir: tmp.path().to_owned(),
        };
        let key = blake3::hash(b"piece");
        assert!(store.get(&key).is_none());
        store.put(&key, b"compressed", 7, 100);
        assert_eq!(store.get(&key), Some((b"compressed".to_vec(), 7, 100)));
        assert!(store.get(&blake3::hash(b"other")).is_none());
        // One flipped byte, or a cut-short file: not used.
        let path = store.path(&key);
        let mut bytes = fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(store.get(&key).is_none());
        fs::write(&path, &bytes[..30]).unwrap();
        assert!(store.get(&key).is_none());
    }
}
