//! A real moto server (the S3/SSM/EC2 stand-in from PyPI) on loopback, one per test.
//!
//! The server comes from the Python virtualenv that `scripts/python-env` creates (`.venv` at the
//! workspace root, or `BINARYCRATE_TEST_VENV`). It listens on `127.0.0.1` on a port the kernel
//! picks and is killed when the [`MotoServer`] is dropped, including when a test panics; should
//! the test process itself die, the server notices its closed stdin and exits too.
//!
//! Two things differ from a bare `moto_server`, both set up by the small launcher below:
//! * requests are handled one at a time. moto checks `If-None-Match: *` and then writes without
//!   a lock, so two simultaneous conditional writes could both succeed; real S3 decides them
//!   atomically, and the race tests need the stand-in to do the same;
//! * the server exits when its stdin closes (the test process is gone).
//!
//! Every test must talk to it only through [`MotoServer::store_options`] /
//! [`MotoServer::env`] / [`MotoServer::client`], which carry dummy credentials and the loopback
//! endpoint, never a real AWS one.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use common::store::StoreOptions;

/// The region every test uses.
pub const REGION: &str = "us-east-1";
/// The dummy access key (and secret) moto accepts.
pub const DUMMY_KEY: &str = "testing";

/// How long the server may take to start (it imports all of moto: usually about a second).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many of the server's last log lines are kept for error messages.
const LOG_LINES: usize = 40;

/// Runs moto's own `main()` after serialising requests and arming the stdin watchdog; the
/// prelude (Python) may patch moto further before it starts.
const LAUNCHER: &str = r#"
import os, sys, threading

def _watch_stdin():
    try:
        sys.stdin.buffer.read()
    finally:
        os._exit(0)

threading.Thread(target=_watch_stdin, daemon=True).start()

from moto.moto_server.werkzeug_app import DomainDispatcherApplication

_lock = threading.Lock()
_call = DomainDispatcherApplication.__call__

def _serialised(self, environ, start_response):
    with _lock:
        return _call(self, environ, start_response)

DomainDispatcherApplication.__call__ = _serialised

exec(os.environ.get("BINARYCRATE_MOTO_PRELUDE", ""))

from moto.server import main
main(sys.argv[1:])
"#;

/// The workspace root (the parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_owned()
}

/// The test virtualenv: `BINARYCRATE_TEST_VENV`, or `.venv` at the workspace root.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("BINARYCRATE_TEST_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join(".venv"),
    }
}

/// Sets the process-wide AWS environment the SDK's default chain reads: dummy credentials,
/// `us-east-1`, and no EC2 metadata lookups (which would leave loopback). Idempotent.
///
/// The endpoint is not set here because every test has its own server: pass
/// [`MotoServer::store_options`] (or [`MotoServer::env`] to a child process) for that.
pub fn configure_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", DUMMY_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", DUMMY_KEY);
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
        std::env::set_var("AWS_REGION", REGION);
        std::env::set_var("AWS_DEFAULT_REGION", REGION);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

/// A running moto server; killed on drop.
pub struct MotoServer {
    child: Child,
    /// Held open so the server's stdin watchdog keeps it alive; closed on drop.
    stdin: Option<ChildStdin>,
    port: u16,
    log: Arc<Mutex<VecDeque<String>>>,
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

impl std::fmt::Debug for MotoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MotoServer(pid {}, {})",
            self.child.id(),
            self.endpoint()
        )
    }
}

