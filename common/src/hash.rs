//! BLAKE3 digests as a domain type, and hashing of files and streams; SHA-256 for the few
//! places where a server checks a file with `sha256sum` (the installer binary itself).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::FsError;

/// A full 32-byte BLAKE3 digest, shown and serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Blake3Hash([u8; 32]);

impl Blake3Hash {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Hashes a file by streaming it; large files use memory mapping-free buffered reads.
    pub fn of_file(path: &Path) -> Result<(Self, u64), FsError> {
        let mut f = File::open(path).map_err(|e| FsError::new("cannot open", path, e))?;
        let mut w = HashingWriter::new(io::sink());
        io::copy(&mut f, &mut w).map_err(|e| FsError::new("cannot read", path, e))?;
        let (_, h, n) = w.finish();
        Ok((h, n))
    }

    /// Re-hashes files already known by size and digest, on a few threads (a dependency tree
    /// is thousands of small files: hashing them one by one leaves cores idle). Returns the
    /// first file that cannot be read or whose content differs.
    pub fn check_files(files: &[(PathBuf, u64, Blake3Hash)]) -> Result<(), PathBuf> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let chunk = files.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = files
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .try_for_each(|(path, size, want)| match Self::of_file(path) {
                                Ok((h, n)) if h == *want && n == *size => Ok(()),
                                _ => Err(path.clone()),
                            })
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(PathBuf::from("a hashing thread")))
            })
        })
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            use fmt::Write as _;
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// The first 16 hex digits, used in artifact file names.
    pub fn short(&self) -> String {
        self.to_hex()[..16].to_owned()
    }
}

impl From<blake3::Hash> for Blake3Hash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for Blake3Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Blake3Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blake3Hash({})", self.to_hex())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid BLAKE3 hash `{0}`: expected 64 lowercase hex digits")]
pub struct HashParseError(pub String);

impl FromStr for Blake3Hash {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 64 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(HashParseError(s.chars().take(80).collect()));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in b.chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).expect("ascii");
            out[i] = u8::from_str_radix(hex, 16).expect("validated hex");
        }
        Ok(Self(out))
    }
}

impl Serialize for Blake3Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Blake3Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts everything passing through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }

    pub fn finish(self) -> (W, Blake3Hash, u64) {
        (self.inner, self.hasher.finalize().into(), self.len)
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }
    pub fn finish(self) -> (R, Blake3Hash, u64) {
        (self.inner, self.hasher.finalize().into(), self.len)
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A SHA-256 digest, shown as 64 lowercase hex digits: what `sha256sum` prints. Used where the
/// check runs on a server with only coreutils (putting the installer there), never for releases.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash([u8; 32]);

impl Sha256Hash {
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(data).into())
    }

    /// Hashes a file by streaming it; also returns its length.
    pub fn of_file(path: &Path) -> Result<(Self, u64), FsError> {
        let mut f = File::open(path).map_err(|e| FsError::new("cannot open", path, e))?;
        let mut w = Sha256Writer::new(io::sink());
        io::copy(&mut f, &mut w).map_err(|e| FsError::new("cannot read", path, e))?;
        let (_, h, n) = w.finish();
        Ok((h, n))
    }

    pub fn to_hex(&self) -> String {
        Blake3Hash(self.0).to_hex()
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hash({})", self.to_hex())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid SHA-256 hash `{0}`: expected 64 lowercase hex digits")]
pub struct Sha256ParseError(pub String);

impl FromStr for Sha256Hash {
    type Err = Sha256ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Same spelling as BLAKE3's.
        s.parse::<Blake3Hash>()
            .map(|h| Self(h.0))
            .map_err(|_| Sha256ParseError(s.chars().take(80).collect()))
    }
}

impl Serialize for Sha256Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// A writer that computes the SHA-256 and length of everything passing through it.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: sha2::Sha256,
    len: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        use sha2::Digest as _;
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }

    pub fn finish(self) -> (W, Sha256Hash, u64) {
        use sha2::Digest as _;
        (
            self.inner,
            Sha256Hash(self.hasher.finalize().into()),
            self.len,
        )
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_known_digest_and_parses_back() {
        // `printf abc | sha256sum`
        let known = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let h = Sha256Hash::of(b"abc");
        assert_eq!(h.to_hex(), known);
        assert_eq!(known.parse::<Sha256Hash>().unwrap(), h);
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        let (bytes, streamed, len) = w.finish();
        assert_eq!((streamed, len, bytes.as_slice()), (h, 3, &b"abc"[..]));
        assert!("ABC".parse::<Sha256Hash>().is_err());
    }

    #[test]
    fn hex_round_trip_and_short_form() {
        let h = Blake3Hash::of(b"binarycrate");
        let hex = h.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<Blake3Hash>().unwrap(), h);
        assert_eq!(h.short(), &hex[..16]);
        assert_eq!(hex, blake3::hash(b"binarycrate").to_hex().as_str());
    }

    #[test]
    fn rejects_bad_hex() {
        assert!("abc".parse::<Blake3Hash>().is_err());
        assert!("G".repeat(64).parse::<Blake3Hash>().is_err());
        assert!(
            "A".repeat(64).parse::<Blake3Hash>().is_err(),
            "uppercase is not canonical"
        );
    }

    #[test]
    fn writer_and_reader_agree_with_one_shot() {
        let data = vec![7u8; 100_000];
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let (out, hw, n) = w.finish();
        assert_eq!(out, data);
        assert_eq!(n, 100_000);
        let mut r = HashingReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let (_, hr, _) = r.finish();
        assert_eq!(hw, Blake3Hash::of(&data));
        assert_eq!(hr, hw);
    }
}
