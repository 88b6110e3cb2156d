//! The `installer` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Install BinaryCrate releases on this server from verified, immutable artifacts.
#[derive(Debug, Parser)]
#[command(name = "installer", version, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 success, 1 failed before anything changed, \
2 bad input or failed verification (nothing was touched)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify a release artifact against its sidecar and unpack it into a new directory.
    ///
    /// Every entry is checked as it streams past: safe path, allowed type and mode, listed in the
    /// manifest with the same size and BLAKE3. The archive's own BLAKE3 and size must match the
    /// sidecar. The tree is built in a temporary directory beside DEST and renamed into place
    /// only when everything checked out; on any failure DEST does not exist afterwards.
    Unpack(UnpackArgs),
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// The artifact, `<app>-BuildNNNNNN-<hash16>.tar.gz`.
    pub artifact: PathBuf,
    /// Where to unpack; must not exist yet.
    pub dest: PathBuf,
    /// The sidecar to verify against [default: `release.json` beside the artifact].
    #[arg(long, value_name = "FILE")]
    pub sidecar: Option<PathBuf>,
    /// Refuse archives whose files add up to more than this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = common::archive::reader::UnpackOptions::default().max_unpacked_bytes)]
    pub max_unpacked_bytes: u64,
    /// Refuse archives that expand more than this many times their compressed size.
    #[arg(long, value_name = "N", default_value_t = common::archive::reader::UnpackOptions::default().max_ratio)]
    pub max_ratio: u64,
    /// Print one JSON report object on standard output.
    #[arg(long)]
    pub json: bool,
}
