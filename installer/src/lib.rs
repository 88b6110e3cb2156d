//! The `installer` binary's library: everything that runs on a server.
//!
//! It verifies release artifacts made by `builder` against their `release.json` and unpacks
//! them with the safe reader from `common`.
//!
//! Module map:
//! - [`cli`]: the command line (clap definitions only).
//! - [`cmd`]: one module per subcommand; each exposes `run`.

pub mod cli;
pub mod cmd;

use common::report::ExitCode;

/// Runs a parsed command line; the caller prints errors and turns them into exit codes.
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Unpack(args) => cmd::unpack::run(&args),
    }
}
