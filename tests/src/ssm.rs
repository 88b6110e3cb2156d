//! The SSM Run Command stand-in: a moto server whose `SendCommand` really runs
//! `AWS-RunShellScript` on "instances" that are directories and environments on this machine.
//!
//! The launcher is `tests/fixtures/ssm/launcher.py` (its top says what it does and does not do);
//! [`SsmServer::start`] loads it into a [`MotoServer`] through
//! [`MotoServer::start_with_prelude`] and writes the instances file it reads. The same server
//! also serves moto's S3, so one [`SsmServer`] can stand in for both sides of a deploy.
//!
//! Talk to it only through [`SsmServer::client`] / [`SsmServer::env`], which carry dummy
//! credentials and the loopback endpoint, never a real AWS one.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ssm::types::{CommandInvocation, CommandStatus};

use crate::moto::{venv_dir, workspace_root, MotoServer, DUMMY_KEY, REGION};

/// The environment variable the launcher reads the instances file's path from.
pub const INSTANCES_ENV: &str = "BINARYCRATE_SSM_INSTANCES";

/// One simulated managed instance: where its commands run and with what environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instance {
    /// The commands' working directory.
    pub cwd: PathBuf,
    /// Laid over the server's own environment.
    pub env: BTreeMap<String, String>,
    /// EC2-style tags, for `Targets` with `tag:KEY` / `tag-key` (and the same filters of
    /// `DescribeInstanceInformation`).
    pub tags: BTreeMap<String, String>,
    /// How long a reboot (a script exiting 194) keeps the instance `ConnectionLost` before the
    /// script runs again; `None`: the launcher's default, 2 seconds. (A `Duration`, not the
    /// file's fractional seconds, so that `Instance` stays `Eq`.)
    pub reboot_seconds: Option<Duration>,
    /// Absolute paths a reboot deletes, as a real one empties `/var/run` (where Debian's
    /// `reboot-required` lives).
    pub reboot_clears: Vec<PathBuf>,
}

impl Instance {
    pub fn new(cwd: impl Into<PathBuf>) -> Self {
        Self {
            cwd: cwd.into(),
            ..Self::default()
        }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Panics unless `seconds` is finite and not negative.
    pub fn reboot_seconds(mut self, seconds: f64) -> Self {
        self.reboot_seconds = Some(Duration::from_secs_f64(seconds));
        self
    }

    /// One more path a reboot deletes; it must be absolute (the launcher refuses others).
    pub fn reboot_clears(mut self, path: impl Into<PathBuf>) -> Self {
        self.reboot_clears.push(path.into());
        self
    }
}

/// A running SSM stand-in (and moto S3); its commands and server are killed on drop.
pub struct SsmServer {
    // Dropped in this order: the commands are killed in `drop`, then the server, then the file.
    moto: MotoServer,
    dir: tempfile::TempDir,
    client: aws_sdk_ssm::Client,
}

impl std::fmt::Debug for SsmServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SsmServer({:?})", self.moto)
    }
}

impl SsmServer {
    /// `tests/fixtures/ssm/launcher.py`
    pub fn launcher_path() -> PathBuf {
        workspace_root().join("tests/fixtures/ssm/launcher.py")
    }

