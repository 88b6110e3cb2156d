//! The example application (`tests/fixtures/example-app`, a small BinaryCrate) as real git
//! repositories, and helpers to run git safely and to snapshot a repository's state.
//!
//! [`create`] lays out, under a directory of the caller's:
//!
//! ```text
//! DIR/cavorite/        one commit of fixtures/example-app-submodules/cavorite
//! DIR/historygraph/    one commit of fixtures/example-app-submodules/historygraph
//! DIR/origin.git/      bare repository, the superproject's `origin`: master, develop, Build000001
//! DIR/work/            the developer's working copy, on `develop`, clean, submodules checked out
//! ```
//!
//! History of the superproject: one commit on `master` holding the whole fixture with
//! `cavorite` and `historygraph` as submodules (recorded in `.gitmodules` with the relative URLs
//! `../cavorite` and `../historygraph`), tagged with the annotated [`TAG`] `Build000001`; and
//! `develop`, one commit ahead of `master` (a change to [`DEVELOP_CHANGE`]). Both branches track
//! `origin`. Authors and dates are fixed and the submodule URLs are relative, so every commit
//! and tag id is the same wherever and whenever the repositories are created.
//!
//! Every git command runs through [`git_command`]: the caller's `GIT_*` variables (`GIT_DIR`,
//! `GIT_WORK_TREE`, …) are removed and the user's and system's configuration are ignored, so the
//! repository this workspace lives in is never touched.
//!
//! ```no_run
//! let (_tmp, repo) = tests::example::create_temp()?;
//! let before = tests::example::state(&repo.work);
//! // … run `builder prepare` in repo.work and make it fail …
//! assert_eq!(tests::example::state(&repo.work), before);
//! # anyhow::Ok(())
//! ```

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The application's name (`app` in `deploy.toml`).
pub const APP: &str = "binarycrate";
/// The build number the fixture carries in `build_number.py`.
pub const BUILD_NUMBER: &str = "000001";
/// The annotated tag on `master` (the fixture's build).
pub const TAG: &str = "Build000001";
/// The submodules, by path in the superproject (also their names and repository names).
pub const SUBMODULES: [&str; 2] = ["cavorite", "historygraph"];

/// Paths inside the superproject.
pub const BUILD_NUMBER_FILE: &str = "binarycrate/binarycrate/settings/build_number.py";
/// Written by the build as `VERSION_HASH = '<commit>'`; `'development'` in git.
pub const VERSION_HASH_FILE: &str = "binarycrate/binarycrate/settings/version_hash.py";
/// The committed template of the server-only `production.py` (same directory).
pub const PRODUCTION_TEMPLATE: &str = "binarycrate/binarycrate/settings/production_template.py";
/// Where `production.py` goes in a release (never committed; ignored by `.gitignore`).
pub const PRODUCTION_SETTINGS: &str = "binarycrate/binarycrate/settings/production.py";
/// Django's `manage.py`.
pub const MANAGE_PY: &str = "binarycrate/manage.py";
/// Where the build copies `build_number.py` for the front end (ignored by `.gitignore`).
pub const FRONT_END_BUILD_NUMBER: &str = "front-end/binarycrate/build_number.py";
/// The module bundler (Python 3 stand-in with PyPy.js's `add`/`preload` command line).
pub const MODULE_BUNDLER: &str = "pypyjs-release/pypyjs-release/tools/module_bundler.py";
/// The bundle directory `module_bundler.py` manages (holds `index.json`).
pub const BUNDLE_DIR: &str = "pypyjs-release/pypyjs-release/lib/modules";
/// collectstatic's output directory (`STATIC_ROOT`; ignored by `.gitignore`).
pub const STATIC_ROOT: &str = "binarycrate/public/static";
/// The pinned, hash-checked requirements.
pub const REQUIREMENTS: &str = "requirements.txt";
/// The file `develop`'s one commit changes, and the text that commit appends to it.
pub const DEVELOP_CHANGE: &str = "binarycrate/dashboard/static/dashboard/app.css";
/// See [`DEVELOP_CHANGE`].
pub const DEVELOP_CHANGE_TEXT: &str =
    "\n/* develop: make the build number stand out. */\n.build {\n  font-weight: bold;\n}\n";
/// The settings module collectstatic runs with (no database, no secrets).
pub const BUILD_SETTINGS: &str = "binarycrate.settings.build";
/// The environment variable `production_template.py` reads the shared directory from (its
/// sqlite database is `<shared>/db.sqlite3`).
pub const SHARED_DIR_ENV: &str = "BINARYCRATE_SHARED_DIR";

