//! The `installer` binary's library: everything that runs on a server.
//!
//! It installs releases made by `builder` into the server layout — verify, unpack,
//! link, venv, migrate, swap `current`, reload, prove — and rolls back by itself when the new
//! build is not what is served.
//!
//! Module map:
//! - [`cli`]: the command line (clap definitions only).
//! - [`cmd`]: one module per subcommand; each exposes `run`, and none imports another.
//! - [`run`]: one command's run: report, journal, timed phases with their fault points, the end.
//! - [`config`]: `installer.toml` with today's manual setup as defaults (`[signing]` included).
//! - [`layout`]: the server's directory layout and the `current` link.
//! - [`lock`]: one activation at a time (`flock`).
//! - [`journal`]: the append-only history of activations and rollbacks; release states.
//! - [`release`]: shared links, static links, venv, template check and verification of a release.
//! - [`schema`]: the database's migrations as a release's code sees them (applied, known, in step).
//! - [`legacy`]: the adopted checkout as a legacy release (links, marker, build number).
//! - [`tree`]: copies of trees proven equal to their original (what `adopt` copies).
//! - [`advice`]: what to change in uWSGI and nginx when a checkout is adopted.
//! - [`keys`]: minisign public keys as the configuration names them, and their ids.
//! - [`signing`]: the trusted keys and the signature check of a release before download.
//! - [`switch`]: swap, reload, health check, and swapping back on failure.
//! - [`health`]: HTTP checks and uWSGI stats.
//! - [`procs`]: running the server's commands.

pub mod advice;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod health;
pub mod journal;
pub mod keys;
pub mod layout;
pub mod legacy;
pub mod lock;
pub mod procs;
pub mod release;
pub mod run;
pub mod schema;
pub mod signing;
pub mod switch;
pub mod tree;

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
    use cli::Command;
    if let Command::Unpack(args) = &cli.command {
        return cmd::unpack::run(args);
    }
    let config = config::InstallerConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Activate(args) => cmd::activate::run(&args, &config),
        Command::Rollback(args) => cmd::rollback::run(&args, &config),
        Command::Status(args) => cmd::inspect::status(&args, &config),
        Command::List(args) => cmd::inspect::list(&args, &config),
        Command::Verify(args) => cmd::inspect::verify(&args, &config),
        Command::Prune(args) => cmd::prune::run(&args, &config),
        Command::OsUpdate(args) => cmd::os_update::run(&args, &config),
        Command::Adopt(args) => cmd::adopt::run(&args, &config),
        Command::Config(args) => cmd::inspect::config(&args, &config),
        Command::Unpack(_) => unreachable!("handled above"),
    }
}
