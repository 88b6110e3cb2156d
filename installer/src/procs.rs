//! Running the server's commands (venv, pip, migrate, reload): output goes to stderr as it
//! happens, so `--json` keeps stdout for the report and SSM shows what ran.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use common::error::FsError;

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
    // The release-changing commands (venv, pip, migrate) pass their stderr through a pipe whose
    // end is kept, to tell a full disk from other failures. Not the others: a reload command may
    // leave a daemon holding the pipe open, and waiting for its end would hang.
    let watch = point.is_some();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(stdin)
        .stdout(Stdio::from(stderr))
        .stderr(if watch {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .with_context(|| format!("cannot run `{program}`: is it installed?"))?;
    let tail = child
        .stderr
        .take()
        .map(|pipe| std::thread::spawn(move || forward_keeping_tail(pipe, std::io::stderr())));
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
    let tail = tail
        .map(|t| t.join().unwrap_or_default())
        .unwrap_or_default();
    if !status.success() {
        let failed = format!(
            "`{}` failed ({status}); its output is above",
            argv.join(" ")
        );
        if says_disk_full(&tail) {
            let enospc = std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
            return Err(anyhow::Error::new(FsError::new(
                "no space left while writing in",
                dir,
                enospc,
            ))
            .context(failed));
        }
        bail!(failed);
    }
    Ok(())
}

/// How much of a command's stderr is kept to look for a full disk.
const TAIL_BYTES: usize = 16 * 1024;

/// Copies `pipe` to `out` until it closes; returns its last [`TAIL_BYTES`].
fn forward_keeping_tail(mut pipe: impl Read, mut out: impl Write) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Our own stderr going away must not stop the child: keep draining.
                let _ = out.write_all(&buf[..n]);
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    tail
}

/// Whether a command's output reports ENOSPC: C's `strerror` text, or Python's `[Errno 28]`.
fn says_disk_full(output: &[u8]) -> bool {
    let text = String::from_utf8_lossy(output);
    let python = format!("[Errno {}]", rustix::io::Errno::NOSPC.raw_os_error());
    text.contains("No space left on device") || text.contains(&python)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// As pip and migrate run: with a fault point, so stderr is watched.
    fn sh(script: &str) -> anyhow::Result<()> {
        run_with(
            &argv(&["sh", "-c", script]),
            Path::new("/tmp"),
            &[],
            Stdio::null(),
            Some("test:running"),
        )
    }

    /// `/dev/full` fails every write with ENOSPC: the real kernel error, as a full disk gives it,
    /// through Python (pip, migrate) and through a C program's `strerror`.
    #[test]
    fn a_command_that_hits_enospc_is_reported_as_a_full_disk() {
        for script in [
            "python3 -c \"f = open('/dev/full', 'w'); f.write('x'); f.close()\"",
            "dd if=/dev/zero of=/dev/full bs=1 count=1",
        ] {
            let err = sh(script).unwrap_err();
            assert_eq!(
                common::error::disk_full_at(err.as_ref()).as_deref(),
                Some(Path::new("/tmp")),
                "{script}: {err:#}"
            );
            assert!(format!("{err:#}").contains("failed"), "{err:#}");
        }
    }

    #[test]
    fn other_failures_are_not_a_full_disk_and_output_still_passes_through() {
        let err = sh("echo 'ERROR: No matching distribution found' >&2; exit 1").unwrap_err();
        assert!(
            common::error::disk_full_at(err.as_ref()).is_none(),
            "{err:#}"
        );
        assert!(err.to_string().contains("failed (exit status: 1)"), "{err}");
        sh("echo fine >&2").unwrap();
    }

    #[test]
    fn the_kept_tail_is_bounded_and_ends_with_the_last_output() {
        let mut input = vec![b'a'; 5 * TAIL_BYTES];
        input.extend_from_slice(b"[Errno 28] No space left on device");
        let mut copy = Vec::new();
        let tail = forward_keeping_tail(&input[..], &mut copy);
        assert_eq!(copy, input, "everything is passed on");
        assert!(tail.len() <= 2 * TAIL_BYTES, "{}", tail.len());
        assert!(says_disk_full(&tail));
        assert!(!says_disk_full(b"[Errno 2] No such file or directory"));
    }
}