/// The identity every commit and tag is made with (also set as the repositories' local
/// `user.name`/`user.email`, so tools that commit there, such as `builder prepare`, have one).
pub const AUTHOR_NAME: &str = "Example Developer";
/// See [`AUTHOR_NAME`].
pub const AUTHOR_EMAIL: &str = "developer@example.invalid";
/// Commit time of the submodules' commits, seconds since the epoch (2024-01-01 00:00 UTC).
pub const SUBMODULE_TIME: i64 = 1_704_067_200;
/// Commit time of `master` / [`TAG`] (2024-01-02 03:04:05 UTC): the release's source date.
pub const TAG_TIME: i64 = 1_704_164_645;
/// Commit time of `develop`'s commit (2024-01-03 00:00 UTC).
pub const DEVELOP_TIME: i64 = 1_704_240_000;
/// The date [`git`] and [`git_command`] give new commits and tags (2024-01-04 00:00 UTC).
pub const DEFAULT_TIME: i64 = 1_704_326_400;

/// `-c` options of every git command: no prompts or hooks from elsewhere, `master` as the first
/// branch, and local paths allowed as submodule URLs.
const GIT_CONFIG: &[&str] = &[
    "init.defaultBranch=master",
    "protocol.file.allow=always",
    "core.hooksPath=/dev/null",
    "core.autocrlf=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "advice.detachedHead=false",
    "safe.directory=*",
];

/// Files the fixture copy skips (what Python leaves behind when the fixture is used in place).
fn skipped(name: &OsStr) -> bool {
    name == "__pycache__" || name.to_str().is_some_and(|n| n.ends_with(".pyc"))
}

/// The example application's superproject files: `tests/fixtures/example-app`.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("example-app")
}

/// The files of submodule `name`'s repository: `tests/fixtures/example-app-submodules/<name>`.
pub fn submodule_fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("example-app-submodules")
        .join(name)
}

/// The wheelhouse `scripts/python-env` fills with the wheels of the example application's
/// `requirements.txt` (`<test venv>/wheelhouse`), for `pip install --no-index --find-links`.
/// Pins, in `work`'s `requirements.txt`, the wheelhouse's other sqlparse (not the 0.6.1 the
/// example pins; `scripts/python-env` downloads it for the tests that change a dependency),
/// hash-checked like the rest. Returns its version.
pub fn pin_other_sqlparse(work: &Path) -> String {
    let wheel = fs::read_dir(wheelhouse_dir())
        .expect("the wheelhouse (scripts/python-env)")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("sqlparse-") && !name.starts_with("sqlparse-0.6.1-")
        })
        .expect("the wheelhouse holds a second sqlparse (scripts/python-env)");
    let version = wheel
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .split('-')
        .nth(1)
        .expect("a wheel's name has its version second")
        .to_owned();
    let sha = common::hash::Sha256Hash::of(&fs::read(&wheel).expect("the wheel")).to_hex();
    let req = work.join("requirements.txt");
    let mut out = String::new();
    let mut skip = false;
    for line in fs::read_to_string(&req).expect("requirements.txt").lines() {
        if line.starts_with("sqlparse==") {
            out.push_str(&format!(
                "sqlparse=={version} \\\n    --hash=sha256:{sha}\n"
            ));
            skip = true;
            continue;
        }
        if skip && line.trim_start().starts_with("--hash") {
            continue;
        }
        skip = false;
        out.push_str(line);
        out.push('\n');
    }
    fs::write(&req, out).expect("write requirements.txt");
    version
}

pub fn wheelhouse_dir() -> PathBuf {
    crate::moto::venv_dir().join("wheelhouse")
}

/// Why the wheelhouse cannot be used, if it cannot (for [`crate::ready`]).
pub fn wheelhouse_missing() -> Option<String> {
    let dir = wheelhouse_dir();
    (!dir.is_dir()).then(|| {
        format!(
            "no wheelhouse at `{}`: run `bash scripts/python-env`",
            dir.display()
        )
    })
}

/// The example application's repositories (see the module documentation).
#[derive(Debug, Clone)]
pub struct ExampleRepo {
    /// The directory everything was created in.
    pub root: PathBuf,
    /// The superproject's working copy (`root/work`), on `develop`, clean.
    pub work: PathBuf,
    /// The bare repository that is the working copy's `origin` (`root/origin.git`).
    pub remote: PathBuf,
    /// Each submodule's repository (normal repositories), by submodule name.
    pub submodule_remotes: BTreeMap<String, PathBuf>,
}

impl ExampleRepo {
    /// `git rev-parse --verify <rev>^{object}` in the working copy (a full object id).
    pub fn rev_parse(&self, rev: &str) -> anyhow::Result<String> {
        Ok(git(
            &self.work,
            &["rev-parse", "--verify", &format!("{rev}^{{object}}")],
        )?
        .trim()
        .to_owned())
    }

    /// The commit a revision names in the working copy (tags peeled).
    pub fn commit(&self, rev: &str) -> anyhow::Result<String> {
        self.rev_parse(&format!("{rev}^{{commit}}"))
    }
}

