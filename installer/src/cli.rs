//! The `installer` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use common::BuildNumber;

/// Install BinaryCrate releases on this server from verified, immutable artifacts: activate a
/// build (zero downtime, automatic rollback), roll back, inspect, verify and prune.
///
/// Configuration: `--config FILE`, else `$BINARYCRATE_INSTALLER_CONFIG`, else
/// `/etc/binarycrate/installer.toml`, else the defaults (root `/srv/binarycrate-mvp2`).
#[derive(Debug, Parser)]
#[command(name = "installer", version = crate::VERSION, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 success or nothing to do; 1 failed before anything live changed; \
2 bad input or failed verification (nothing was touched); 3 failed after the swap and rolled back; \
4 failed after the swap and could not restore (operator needed); 5 another activation holds the lock."
)]
pub struct Cli {
    /// The installer configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(
        after_long_help = "Examples:\n  installer activate --build Build000034\n  installer activate --build Build000034 --template-reviewed --json\n  installer activate --build Build000034 --store s3://releases/prod"
    )]
    Activate(ActivateArgs),
    #[command(
        after_long_help = "Examples:\n  installer rollback\n  installer rollback --to Build000031 --json\n  installer rollback --to Build000031 --migrate-down"
    )]
    Rollback(RollbackArgs),
    /// Show the live build, the previous good one, who activated it when, and how the last
    /// command ended.
    #[command(
        after_long_help = "Examples:\n  installer status\n  installer status --json\n  installer status --check --json\n  installer status --verify --json"
    )]
    Status(StatusArgs),
    /// List every release on disk: state (live, previous, failed, rolled back, unused), size and
    /// when it went live.
    #[command(after_long_help = "Examples:\n  installer list\n  installer list --json")]
    List(JsonArgs),
    #[command(
        after_long_help = "Examples:\n  installer verify\n  installer verify Build000033 --json"
    )]
    Verify(VerifyArgs),
    #[command(
        after_long_help = "Examples:\n  installer prune --keep 3\n  installer prune --keep 0 --json"
    )]
    Prune(PruneArgs),
    #[command(
        after_long_help = "Examples:\n  installer os-update\n  installer os-update --reboot --json"
    )]
    OsUpdate(OsUpdateArgs),
    #[command(
        after_long_help = "Examples:\n  installer unpack binarycrate-Build000034-0123456789abcdef.tar.gz /tmp/Build000034\n  installer unpack artifact.tar.gz /tmp/out --sidecar release.json --json"
    )]
    Unpack(UnpackArgs),
    #[command(
        after_long_help = "Examples:\n  installer adopt --dry-run\n  installer adopt --uwsgi-ini /etc/uwsgi-emperor/vassals/binarycrate.ini"
    )]
    Adopt(AdoptArgs),
    /// Print the effective configuration (defaults filled in).
    #[command(
        after_long_help = "Examples:\n  installer config\n  installer --config /etc/binarycrate/staging.toml config --json"
    )]
    Config(JsonArgs),
}

/// Install a build and make it live: fetch and verify, unpack, link shared files, build its
/// venv, migrate, swap `current`, reload, and prove every worker serves it — rolling back by
/// itself when it does not.
///
/// Re-running an activation that was interrupted at any point completes it. Activating the
/// build that is already live does nothing.
#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// The build to activate.
    #[arg(long, value_name = "BuildNNNNNN")]
    pub build: BuildNumber,
    /// Artifact store URL [default: `store` in the configuration].
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// S3 endpoint override (S3-compatible stores, tests).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Confirm that `shared/production.py` has the changes of a new `production_template.py`.
    #[arg(long)]
    pub template_reviewed: bool,
    /// Seconds to wait for another activation's lock [default: from the configuration].
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    /// Print one JSON report on stdout (human text stays on stderr).
    #[arg(long)]
    pub json: bool,
}