impl MotoServer {
    /// Starts a server, or says why the test is skipped and returns `None` when the virtualenv
    /// is missing. Under CI (env `CI` set) a missing virtualenv is a failure instead.
    ///
    /// Panics when the virtualenv is there but the server does not come up.
    pub fn start_or_skip() -> Option<Self> {
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
        Some(Self::start().unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Starts `moto_server -H 127.0.0.1 -p 0` from the test virtualenv and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_prelude("")
    }

    /// Like [`MotoServer::start`], running the Python code `prelude` in the server process after
    /// moto is imported and before it serves (e.g. to patch a moto backend).
    pub fn start_with_prelude(prelude: &str) -> anyhow::Result<Self> {
        configure_env();
        let venv = venv_dir();
        let python = venv.join("bin").join("python");
        if !venv.join("bin").join("moto_server").exists() {
            bail!(
                "no moto in the test virtualenv `{}`: run `bash scripts/python-env`",
                venv.display()
            );
        }
        let mut child = Command::new(&python)
            .arg("-c")
            .arg(LAUNCHER)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("BINARYCRATE_MOTO_PRELUDE", prelude)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start moto with `{}`", python.display()))?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().expect("stderr is piped");

        // Read the port from the server's stderr, then keep draining it (the server logs every
        // request there, and would block once the pipe is full).
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (port_tx, port_rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::Builder::new()
                .name("moto-stderr".into())
                .spawn(move || {
                    let mut port_tx = Some(port_tx);
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        if let Some(port) = parse_port(&line) {
                            if let Some(tx) = port_tx.take() {
                                let _ = tx.send(port);
                            }
                        }
                        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                        if log.len() == LOG_LINES {
                            log.pop_front();
                        }
                        log.push_back(line);
                    }
                })
                .context("cannot start the thread reading moto's output")?;
        }

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Until the port is known the client points nowhere; it is replaced below.
        let mut server = MotoServer {
            child,
            stdin,
            port: 0,
            log,
            client: s3_client("http://127.0.0.1:9"),
            runtime,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        server.port = loop {
            match port_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(port) => break port,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    server.check_alive()?
                }
                Err(_) => {
                    server.check_alive()?;
                    bail!(
                        "moto did not print its port within {START_TIMEOUT:?}{}",
                        server.log_tail()
                    );
                }
            }
        };
        server.client = s3_client(&server.endpoint());
        loop {
            if let Ok((200, _)) = http_get(server.port, "/moto-api/") {
                break;
            }
            server.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "moto on port {} did not answer within {START_TIMEOUT:?}{}",
                    server.port,
                    server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            // Give the reader thread a moment to collect the last words.
            std::thread::sleep(Duration::from_millis(100));
            bail!("moto exited with {status}{}", self.log_tail());
        }
        Ok(())
    }

    /// The server's last log lines, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.is_empty() {
            return String::new();
        }
        format!(
            "; its last output:\n{}",
            log.iter().cloned().collect::<Vec<_>>().join("\n")
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Store options pointing at this server (path-style); also sets the process environment
    /// through [`configure_env`].
    pub fn store_options(&self) -> StoreOptions {
        configure_env();
        StoreOptions {
            s3_endpoint: Some(self.endpoint()),
            s3_path_style: true,
            ..StoreOptions::default()
        }
    }

    /// The environment a child process (`builder`, `installer`) needs to use this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", DUMMY_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", DUMMY_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_DEFAULT_REGION", REGION.to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// An S3 client of this server with dummy credentials, independent of the environment.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Runs an SDK call (e.g. on [`MotoServer::client`]) to completion.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.block_on(self.client.create_bucket().bucket(name).send())
            .map_err(|e| {
                anyhow!(
                    "cannot create bucket `{name}`: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            })?;
        Ok(())
    }

    /// Writes an object directly, behind any store's back.
    pub fn put_object(&self, bucket: &str, key: &str, data: Vec<u8>) -> anyhow::Result<()> {
        self.block_on(
            self.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(data))
                .send(),
        )
        .map_err(|e| {
            anyhow!(
                "cannot put `{key}`: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
        Ok(())
    }

    /// Every key in the bucket under `prefix`, sorted.
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = self.block_on(pages.next()) {
            let page = page.map_err(|e| {
                anyhow!(
                    "cannot list `{bucket}`: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            })?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        Ok(keys)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new(
            DUMMY_KEY,
            DUMMY_KEY,
            None,
            None,
            "moto-test",
        ))
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The port in werkzeug's ` * Running on http://127.0.0.1:PORT` line.
fn parse_port(line: &str) -> Option<u16> {
    let rest = line.split_once("Running on http://127.0.0.1:")?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:.80}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_read_from_werkzeugs_banner() {
        assert_eq!(
            parse_port(" * Running on http://127.0.0.1:36991"),
            Some(36991)
        );
        assert_eq!(
            parse_port("\u{1b}[33m * Running on http://127.0.0.1:5000\u{1b}[0m"),
            Some(5000)
        );
        assert_eq!(parse_port("Press CTRL+C to quit"), None);
    }
}
