//! The deployment lock: one activation or rollback at a time per server root.
//!
//! `flock` on `.deploy/lock`: the kernel drops it when the holder dies (even by kill -9), so a
//! crashed run never leaves the server locked. The holder writes its pid and command line into
//! the file so a waiting run can say who it waited for.
//!
//! The commands that change a release (venv, pip, migrate) get the locked file as their stdin:
//! the lock belongs to the open file, so it stays held while any of them runs. When the
//! installer is killed and leaves such a command behind, the next run waits for it to finish
//! rather than racing it over the same venv or database.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::error::Locked;
use rustix::fs::{flock, FlockOperation};

/// Held until dropped.
#[derive(Debug)]
pub struct DeployLock {
    _file: File,
}

/// Takes the lock, waiting up to `timeout` for another holder.
pub fn acquire(path: &Path, timeout: Duration, command: &str) -> anyhow::Result<DeployLock> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open the lock file `{}`", path.display()))?;
    let started = Instant::now();
    let mut told = false;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let (pid, holder) = holder(&mut file);
                if started.elapsed() >= timeout {
                    return Err(Locked {
                        path: path.to_owned(),
                        pid,
                        command: holder,
                        waited_secs: started.elapsed().as_secs(),
                    }
                    .into());
                }
                if !told {
                    eprintln!(
                        "waiting for the lock held by pid {pid} ({holder}), up to {}s",
                        timeout.as_secs()
                    );
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("cannot lock `{}`", path.display()))
            }
        }
    }
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .context("cannot write the lock file")?;
    writeln!(file, "{}\n{command}", std::process::id()).context("cannot write the lock file")?;
    Ok(DeployLock { _file: file })
}

impl DeployLock {
    /// The locked file as a child's stdin, so the lock lives as long as the child.
    pub fn for_child(&self) -> anyhow::Result<std::process::Stdio> {
        let file = self
            ._file
            .try_clone()
            .context("cannot share the lock with a command")?;
        Ok(file.into())
    }
}

fn holder(file: &mut File) -> (String, String) {
    let mut text = String::new();
    let _ = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text));
    let mut lines = text.lines();
    let pid = lines.next().unwrap_or("unknown").to_owned();
    let command = lines.next().unwrap_or("unknown command").to_owned();
    (pid, command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_names_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = acquire(
            &path,
            Duration::from_secs(1),
            "installer activate --build Build000001",
        )
        .unwrap();
        let err = acquire(&path, Duration::from_millis(300), "second").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&std::process::id().to_string())
                && msg.contains("activate --build Build000001"),
            "{msg}"
        );
        assert_eq!(
            common::error::exit_code_for(err.as_ref()),
            common::report::ExitCode::Locked
        );
        drop(first);
        acquire(&path, Duration::from_millis(300), "third").unwrap();
    }
}