/// Swap back to the previous good release (from the journal) or the one named, after
/// re-verifying its files; warns about database migrations it does not know.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The release to return to [default: the one live before the current one].
    #[arg(long, value_name = "BuildNNNNNN")]
    pub to: Option<BuildNumber>,
    /// Before the swap, unapply the migrations the database has and the target does not, with
    /// the current release's code (`manage.py migrate <app> <last migration the target
    /// knows>`, per app). Refused, changing nothing, when one of them cannot be reversed.
    #[arg(long)]
    pub migrate_down: bool,
    /// Roll back even though the database has a migration the target's code cannot run
    /// against (a removed or renamed field or table, a new NOT NULL column): without it such a
    /// rollback is refused.
    #[arg(long, conflicts_with = "migrate_down")]
    pub force: bool,
    /// Seconds to wait for another activation's lock [default: from the configuration].
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    /// Print one JSON report on stdout (human text stays on stderr).
    #[arg(long)]
    pub json: bool,
}

/// Options of `installer status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also prove that the site serves the live build: the page shows its build number, every
    /// uWSGI worker was started after `current` last changed (with `health.stats_url`), and the
    /// confirming requests all see it — the activation's own health check, run again. Exit 1
    /// when it fails (`builder deploy --bake` runs it on the canaries).
    #[arg(long)]
    pub check: bool,
    /// Also re-hash the live release against its manifest (what `installer verify` does): the
    /// report's `details.changed` and `details.unexpected` list changed or missing and
    /// unexpected files, and any drift exits 2 (`builder status --verify` runs it on every
    /// server).
    #[arg(long)]
    pub verify: bool,
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Options of the read-only commands.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Re-hash a release against its manifest; report changed, missing and unexpected files.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The release [default: the current one].
    pub build: Option<BuildNumber>,
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Remove the oldest unused releases (with their static links), stale temporary directories
/// and cached downloads; never the current or the previous good release.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// How many releases to keep besides the current and previous good ones (failed releases
    /// do not count).
    #[arg(long, value_name = "N")]
    pub keep: usize,
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The server's `apt-get update`, `dist-upgrade`, `autoremove`; reports whether a reboot is
/// required and reboots only with `--reboot`.
///
/// Holds the deployment lock while it runs, so no activation or rollback changes the site while
/// packages (Python among them) are replaced under it, and no update starts in the middle of
/// one.
#[derive(Debug, Args)]
pub struct OsUpdateArgs {
    /// Reboot when the update needs it (otherwise it is only reported).
    #[arg(long)]
    pub reboot: bool,
    /// Running under SSM Run Command (`builder os-update` passes it): with `--reboot`, exit
    /// 194 instead of running `os_update.reboot`, so that the SSM agent reboots the server and
    /// runs this command again once it is back (a script that reboots by itself leaves the
    /// command's status wrong).
    #[arg(long, requires = "reboot")]
    pub via_ssm: bool,
    /// Seconds to wait for a running activation's lock [default: from the configuration].
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Verify a release artifact against its sidecar and unpack it into a new directory.
///
/// Every entry is checked as it streams past: safe path, allowed type and mode, listed in the
/// manifest with the same size and BLAKE3. The archive's own BLAKE3 and size must match the
/// sidecar. The tree is built in a temporary directory beside DEST and renamed into place
/// only when everything checked out; on any failure DEST does not exist afterwards.
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

/// Move the in-place checkout (the root) into the release layout, losing no byte.
///
/// Copies its shared files and directories (`production.py`, `media/`, `private/`) into
/// `shared/`, verifying every copy; records the build it runs (`build_number.py`) as a legacy
/// release that `installer rollback` can return to; prints the uWSGI and nginx changes to make.
///
/// The checkout's own files are never changed. Running it again verifies and says there is
/// nothing to do, or completes an interrupted run.
#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// Say what would be done and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The uWSGI configuration serving the checkout today: its lines are shown with what
    /// replaces each [default: the usual in-place setup].
    #[arg(long, value_name = "FILE")]
    pub uwsgi_ini: Option<PathBuf>,
    /// Seconds to wait for an activation's lock [default: from the configuration].
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}