/// Creates the example application's repositories in `dir` (which must be empty or absent).
pub fn create(dir: &Path) -> anyhow::Result<ExampleRepo> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty", dir.display());
    }
    let root = dir.to_owned();
    let work = root.join("work");
    let remote = root.join("origin.git");

    // The submodules' repositories: one commit each on master.
    let mut submodule_remotes = BTreeMap::new();
    for name in SUBMODULES {
        let repo = root.join(name);
        git_at(&root, &["init", "--quiet", name], SUBMODULE_TIME)?;
        set_identity(&repo)?;
        copy_tree(&submodule_fixture_dir(name), &repo)?;
        git_at(&repo, &["add", "--all"], SUBMODULE_TIME)?;
        git_at(
            &repo,
            &[
                "commit",
                "--quiet",
                "-m",
                &format!("{name}: initial import"),
            ],
            SUBMODULE_TIME,
        )?;
        submodule_remotes.insert(name.to_owned(), repo);
    }

    // The superproject: origin first, so the relative submodule URLs resolve against it.
    git_at(
        &root,
        &["init", "--quiet", "--bare", "origin.git"],
        TAG_TIME,
    )?;
    git_at(&root, &["init", "--quiet", "work"], TAG_TIME)?;
    set_identity(&work)?;
    git_at(
        &work,
        &["remote", "add", "origin", path_str(&remote)?],
        TAG_TIME,
    )?;
    copy_tree(&fixture_dir(), &work)?;
    for name in SUBMODULES {
        git_at(
            &work,
            &["submodule", "add", "--quiet", &format!("../{name}"), name],
            TAG_TIME,
        )?;
    }
    git_at(&work, &["add", "--all"], TAG_TIME)?;
    // Whatever the fixture's .gitignore ignores (left there by someone using it in place).
    git_at(&work, &["clean", "-ffdXq"], TAG_TIME)?;
    git_at(
        &work,
        &[
            "commit",
            "--quiet",
            "-m",
            "BinaryCrate: initial import (build 000001)",
        ],
        TAG_TIME,
    )?;
    git_at(
        &work,
        &["tag", "-a", TAG, "-m", &format!("Build {BUILD_NUMBER}")],
        TAG_TIME,
    )?;

    // develop: one commit ahead of master.
    git_at(
        &work,
        &["checkout", "--quiet", "-b", "develop"],
        DEVELOP_TIME,
    )?;
    let change = work.join(DEVELOP_CHANGE);
    let mut css =
        fs::read_to_string(&change).with_context(|| format!("cannot read {}", change.display()))?;
    css.push_str(DEVELOP_CHANGE_TEXT);
    fs::write(&change, css)?;
    git_at(
        &work,
        &[
            "commit",
            "--quiet",
            "-am",
            "Dashboard: make the build number stand out",
        ],
        DEVELOP_TIME,
    )?;

    git_at(
        &work,
        &[
            "push",
            "--quiet",
            "--set-upstream",
            "origin",
            "master",
            "develop",
        ],
        DEVELOP_TIME,
    )?;
    git_at(
        &work,
        &["push", "--quiet", "origin", &format!("refs/tags/{TAG}")],
        DEVELOP_TIME,
    )?;
    // The remote-tracking view a fresh clone would have.
    git_at(
        &work,
        &["remote", "set-head", "origin", "master"],
        DEVELOP_TIME,
    )?;

    let status = git(&work, &["status", "--porcelain", "--ignored"])?;
    if !status.is_empty() {
        bail!("the example working copy is not clean after creation:\n{status}");
    }
    Ok(ExampleRepo {
        root,
        work,
        remote,
        submodule_remotes,
    })
}

/// `tests/fixtures/second-app`: a Django app unlike BinaryCrate in every way that matters.
pub fn second_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("second-app")
}

/// The second example application's repositories in `dir`: its working copy on `develop`
/// (one commit, also on `master`), pushed to a bare `origin`; no tag, no `deploy.toml`, no
/// build-number file — what `builder init` starts from.
pub fn create_second(dir: &Path) -> anyhow::Result<ExampleRepo> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let root = dir.to_owned();
    let work = root.join("work");
    let remote = root.join("origin.git");
    git_at(
        &root,
        &["init", "--quiet", "--bare", "origin.git"],
        TAG_TIME,
    )?;
    git_at(&root, &["init", "--quiet", "work"], TAG_TIME)?;
    set_identity(&work)?;
    git_at(
        &work,
        &["remote", "add", "origin", path_str(&remote)?],
        TAG_TIME,
    )?;
    copy_tree(&second_fixture_dir(), &work)?;
    git_at(&work, &["add", "--all"], TAG_TIME)?;
    git_at(&work, &["clean", "-ffdXq"], TAG_TIME)?;
    git_at(
        &work,
        &["commit", "--quiet", "-m", "Shop: initial import"],
        TAG_TIME,
    )?;
    git_at(&work, &["checkout", "--quiet", "-b", "develop"], TAG_TIME)?;
    git_at(
        &work,
        &[
            "push",
            "--quiet",
            "--set-upstream",
            "origin",
            "master",
            "develop",
        ],
        TAG_TIME,
    )?;
    Ok(ExampleRepo {
        root,
        work,
        remote,
        submodule_remotes: BTreeMap::new(),
    })
}

