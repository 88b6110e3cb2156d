//! The `builder` binary's library: everything that runs on a developer or CI machine.
//!
//! It turns a tree (and, in later work, a git tag) into a reproducible release artifact with
//! its `release.json` sidecar, using the format defined in `common`.
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
        cli::Command::Archive(args) => cmd::archive::run(&args),
    }
}
