//! The `builder` command line.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use common::BuildNumber;

use crate::fleet::{Rate, TransportKind};

/// Build BinaryCrate releases: reproducible, BLAKE3-hashed tarballs with every build step
/// already run, published immutably for the servers' installer.
///
/// The usual flow: `builder prepare` (merge develop into master, bump the build number, tag),
/// `builder package` (export the tag, run the build steps, write the artifact), `builder publish`,
/// then `builder deploy` (run the installer on the servers through AWS SSM), with `builder status`
/// and `builder rollback` for the fleet. `builder keygen` once makes the key that signs releases,
/// so that the servers install only what you built.
#[derive(Debug, Parser)]
#[command(name = "builder", version = crate::VERSION, propagate_version = true)]
#[command(after_help = "Exit codes: 0 success, 1 failed, 2 bad input (nothing was written).")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Init(InitArgs),
    Check(CheckArgs),
    Prepare(PrepareArgs),
    Package(PackageArgs),
    Publish(PublishArgs),
    Keygen(KeygenArgs),
    Sign(SignArgs),
    Releases(ReleasesArgs),
    Config(ConfigArgs),
    Archive(ArchiveArgs),
    Deploy(DeployArgs),
    Rollback(FleetRollbackArgs),
    Status(FleetStatusArgs),
    OsUpdate(FleetOsUpdateArgs),
    Bootstrap(BootstrapArgs),
}

/// Where the application repository is.
#[derive(Debug, Args, Clone)]
pub struct RepoArg {
    /// The application's git repository [default: the one containing the current directory].
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
}

/// Write a `deploy.toml` for this application from what its repository holds.
///
/// Finds `manage.py`, the settings and WSGI modules, STATIC_ROOT and MEDIA_ROOT, the
/// requirements, a build-number file (creating one when there is none), a production template
/// or a `.env`, the git submodules and a PyPy.js front end; writes only the keys that differ
/// from the defaults, each with a comment; prints what is left to do by hand.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder init\n",
    "  builder init --repo ~/src/shop --force\n",
    "\n",
    "Exit codes: 0 written; 2 bad input (a `deploy.toml` exists without --force, no `manage.py`): nothing written."
))]
pub struct InitArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Replace an existing `deploy.toml`.
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object on standard output instead of the path written (the files created and the configuration).
    #[arg(long)]
    pub json: bool,
}

/// Check the working tree as `builder package` would, without building anything.
///
/// `deploy.toml`, the requirements (every line pinned), the project and its WSGI and settings
/// modules, the build-number file, the front end's pieces, and that no server's own file is
/// committed. Exit 2 with every problem listed.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder check\n",
    "  builder check --repo ~/src/shop --json\n",
    "\n",
    "Exit codes: 0 every check passed; 2 a check found a problem (each is listed)."
))]
pub struct CheckArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Print one JSON object on standard output instead of the checklist (each check, passed or not, with its detail).
    #[arg(long)]
    pub json: bool,
}

/// Merge `develop` into `master`, bump the build number and create the annotated tag.
///
/// The manual procedure's "preparing the code": refuses a dirty tree; merges `develop` into `master` with a
/// merge commit; the next number is one more than the highest `Build*` tag or `BUILD_NUMBER` in
/// `build_number.py`; only the `BUILD_NUMBER = '…'` line is rewritten; commits, tags
/// `BuildNNNNNN`, and brings `develop` up to `master`. On any failure the repository is left
/// exactly as it was.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder prepare --dry-run\n",
    "  builder prepare --push --remote origin\n",
    "\n",
    "Exit codes: 0 tagged (the tag is printed); 2 bad input (dirty tree, no develop, no git identity): nothing changed; ",
    "1 failed: the repository was put back as it was."
))]
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
    /// Print one JSON object on standard output instead of the tag (the build, the new commits, merged and pushed).
    #[arg(long)]
    pub json: bool,
}