/// [`create`] in a new temporary directory, removed when the returned guard drops.
pub fn create_temp() -> anyhow::Result<(tempfile::TempDir, ExampleRepo)> {
    let tmp = tempfile::Builder::new().prefix("example-app-").tempdir()?;
    let repo = create(tmp.path())?;
    Ok((tmp, repo))
}

/// A `git` command in `dir` with the safe environment: every inherited `GIT_*` variable
/// removed, no system or global configuration, no prompts, `C` locale, the fixed identity and
/// the fixed date [`DEFAULT_TIME`], and the `-c` options `init.defaultBranch=master`,
/// `protocol.file.allow=always` (local submodule URLs), no hooks, no signing.
pub fn git_command(dir: &Path) -> Command {
    git_command_at(dir, DEFAULT_TIME)
}

fn git_command_at(dir: &Path, time: i64) -> Command {
    let mut cmd = Command::new("git");
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("GIT_")) {
            cmd.env_remove(key);
        }
    }
    let date = format!("@{time} +0000");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", AUTHOR_NAME)
        .env("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL)
        .env("GIT_COMMITTER_NAME", AUTHOR_NAME)
        .env("GIT_COMMITTER_EMAIL", AUTHOR_EMAIL)
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .env("LC_ALL", "C")
        .env("LANG", "C");
    for option in GIT_CONFIG {
        cmd.args(["-c", option]);
    }
    cmd
}

/// Runs `git ARGS` in `dir` with [`git_command`]'s environment; returns its standard output,
/// or an error with its standard error when it fails.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    git_at(dir, args, DEFAULT_TIME)
}

fn git_at(dir: &Path, args: &[&str], time: i64) -> anyhow::Result<String> {
    run(git_command_at(dir, time).args(args), dir, args)
}

fn run(cmd: &mut Command, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| {
        format!(
            "cannot run `git {}` in {} (is git installed?)",
            args.join(" "),
            dir.display()
        )
    })?;
    if !out.status.success() {
        bail!(
            "`git {}` in {} failed ({}):\n{}{}",
            args.join(" "),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        );
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`git {}` printed non-UTF-8", args.join(" ")))
}

fn set_identity(repo: &Path) -> anyhow::Result<()> {
    git(repo, &["config", "user.name", AUTHOR_NAME])?;
    git(repo, &["config", "user.email", AUTHOR_EMAIL])?;
    Ok(())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("path is not UTF-8: {}", path.display()))
}

/// Copies a directory tree (regular files with their permissions, and directories), skipping
/// Python caches.
fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dst)?;
    let mut entries = fs::read_dir(src)
        .with_context(|| format!("cannot read {}", src.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if skipped(&name) {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(&name));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else if kind.is_file() {
            fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        } else {
            bail!("unexpected file type in the fixture: {}", from.display());
        }
    }
    Ok(())
}

/// Names, under the git directory, of the files that mark an operation in progress or a lock.
const OPERATION_FILES: &[&str] = &[
    "MERGE_HEAD",
    "MERGE_MSG",
    "MERGE_MODE",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "BISECT_LOG",
    "rebase-merge",
    "rebase-apply",
    "sequencer",
    "index.lock",
    "HEAD.lock",
    "config.lock",
    "packed-refs.lock",
];

/// A snapshot of everything about a repository a command could change, for asserting that it
/// is exactly unchanged: HEAD, every ref (with upstreams and the objects tags point to), the
/// local configuration, operations in progress (merge, rebase, …) and lock files, and for a
/// working copy also the index, `git status` (ignored files included), the submodules' commits
/// and every work-tree file's path, mode and BLAKE3 (`.git` excepted; modification times are
/// not part of it). Reflogs and `ORIG_HEAD` are not.
///
/// Read-only (`GIT_OPTIONAL_LOCKS=0`: `git status` does not refresh the index). Panics with
/// git's message when `dir` is not a repository's top level.
pub fn state(dir: &Path) -> String {
    try_state(dir)
        .unwrap_or_else(|e| panic!("cannot snapshot the repository {}: {e:#}", dir.display()))
}

