//! A real uWSGI on loopback serving `<root>/current`, one per test, and releases laid out by hand.
//!
//! The server is pyuwsgi's `uwsgi` from the test virtualenv (`scripts/python-env`), configured
//! from `tests/fixtures/server/uwsgi.ini` — the production file `docs/server-setup.md` shows —
//! with only
//! what a test needs changed (see [`render_ini`]): `root`, an HTTP socket on `127.0.0.1` with a
//! port the kernel picks instead of the unix socket for nginx (or besides it, moved into the
//! test's directory, when nginx runs in front: `crate::nginx`), the stats server on a kernel-picked
//! loopback port, the number of workers, and the loader, which is `<root>/loader.py` when the
//! root has one (the installer puts it there) and `installer/src/loader.py` otherwise.
//!
//! Ports are learned, not guessed: uWSGI logs the HTTP socket's auto-assigned port, and for the
//! stats server (which logs `127.0.0.1:0`) the listening socket behind the file descriptor it
//! logs is looked up in `/proc`. Ready means `GET /` gets an HTTP answer, whatever the status,
//! and the stats server shows every worker accepting requests.
//!
//! The server is stopped when the [`UwsgiServer`] is dropped, including when a test panics:
//! SIGINT (uWSGI takes SIGTERM as "reload" unless `die-on-term`), then SIGKILL to its whole
//! process group after [`STOP_TIMEOUT`]. It runs under a small `sh` watchdog that sends the
//! SIGINT when its stdin closes, so the server also goes when the test process dies.
//!
//! [`example_release`], [`swap_current`], [`touch_reload`] and [`migrate`] do by hand what the
//! installer does, so the server can be tested without it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use crate::example;
use crate::moto::venv_dir;
use crate::process::{self, Supervised};

/// How long a server may take to start and answer `GET /` (Django loads in each worker).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping server gets after SIGINT before its process group is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The reload file, relative to the root: `touch-chain-reload` in the ini.
pub const RELOAD_FILE: &str = ".deploy/reload";
/// The loader's name in the root, where the installer installs it.
pub const LOADER: &str = "loader.py";
/// How many of the log's last lines [`UwsgiServer::log_tail`] shows.
const LOG_LINES: usize = 40;

/// `tests/fixtures/server`: the uWSGI configuration and the loader.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("server")
}

/// The production uWSGI configuration (`tests/fixtures/server/uwsgi.ini`).
pub fn ini_fixture() -> PathBuf {
    fixture_dir().join("uwsgi.ini")
}

/// The loader (`installer/src/loader.py`, embedded in the installer, which installs it as
/// `<root>/loader.py`).
pub fn loader_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../installer/src")
        .join(LOADER)
}

/// pyuwsgi's `uwsgi` in the test virtualenv.
pub fn uwsgi_bin() -> PathBuf {
    venv_dir().join("bin").join("uwsgi")
}

/// Why uWSGI cannot be started here, if it cannot.
pub fn unavailable() -> Option<String> {
    let bin = uwsgi_bin();
    (!bin.exists()).then(|| {
        format!(
            "no uWSGI in the test virtualenv (`{}` is missing): run `bash scripts/python-env` (or set BINARYCRATE_TEST_VENV)",
            bin.display()
        )
    })
}

/// What a test may change about the server.
#[derive(Debug, Clone)]
pub struct UwsgiOptions {
    /// Worker processes (`processes`); the recommended configuration has 2.
    pub processes: u32,
    /// Extra environment of the uWSGI process, so of the workers (uWSGI's `env` option does not
    /// reach Python's `os.environ` under pyuwsgi). `BINARYCRATE_ROOT` is the root and
    /// `BINARYCRATE_SHARED_DIR` is `<root>/shared` unless set here.
    pub env: Vec<(String, String)>,
    /// The loader (`wsgi-file`); by default `<root>/loader.py` if present, else the fixture.
    pub loader: Option<PathBuf>,
    /// How long the server may take to answer `GET /`.
    pub start_timeout: Duration,
    /// Fixed loopback ports instead of ones uWSGI picks (a configuration written before the
    /// server starts, like the installer's, must name them).
    pub http_port: Option<u16>,
    pub stats_port: Option<u16>,
    /// Keep the production `socket` (the uwsgi protocol, for nginx's `uwsgi_pass`) and its
    /// `chmod-socket`, at this path, besides the test's HTTP socket.
    pub uwsgi_socket: Option<PathBuf>,
}