    /// Starts a server, or says why the test is skipped and returns `None` when the virtualenv
    /// is missing (a failure under CI, like [`MotoServer::start_or_skip`]).
    pub fn start_or_skip(instances: &BTreeMap<String, Instance>) -> Option<Self> {
        let venv = venv_dir();
        if !venv.join("bin").join("moto_server").exists() {
            let why = format!(
                "no moto in the test virtualenv `{}`: run `bash scripts/python-env` (or set BINARYCRATE_TEST_VENV)",
                venv.display()
            );
            if std::env::var_os("CI").is_some() {
                panic!("{why}");
            }
            eprintln!("skipping: {why}");
            return None;
        }
        Some(Self::start(instances).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Writes the instances file and starts moto with the launcher loaded.
    pub fn start(instances: &BTreeMap<String, Instance>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ssm-stand-in-")
            .tempdir()
            .context("cannot create the SSM stand-in's directory")?;
        let file = dir.path().join("instances.json");
        write_instances(&file, instances)?;
        let launcher = Self::launcher_path();
        if !launcher.is_file() {
            bail!("the SSM launcher `{}` is missing", launcher.display());
        }
        let moto = MotoServer::start_with_prelude(&prelude(&file, &launcher)?)?;
        let client = ssm_client(&moto.endpoint());
        Ok(Self { moto, dir, client })
    }

    /// Replaces the instances (the launcher re-reads the file on every `SendCommand`).
    pub fn set_instances(&self, instances: &BTreeMap<String, Instance>) -> anyhow::Result<()> {
        write_instances(&self.instances_file(), instances)
    }

    pub fn instances_file(&self) -> PathBuf {
        self.dir.path().join("instances.json")
    }

    /// The underlying moto server (it serves S3 too).
    pub fn moto(&self) -> &MotoServer {
        &self.moto
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        self.moto.endpoint()
    }

    /// The environment a child process (`builder`) needs to use this server: dummy
    /// credentials, the region, no EC2 metadata, `AWS_ENDPOINT_URL`.
    pub fn env(&self) -> Vec<(String, String)> {
        self.moto.env()
    }

    /// An SSM client of this server with dummy credentials, independent of the environment.
    pub fn client(&self) -> &aws_sdk_ssm::Client {
        &self.client
    }

    /// Runs an SDK call (e.g. on [`SsmServer::client`]) to completion.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.moto.block_on(future)
    }

    /// Waits until the command is no longer Pending, InProgress or Cancelling, then returns
    /// every invocation with details (all pages).
    pub fn wait_for_command(
        &self,
        command_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<CommandInvocation>> {
        let deadline = Instant::now() + timeout;
        loop {
            let listed = self
                .block_on(self.client.list_commands().command_id(command_id).send())
                .map_err(|e| {
                    anyhow!(
                        "cannot list command {command_id}: {}",
                        aws_sdk_ssm::error::DisplayErrorContext(e)
                    )
                })?;
            let status = listed
                .commands()
                .first()
                .and_then(|c| c.status())
                .cloned()
                .ok_or_else(|| anyhow!("command {command_id} is not listed"))?;
            if !matches!(
                status,
                CommandStatus::Pending | CommandStatus::InProgress | CommandStatus::Cancelling
            ) {
                return self.invocations(command_id);
            }
            if Instant::now() > deadline {
                bail!(
                    "command {command_id} still {status:?} after {timeout:?}: {:#?}",
                    self.invocations(command_id)?
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every invocation of the command, with details (all pages).
    pub fn invocations(&self, command_id: &str) -> anyhow::Result<Vec<CommandInvocation>> {
        let mut all = Vec::new();
        let mut pages = self
            .client
            .list_command_invocations()
            .command_id(command_id)
            .details(true)
            .into_paginator()
            .send();
        while let Some(page) = self.block_on(pages.next()) {
            let page = page.map_err(|e| {
                anyhow!(
                    "cannot list the invocations of {command_id}: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(e)
                )
            })?;
            all.extend(page.command_invocations().iter().cloned());
        }
        Ok(all)
    }
}

impl Drop for SsmServer {
    fn drop(&mut self) {
        // Kill the running commands' process groups before the server itself is killed.
        if let Err(e) = http_post(self.moto.port(), "/binarycrate-ssm/kill-all") {
            eprintln!("SSM stand-in: cannot kill the running commands: {e}");
        }
    }
}

/// The Python run in the moto process before it serves: point the launcher at the instances
/// file, then load it as a module (which patches moto).
fn prelude(instances_file: &Path, launcher: &Path) -> anyhow::Result<String> {
    let py_str = |p: &Path| -> anyhow::Result<String> {
        let s = p
            .to_str()
            .ok_or_else(|| anyhow!("`{}` is not UTF-8", p.display()))?;
        // A JSON string is a valid Python string literal.
        Ok(serde_json::to_string(s)?)
    };
    Ok(format!(
        r#"
import importlib.util as _ilu, os as _os, sys as _sys
_os.environ[{env}] = {file}
_spec = _ilu.spec_from_file_location("binarycrate_ssm_launcher", {launcher})
_mod = _ilu.module_from_spec(_spec)
_sys.modules[_spec.name] = _mod
_spec.loader.exec_module(_mod)
"#,
        env = serde_json::to_string(INSTANCES_ENV)?,
        file = py_str(instances_file)?,
        launcher = py_str(launcher)?,
    ))
}

fn write_instances(file: &Path, instances: &BTreeMap<String, Instance>) -> anyhow::Result<()> {
    let mut map = serde_json::Map::new();
    let utf8 = |p: &Path| -> anyhow::Result<String> {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("`{}` is not UTF-8", p.display()))
    };
    for (id, instance) in instances {
        let mut spec = serde_json::json!({
            "cwd": utf8(&instance.cwd)?,
            "env": instance.env,
            "tags": instance.tags,
        });
        // Left out unless set, so that an instance without them is written as before.
        if let Some(reboot) = instance.reboot_seconds {
            spec["reboot_seconds"] = reboot.as_secs_f64().into();
        }
        if !instance.reboot_clears.is_empty() {
            let paths = instance
                .reboot_clears
                .iter()
                .map(|p| utf8(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            spec["reboot_clears"] = paths.into();
        }
        map.insert(id.clone(), spec);
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(map))?;
    // Written whole and renamed, so the launcher never reads half a file.
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write `{}`", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write `{}`", file.display()))?;
    Ok(())
}

fn ssm_client(endpoint: &str) -> aws_sdk_ssm::Client {
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new(
            DUMMY_KEY,
            DUMMY_KEY,
            None,
            None,
            "ssm-stand-in",
        ))
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

/// A minimal HTTP/1.0 POST without a body on loopback; fails unless the answer is 200.
fn http_post(port: u16, path: &str) -> std::io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(std::io::Error::other(format!(
            "unexpected answer: {response:.80}"
        ))),
    }
}
