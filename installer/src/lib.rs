//! The `installer` binary's library: everything that runs on a server.
//!
//! It verifies release artifacts made by `builder` against their `release.json` and unpacks
//! them with the safe reader from `common`.
//!
//! Module map:
//! - [`cli`]: the command line (clap definitions only).
//! - [`cmd`]: one module per subcommand; each exposes `run`.
//! - [`config`]: `installer.toml` with the seed's defaults.
//! - [`layout`]: the server's directory layout and the `current` link.
//! - [`lock`]: one activation at a time (`flock`).
//! - [`journal`]: the append-only history of activations and rollbacks.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod journal;
pub mod layout;
pub mod lock;

use common::report::ExitCode;

/// Runs a parsed command line; the caller prints errors and turns them into exit codes.
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Unpack(args) => cmd::unpack::run(&args),
    }
}
