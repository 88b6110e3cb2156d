//! Everything `builder` and `installer` must agree on, defined once.
//!
//! The two binaries never share a process, so the contract between them is data: the build
//! number, the release manifest and its `release.json` sidecar, the archive format, the layout
//! of the artifact store, the exit codes and the `--json` report. All of it lives here.
//!
//! Module map:
//! - [`build_number`]: `BuildNumber`, the validated `NNNNNN` / `BuildNNNNNN` release identity.
//! - [`hash`]: `Blake3Hash` and streaming hashing helpers.
//! - [`manifest`]: `ReleaseManifest`, the `release.json` sidecar and the build log.
//! - [`migrations`]: a release's Django migration graph, and what a deploy or rollback between
//!   two of them applies, leaves behind, cannot undo, or breaks for older code.
//! - [`archive`]: the deterministic `.tar.gz` writer and the verifying safe reader.
//! - [`aws`]: the AWS region in use and SDK errors as one line that says what to do.
//! - [`atomic`]: crash-safe filesystem changes (atomic write, symlink swap, directory fsync).
//! - [`store`]: the artifact store (`file://` and `s3://`) with immutable publishing.
//! - [`report`]: exit codes and the machine-readable report every command can print.
//! - [`runtime`]: the process's one async runtime (the S3 store, the builder's fleet).
//! - [`pyenv`]: a Python interpreter's identity and the light venv over installed dependencies.
//! - [`progress`]: progress bars that only draw on a terminal.
//! - [`error`]: the error enums the above return.
//! - [`clidocs`]: man pages and shell completions rendered from a binary's clap definition.
//! - [`configdoc`]: the configuration reference rendered from the config types' doc comments.
//! - [`fault`]: the crash tests' fault-injection hook (real only with `fault-injection`).
//! - [`untrusted`]: text from the store or an archive made safe to print (escaped, capped).
//! - [`when`]: times as people read them (UTC date and age).

pub mod archive;
pub mod atomic;
pub mod aws;
pub mod build_number;
pub mod clidocs;
pub mod configdoc;
pub mod error;
pub mod fault;
pub mod hash;
pub mod manifest;
pub mod migrations;
pub mod progress;
pub mod pyenv;
pub mod report;
pub mod runtime;
pub mod store;
pub mod untrusted;
pub mod when;

pub use build_number::BuildNumber;
pub use hash::Blake3Hash;
pub use manifest::{ReleaseManifest, Sidecar};

/// The application name used in artifact names and store keys when none is configured.
pub const DEFAULT_APP: &str = "binarycrate";
