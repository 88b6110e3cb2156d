//! Running build steps in the staging directory: each one shown with its name, command, output
//! and duration, and recorded twice — name and command in the manifest (the same on every run),
//! duration in the build log (never in the artifact).

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use common::manifest::{BuildStep, StepTiming};

/// The placeholder recorded for the throwaway virtualenv, whose real path varies per run.
pub const VENV_PLACEHOLDER: &str = "$BUILD_VENV";

/// Runs and records steps for one build.
pub struct StepRunner {
    staging: PathBuf,
    venv: PathBuf,
    env: Vec<(String, String)>,
    pub steps: Vec<BuildStep>,
    pub timings: Vec<StepTiming>,
}

/// A command as it is recorded (`recorded`, relative paths and placeholders) and as it runs.
pub struct StepCommand {
    pub recorded: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl StepCommand {
    pub fn new<S: AsRef<str>>(argv: &[S]) -> Self {
        Self {
            recorded: argv.iter().map(|s| s.as_ref().to_owned()).collect(),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for this step; it is recorded as an `env NAME=VALUE` prefix.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    fn recorded_with_env(&self) -> Vec<String> {
        if self.env.is_empty() {
            return self.recorded.clone();
        }
        let mut v = vec!["env".to_owned()];
        v.extend(self.env.iter().map(|(k, val)| format!("{k}={val}")));
        v.extend(self.recorded.iter().cloned());
        v
    }
}

impl StepRunner {
    /// `env` applies to every step: variables that make tools deterministic (source date, hash
    /// seed, time zone) and keep them from writing bytecode into the tree.
    pub fn new(staging: &Path, venv: &Path, env: Vec<(String, String)>) -> Self {
        Self {
            staging: staging.to_owned(),
            venv: venv.to_owned(),
            env,
            steps: Vec::new(),
            timings: Vec::new(),
        }
    }

    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Where the throwaway venv the steps name as [`VENV_PLACEHOLDER`] is.
    pub fn venv(&self) -> &Path {
        &self.venv
    }

    /// Runs an external command in the staging directory. Its output goes to stderr as it
    /// happens, so a failing step's output is on screen right above the error.
    pub fn run(&mut self, name: &str, cmd: StepCommand) -> anyhow::Result<()> {
        let shown = shell_words(&cmd.recorded_with_env());
        self.announce(name, &shown);
        let started = Instant::now();
        let argv: Vec<String> = cmd.recorded.iter().map(|a| self.expand(a)).collect();
        let stderr = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot duplicate stderr")?;
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(&self.staging)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr))
            .status()
            .with_context(|| {
                format!(
                    "step `{name}`: cannot run `{}`: is it installed and on PATH?",
                    argv[0]
                )
            })?;
        let took = started.elapsed();
        if !status.success() {
            anyhow::bail!(
                "step `{name}` failed ({status}) after {:.1}s: `{shown}`; its output is above, no artifact was written",
                took.as_secs_f64()
            );
        }
        self.record(name, cmd.recorded_with_env(), took);
        Ok(())
    }

    /// Runs a step done in-process (copying a file, writing one, a check).
    pub fn internal(
        &mut self,
        name: &str,
        recorded: &[&str],
        work: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        let recorded: Vec<String> = recorded.iter().map(|s| (*s).to_owned()).collect();
        self.announce(name, &shell_words(&recorded));
        let started = Instant::now();
        let said =
            work().with_context(|| format!("step `{name}` failed; no artifact was written"))?;
        if !said.is_empty() {
            eprintln!("    {said}");
        }
        self.record(name, recorded, started.elapsed());
        Ok(())
    }

    fn announce(&self, name: &str, shown: &str) {
        if std::io::stderr().is_terminal() {
            eprintln!("\x1b[1m==> {name}\x1b[0m: {shown}");
        } else {
            eprintln!("==> {name}: {shown}");
        }
    }

    fn record(&mut self, name: &str, command: Vec<String>, took: std::time::Duration) {
        eprintln!("    {name} done in {:.2}s", took.as_secs_f64());
        self.steps.push(BuildStep {
            name: name.to_owned(),
            command,
        });
        self.timings.push(StepTiming {
            name: name.to_owned(),
            duration_ms: took.as_millis() as u64,
        });
    }

    /// Records a step whose result was restored rather than made (the dependency cache): the
    /// release records the command that made it, so it is the same either way; the build log
    /// has the time the restore took.
    pub fn replayed(
        &mut self,
        name: &str,
        cmd: StepCommand,
        took: std::time::Duration,
        note: &str,
    ) {
        self.announce(name, &shell_words(&cmd.recorded_with_env()));
        eprintln!("    {note}");
        self.record(name, cmd.recorded_with_env(), took);
    }

    /// Records a timing that is not a build step (export, packing) in the build log only.
    pub fn time_only(&mut self, name: &str, took: std::time::Duration) {
        self.timings.push(StepTiming {
            name: name.to_owned(),
            duration_ms: took.as_millis() as u64,
        });
    }

    fn expand(&self, arg: &str) -> String {
        arg.replace(VENV_PLACEHOLDER, &self.venv.display().to_string())
    }
}

/// A command line as a person would type it (quoted only where needed), for display.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:$,+@%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_relative_commands_and_runs_in_staging() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv-elsewhere");
        let mut r = StepRunner::new(dir.path(), &venv, vec![("STEP_TEST".into(), "1".into())]);
        r.run(
            "touch",
            StepCommand::new(&[
                "sh",
                "-c",
                "test \"$STEP_TEST$EXTRA\" = 1x && touch made-here",
            ])
            .env("EXTRA", "x"),
        )
        .unwrap();
        assert!(dir.path().join("made-here").exists());
        assert_eq!(
            r.steps[0].command[..2],
            ["env".to_owned(), "EXTRA=x".to_owned()]
        );
        r.run(
            "venv path",
            StepCommand::new(&[
                "sh",
                "-c",
                &format!("test \"$0\" = '{}'", venv.display()),
                VENV_PLACEHOLDER,
            ]),
        )
        .unwrap();
        assert_eq!(r.steps[1].command.last().unwrap(), VENV_PLACEHOLDER);
        let err = r
            .run("fails", StepCommand::new(&["sh", "-c", "exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("step `fails` failed") && err.contains("no artifact"),
            "{err}"
        );
        assert_eq!(
            r.steps.len(),
            2,
            "a failed step is not recorded as having run"
        );
        let err = r
            .run("missing", StepCommand::new(&["no-such-program-here"]))
            .unwrap_err();
        assert!(format!("{err:#}").contains("is it installed"));
    }

    #[test]
    fn shell_words_quotes_only_when_needed() {
        let argv: Vec<String> = [
            "python3",
            "-c",
            "print('x')",
            "a b",
            "$BUILD_VENV/bin/python",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            shell_words(&argv),
            "python3 -c 'print('\\''x'\\'')' 'a b' $BUILD_VENV/bin/python"
        );
    }
}