/// Build a tag into a release artifact: export, build steps, checks, reproducible tarball.
///
/// Reads `deploy.toml` from the tag, exports the tag and its submodules into a fresh staging
/// directory (the working tree is never touched), builds the wheels, runs the front-end bundler,
/// collectstatic and the other steps, checks the front end's build number, refuses secrets, and
/// writes `<app>-BuildNNNNNN-<hash16>.tar.gz`, `release.json` and `build-log.json`.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder package\n",
    "  builder package --tag Build000034 --out /tmp/dist --signing-key ~/.binarycrate/release.key\n",
    "  builder package --tag 000034 --json\n",
    "\n",
    "Exit codes: 0 packaged (the artifact's path is printed); 2 bad input (unknown tag, bad deploy.toml, ",
    "unpinned requirements, a secret in the tree); 1 a build step failed (its output is shown)."
))]
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
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// Which secret key signs `release.json`.
#[derive(Debug, Args, Clone, Default)]
pub struct SigningArgs {
    /// Sign `release.json` with this minisign secret key (from `builder keygen`) into
    /// `release.json.minisig` [default: `$BINARYCRATE_SIGNING_KEY`, else `signing.secret_key`
    /// in `deploy.toml`, else unsigned].
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// The environment variable holding a password-protected key's password [default:
    /// `signing.password_env` in `deploy.toml`, else `BINARYCRATE_SIGNING_PASSWORD`].
    #[arg(long, value_name = "VAR")]
    pub signing_password_env: Option<String>,
}

/// Create the Ed25519 key pair that signs releases (minisign's format).
///
/// Writes `<name>.key`, the secret key (mode 0600), and `<name>.pub`, the public key, into
/// `--out-dir`. Keep the secret key where only the release builder can read it — never in the
/// repository (`builder package` refuses `*.key` files) and never in the artifact store: whoever
/// has it can make servers install anything.
///
/// Signing: `builder package` signs with it when given `--signing-key FILE`,
/// `BINARYCRATE_SIGNING_KEY`, or `[signing] secret_key = "FILE"` in `deploy.toml`.
///
/// Trusting: every server lists it in `installer.toml` as `[signing] public_keys = ["RW…"]`, the
/// line printed here (the second line of `<name>.pub`).
///
/// To rotate, make a new pair under another name, add its public key to `public_keys` beside the
/// old one on every server, sign new builds with the new key, and remove the old public key
/// once no server needs to install builds signed with it.
///
/// The secret key is unencrypted by default (for CI signers, which keep it in a secret store).
/// With `--password-env VAR` it is password-protected with the password in `$VAR`; signing
/// then reads the password from the same variable (`--signing-password-env VAR`).
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder keygen --out-dir ~/.binarycrate\n",
    "  KEY_PASSWORD=... builder keygen --name ci-2026 --password-env KEY_PASSWORD\n",
    "\n",
    "Exit codes: 0 written; 2 bad input (a key file exists without --force, bad name): nothing written."
))]
pub struct KeygenArgs {
    /// Directory to write the key files into (the current directory by default).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,
    /// File name of the pair without extension: `<name>.key` and `<name>.pub`.
    #[arg(long, value_name = "NAME", default_value = crate::signing::DEFAULT_KEY_NAME)]
    pub name: String,
    /// Replace existing key files (servers trusting the old public key will refuse new builds).
    #[arg(long)]
    pub force: bool,
    /// Protect the secret key with the password in this environment variable.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Print one JSON object on standard output instead of the instructions (the key id, the public key and both files).
    #[arg(long)]
    pub json: bool,
}

/// Sign an already packaged release: `release.json` into `release.json.minisig` beside it.
///
/// `builder package` signs by itself when a key is configured; this is for releases packaged
/// without the key (e.g. on a build machine, signed afterwards on the machine that has it).
/// Signing the same `release.json` with the same key always gives the same bytes.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder sign dist/Build000034 --signing-key ~/.binarycrate/release.key\n",
    "  BINARYCRATE_SIGNING_KEY=release.key builder sign dist/Build000034/release.json\n",
    "\n",
    "Exit codes: 0 signed (the signature's path is printed); 2 bad input (no release there, no key, wrong password)."
))]
pub struct SignArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// The artifact, its `release.json`, or the directory holding them.
    pub release: PathBuf,
    #[command(flatten)]
    pub signing: SigningArgs,
    /// Print one JSON object on standard output instead of the signature's path (with the key that signed).
    #[arg(long)]
    pub json: bool,
}

