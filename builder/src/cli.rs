//! The `builder` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use common::BuildNumber;

/// Build BinaryCrate releases: reproducible, BLAKE3-hashed tarballs with every build step
/// already run, ready to publish and install.
#[derive(Debug, Parser)]
#[command(name = "builder", version, propagate_version = true)]
#[command(after_help = "Exit codes: 0 success, 1 failed, 2 bad input (nothing was written).")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pack a staged release tree into a reproducible artifact and its `release.json` sidecar.
    ///
    /// Entries are sorted, owners and times normalised (every mtime = the source date), modes
    /// reduced to 0644/0755, and every file hashed, so the same tree always gives the same bytes.
    /// The artifact is `<out>/<app>-BuildNNNNNN-<hash16>.tar.gz`; its path is the last line of
    /// standard output.
    Archive(ArchiveArgs),
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// The staged tree to pack (must not contain `release.json` at its root).
    pub staged_dir: PathBuf,
    /// The release's build name, `BuildNNNNNN` or `NNNNNN`.
    #[arg(long, value_name = "BuildNNNNNN")]
    pub build: BuildNumber,
    /// The source date in Unix seconds (normally the tagged commit's time): every entry's mtime.
    #[arg(long, value_name = "UNIX_SECONDS", value_parser = clap::value_parser!(i64).range(0..=8_589_934_591))]
    pub source_date: i64,
    /// Directory to write the artifact, `release.json` and `build-log.json` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Application name used in the artifact's name and store keys.
    #[arg(long, default_value = common::DEFAULT_APP)]
    pub app: String,
    /// Compression threads (default: one per core); the output is identical for any number.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print a JSON object instead of the artifact path.
    #[arg(long)]
    pub json: bool,
}
