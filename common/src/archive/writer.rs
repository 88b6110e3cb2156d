//! Deterministic archive writer: a staged tree to a byte-reproducible `.tar.gz` plus manifest.

use std::path::{Path, PathBuf};

use crate::error::PackError;
use crate::manifest::{ReleaseManifest, Sidecar};

/// Tuning that never changes the output bytes.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Compression threads (0: one per core). The archive is identical for any value.
    pub threads: usize,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self { threads: 0 }
    }
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
pub fn pack(staged: &Path, base: ReleaseManifest, out_dir: &Path, options: &PackOptions) -> Result<Packed, PackError> {
    let _ = (staged, base, out_dir, options);
    todo!()
}
