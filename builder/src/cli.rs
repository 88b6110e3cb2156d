//! The `builder` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use common::BuildNumber;

/// Build BinaryCrate releases: reproducible, BLAKE3-hashed tarballs with every build step
/// already run, published immutably for the servers' installer.
///
/// The usual flow: `builder prepare` (merge develop into master, bump the build number, tag),
/// `builder package` (export the tag, run the build steps, write the artifact), `builder publish`.
#[derive(Debug, Parser)]
#[command(name = "builder", version, propagate_version = true)]
#[command(after_help = "Exit codes: 0 success, 1 failed, 2 bad input (nothing was written).")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Prepare(PrepareArgs),
    Package(PackageArgs),
    Publish(PublishArgs),
    Releases(ReleasesArgs),
    Config(ConfigArgs),
    Archive(ArchiveArgs),
}

/// Where the application repository is.
#[derive(Debug, Args, Clone)]
pub struct RepoArg {
    /// The application's git repository [default: the one containing the current directory].
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
}

/// Merge `develop` into `master`, bump the build number and create the annotated tag.
///
/// The seed's "Preparing the code": refuses a dirty tree; merges `develop` into `master` with a
/// merge commit; the next number is one more than the highest `Build*` tag or `BUILD_NUMBER` in
/// `build_number.py`; only the `BUILD_NUMBER = '…'` line is rewritten; commits, tags
/// `BuildNNNNNN`, and brings `develop` up to `master`. On any failure the repository is left
/// exactly as it was.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Also push master, the tag and develop to the remote.
    #[arg(long)]
    pub push: bool,
    /// The remote to push to.
    #[arg(long, default_value = "origin", value_name = "NAME")]
    pub remote: String,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Build a tag into a release artifact: export, build steps, checks, reproducible tarball.
///
/// Reads `deploy.toml` from the tag, exports the tag and its submodules into a fresh staging
/// directory (the working tree is never touched), builds the wheels, runs the front-end bundler,
/// collectstatic and the other steps, checks the front end's build number, refuses secrets, and
/// writes `<app>-BuildNNNNNN-<hash16>.tar.gz`, `release.json` and `build-log.json`.
#[derive(Debug, Args)]
pub struct PackageArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// The tag to package [default: the highest `Build*` tag].
    #[arg(long, value_name = "BuildNNNNNN")]
    pub tag: Option<BuildNumber>,
    /// Output directory [default: `dist/BuildNNNNNN` in the repository].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Keep the staging directory after the build (its path is printed).
    #[arg(long)]
    pub keep_staging: bool,
    /// Print a JSON object instead of the artifact path.
    #[arg(long)]
    pub json: bool,
}

/// Publish an artifact, its `release.json` and `build-log.json` to the artifact store.
///
/// Layout `<app>/BuildNNNNNN/<artifact>`, then `release.json` written last and only if absent:
/// publishing the identical release again does nothing; a different one under a published build
/// number is refused.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// The artifact (`release.json` must be beside it).
    pub artifact: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// List the builds published in the artifact store.
#[derive(Debug, Args)]
pub struct ReleasesArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which store to use.
#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// `file:///path`, a directory, or `s3://bucket/prefix` [default: `store` in `deploy.toml`,
    /// else `artifacts/` at the repository root].
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// S3 endpoint override (S3-compatible stores, tests); implies path-style addressing.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
}

/// Print the effective `deploy.toml` configuration (defaults filled in).
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Read `deploy.toml` from this tag instead of the working tree.
    #[arg(long, value_name = "BuildNNNNNN")]
    pub tag: Option<BuildNumber>,
}

/// Pack a staged tree into a reproducible artifact and its `release.json` sidecar.
///
/// Entries are sorted, owners and times normalised (every mtime = the source date), modes
/// reduced to 0644/0755, and every file hashed, so the same tree always gives the same bytes.
/// The artifact is `<out>/<app>-BuildNNNNNN-<hash16>.tar.gz`; its path is the last line of
/// standard output.
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