fn try_state(dir: &Path) -> anyhow::Result<String> {
    let q = |args: &[&str]| -> anyhow::Result<String> {
        run(
            git_command(dir).env("GIT_OPTIONAL_LOCKS", "0").args(args),
            dir,
            args,
        )
    };
    let mut out = String::new();
    let bare = q(&["rev-parse", "--is-bare-repository"])?.trim() == "true";
    if !bare {
        let top = q(&["rev-parse", "--show-toplevel"])?;
        if fs::canonicalize(top.trim())? != fs::canonicalize(dir)? {
            bail!(
                "not the top level of a working copy (that is {})",
                top.trim()
            );
        }
    }
    let head = q(&["symbolic-ref", "--quiet", "HEAD"]).unwrap_or_else(|_| "(detached)".into());
    let head_id =
        q(&["rev-parse", "--verify", "--quiet", "HEAD"]).unwrap_or_else(|_| "(unborn)".into());
    writeln!(out, "## HEAD\n{} {}", head.trim(), head_id.trim())?;
    out.push_str("## refs\n");
    out.push_str(&q(&[
        "for-each-ref",
        "--format=%(refname) %(objecttype) %(objectname) %(*objectname) %(symref) %(upstream)",
    ])?);
    out.push_str("## config\n");
    out.push_str(&q(&["config", "--local", "--list"])?);
    out.push_str("## operations\n");
    for name in OPERATION_FILES {
        let path = q(&["rev-parse", "--git-path", name])?;
        let path = Path::new(path.trim());
        let path = if path.is_absolute() {
            path.to_owned()
        } else {
            dir.join(path)
        };
        if fs::symlink_metadata(&path).is_ok() {
            writeln!(out, "{name}")?;
        }
    }
    if bare {
        return Ok(out);
    }
    out.push_str("## index\n");
    out.push_str(&q(&["ls-files", "--stage"])?);
    out.push_str("## status\n");
    out.push_str(&q(&[
        "status",
        "--porcelain=v1",
        "--ignored=matching",
        "--untracked-files=all",
    ])?);
    out.push_str("## submodules\n");
    out.push_str(&q(&["submodule", "status", "--recursive"])?);
    out.push_str("## files\n");
    hash_tree(dir, Path::new(""), &mut out)?;
    Ok(out)
}

/// One line per entry below `dir` (sorted, `.git` skipped): kind, mode, path, content hash.
fn hash_tree(root: &Path, rel: &Path, out: &mut String) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let mut entries = fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name() == ".git" {
            continue;
        }
        let rel = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(entry.path())?;
        let mode = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(entry.path())?;
            writeln!(out, "link {} -> {}", rel.display(), target.display())?;
        } else if kind.is_dir() {
            writeln!(out, "dir {mode:04o} {}", rel.display())?;
            hash_tree(root, &rel, out)?;
        } else if kind.is_file() {
            let data =
                fs::read(entry.path()).with_context(|| format!("cannot read {}", rel.display()))?;
            writeln!(
                out,
                "file {mode:04o} {} {}",
                rel.display(),
                blake3::hash(&data).to_hex()
            )?;
        } else {
            writeln!(out, "other {mode:04o} {}", rel.display())?;
        }
    }
    Ok(())
}

