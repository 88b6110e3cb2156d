//! Safe archive reader: verifies everything against the sidecar while unpacking into a new tree.

use std::path::Path;

use crate::error::UnpackError;
use crate::manifest::Sidecar;

/// Limits against decompression bombs.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Most bytes the unpacked tree may hold.
    pub max_unpacked_bytes: u64,
    /// Most the unpacked stream may expand relative to the compressed archive.
    pub max_ratio: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self { max_unpacked_bytes: 8 << 30, max_ratio: 200 }
    }
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Unpacked {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Verifies `archive` against `sidecar` and unpacks it into `dest`, which must not exist.
/// On any error nothing is left behind.
pub fn unpack(archive: &Path, sidecar: &Sidecar, dest: &Path, options: &UnpackOptions) -> Result<Unpacked, UnpackError> {
    let _ = (archive, sidecar, dest, options);
    todo!()
}
