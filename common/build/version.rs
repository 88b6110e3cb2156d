// Build script shared by the `builder` and `installer` binaries (each crate's `build.rs`
// includes this file): what their `--version` says beyond the crate version.
//
// Sets two variables for the crate's compilation:
// * `BINARYCRATE_VERSION_COMMIT`: `git rev-parse --short HEAD` of the checkout being built, with
//   `-dirty` when tracked files differ from it; `$BINARYCRATE_BUILD_COMMIT` when set (builds
//   from an exported tree); `unknown` outside a git checkout or without git. Never fails the
//   build.
// * `BINARYCRATE_VERSION_GLIBC`: `glibc >= X.Y`, the oldest glibc the binary runs on. A build
//   cannot tell which glibc the linker targets (`cargo zigbuild --target …gnu.2.23` looks like a
//   native build from here), so the dist script says it in `$BINARYCRATE_GLIBC_FLOOR`; without
//   it a native build reports the build machine's glibc, which is what it links against (an
//   upper bound of what it needs). Non-glibc targets say `no glibc (<env>)`.

use std::path::{Path, PathBuf};
use std::process::Command;

const COMMIT_ENV: &str = "BINARYCRATE_BUILD_COMMIT";
const GLIBC_ENV: &str = "BINARYCRATE_GLIBC_FLOOR";

fn main() {
    println!("cargo:rerun-if-env-changed={COMMIT_ENV}");
    println!("cargo:rerun-if-env-changed={GLIBC_ENV}");
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // Whether the tree is dirty can change with any edit of the sources compiled into the
    // binary; watching them (and git's files below) keeps the answer current without
    // re-running on unrelated changes.
    for dir in [crate_dir.join("src"), crate_dir.join("../common/src")] {
        if dir.is_dir() {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
    let commit = commit(&crate_dir);
    let glibc = glibc();
    println!("cargo:rustc-env=BINARYCRATE_VERSION_COMMIT={commit}");
    println!("cargo:rustc-env=BINARYCRATE_VERSION_GLIBC={glibc}");
}

/// Runs git in `dir`; its trimmed standard output when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

/// Only characters that keep the version line one plain line.
fn plain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
}

fn commit(dir: &Path) -> String {
    if let Some(given) = std::env::var(COMMIT_ENV).ok().filter(|v| !v.is_empty()) {
        if !plain(&given) {
            panic!("{COMMIT_ENV}=`{}` is not a commit id: use letters, digits, `.`, `-`, `_` or `+` (e.g. `1a2b3c4`), or unset it", given.escape_debug());
        }
        return given;
    }
    // Re-run when HEAD moves (checkout, commit) or the index changes (add, reset): HEAD, the
    // branch it points to (loose or packed) and the index, wherever this checkout keeps them
    // (a worktree keeps HEAD and index apart from the shared refs).
    for what in ["HEAD", "index", "packed-refs"] {
        watch_git_path(dir, what);
    }
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch_git_path(dir, &branch);
    }
    let Some(short) = git(dir, &["rev-parse", "--short", "HEAD"]).filter(|s| plain(s)) else {
        return "unknown".into();
    };
    match git(dir, &["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if changes.is_empty() => short,
        Some(_) => format!("{short}-dirty"),
        None => short,
    }
}

fn watch_git_path(dir: &Path, name: &str) {
    if let Some(p) = git(dir, &["rev-parse", "--git-path", name]) {
        let path = dir.join(p);
        // A path that does not exist would make cargo re-run the script on every build.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// `X.Y` with both parts numbers.
fn is_glibc_version(v: &str) -> bool {
    let mut parts = v.split('.');
    let num = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    num(parts.next()) && num(parts.next()) && parts.next().is_none()
}

fn glibc() -> String {
    if let Some(given) = std::env::var(GLIBC_ENV).ok().filter(|v| !v.is_empty()) {
        if !is_glibc_version(&given) {
            panic!("{GLIBC_ENV}=`{}` is not a glibc version: expected `MAJOR.MINOR` such as `2.23`, or unset it", given.escape_debug());
        }
        return format!("glibc >= {given}");
    }
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_env != "gnu" {
        let env = if target_env.is_empty() {
            "none"
        } else {
            target_env.as_str()
        };
        return format!("no glibc ({env})");
    }
    if std::env::var("HOST").ok() != std::env::var("TARGET").ok() {
        return "glibc unknown".into();
    }
    host_glibc()
        .map(|v| format!("glibc >= {v}"))
        .unwrap_or_else(|| "glibc unknown".into())
}

/// The build machine's glibc: `getconf GNU_LIBC_VERSION` (`glibc 2.36`), else the last word of
/// the first line of `ldd --version` (`ldd (Debian GLIBC 2.36-9+deb12u14) 2.36`).
fn host_glibc() -> Option<String> {
    let run = |program: &str, arg: &str| -> Option<String> {
        let out = Command::new(program).arg(arg).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let from_getconf = run("getconf", "GNU_LIBC_VERSION")
        .and_then(|t| t.split_whitespace().nth(1).map(str::to_owned));
    let from_ldd = || {
        run("ldd", "--version").and_then(|t| {
            t.lines()
                .next()?
                .split_whitespace()
                .last()
                .map(str::to_owned)
        })
    };
    from_getconf
        .filter(|v| is_glibc_version(v))
        .or_else(|| from_ldd().filter(|v| is_glibc_version(v)))
}