impl ExampleRepo {
    /// Applies `change` to the working copy, sets `BUILD_NUMBER = 'number'` in `build_number.py`,
    /// commits everything (ignored files too: a test may commit what the app's `.gitignore`
    /// keeps out, like a secret) and creates the annotated tag `Build<number>` — a tag made by
    /// hand, not by `builder prepare`.
    pub fn commit_and_tag(&self, number: &str, change: impl FnOnce(&Path)) -> anyhow::Result<()> {
        change(&self.work);
        let bn = self.work.join(BUILD_NUMBER_FILE);
        let text: String = std::fs::read_to_string(&bn)?
            .lines()
            .map(|l| {
                if l.starts_with("BUILD_NUMBER") {
                    format!("BUILD_NUMBER = '{number}'\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&bn, text)?;
        git(&self.work, &["add", "-A", "-f"])?;
        git(
            &self.work,
            &["commit", "-q", "-m", &format!("test build {number}")],
        )?;
        git(
            &self.work,
            &["tag", "-a", &format!("Build{number}"), "-m", "test"],
        )?;
        Ok(())
    }
}

/// A server's `shared/production.py` as an operator would write it from this repository's
/// template: a secret key, loopback hosts, and the SQLite database in `<root>/shared/`.
pub fn production_settings(repo: &ExampleRepo, root: &Path) -> anyhow::Result<String> {
    let template = std::fs::read_to_string(repo.work.join(PRODUCTION_TEMPLATE))?;
    Ok(format!(
        "{template}\nSECRET_KEY = 'test-secret-key-test-secret-key-test-secret-key'\nALLOWED_HOSTS = ['127.0.0.1', 'localhost']\nDATABASES['default']['NAME'] = {:?}\n",
        root.join("shared/db.sqlite3").display().to_string()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    #[test]
    fn example_repositories_have_the_expected_history() {
        let (_tmp, repo) = create_temp().unwrap();
        let g = |args: &[&str]| git(&repo.work, args).unwrap();

        // Branches and tags, locally and on origin.
        assert_eq!(g(&["symbolic-ref", "--short", "HEAD"]).trim(), "develop");
        assert_eq!(lines(&g(&["tag", "--list"])), [TAG]);
        assert_eq!(g(&["cat-file", "-t", TAG]).trim(), "tag", "annotated");
        let master = repo.commit("master").unwrap();
        let develop = repo.commit("develop").unwrap();
        assert_eq!(repo.commit(TAG).unwrap(), master);
        assert_eq!(repo.commit("develop~1").unwrap(), master);
        assert_eq!(g(&["rev-list", "--count", "master"]).trim(), "1");
        assert_eq!(
            lines(&g(&["diff", "--name-only", "master", "develop"])),
            [DEVELOP_CHANGE]
        );
        assert_eq!(
            g(&["log", "-1", "--format=%ct", TAG]).trim(),
            TAG_TIME.to_string()
        );
        assert_eq!(
            g(&["rev-parse", "--abbrev-ref", "master@{upstream}"]).trim(),
            "origin/master"
        );
        assert_eq!(
            g(&["rev-parse", "--abbrev-ref", "develop@{upstream}"]).trim(),
            "origin/develop"
        );
        let remote = git(
            &repo.remote,
            &[
                "for-each-ref",
                "--format=%(refname) %(objectname) %(*objectname)",
            ],
        )
        .unwrap();
        let tag_object = repo.rev_parse(TAG).unwrap();
        assert_eq!(
            lines(&remote),
            [
                format!("refs/heads/develop {develop} "),
                format!("refs/heads/master {master} "),
                format!("refs/tags/{TAG} {tag_object} {master}"),
            ]
        );
        assert_eq!(
            git(&repo.remote, &["symbolic-ref", "HEAD"]).unwrap().trim(),
            "refs/heads/master"
        );

        // The tagged tree: the fixture with the build number, no server-only or built files.
        let at_tag = |path: &str| g(&["show", &format!("{TAG}:{path}")]);
        assert!(at_tag(BUILD_NUMBER_FILE).contains(&format!("BUILD_NUMBER = '{BUILD_NUMBER}'\n")));
        assert_eq!(at_tag(VERSION_HASH_FILE), "VERSION_HASH = 'development'\n");
        let files = g(&["ls-tree", "-r", "--name-only", TAG]);
        for path in [
            PRODUCTION_TEMPLATE,
            MANAGE_PY,
            MODULE_BUNDLER,
            REQUIREMENTS,
            "deploy.toml",
            ".gitignore",
        ] {
            assert!(files.lines().any(|f| f == path), "{path} is committed");
        }
        for path in [PRODUCTION_SETTINGS, FRONT_END_BUILD_NUMBER, STATIC_ROOT] {
            assert!(
                !files.lines().any(|f| f.starts_with(path)),
                "{path} is not committed"
            );
        }
        assert!(!files.contains("__pycache__") && !files.contains(".pyc"));
        let modes = g(&[
            "ls-tree",
            "-r",
            TAG,
            MANAGE_PY,
            MODULE_BUNDLER,
            BUILD_NUMBER_FILE,
        ]);
        assert_eq!(
            modes.lines().map(|l| &l[..6]).collect::<Vec<_>>(),
            ["100644", "100755", "100755"],
            "{modes}"
        );

        // Submodules: recorded as gitlinks with relative URLs, checked out at their commits.
        assert_eq!(
            at_tag(".gitmodules"),
            "[submodule \"cavorite\"]\n\tpath = cavorite\n\turl = ../cavorite\n\
             [submodule \"historygraph\"]\n\tpath = historygraph\n\turl = ../historygraph\n"
        );
        for name in SUBMODULES {
            let recorded = g(&["ls-tree", TAG, name]);
            let sub = &repo.submodule_remotes[name];
            let sub_head = git(sub, &["rev-parse", "HEAD"]).unwrap();
            assert_eq!(
                recorded,
                format!("160000 commit {}\t{name}\n", sub_head.trim())
            );
            assert_eq!(
                git(&repo.work.join(name), &["rev-parse", "HEAD"]).unwrap(),
                sub_head
            );
            assert!(repo
                .work
                .join(name)
                .join(name)
                .join("__init__.py")
                .is_file());
            assert_eq!(sub, &repo.root.join(name));
        }
        let status = g(&["submodule", "status"]);
        assert!(status.lines().all(|l| l.starts_with(' ')), "{status}");

        // Clean, with an identity for tools that commit there.
        assert_eq!(g(&["status", "--porcelain", "--ignored"]), "");
        assert_eq!(g(&["config", "user.email"]).trim(), AUTHOR_EMAIL);
    }

    #[test]
    fn example_commit_ids_do_not_depend_on_the_directory() {
        let (_a, one) = create_temp().unwrap();
        let (_b, two) = create_temp().unwrap();
        for rev in ["master", "develop", TAG] {
            assert_eq!(
                one.rev_parse(rev).unwrap(),
                two.rev_parse(rev).unwrap(),
                "{rev}"
            );
        }
    }

    #[test]
    fn example_state_is_stable_and_sees_changes() {
        let (_tmp, repo) = create_temp().unwrap();
        let work = &repo.work;
        let before = state(work);
        assert_eq!(
            state(work),
            before,
            "two snapshots of an unchanged repository"
        );
        assert!(before.contains("refs/tags/Build000001 tag "), "{before}");
        assert!(
            before.contains(&format!("file 0644 {BUILD_NUMBER_FILE} ")),
            "{before}"
        );
        assert!(!before.contains(".git/"), "{before}");

        // Content: a changed byte differs; restoring it (new mtime) is the same state again.
        let path = work.join(DEVELOP_CHANGE);
        let original = fs::read(&path).unwrap();
        fs::write(&path, [&original[..], b" "].concat()).unwrap();
        let changed = state(work);
        assert_ne!(changed, before);
        assert!(
            changed.contains(&format!(" M {DEVELOP_CHANGE}")),
            "{changed}"
        );
        fs::write(&path, &original).unwrap();
        assert_eq!(state(work), before);

        // Mode, ignored files, files inside submodules, refs, config, operations in progress.
        let manage = work.join(MANAGE_PY);
        fs::set_permissions(&manage, fs::Permissions::from_mode(0o644)).unwrap();
        assert_ne!(state(work), before);
        fs::set_permissions(&manage, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(state(work), before);

        let ignored = work.join(PRODUCTION_SETTINGS);
        fs::write(&ignored, "SECRET_KEY = 'x'\n").unwrap();
        assert!(state(work).contains(&format!("!! {PRODUCTION_SETTINGS}")));
        fs::remove_file(&ignored).unwrap();
        assert_eq!(state(work), before);

        let inner = work.join("cavorite/cavorite/html.py");
        let original = fs::read(&inner).unwrap();
        fs::write(&inner, b"# changed\n").unwrap();
        assert_ne!(state(work), before);
        fs::write(&inner, &original).unwrap();
        assert_eq!(state(work), before);

        git(work, &["branch", "scratch"]).unwrap();
        assert_ne!(state(work), before);
        git(work, &["branch", "-D", "scratch"]).unwrap();
        assert_eq!(state(work), before);

        git(work, &["config", "example.key", "1"]).unwrap();
        assert_ne!(state(work), before);
        git(work, &["config", "--unset", "example.key"]).unwrap();
        assert_eq!(state(work), before);

        let merge_head = work.join(".git/MERGE_HEAD");
        fs::write(&merge_head, repo.commit("master").unwrap() + "\n").unwrap();
        assert!(state(work).contains("## operations\nMERGE_HEAD\n"));
        fs::remove_file(&merge_head).unwrap();
        assert_eq!(state(work), before);

        // The bare origin, too.
        let remote_before = state(&repo.remote);
        assert_eq!(state(&repo.remote), remote_before);
        git(
            work,
            &["push", "--quiet", "origin", "master:refs/heads/other"],
        )
        .unwrap();
        assert_ne!(state(&repo.remote), remote_before);
    }

    #[test]
    fn example_git_errors_carry_gits_message() {
        let (_tmp, repo) = create_temp().unwrap();
        let top = git(&repo.work, &["rev-parse", "--show-toplevel"]).unwrap();
        assert_eq!(
            fs::canonicalize(top.trim()).unwrap(),
            fs::canonicalize(&repo.work).unwrap()
        );
        let err = git(&repo.work, &["rev-parse", "--verify", "no-such-ref"]).unwrap_err();
        assert!(
            format!("{err:#}").contains("fatal: Needed a single revision"),
            "{err:#}"
        );
        assert!(create(&repo.root).is_err(), "refuses a non-empty directory");
    }

    /// The test virtualenv's Python when it has Django (`scripts/python-env`), else `None`
    /// (a failure under CI).
    fn venv_python_with_django() -> Option<PathBuf> {
        let venv = crate::moto::venv_dir();
        let python = venv.join("bin").join("python");
        let ok = Command::new(&python)
            .args(["-c", "import django"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
        let why = format!(
            "no Django in the test virtualenv `{}`: run `bash scripts/python-env`",
            venv.display()
        );
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("skipping: {why}");
        None
    }

    fn python(python: &Path, dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
        let mut cmd = Command::new(python);
        cmd.current_dir(dir)
            .args(args)
            .env_remove("DJANGO_SETTINGS_MODULE")
            .env_remove("PYTHONPATH")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "python {args:?} failed:\n{text}");
        text
    }

    /// The manual procedure's build steps, then collectstatic, migrate and a request, as a release would.
    #[test]
    fn example_app_builds_and_serves_its_build_number() {
        let Some(py) = venv_python_with_django() else {
            return;
        };
        let (tmp, repo) = create_temp().unwrap();
        let work = &repo.work;
        let commit = repo.commit(TAG).unwrap();
        git(work, &["checkout", "--quiet", TAG]).unwrap();

        fs::copy(
            work.join(BUILD_NUMBER_FILE),
            work.join(FRONT_END_BUILD_NUMBER),
        )
        .unwrap();
        fs::write(
            work.join(VERSION_HASH_FILE),
            format!("VERSION_HASH = '{commit}'\n"),
        )
        .unwrap();
        for path in [
            "cavorite/cavorite/",
            "front-end/binarycrate/",
            "historygraph/historygraph/",
        ] {
            python(
                &py,
                work,
                &[MODULE_BUNDLER, "add", &format!("{BUNDLE_DIR}/"), path],
                &[],
            );
        }
        for module in ["cavorite", "binarycrate", "historygraph"] {
            python(
                &py,
                work,
                &[MODULE_BUNDLER, "preload", &format!("{BUNDLE_DIR}/"), module],
                &[],
            );
        }
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(work.join(BUNDLE_DIR).join("index.json")).unwrap())
                .unwrap();
        let preloaded = index["preload"]["binarycrate.build_number"]
            .as_str()
            .unwrap();
        assert!(preloaded.contains(&format!("BUILD_NUMBER = '{BUILD_NUMBER}'")));
        assert_eq!(
            index["modules"]["cavorite.html"]["file"],
            "cavorite/html.py"
        );
        assert!(
            !work.join(BUNDLE_DIR).join("cavorite").exists(),
            "preloaded files are deleted"
        );
        assert!(work.join(BUNDLE_DIR).join("os.py").is_file());

        let build = [("DJANGO_SETTINGS_MODULE", Path::new(BUILD_SETTINGS))];
        python(&py, work, &[MANAGE_PY, "check"], &build);
        python(
            &py,
            work,
            &[MANAGE_PY, "collectstatic", "--noinput"],
            &build,
        );
        python(
            &py,
            work,
            &[MANAGE_PY, "makemigrations", "--check", "--dry-run"],
            &build,
        );
        let static_root = work.join(STATIC_ROOT);
        for file in [
            "pypyjs-release/lib/modules/index.json",
            "pypyjs-release/lib/pypyjs.js",
            "dashboard/app.css",
        ] {
            assert!(static_root.join(file).is_file(), "{file} collected");
        }

        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::copy(
            work.join(PRODUCTION_TEMPLATE),
            work.join(PRODUCTION_SETTINGS),
        )
        .unwrap();
        let prod = [(SHARED_DIR_ENV, shared.as_path())];
        python(&py, work, &[MANAGE_PY, "check"], &prod);
        python(&py, work, &[MANAGE_PY, "migrate", "--noinput"], &prod);
        assert!(shared.join("db.sqlite3").is_file());
        let page = python(
            &py,
            &work.join("binarycrate"),
            &[
                "-c",
                "import django; django.setup()\n\
                 from django.test import Client\n\
                 r = Client().get('/')\n\
                 assert r.status_code == 200, r.status_code\n\
                 print(r.content.decode())",
            ],
            &[
                (SHARED_DIR_ENV, shared.as_path()),
                (
                    "DJANGO_SETTINGS_MODULE",
                    Path::new("binarycrate.settings.production"),
                ),
            ],
        );
        assert!(
            page.contains(&format!("<!-- Build number = {BUILD_NUMBER} -->")),
            "{page}"
        );
        assert!(
            page.contains(&format!("/static/{commit}/dashboard/app.css")),
            "{page}"
        );

        // The front end prints the same build number.
        let banner = python(
            &py,
            &work.join("front-end"),
            &["-c", "from binarycrate.frontend import main; main()"],
            &[],
        );
        assert_eq!(banner, format!("Build number = {BUILD_NUMBER}\n"));
    }

    /// requirements.txt installs offline and hash-checked from scripts/python-env's wheelhouse.
    #[test]
    fn example_requirements_install_from_the_wheelhouse() {
        let Some(py) = venv_python_with_django() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let venv = tmp.path().join("venv");
        let dir = tmp.path();
        python(
            &py,
            dir,
            &["-m", "venv", "--without-pip", venv.to_str().unwrap()],
            &[],
        );
        let requirements = fixture_dir().join(REQUIREMENTS);
        let wheelhouse = wheelhouse_dir();
        python(
            &py,
            dir,
            &[
                "-m",
                "pip",
                "--disable-pip-version-check",
                "--python",
                venv.join("bin/python").to_str().unwrap(),
                "install",
                "--quiet",
                "--require-hashes",
                "--no-index",
                "--find-links",
                wheelhouse.to_str().unwrap(),
                "-r",
                requirements.to_str().unwrap(),
            ],
            &[],
        );
        let version = python(
            &venv.join("bin/python"),
            dir,
            &["-c", "import django; print(django.get_version())"],
            &[],
        );
        let pinned = fs::read_to_string(&requirements).unwrap();
        assert!(
            pinned.contains(&format!("django=={}", version.trim())),
            "{version}"
        );
    }
}