/// Publish an artifact, its `release.json` and `build-log.json` to the artifact store.
///
/// Layout `<app>/BuildNNNNNN/<artifact>`, then `release.json.minisig` when the release is signed
/// (it is beside the artifact), then `release.json` written last, each only if absent:
/// publishing the identical release again does nothing; a different one under a published build
/// number is refused. A release published unsigned gets its signature when published again
/// signed.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder publish dist/Build000034/binarycrate-Build000034-0123456789abcdef.tar.gz\n",
    "  builder publish dist/Build000034/*.tar.gz --store s3://releases/binarycrate --json\n",
    "\n",
    "Exit codes: 0 published (or already published, identical); 2 bad input (no sidecar, another release ",
    "under that build number, a signature for another release); 1 the store failed."
))]
pub struct PublishArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// The artifact (`release.json` must be beside it).
    pub artifact: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print one JSON object on standard output instead of the sidecar's location (what was uploaded and what was already there).
    #[arg(long)]
    pub json: bool,
}

/// List the builds published in the artifact store.
///
/// One line per build: its number, when it was packaged, the commit, the artifact's size and
/// whether it is signed.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder releases\n",
    "  builder releases --store s3://releases/binarycrate --json\n",
    "\n",
    "Exit codes: 0 listed (an empty store lists nothing); 2 bad input (a mistyped store URL); 1 the store failed."
))]
pub struct ReleasesArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print a JSON array on standard output instead of the table.
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
#[command(after_help = concat!(
    "Examples:\n",
    "  builder config\n",
    "  builder config --tag Build000034 --json\n",
    "\n",
    "Exit codes: 0 printed; 2 bad input (an invalid deploy.toml, an unknown tag)."
))]
pub struct ConfigArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Read `deploy.toml` from this tag instead of the working tree.
    #[arg(long, value_name = "BuildNNNNNN")]
    pub tag: Option<BuildNumber>,
    /// Print one JSON object on standard output instead of TOML (where it came from and the configuration).
    #[arg(long)]
    pub json: bool,
}

/// Pack a staged tree into a reproducible artifact and its `release.json` sidecar.
///
/// Entries are sorted, owners and times normalised (every mtime = the source date), modes
/// reduced to 0644/0755, and every file hashed, so the same tree always gives the same bytes.
/// The artifact is `<out>/<app>-BuildNNNNNN-<hash16>.tar.gz`; its path is the last line of
/// standard output.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder archive staging/ --build Build000034 --source-date 1764720000 --out dist/Build000034\n",
    "  builder archive staging/ --build 000034 --source-date \"$(git log -1 --format=%ct Build000034)\" --out dist --json\n",
    "\n",
    "Exit codes: 0 written; 2 bad input (a link out of the tree, a secret, a bad name): nothing written."
))]
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