impl Default for UwsgiOptions {
    fn default() -> Self {
        Self {
            processes: 2,
            env: Vec::new(),
            loader: None,
            start_timeout: START_TIMEOUT,
            http_port: None,
            stats_port: None,
            uwsgi_socket: None,
        }
    }
}

/// One worker as the stats server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// 1-based worker number.
    pub id: u64,
    /// 0 while the worker is being respawned.
    pub pid: u32,
    /// Whether it has its application and takes requests.
    pub accepting: bool,
    /// Requests it served since it was spawned.
    pub requests: u64,
    /// How often this worker slot was (re)spawned.
    pub respawn_count: u64,
    /// When it was last spawned, whole seconds since the epoch.
    pub last_spawn: u64,
    /// `idle`, `busy`, `cheap`, …
    pub status: String,
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `NNNNNN` of the example app's `<!-- Build number = NNNNNN -->`.
    pub fn build_number(&self) -> Option<&str> {
        let rest = self.body.split_once("<!-- Build number = ")?.1;
        Some(rest.split_once(" -->")?.0)
    }
}

/// A running uWSGI master with its workers; stopped on drop.
pub struct UwsgiServer {
    /// Stopped with SIGINT: uWSGI takes SIGTERM as "reload" unless `die-on-term`.
    process: Supervised,
    root: PathBuf,
    /// Holds the rendered ini and the log.
    dir: tempfile::TempDir,
    port: u16,
    stats_port: u16,
}

impl std::fmt::Debug for UwsgiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UwsgiServer(pid {}, {}, stats {}, root {})",
            self.process.id(),
            self.http_url(),
            self.stats_url(),
            self.root.display()
        )
    }
}

impl UwsgiServer {
    /// [`UwsgiServer::start_with`] with the default options, or `None` (saying why) when the test
    /// virtualenv has no uWSGI. Under CI (env `CI` set) that is a failure instead. Panics when
    /// the server does not come up.
    pub fn start_or_skip(root: &Path) -> Option<Self> {
        Self::start_or_skip_with(root, &UwsgiOptions::default())
    }

