//! Running the server's commands (venv, pip, migrate, reload): output goes to stderr as it
//! happens, so `--json` keeps stdout for the report and SSM shows what ran.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::lock::DeployLock;

/// Runs `argv` in `dir` with extra environment; an error names the command and its status.
pub fn run(argv: &[String], dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<()> {
    run_with(argv, dir, env, Stdio::null(), None)
}

/// Like [`run`] for a command that changes a release: it holds the deployment lock while it
/// runs (an orphan left by a killed installer keeps it), and while it runs each tenth of a
/// second is a hit of the crash tests' fault point `point`.
pub fn run_locked(
    argv: &[String],
    dir: &Path,
    env: &[(&str, &str)],
    lock: &DeployLock,
    point: &str,
) -> anyhow::Result<()> {
    run_with(argv, dir, env, lock.for_child()?, Some(point))
}

fn run_with(
    argv: &[String],
    dir: &Path,
    env: &[(&str, &str)],
    stdin: Stdio,
    point: Option<&str>,
) -> anyhow::Result<()> {
    let (program, args) = argv.split_first().context("empty command")?;
    let program = &resolve(program, dir);
    eprintln!("    $ {}", argv.join(" "));
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate stderr")?;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(stdin)
        .stdout(Stdio::from(stderr))
        .spawn()
        .with_context(|| format!("cannot run `{program}`: is it installed?"))?;
    let status = match point {
        None => child.wait(),
        Some(point) => loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => {
                    common::fault::point(point);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => break Err(e),
            }
        },
    }
    .with_context(|| format!("cannot wait for `{program}`"))?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); its output is above",
            argv.join(" ")
        );
    }
    Ok(())
}

/// Runs a command and returns its standard output (for questions, not changes).
pub fn output(argv: &[String], dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<String> {
    let (program, args) = argv.split_first().context("empty command")?;
    let program = &resolve(program, dir);
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{program}`"))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `venv/bin/python` means the one in `dir` (where the command runs), not in our own cwd.
fn resolve(program: &str, dir: &Path) -> String {
    if program.contains('/') && !program.starts_with('/') {
        dir.join(program).display().to_string()
    } else {
        program.to_owned()
    }
}

/// Words from string slices, for building argv.
pub fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}