/// How `deploy`, `rollback`, `status` and `bootstrap` reach the servers.
#[derive(Debug, Args, Clone)]
pub struct ReachArgs {
    /// The servers: EC2 instance ids (`i-0123456789abcdef0`; managed instances `mi-…`), or EC2
    /// tag filters `tag:Key=Value` (`tag:Env=staging,production` matches either value; several
    /// filters must all match). Separate several with spaces or repeat the option. Required
    /// with `--transport ssm`; not allowed with `--transport local`.
    #[arg(long, value_name = "TARGET", num_args = 1.., action = ArgAction::Append)]
    pub targets: Vec<String>,
    /// `ssm`: AWS Systems Manager Run Command (`AWS-RunShellScript`) on the targets. `local`:
    /// run the same command line on this machine (`sh -c`), shown as the one instance `local`.
    #[arg(long, value_enum, default_value = "ssm", value_name = "TRANSPORT")]
    pub transport: TransportKind,
    /// How many servers run the command at the same time: a count or a percentage of the
    /// targets (SSM's `MaxConcurrency`). `1` is a rolling deploy, one server after the other
    /// [default: 50; `os-update`: 1].
    #[arg(long, value_name = "N|N%", value_parser = Rate::parse_concurrency)]
    pub max_concurrency: Option<Rate>,
    /// How many servers may fail before SSM stops starting the command on the rest (SSM's
    /// `MaxErrors`): `0` stops after the first failure; servers already running finish.
    #[arg(long, value_name = "N|N%", default_value = "0", value_parser = Rate::parse_errors)]
    pub max_errors: Rate,
    /// Seconds the command may run on one server before it is stopped and counted as timed
    /// out (the document's `executionTimeout`).
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(30..=172_800))]
    pub timeout: u64,
    /// Seconds SSM keeps trying to start the command on a server that has not started it yet
    /// (agent offline, or waiting its turn under `--max-concurrency`) before giving up on it
    /// as `Delivery Timed Out` (SSM's `TimeoutSeconds`) [default: `--timeout`].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(30..=2_592_000))]
    pub delivery_timeout: Option<u64>,
    /// Also keep every server's complete output in S3 (SSM's `OutputS3BucketName` and
    /// `OutputS3KeyPrefix`), `s3://bucket/prefix`: SSM itself returns only the first 24,000
    /// characters of standard output (8,000 of standard error), and the builder reads an output
    /// cut there from this copy [default: `fleet.output_s3` in deploy.toml].
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub output_s3: Option<String>,
    /// SSM endpoint override (SSM stand-ins, tests); `AWS_ENDPOINT_URL` works as well. The
    /// region and credentials come from the standard AWS chain (region `us-east-1` when none).
    #[arg(long, value_name = "URL")]
    pub ssm_endpoint: Option<String>,
    /// Show every server's full standard output and standard error.
    #[arg(short, long)]
    pub verbose: bool,
    /// Print one JSON object on standard output (each server's status, exit code and result:
    /// the live build and the installer's report, or for `bootstrap` the versions); the table
    /// goes to standard error.
    #[arg(long)]
    pub json: bool,
}

/// How `deploy`, `rollback` and `status` reach the servers and run the installer there.
#[derive(Debug, Args, Clone)]
pub struct FleetArgs {
    #[command(flatten)]
    pub reach: ReachArgs,
    /// The installer on the servers: a name looked up in `PATH`, or a path.
    #[arg(long, value_name = "PATH", default_value = "installer")]
    pub installer: String,
    /// The installer's configuration file on the servers (`installer --config FILE`)
    /// [default: the installer's own: `$BINARYCRATE_INSTALLER_CONFIG`, else
    /// `/etc/binarycrate/installer.toml`].
    #[arg(long, value_name = "PATH")]
    pub installer_config: Option<String>,
}

