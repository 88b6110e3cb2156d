//! The `builder` binary's library: everything that runs on a developer or CI machine.
//!
//! It turns a git tag of the application into a reproducible release artifact with its
//! `release.json` sidecar (format defined in `common`), publishes it to the artifact store, and
//! has the servers' installer activate it (or roll back, or report what is live); `bootstrap`
//! puts the installer itself on the servers.
//!
//! Module map:
//! - [`changes`]: what deploying one release over another changes, from the two manifests.
//! - [`cli`]: the command line (clap definitions only).
//! - [`cmd`]: one module per subcommand; each exposes `run`, and none imports another.
//! - [`config`]: `deploy.toml`, with defaults that reproduce the manual procedure.
//! - [`depcache`]: installed and compiled `deps/` trees kept by what decides their bytes.
//! - [`discover`]: what an application repository holds (for `builder init`).
//! - [`appcheck`]: an application tree checked against its app profile.
//! - [`export`]: a tag and its submodule commits, exported from git objects into staging.
//! - [`fleet`]: running the installer on the servers (SSM or local) for deploy/rollback/status.
//! - [`git`]: git2 helpers: clean-tree check, `Build*` tags, remotes, undoable ref moves.
//! - [`repo`]: finding the application repository.
//! - [`requirements`]: `requirements.txt` as people write it: what is pinned, and how.
//! - [`signing`]: minisign key pairs and deterministic signatures of `release.json`.
//! - [`steps`]: running and recording build steps in the staging directory.
//! - [`store`]: opening the artifact store (for the builder, and as the servers read it); the
//!   app name.

pub mod appcheck;
pub mod changes;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod depcache;
pub mod discover;
pub mod export;
pub mod fleet;
pub mod git;
pub mod repo;
pub mod requirements;
pub mod signing;
pub mod steps;
pub mod store;

/// What `--version` prints after the name: the crate version, the commit it was built from and
/// the oldest glibc it runs on (both set at compile time by `build.rs`), e.g.
/// `0.1.0 (commit 1a2b3c4, glibc >= 2.23)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BINARYCRATE_VERSION_COMMIT"),
    ", ",
    env!("BINARYCRATE_VERSION_GLIBC"),
    ")"
);

use common::report::ExitCode;

/// Runs a parsed command line; the caller prints errors and turns them into exit codes.
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Init(args) => cmd::init::run(&args),
        cli::Command::Check(args) => cmd::check::run(&args),
        cli::Command::Prepare(args) => cmd::prepare::run(&args),
        cli::Command::Package(args) => cmd::package::run(&args),
        cli::Command::Publish(args) => cmd::publish::run(&args),
        cli::Command::Keygen(args) => cmd::keygen::run(&args),
        cli::Command::Sign(args) => cmd::sign::run(&args),
        cli::Command::Releases(args) => cmd::releases::run(&args),
        cli::Command::Config(args) => cmd::config::run(&args),
        cli::Command::Archive(args) => cmd::archive::run(&args),
        cli::Command::Deploy(args) => cmd::deploy::run(&args),
        cli::Command::Rollback(args) => cmd::fleet_rollback::run(&args),
        cli::Command::Status(args) => cmd::fleet_status::run(&args),
        cli::Command::OsUpdate(args) => cmd::os_update::run(&args),
        cli::Command::Bootstrap(args) => cmd::bootstrap::run(&args),
    }
}
