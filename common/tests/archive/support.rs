//! Shared helpers: release identity, tree snapshots, raw tar crafting, sealing crafted archives.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::manifest::{ArchiveInfo, ArtifactRef, FileEntry, Mode, RELEASE_JSON};
use common::{Blake3Hash, BuildNumber, ReleaseManifest, Sidecar};

/// Every entry's mtime in the test releases.
pub const SOURCE_DATE: i64 = 1_700_000_000;

pub fn build() -> BuildNumber {
    BuildNumber::parse("Build000034").unwrap()
}

/// The identity part of a manifest, as `builder package` would pass it to `pack`.
pub fn base_manifest() -> ReleaseManifest {
    let mut m = ReleaseManifest::new("binarycrate", build(), SOURCE_DATE);
    m.builder_version = "0.0.0-test".into();
    m.commit = "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into();
    m
}

/// One entry of a tree on disk, as `lstat` and `readlink` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        hash: Blake3Hash,
    },
    Symlink {
        target: String,
    },
    Other {
        mode: u32,
    },
}

/// Every entry below `root` (not following symlinks), by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        let node = if ft.is_symlink() {
            Node::Symlink {
                target: fs::read_link(entry.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            }
        } else if ft.is_dir() {
            Node::Dir { mode }
        } else if ft.is_file() {
            let data = fs::read(entry.path()).unwrap();
            Node::File {
                mode,
                size: data.len() as u64,
                hash: Blake3Hash::of(&data),
            }
        } else {
            Node::Other { mode }
        };
        out.insert(rel.to_string_lossy().into_owned(), node);
    }
    out
}