/// Activate a published build on the servers (`installer activate` through AWS SSM).
///
/// A rollout that stops itself: runs `installer activate --build BuildNNNNNN --json` on every target. Checks everything first — the build name, the targets, the options, and that the build is
/// published in the store. The instances go in a stable order (by id, or `--order`): the
/// `--canary` first, alone, watched healthy for `--bake`; then the rest in waves of
/// `--max-concurrency`, each wave finished before the next. Each stage is one SSM command
/// (`AWS-RunShellScript`) whose only line is the installer's command line, every word
/// single-quoted. A failing canary, a canary unhealthy during the bake, more failures than
/// `--max-errors`, or Ctrl-C stops the rollout: the instances not reached are not started, and
/// those that already switched are rolled back to the build each had (`installer rollback
/// --to`), so the fleet ends on one build. Then a table: server, SSM status, exit code,
/// duration, the build now live there, the installer's own result — and the stages, what was
/// rolled back and why the rollout stopped.
///
/// The installer reads the same store: `--store`, else `store` from `deploy.toml` (an `s3://`
/// store; the builder's local default store is refused for SSM).
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder deploy --build Build000034 --targets tag:Role=web --canary 1 --max-concurrency 25% --plan\n",
    "  builder deploy --build Build000034 --targets tag:Role=web --canary 1 --bake 5m --max-concurrency 25%\n",
    "  builder deploy --build Build000034 --targets tag:Role=web --max-concurrency 1\n",
    "  builder deploy --build 000034 --targets i-0123456789abcdef0 --store s3://releases/app\n",
    "  builder deploy --build Build000034 --transport local --installer-config ./installer.toml\n",
    "\n",
    "Exit codes: 0 every server is on the build (with --plan: every server answered); 2 bad input, nothing was sent; 1 the rollout stopped ",
    "before any server switched; 3 it stopped and every server that had switched is back on its build ",
    "(or rolled back by itself); 4 it stopped and some server could not be restored (named). A rollout that ",
    "finished with failures within --max-errors exits with the worst installer exit code among them ",
    "(4, 3, 1, 5, 2), else 1 (timed out, cancelled, undeliverable, no installer report)."
))]
pub struct DeployArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// The build to activate, `BuildNNNNNN` or `NNNNNN`; it must be published in the store.
    #[arg(long, value_name = "BuildNNNNNN")]
    pub build: BuildNumber,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Confirm that `shared/production.py` on every server has the changes of this build's
    /// `production_template.py` (`installer activate --template-reviewed`).
    #[arg(long)]
    pub template_reviewed: bool,
    /// Seconds the installer waits for another activation's lock [default: its configuration's].
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    /// Deploy to this many instances first (a count, or a percentage of the targets), alone;
    /// the rest only once they succeeded (and stayed healthy for `--bake`).
    #[arg(long, value_name = "N|N%", value_parser = Rate::parse_concurrency)]
    pub canary: Option<Rate>,
    /// How long the canaries must stay healthy before the rest: they are asked
    /// `installer status --check` five times over it (`30s`, `5m`, `1m30s`, or seconds).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = common::when::parse_duration, requires = "canary")]
    pub bake: std::time::Duration,
    /// Instances that go first, in this order (the first is the canary); the rest follow
    /// sorted by id. Without it the order is by instance id, so the canary is the same
    /// machine every time.
    #[arg(long, value_name = "ID,ID,…", value_delimiter = ',')]
    pub order: Vec<String>,
    /// When the rollout stops (a canary, the bake, more failures than `--max-errors`, Ctrl-C),
    /// leave the instances that already switched on the new build instead of rolling them
    /// back to the build each had. By default they are rolled back, so the fleet ends on one
    /// build.
    #[arg(long)]
    pub no_rollback_on_failure: bool,
    /// Show what the deploy would change, and change nothing: every target is asked which
    /// build it runs (`installer status`, read-only), and for each live build the plan shows
    /// the commits up to this build (from this repository when it has them), the packages
    /// added, removed or upgraded, the migrations that would be applied, whether the
    /// production template changed (with its diff), how many static files change, and the
    /// stages (canary, waves) with their instances. `--json` prints it as one object.
    #[arg(long)]
    pub plan: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Roll the servers back (`installer rollback` through AWS SSM).
///
/// Runs `installer rollback [--to BuildNNNNNN] --json` on every target. Each server returns to the release that was live before its current one (from its own
/// journal), or to `--to`, after re-verifying that release's files on disk. Same transport,
/// rate control, live view and table as `builder deploy`.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder rollback --targets tag:Role=web\n",
    "  builder rollback --targets i-0123456789abcdef0 --to Build000033\n",
    "  builder rollback --targets tag:Role=web --to Build000033 --migrate-down\n",
    "  builder rollback --transport local\n",
    "\n",
    "Exit codes: 0 every server succeeded (or had nothing to do); 2 bad input, nothing was sent. ",
    "Otherwise the worst installer exit code when every failure has one (4, 3, 1, 5, 2), else 1."
))]
pub struct FleetRollbackArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// The release to return to [default: each server's previous good release].
    #[arg(long, value_name = "BuildNNNNNN")]
    pub to: Option<BuildNumber>,
    /// Unapply, before the swap, the migrations each server's database has and the target
    /// does not, with the newer release's code (`installer rollback --migrate-down`); refused,
    /// changing nothing, when one cannot be reversed.
    #[arg(long)]
    pub migrate_down: bool,
    /// Switch even when the database has a migration the target's code cannot run against
    /// (`installer rollback --force`).
    #[arg(long, conflicts_with = "migrate_down")]
    pub force: bool,
    /// Seconds the installer waits for another activation's lock [default: its configuration's].
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Show which build is live on each server (`installer status` through AWS SSM).
///
/// Runs `installer status --json` on every target. One row per server: its live build
/// (LIVE), the one before (PREVIOUS), when the live one went live (SWITCHED), by which command
/// and whom (BY), and how its last installer command ended (RESULT); servers that did not
/// answer say why. With `--verify`, every server also re-hashes its live release against the
/// manifest (FILES: `ok`, or how many files drifted). The last line counts the builds live,
/// the servers that did not answer and those that drifted. Changes nothing.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder status --targets tag:Role=web\n",
    "  builder status --targets tag:Role=web --verify --output-s3 s3://ops-logs/ssm\n",
    "  builder status --transport local --json\n",
    "\n",
    "Exit codes: 0 every server answered (and with --verify, every live release matches its manifest); ",
    "2 bad input, nothing was sent; 2 also when every failure is a drifted release; ",
    "1 a server did not answer (or none matched)."
))]
pub struct FleetStatusArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Also re-hash each server's live release against its manifest (`installer status
    /// --verify`): a file changed, missing or added since it was unpacked is drift.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Update the servers' packages (`installer os-update` through AWS SSM), one server at a time.
