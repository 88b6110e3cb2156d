//! The local transport: the same command line, run on this machine with `sh -c LINE` as one
//! pseudo-instance called `local`. For a single server, the demo, and tests of everything but
//! SSM itself.
//!
//! The command runs in its own process group, with this process's working directory and
//! environment, stdin from `/dev/null`. A cancel or the execution timeout sends SIGTERM to the
//! whole group, then SIGKILL after [`KILL_GRACE`].

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Notify;

use super::{
    CommandHandle, InvocationOutput, InvocationState, PollResult, SendRequest, Status, Transport,
    LOCAL_INSTANCE,
};

/// Between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    status: Option<Status>,
    detail: Option<String>,
    started: Option<Instant>,
    duration: Option<Duration>,
    output: InvocationOutput,
}

/// Runs the line with `sh -c` here.
#[derive(Debug, Default)]
pub struct LocalTransport {
    state: Arc<Mutex<State>>,
    cancel: Arc<Notify>,
}

impl LocalTransport {
    pub fn new() -> Self {
        Self::default()
    }
}

fn signal_group(pgid: Option<u32>, signal: rustix::process::Signal) {
    if let Some(pid) = pgid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

enum End {
    Exited(std::io::Result<std::process::Output>),
    TimedOut,
    Cancelled,
}

impl Transport for LocalTransport {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn send(&self, request: &SendRequest) -> anyhow::Result<CommandHandle> {
        if self.state.lock().unwrap().status.is_some() {
            bail!("the local transport runs one command at a time");
        }
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&request.line)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().context("cannot start `sh`")?;
        let pgid = child.id();
        {
            let mut s = self.state.lock().unwrap();
            s.status = Some(Status::InProgress);
            s.started = Some(Instant::now());
        }
        let state = Arc::clone(&self.state);
        let cancel = Arc::clone(&self.cancel);
        let timeout = request.execution_timeout;
        tokio::spawn(async move {
            let output = child.wait_with_output();
            tokio::pin!(output);
            let end = tokio::select! {
                r = &mut output => End::Exited(r),
                _ = tokio::time::sleep(timeout) => End::TimedOut,
                _ = cancel.notified() => End::Cancelled,
            };
            let (status, detail, result) = match end {
                End::Exited(r) => (None, None, r),
                other => {
                    signal_group(pgid, rustix::process::Signal::TERM);
                    let r = tokio::select! {
                        r = &mut output => r,
                        _ = tokio::time::sleep(KILL_GRACE) => {
                            signal_group(pgid, rustix::process::Signal::KILL);
                            output.await
                        }
                    };
                    let (status, detail) = match other {
                        End::TimedOut => (
                            Status::TimedOut,
                            format!("Execution Timed Out after {}s", timeout.as_secs()),
                        ),
                        _ => (Status::Cancelled, "Cancelled".to_owned()),
                    };
                    (Some(status), Some(detail), r)
                }
            };
            let mut s = state.lock().unwrap();
            s.duration = s.started.map(|t| t.elapsed());
            s.output.duration = s.duration;
            match result {
                Ok(out) => {
                    let code = out
                        .status
                        .code()
                        .or_else(|| out.status.signal().map(|sig| 128 + sig));
                    s.output.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                    s.output.stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                    s.output.exit_code = code;
                    s.status = Some(status.unwrap_or(if code == Some(0) {
                        Status::Success
                    } else {
                        Status::Failed
                    }));
                    s.detail = detail;
                }
                Err(e) => {
                    s.output.stderr = format!("(cannot collect the command's output: {e})");
                    s.status = Some(status.unwrap_or(Status::Failed));
                    s.detail = detail;
                }
            }
        });
        Ok(CommandHandle {
            id: format!("local-{}", pgid.unwrap_or(0)),
        })
    }

    async fn poll(&self, _: &CommandHandle) -> anyhow::Result<PollResult> {
        let s = self.state.lock().unwrap();
        let status = s.status.clone().unwrap_or(Status::Pending);
        Ok(PollResult {
            command_done: status.is_terminal(),
            target_count: Some(1),
            invocations: vec![InvocationState {
                instance: LOCAL_INSTANCE.to_owned(),
                exit_code: if status.is_terminal() {
                    s.output.exit_code
                } else {
                    None
                },
                detail: s.detail.clone(),
                duration: s.duration,
                status,
            }],
        })
    }

    async fn output(&self, _: &CommandHandle, _: &str) -> anyhow::Result<InvocationOutput> {
        Ok(self.state.lock().unwrap().output.clone())
    }

    async fn cancel(&self, _: &CommandHandle) -> anyhow::Result<()> {
        self.cancel.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::watch::{watch, WatchOptions};
    use crate::fleet::Rate;

    fn request(line: &str, timeout: Duration) -> SendRequest {
        SendRequest {
            line: line.into(),
            comment: "test".into(),
            targets: None,
            max_concurrency: Rate::Count(1),
            max_errors: Rate::Count(0),
            execution_timeout: timeout,
            delivery_timeout: timeout,
            output_s3: None,
        }
    }

    fn run(
        line: &str,
        timeout: Duration,
        interrupt_after: Option<Duration>,
    ) -> super::super::watch::Watched {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let t = LocalTransport::new();
            let h = t.send(&request(line, timeout)).await.unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            if let Some(after) = interrupt_after {
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx.send(());
                    std::future::pending::<()>().await;
                });
            } else {
                std::mem::forget(tx);
            }
            let mut o = WatchOptions::local(Duration::from_secs(60));
            o.live = false;
            watch(&t, &h, &o, &mut rx).await.unwrap()
        })
    }

    #[test]
    fn runs_and_collects_output_and_exit_code() {
        let w = run(
            "echo out; echo err >&2; exit 3",
            Duration::from_secs(30),
            None,
        );
        let r = &w.instances[0];
        assert_eq!(r.state.instance, "local");
        assert_eq!(r.state.status, Status::Failed);
        assert_eq!(r.output.exit_code, Some(3));
        assert_eq!(r.output.stdout, "out\n");
        assert_eq!(r.output.stderr, "err\n");
        let w = run("true", Duration::from_secs(30), None);
        assert_eq!(w.instances[0].state.status, Status::Success);
        assert!(w.instances[0].output.duration.is_some());
    }

    #[test]
    fn times_out_and_kills_the_group() {
        let t = Instant::now();
        let w = run(
            "sleep 30 & sleep 30; wait",
            Duration::from_millis(300),
            None,
        );
        assert_eq!(w.instances[0].state.status, Status::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn interrupt_cancels() {
        let w = run(
            "echo started; sleep 30",
            Duration::from_secs(60),
            Some(Duration::from_millis(300)),
        );
        assert!(w.interrupted);
        assert_eq!(w.instances[0].state.status, Status::Cancelled);
        assert_eq!(w.instances[0].output.stdout, "started\n");
    }
}