/// A snapshot with modes as a release stores them: directories and any-executable files 0755,
/// other files 0644.
pub fn normalised(snap: &BTreeMap<String, Node>) -> BTreeMap<String, Node> {
    snap.iter()
        .map(|(k, v)| {
            let v = match v {
                Node::Dir { .. } => Node::Dir { mode: 0o755 },
                Node::File { mode, size, hash } => Node::File {
                    mode: if mode & 0o111 != 0 { 0o755 } else { 0o644 },
                    size: *size,
                    hash: *hash,
                },
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// A short description of how two snapshots differ (empty when they are equal).
pub fn tree_diff(want: &BTreeMap<String, Node>, got: &BTreeMap<String, Node>) -> String {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("missing `{k}`")),
            Some(g) if g != v => out.push(format!("`{k}`: want {v:?}, got {g:?}")),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        out.push(format!("extra `{k}`"));
    }
    out.join("; ")
}

/// The order the writer must emit entries in: siblings sorted by name bytes, each directory
/// before its contents.
pub fn walk_order(root: &Path) -> Vec<String> {
    fn rec(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            let name = n.to_str().unwrap();
            let rel = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let path = dir.join(&n);
            out.push(rel.clone());
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                rec(&path, &rel, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(root, "", &mut out);
    out
}

/// What a tar header of the artifact says about one entry (long names resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub username: Vec<u8>,
    pub groupname: Vec<u8>,
    pub link: Option<Vec<u8>>,
}

/// Decompresses a `.tar.gz` with flate2 and lists its entries in archive order.
pub fn list_archive(gz: &[u8]) -> Vec<Listed> {
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        out.push(Listed {
            path: String::from_utf8(e.path_bytes().into_owned()).unwrap(),
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            username: h.username_bytes().unwrap_or_default().to_vec(),
            groupname: h.groupname_bytes().unwrap_or_default().to_vec(),
            link: e.link_name_bytes().map(|l| l.into_owned()),
        });
    }
    out
}

/// Deterministic pseudo-random content: runs of text (compressible) and noise (not), so the
/// compressed stream has varied block sizes.
pub fn gen_content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    let text = b"Build number = 000034 -- the quick brown fox jumps over the lazy dog\n";
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = 512 + (x % 8192) as usize;
        let take = run.min(len - out.len());
        if x & 4 == 0 {
            for i in 0..take {
                out.push(text[(i + (x as usize >> 8)) % text.len()]);
            }
        } else {
            for _ in 0..take {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push((x >> 24) as u8);
            }
        }
    }
    out
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `p` as a path relative to the current directory (which tests must not change).
pub fn relative_from_cwd(p: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let mut rel = PathBuf::new();
    for _ in cwd.components().skip(1) {
        rel.push("..");
    }
    rel.push(p.strip_prefix("/").unwrap());
    rel
}

// ---------------------------------------------------------------------------------------------
// Crafting archives by hand.

/// An uncompressed tar stream written header by header, so names and modes can be anything
/// (the `tar` crate's `set_path` refuses `..` and absolute paths).
#[derive(Default)]
pub struct RawTar {
    pub bytes: Vec<u8>,
}

pub const GNU_LONGNAME: u8 = b'L';
pub const GNU_LONGLINK: u8 = b'K';

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }

    /// A GNU header with `name` and `link` written byte for byte (both at most 100 bytes).
    pub fn header(
        name: &[u8],
        kind: tar::EntryType,
        mode: u32,
        size: u64,
        link: &[u8],
    ) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            assert!(name.len() <= old.name.len() && link.len() <= old.linkname.len());
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(SOURCE_DATE as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        h
    }

    /// Appends a header and its data, padded to the 512-byte block.
    pub fn push(&mut self, h: &tar::Header, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(h.as_bytes());
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// A GNU `././@LongLink` extension entry (`L` for the next name, `K` for the next link).
    pub fn gnu_long(&mut self, kind: u8, value: &[u8]) -> &mut Self {
        let mut data = value.to_vec();
        data.push(0);
        let h = Self::header(
            b"././@LongLink",
            tar::EntryType::new(kind),
            0o644,
            data.len() as u64,
            b"",
        );
        self.push(&h, &data)
    }

    /// A PAX local extended header for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = 1 + key.len() + 1 + value.len() + 1; // " key=value\n"
            let mut len = body + 1;
            while len.to_string().len() + body != len {
                len = len.to_string().len() + body;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let h = Self::header(
            b"PaxHeaders/x",
            tar::EntryType::XHeader,
            0o644,
            data.len() as u64,
            b"",
        );
        self.push(&h, &data)
    }

    /// Any entry; names and link targets over 100 bytes get GNU long-name entries first.
    pub fn entry(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        mode: u32,
        data: &[u8],
        link: &[u8],
    ) -> &mut Self {
        let short_name = if name.len() > 100 {
            self.gnu_long(GNU_LONGNAME, name);
            &name[..100]
        } else {
            name
        };
        let short_link = if link.len() > 100 {
            self.gnu_long(GNU_LONGLINK, link);
            &link[..100]
        } else {
            link
        };
        let h = Self::header(short_name, kind, mode, data.len() as u64, short_link);
        self.push(&h, data)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name.as_bytes(), tar::EntryType::Directory, 0o755, b"", b"")
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name.as_bytes(), tar::EntryType::Regular, 0o644, data, b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            tar::EntryType::Symlink,
            0o777,
            b"",
            target.as_bytes(),
        )
    }

    /// The end-of-archive marker: two zero blocks.
    pub fn end(&mut self) -> &mut Self {
        self.bytes.extend(std::iter::repeat_n(0u8, 1024));
        self
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A sidecar that describes `archive` exactly (right hash, size and file name).
pub fn sidecar_for(manifest: &ReleaseManifest, archive: &[u8]) -> Sidecar {
    let blake3 = Blake3Hash::of(archive);
    Sidecar::new(
        manifest.clone(),
        Some(ArchiveInfo {
            file_name: ArtifactRef::new(&manifest.app, manifest.build, blake3).file_name(),
            blake3,
            size: archive.len() as u64,
        }),
    )
}

/// The bytes of the `release.json` the archive must carry for `manifest`.
pub fn embedded_for(manifest: &ReleaseManifest) -> Vec<u8> {
    Sidecar::new(manifest.clone(), None).to_bytes()
}

/// A crafted release: the manifest and the tar stream built side by side.
pub struct Crafted {
    pub m: ReleaseManifest,
    pub tar: RawTar,
}

impl Crafted {
    pub fn new() -> Self {
        Self {
            m: base_manifest(),
            tar: RawTar::new(),
        }
    }

    /// A directory, in the archive and in the manifest.
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.tar.dir(name);
        self.list_dir(name)
    }

    /// A 0644 file, in the archive and in the manifest.
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.tar.file(name, data);
        self.list_file(name, data, 0o644)
    }

    /// A symlink, in the archive and in the manifest.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.tar.symlink(name, target);
        self.list_symlink(name, target)
    }

    pub fn list_dir(&mut self, name: &str) -> &mut Self {
        self.m
            .files
            .insert(name.into(), FileEntry::Dir { mode: Mode::DIR });
        self
    }

    pub fn list_file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.m.files.insert(
            name.into(),
            FileEntry::File {
                size: data.len() as u64,
                mode: Mode(mode),
                blake3: Blake3Hash::of(data),
            },
        );
        self
    }

    pub fn list_symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.m.files.insert(
            name.into(),
            FileEntry::Symlink {
                target: target.into(),
            },
        );
        self
    }

    /// The correct embedded `release.json` as the last entry, the end marker, gzip, and a
    /// sidecar that matches the result.
    pub fn seal(mut self) -> (Vec<u8>, Sidecar) {
        let embedded = embedded_for(&self.m);
        self.tar.file(RELEASE_JSON, &embedded).end();
        self.seal_as_is()
    }

    /// Gzip the stream exactly as crafted (add `end()` yourself).
    pub fn seal_as_is(self) -> (Vec<u8>, Sidecar) {
        let gz = gzip(&self.tar.bytes);
        let sidecar = sidecar_for(&self.m, &gz);
        (gz, sidecar)
    }
}
