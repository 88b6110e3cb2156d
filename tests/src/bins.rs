//! Locates the `builder` and `installer` binaries for tests, building them once if needed.
//!
//! Cargo only hands `CARGO_BIN_EXE_*` to a binary's own package, and these tests live in a
//! separate crate, so they build the workspace's binaries themselves with the same profile.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The target directory's profile folder this test executable lives in (`target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/all-HASH -> target/debug
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps layout")
        .to_owned()
}

/// The feature the test binaries are built with (see `common::fault`).
pub const FAULT_FEATURE: &str = "installer/fault-injection";

fn build_once() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = profile_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // With the crash tests' fault-injection hook (`common::fault`), which release builds
        // never have; `scripts/test` builds with the same feature so this is a no-op there.
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "builder",
            "-p",
            "installer",
            "--features",
            FAULT_FEATURE,
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the binaries");
        assert!(status.success(), "building builder and installer failed");
        dir
    })
}

/// Path of the `builder` binary.
pub fn builder() -> PathBuf {
    build_once().join("builder")
}

/// Path of the `installer` binary.
pub fn installer() -> PathBuf {
    build_once().join("installer")
}

/// `builder` run in `dir` with pip pointed at the test wheelhouse, so packaging is offline and
/// fast (see `scripts/python-env`).
pub fn builder_offline(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(builder());
    cmd.current_dir(dir)
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", crate::example::wheelhouse_dir())
        .env_remove("PIP_INDEX_URL");
    cmd
}

/// Whether the Python side the packaging tests need is installed. Outside CI a missing one
/// skips the test with a printed reason; under CI it is a failure.
pub fn have_wheelhouse() -> bool {
    crate::ready(crate::example::wheelhouse_missing())
}
