//! A server process a test starts and must not leave behind (uWSGI, nginx).
//!
//! It runs under a small `sh` watchdog that sends the server its stop signal once the test
//! process closes the pipe on the watchdog's stdin: when the [`Supervised`] is stopped or
//! dropped, and also when the test process dies. It has its own process group, so that the
//! last-resort SIGKILL reaches its workers too.

use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The watchdog: signals the shell's own pid (which `exec` hands to the server) once stdin
/// closes, unless the server is gone already (the watchdog, forked before the `exec`, is no
/// longer its child then). `SIGNAL` is replaced by the server's stop signal.
const WATCHDOG: &str = r#"exec 3<&0
(cat <&3 >/dev/null 2>&1
 read -r _ _ _ ppid _ </proc/self/stat
 [ "$ppid" = "$$" ] && kill -SIGNAL $$ 2>/dev/null) &
exec 3<&- </dev/null
exec "$0" "$@""#;

/// A running server under the watchdog.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
    /// The watchdog's stdin: closing it makes the watchdog send the stop signal.
    watchdog: Option<ChildStdin>,
    /// For messages: `uWSGI`, `nginx`.
    name: &'static str,
    /// The stop signal's name for `kill -s` (`INT`, `TERM`).
    signal: &'static str,
}

/// `program` run under the watchdog, in its own process group; add its arguments, environment
/// and output, then [`Supervised::spawn`] it.
pub fn command(program: &Path, signal: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WATCHDOG.replace("SIGNAL", signal))
        .arg(program)
        .stdin(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
}

impl Supervised {
    /// Starts a [`command`] made with the same `signal`.
    pub fn spawn(
        command: &mut Command,
        name: &'static str,
        signal: &'static str,
    ) -> anyhow::Result<Self> {
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let watchdog = child.stdin.take();
        Ok(Self {
            child,
            watchdog,
            name,
            signal,
        })
    }

    /// The server's pid (the watchdog `exec`s it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// How it ended, if it has.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGKILL to the whole group, workers included, then reaped.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill_group();
            let _ = self.child.wait();
        }
    }

    fn kill_group(&self) {
        // Not yet reaped, so the group still exists and is ours.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }

    /// The stop signal, then SIGKILL to the group after `timeout`, which is an error that
    /// ends with `log_tail()`.
    pub fn stop(
        &mut self,
        timeout: Duration,
        log_tail: impl FnOnce() -> String,
    ) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        drop(self.watchdog.take());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill_group();
        let status = self.child.wait()?;
        bail!(
            "{} did not stop within {timeout:?} of SIG{} and was killed ({status}){}",
            self.name,
            self.signal,
            log_tail()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_signal_ends_the_server_and_a_stubborn_one_is_killed() {
        // `sleep` ends on SIGTERM.
        let mut sleeper = Supervised::spawn(
            command(Path::new("sleep"), "TERM").arg("600"),
            "sleep",
            "TERM",
        )
        .unwrap();
        let status = sleeper.stop(Duration::from_secs(10), String::new).unwrap();
        assert!(!status.success(), "{status}");

        // A shell that ignores SIGINT is killed, with the group, and the error says so.
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let script = format!("trap '' INT; touch '{}'; sleep 600 & wait", ready.display());
        let mut stubborn = Supervised::spawn(
            command(Path::new("sh"), "INT").args(["-c", &script]),
            "stubborn",
            "INT",
        )
        .unwrap();
        // Signalled before its trap is set, it would just stop.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "the stubborn shell did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = stubborn
            .stop(Duration::from_millis(300), || "; log tail".into())
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("stubborn did not stop within 300ms of SIGINT and was killed"),
            "{text}"
        );
        assert!(text.ends_with("; log tail"), "{text}");
        assert!(stubborn.try_wait().unwrap().is_some());
    }

    #[test]
    fn dropping_the_test_side_of_the_pipe_is_enough() {
        let mut sleeper = Supervised::spawn(
            command(Path::new("sleep"), "TERM").arg("600"),
            "sleep",
            "TERM",
        )
        .unwrap();
        drop(sleeper.watchdog.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while sleeper.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the watchdog did not stop it");
            std::thread::sleep(Duration::from_millis(20));
        }
        sleeper.kill();
    }
}
