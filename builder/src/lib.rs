//! The `builder` binary's library: everything that runs on a developer or CI machine.
//!
//! It turns a git tag of the application into a reproducible release artifact with its
//! `release.json` sidecar (format defined in `common`), publishes it to the artifact store, and
//! has the servers' installer activate it (or roll back, or report what is live).
//!
//! Module map:
//! - [`cli`]: the command line (clap definitions only).
//! - [`cmd`]: one module per subcommand; each exposes `run`.
//! - [`config`]: `deploy.toml`, with defaults that reproduce the seed.
//! - [`export`]: a tag and its submodule commits, exported from git objects into staging.
//! - [`fleet`]: running the installer on the servers (SSM or local) for deploy/rollback/status.
//! - [`git`]: git2 helpers: clean-tree check, `Build*` tags, remotes, undoable ref moves.
//! - [`repo`]: finding the application repository.
//! - [`signing`]: minisign key pairs and deterministic signatures of `release.json`.
//! - [`steps`]: running and recording build steps in the staging directory.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod export;
pub mod fleet;
pub mod git;
pub mod repo;
pub mod signing;
pub mod steps;

use common::report::ExitCode;

/// Runs a parsed command line; the caller prints errors and turns them into exit codes.
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
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
    }
}