    /// Like [`UwsgiServer::start_or_skip`], with options.
    pub fn start_or_skip_with(root: &Path, options: &UwsgiOptions) -> Option<Self> {
        if let Some(why) = unavailable() {
            if std::env::var_os("CI").is_some() {
                panic!("{why}");
            }
            eprintln!("skipping: {why}");
            return None;
        }
        Some(Self::start_with(root, options).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Starts uWSGI serving `root` with the default options and waits until it is ready.
    pub fn start(root: &Path) -> anyhow::Result<Self> {
        Self::start_with(root, &UwsgiOptions::default())
    }

    /// Starts uWSGI serving `root` (which should have `current`) and waits until `GET /` answers
    /// and every worker accepts requests (a release that cannot load makes this time out).
    pub fn start_with(root: &Path, options: &UwsgiOptions) -> anyhow::Result<Self> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        let root = std::path::absolute(root)?;
        // uWSGI creates its master FIFO in `.deploy/` (the installer makes that directory).
        fs::create_dir_all(root.join(".deploy"))?;
        let template = fs::read_to_string(ini_fixture())
            .with_context(|| format!("cannot read {}", ini_fixture().display()))?;
        let loader = match &options.loader {
            Some(loader) => loader.clone(),
            None if root.join(LOADER).is_file() => root.join(LOADER),
            None => loader_fixture(),
        };
        let ini_text = render_ini(&template, &root, options, &loader)?;

        let dir = tempfile::Builder::new().prefix("uwsgi-").tempdir()?;
        let ini = dir.path().join("uwsgi.ini");
        fs::write(&ini, ini_text)?;
        let log_path = dir.path().join("uwsgi.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;

        let mut command = process::command(&uwsgi_bin(), "INT");
        command
            .arg("--ini")
            .arg(&ini)
            .current_dir(dir.path())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("BINARYCRATE_ROOT", &root)
            .env(example::SHARED_DIR_ENV, root.join("shared"));
        // uWSGI takes UWSGI_* variables as options, and Python these: none may leak in.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("UWSGI_")
                || ["PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE"].contains(&&*name)
            {
                command.env_remove(&*name);
            }
        }
        command.envs(options.env.iter().map(|(k, v)| (k, v)));
        let process = Supervised::spawn(&mut command, "uWSGI", "INT")?;
        let mut server = UwsgiServer {
            process,
            root,
            dir,
            port: 0,
            stats_port: 0,
        };

        let deadline = Instant::now() + options.start_timeout;
        let (port, stats_fd) = loop {
            let log = server.log();
            let http = options.http_port.or_else(|| parse_http_port(&log));
            if let Some(port) = http {
                if let Some(stats) = options.stats_port {
                    break (port, Err(stats));
                }
                if let Some(fd) = parse_stats_fd(&log) {
                    break (port, Ok(fd));
                }
            }
            server.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "uWSGI did not bind its sockets within {:?}{}",
                    options.start_timeout,
                    server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        server.port = port;
        server.stats_port = match stats_fd {
            Err(fixed) => fixed,
            Ok(fd) => listening_port_of_fd(server.process.id(), fd)
                .with_context(|| format!("cannot find uWSGI's stats port{}", server.log_tail()))?,
        };

        // Ready: GET / answers and every worker has loaded the application.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = http_get(port, "/", left.max(Duration::from_millis(100))).and_then(|_| {
                let workers = server.workers()?;
                if workers.len() == options.processes as usize
                    && workers.iter().all(|w| w.accepting && w.pid != 0)
                {
                    Ok(())
                } else {
                    bail!("not every worker accepts requests yet: {workers:?}")
                }
            });
            match ready {
                Ok(()) => break,
                Err(e) => {
                    server.check_alive()?;
                    if Instant::now() > deadline {
                        bail!(
                            "uWSGI on port {port} was not ready within {:?}: {e:#}{}",
                            options.start_timeout,
                            server.log_tail()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(server)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.process.try_wait()? {
            bail!("uWSGI exited with {status}{}", self.log_tail());
        }
        Ok(())
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The root it serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The HTTP socket's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The stats server's port on 127.0.0.1.
    pub fn stats_port(&self) -> u16 {
        self.stats_port
    }

    /// `http://127.0.0.1:STATSPORT/` (JSON).
    pub fn stats_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.stats_port)
    }

    /// `<root>/.deploy/reload`, the `touch-chain-reload` file.
    pub fn reload_file(&self) -> PathBuf {
        self.root.join(RELOAD_FILE)
    }

    /// Asks for a chain reload: [`touch_reload`] on this server's root.
    pub fn reload(&self) -> anyhow::Result<SystemTime> {
        touch_reload(&self.root)
    }

    /// The rendered configuration uWSGI runs with.
    pub fn ini_path(&self) -> PathBuf {
        self.dir.path().join("uwsgi.ini")
    }

    /// The log file (uWSGI's and the workers' stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("uwsgi.log")
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The log's last lines, for error messages ("" when empty).
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        if lines.is_empty() {
            return String::new();
        }
        format!(
            "; the last lines of its log {}:\n{}",
            self.log_path().display(),
            lines[lines.len().saturating_sub(LOG_LINES)..].join("\n")
        )
    }

    /// `GET path`: (status, body).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let response = self.request(path)?;
        Ok((response.status, response.body))
    }

    /// `GET path`, with the headers.
    pub fn request(&self, path: &str) -> anyhow::Result<HttpResponse> {
        http_get(self.port, path, Duration::from_secs(30))
    }

    /// The stats server's JSON document.
    pub fn stats(&self) -> anyhow::Result<serde_json::Value> {
        // The stats server may answer and close before it has read the whole request, so a
        // failed exchange is retried.
        let mut tries = 0;
        let response = loop {
            tries += 1;
            match http_get(self.stats_port, "/", Duration::from_secs(10)) {
                Ok(response) => break response,
                Err(e) if tries >= 5 => return Err(e.context("cannot read uWSGI's stats")),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        serde_json::from_str(&response.body)
            .with_context(|| format!("stats are not JSON: {:.200}", response.body))
    }

    /// The workers, from the stats server.
    pub fn workers(&self) -> anyhow::Result<Vec<Worker>> {
        parse_workers(&self.stats()?)
    }

    /// Each worker's (pid, last_spawn), from the stats server.
    pub fn worker_pids_and_last_spawn(&self) -> anyhow::Result<Vec<(u32, u64)>> {
        Ok(self
            .workers()?
            .into_iter()
            .map(|w| (w.pid, w.last_spawn))
            .collect())
    }

    /// Waits until every worker is one that is not in `before` (by pid) and accepts requests,
    /// as after a chain reload that began after `before` was taken; returns how long that took.
    pub fn wait_for_new_workers(
        &self,
        before: &[Worker],
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let now = self.workers()?;
            if now.len() == before.len()
                && now
                    .iter()
                    .all(|w| w.pid != 0 && w.accepting && before.iter().all(|b| b.pid != w.pid))
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "the workers were not all replaced within {timeout:?}: before {before:?}, now {now:?}{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops the server at once (SIGKILL to its process group, workers included), for tests
    /// that only need it gone: a graceful stop in the middle of a chain reload can take
    /// [`STOP_TIMEOUT`].
    pub fn kill(mut self) {
        self.process.kill();
    }

    /// Stops the server (as on drop) and says how it ended.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let tail = self.log_tail();
        self.process.stop(STOP_TIMEOUT, || tail)
    }
}

impl Drop for UwsgiServer {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            eprintln!("{e:#}");
        }
    }
}

/// The test configuration made from the production one: `root` set, the unix socket and its
/// mode replaced by `http-socket = 127.0.0.1:0` (or, with `options.uwsgi_socket`, the unix
/// socket moved there and the HTTP socket added), the stats server on `127.0.0.1:0`, the workers
/// and the loader from `options`. Every line it changes must be in the template, so the
/// template cannot drift from what is tested.
pub fn render_ini(
    template: &str,
    root: &Path,
    options: &UwsgiOptions,
    loader: &Path,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut seen = Vec::new();
    for line in template.lines() {
        let trimmed = line.trim();
        let Some((key, value)) = trimmed
            .split_once('=')
            .filter(|_| !trimmed.starts_with([';', '#', '[']))
        else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let replaced = match key {
            "set-placeholder" if value.starts_with("root=") => {
                Some(format!("root={}", root.display()))
            }
            "processes" => Some(options.processes.to_string()),
            "stats" => Some(format!("127.0.0.1:{}", options.stats_port.unwrap_or(0))),
            "wsgi-file" => Some(loader.display().to_string()),
            "socket" => Some(
                options
                    .uwsgi_socket
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            "chmod-socket" if options.uwsgi_socket.is_some() => None,
            "chmod-socket" => Some(String::new()),
            _ => None,
        };
        match replaced {
            None => {
                out.push_str(line);
                out.push('\n');
            }
            Some(new) => {
                seen.push(key);
                if !new.is_empty() {
                    out.push_str(&format!("{key} = {new}\n"));
                }
            }
        }
    }
    for key in [
        "set-placeholder",
        "processes",
        "stats",
        "wsgi-file",
        "socket",
    ] {
        if !seen.contains(&key) {
            bail!("the uWSGI template has no `{key} = …` line to replace");
        }
    }
    out.push_str(&format!(
        "; the test's own\nhttp-socket = 127.0.0.1:{}\n",
        options.http_port.unwrap_or(0)
    ));
    Ok(out)
}

/// The port in uWSGI's `uwsgi socket 0 bound to TCP address 127.0.0.1:PORT (port auto-assigned)`.
fn parse_http_port(log: &str) -> Option<u16> {
    log.lines().find_map(|line| {
        let rest = line.split_once("bound to TCP address 127.0.0.1:")?.1;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// The descriptor in uWSGI's `*** Stats server enabled on 127.0.0.1:0 fd: N ***`.
fn parse_stats_fd(log: &str) -> Option<u32> {
    log.lines().find_map(|line| {
        let rest = line.split_once("Stats server enabled on ")?.1;
        let fd = rest.split_once(" fd: ")?.1;
        let digits: String = fd.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// The loopback TCP port process `pid` listens on with descriptor `fd` (from `/proc`).
fn listening_port_of_fd(pid: u32, fd: u32) -> anyhow::Result<u16> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}"))?;
    let link = link.to_string_lossy();
    let inode = link
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .with_context(|| format!("fd {fd} of {pid} is not a socket: {link}"))?;
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    port_of_inode(&table, inode).with_context(|| format!("no TCP socket with inode {inode}"))
}

/// In a `/proc/net/tcp` table, the local port of the listening socket with this inode.
fn port_of_inode(table: &str, inode: &str) -> Option<u16> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if cols.len() > 9 && cols[9] == inode && cols[3] == "0A" {
            u16::from_str_radix(cols[1].rsplit_once(':')?.1, 16).ok()
        } else {
            None
        }
    })
}

/// The `workers` of a stats document.
pub fn parse_workers(stats: &serde_json::Value) -> anyhow::Result<Vec<Worker>> {
    let workers = stats["workers"]
        .as_array()
        .with_context(|| format!("no workers in the stats: {stats}"))?;
    workers
        .iter()
        .map(|w| {
            let num = |key: &str| {
                w[key]
                    .as_u64()
                    .with_context(|| format!("worker without `{key}`: {w}"))
            };
            Ok(Worker {
                id: num("id")?,
                pid: u32::try_from(num("pid")?)?,
                accepting: num("accepting")? != 0,
                requests: num("requests")?,
                respawn_count: num("respawn_count")?,
                last_spawn: num("last_spawn")?,
                status: w["status"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// A minimal HTTP/1.0 GET on loopback.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> anyhow::Result<HttpResponse> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    // A server that answers without reading everything (uWSGI's stats server) may close first:
    // a failed write is not an error as long as an answer comes.
    let written = stream.write_all(request.as_bytes());
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Closed with our request unread: what came before the reset is the answer.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => {
                return Err(e).with_context(|| format!("no answer from {addr} to GET {path}"))
            }
        }
    }
    if raw.is_empty() {
        written.with_context(|| format!("cannot send GET {path} to {addr}"))?;
        bail!("{addr} closed the connection without answering GET {path}");
    }
    parse_response(&String::from_utf8_lossy(&raw))
}

fn parse_response(raw: &str) -> anyhow::Result<HttpResponse> {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {raw:.80}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

// ---- Releases laid out by hand, the way the installer does ----

/// Points `<root>/current` at `releases/<build_dir>` atomically: a relative symlink made under a
/// temporary name, then renamed over `current`.
pub fn swap_current(root: &Path, build_dir: &str) -> anyhow::Result<()> {
    let tmp = root.join(format!(".current.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("releases").join(build_dir), &tmp)?;
    fs::rename(&tmp, root.join("current"))
        .with_context(|| format!("cannot swap {}/current", root.display()))?;
    Ok(())
}

/// Asks uWSGI for a chain reload: sets the mtime of `<root>/.deploy/reload` (created if missing)
/// to now, or one second past its current mtime if that is not earlier. uWSGI compares mtimes in
/// whole seconds and reloads only when the mtime grows, so a plain `touch` in the same second
/// as the previous one would be ignored. Returns the mtime set.
pub fn touch_reload(root: &Path) -> anyhow::Result<SystemTime> {
    let path = root.join(RELOAD_FILE);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let old = secs(file.metadata()?.modified()?);
    let new = secs(SystemTime::now()).max(old + 1);
    let mtime = UNIX_EPOCH + Duration::from_secs(new);
    file.set_modified(mtime)
        .with_context(|| format!("cannot set the mtime of {}", path.display()))?;
    Ok(mtime)
}

/// `venv/lib/pythonX.Y/site-packages` of a virtualenv.
pub fn site_packages(venv: &Path) -> anyhow::Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))? {
        let path = entry?.path().join("site-packages");
        if path.is_dir() {
            return Ok(path);
        }
    }
    bail!("no lib/python*/site-packages in {}", venv.display())
}

/// Creates the virtualenv `venv` with the test virtualenv's Python and installs `requirements`
/// into it offline from the wheelhouse (`scripts/python-env` fills it).
pub fn build_venv(venv: &Path, requirements: &Path) -> anyhow::Result<()> {
    let python = venv_dir().join("bin").join("python");
    run(Command::new(&python)
        .args(["-m", "venv", "--without-pip"])
        .arg(venv))?;
    run(Command::new(&python)
        .args(["-m", "pip", "--python"])
        .arg(venv.join("bin").join("python"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--find-links",
        ])
        .arg(example::wheelhouse_dir())
        .arg("-r")
        .arg(requirements))
}

/// Lays out `<root>/releases/Build<build_number>` by hand the way the installer does: the
/// example app (the fixture, with this build number), its own `venv` built from the wheelhouse,
/// and `production.py` linked to `<root>/shared/production.py` (made from the template when
/// missing). Does not migrate ([`migrate`]) or touch `current`. Returns the release directory.
pub fn example_release(root: &Path, build_number: &str) -> anyhow::Result<PathBuf> {
    let release = root.join("releases").join(format!("Build{build_number}"));
    copy_tree(&example::fixture_dir(), &release)?;
    let file = release.join(example::BUILD_NUMBER_FILE);
    let text = fs::read_to_string(&file)?;
    let old = format!("BUILD_NUMBER = '{}'", example::BUILD_NUMBER);
    if !text.contains(&old) {
        bail!("{} has no `{old}`", file.display());
    }
    fs::write(
        &file,
        text.replace(&old, &format!("BUILD_NUMBER = '{build_number}'")),
    )?;

    let shared = root.join("shared").join("production.py");
    if !shared.exists() {
        // Under a temporary name first: releases may be laid out in parallel.
        fs::create_dir_all(root.join("shared"))?;
        let tmp = shared.with_file_name(format!(".production.py.{build_number}"));
        fs::copy(release.join(example::PRODUCTION_TEMPLATE), &tmp)?;
        fs::rename(&tmp, &shared)?;
    }
    std::os::unix::fs::symlink(&shared, release.join(example::PRODUCTION_SETTINGS))?;
    build_venv(&release.join("venv"), &release.join(example::REQUIREMENTS))?;
    Ok(release)
}

/// Runs the release's `venv/bin/python binarycrate/manage.py migrate --noinput` against
/// `<root>/shared` (the example settings' sqlite database).
pub fn migrate(root: &Path, release: &Path) -> anyhow::Result<()> {
    run(
        Command::new(release.join("venv").join("bin").join("python"))
            .arg(release.join(example::MANAGE_PY))
            .args(["migrate", "--noinput"])
            .env(example::SHARED_DIR_ENV, root.join("shared"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("DJANGO_SETTINGS_MODULE")
            .env_remove("PYTHONPATH"),
    )
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Copies a tree of regular files and directories, skipping Python caches.
fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "__pycache__" || name.to_string_lossy().ends_with(".pyc") {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(&name));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else if kind.is_file() {
            let mut data = Vec::new();
            File::open(&from)?.read_to_end(&mut data)?;
            fs::write(&to, data)?;
            fs::set_permissions(&to, fs::metadata(&from)?.permissions())?;
        } else {
            bail!("unexpected file type: {}", from.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_descriptors_are_read_from_the_log() {
        let log = "uwsgi socket 0 bound to TCP address 127.0.0.1:38703 (port auto-assigned) fd 3\n\
                   *** Stats server enabled on 127.0.0.1:0 fd: 12 ***\n";
        assert_eq!(parse_http_port(log), Some(38703));
        assert_eq!(parse_stats_fd(log), Some(12));
        assert_eq!(parse_http_port("spawned uWSGI worker 1"), None);
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 0100007F:97C1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778899 1 0000000000000000 100 0 0 10 0\n   \
             1: 0100007F:97C2 0100007F:1234 01 00000000:00000000 00:00000000 00000000     0        0 778800 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(port_of_inode(table, "778899"), Some(0x97C1));
        assert_eq!(port_of_inode(table, "778800"), None, "not listening");
    }

    #[test]
    fn the_test_ini_changes_only_sockets_root_workers_and_loader() {
        let template = fs::read_to_string(ini_fixture()).unwrap();
        let options = UwsgiOptions {
            processes: 3,
            ..UwsgiOptions::default()
        };
        let ini = render_ini(
            &template,
            Path::new("/tmp/r"),
            &options,
            Path::new("/x/loader.py"),
        )
        .unwrap();
        let lines: Vec<&str> = ini.lines().collect();
        for want in [
            "set-placeholder = root=/tmp/r",
            "processes = 3",
            "stats = 127.0.0.1:0",
            "wsgi-file = /x/loader.py",
            "http-socket = 127.0.0.1:0",
            "lazy-apps = true",
            "touch-chain-reload = %(root)/.deploy/reload",
        ] {
            assert!(lines.contains(&want), "{want:?} missing from\n{ini}");
        }
        assert!(!lines
            .iter()
            .any(|l| l.starts_with("socket") || l.starts_with("chmod-socket")));
        // Unchanged lines stay as they are.
        let kept = |t: &str| {
            t.lines()
                .filter(|l| {
                    ![
                        "set-placeholder",
                        "processes",
                        "stats ",
                        "wsgi-file",
                        "socket",
                        "chmod-socket",
                    ]
                    .iter()
                    .any(|k| l.starts_with(k))
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let rendered = kept(&ini);
        assert!(kept(&template).iter().all(|l| rendered.contains(l)));
        assert!(render_ini(
            "[uwsgi]\nmaster = true\n",
            Path::new("/r"),
            &options,
            Path::new("/l")
        )
        .is_err());
    }

    #[test]
    fn the_unix_socket_for_nginx_is_kept_when_asked_for() {
        let template = fs::read_to_string(ini_fixture()).unwrap();
        let options = UwsgiOptions {
            uwsgi_socket: Some(PathBuf::from("/t/run/uwsgi.sock")),
            ..UwsgiOptions::default()
        };
        let ini = render_ini(&template, Path::new("/r"), &options, Path::new("/l")).unwrap();
        let lines: Vec<&str> = ini.lines().collect();
        for want in [
            "socket = /t/run/uwsgi.sock",
            "chmod-socket = 660",
            "http-socket = 127.0.0.1:0",
        ] {
            assert!(lines.contains(&want), "{want:?} missing from\n{ini}");
        }
    }

    #[test]
    fn the_server_setup_doc_shows_the_tested_ini_verbatim() {
        let ini = fs::read_to_string(ini_fixture()).unwrap();
        let doc = crate::moto::workspace_root().join("docs/server-setup.md");
        let doc = fs::read_to_string(doc).unwrap();
        assert!(
            doc.contains(&format!("```ini\n{ini}```\n")),
            "docs/server-setup.md's uWSGI configuration differs from {}",
            ini_fixture().display()
        );
    }

    #[test]
    fn responses_are_parsed_with_headers_and_build_number() {
        let r = parse_response(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Worker-Pid: 42\r\n\r\n<head>\n  <!-- Build number = 000007 -->\n",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-worker-pid"), Some("42"));
        assert_eq!(r.build_number(), Some("000007"));
        assert!(parse_response("garbage").is_err());
    }

    #[test]
    fn touch_reload_always_moves_the_mtime_forward_by_whole_seconds() {
        let tmp = tempfile::tempdir().unwrap();
        let first = touch_reload(tmp.path()).unwrap();
        let second = touch_reload(tmp.path()).unwrap();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(secs(second) > secs(first));
        let mtime = fs::metadata(tmp.path().join(RELOAD_FILE))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(mtime, second);
    }
}
