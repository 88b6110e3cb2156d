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

fn build_once() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = profile_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "builder", "-p", "installer"]);
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