///
/// Runs `installer os-update --json` on each target in turn — the next one only after the
/// previous one succeeded, so a bad update stops at the first server. The installer holds each
/// server's deployment lock meanwhile. With `--reboot`, a server that needs a reboot gets one
/// through the SSM agent (the installer exits 194; the agent reboots and runs the command again
/// once the server is back), and the next server starts only once this one is back online in
/// SSM. Tag targets are resolved to instances first (SSM's `DescribeInstanceInformation`). The
/// table shows each server's result and whether it needed, or got, a reboot.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder os-update --targets tag:Role=web\n",
    "  builder os-update --targets i-0123456789abcdef0 i-0fedcba9876543210 --reboot\n",
    "  builder os-update --targets tag:Env=staging --max-concurrency 25% --json\n",
    "\n",
    "Exit codes: 0 every server updated (and is back when rebooted); 2 bad input, nothing was sent; ",
    "otherwise the installer's exit code when every failure has one (5 locked by a deploy, 1 failed), else 1 ",
    "(timed out, not back online after the reboot, cancelled, no server matched). Servers after a failure are not started."
))]
pub struct FleetOsUpdateArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Reboot the servers that need it, one at a time, each back online before the next.
    #[arg(long)]
    pub reboot: bool,
    /// Seconds a rebooted server may take to be back online in SSM before the update stops.
    #[arg(long, value_name = "SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(10..=7200))]
    pub reboot_timeout: u64,
    /// Seconds the installer waits for a running deploy's lock [default: its configuration's].
    #[arg(long, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Put the installer binary on the servers through AWS SSM (no SSH, no AWS CLI there).
///
/// Uploads the binary to the store once, by content (`tools/installer/<sha256>/installer`,
/// never replaced), then sends one `AWS-RunShellScript` that, on each server: keeps an
/// identical installer as it is; otherwise downloads the binary from a presigned URL with
/// `curl` or `wget` (a `file://` store: copies it from the same path), checks its SHA-256 with
/// `sha256sum`, checks that it runs there (`--version`), refuses to replace an installer that
/// reports a newer version unless `--force`, and puts it at `--path` with a temporary file in
/// the same directory and `mv`. The table shows each server's previous and new version.
#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  builder bootstrap --targets tag:Role=web --store s3://releases/binarycrate\n",
    "  builder bootstrap --targets i-0123456789abcdef0 --installer-binary dist/installer --force\n",
    "\n",
    "Exit codes: 0 every server has this installer (installed, or already there); 2 bad input, ",
    "nothing was uploaded or sent; 1 otherwise: a server refused (a newer installer is there; ",
    "`--force` replaces it), failed (download, checksum, the binary does not run there), timed out, ",
    "or no server matched the targets. A server that failed keeps the installer it had."
))]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// The installer binary to put on the servers (a portable build from `scripts/dist`)
    /// [default: the `installer` beside this `builder`].
    #[arg(long, value_name = "FILE")]
    pub installer_binary: Option<PathBuf>,
    /// Where the installer goes on the servers (an absolute path; its directory is created).
    #[arg(long, value_name = "PATH", default_value = "/usr/local/bin/installer")]
    pub path: String,
    /// Replace an installer that reports a newer version than this one.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub reach: ReachArgs,
}
