//! A real nginx (Debian's package) on loopback in front of the test's uWSGI, one per test.
//!
//! The site configuration is `tests/fixtures/server/nginx-site.conf` — the production file
//! `docs/server-setup.md` shows — with only the machine-specific values changed (see
//! [`render_site`]): the
//! `listen` address (127.0.0.1 and a free port instead of port 80), the server root and the
//! uWSGI socket path. It is included from a small main configuration written here in place of
//! Debian's `/etc/nginx/nginx.conf`, which keeps the pid file, the logs and every temporary
//! path in the test's own directory, so nothing of the system's nginx is touched.
//!
//! nginx runs in the foreground (`daemon off`) as a child of the test, in its own process group,
//! under a small `sh` watchdog that sends SIGTERM (nginx's fast shutdown) when its stdin closes,
//! so the server also goes when the test process dies. Dropping the [`NginxServer`] stops it:
//! SIGTERM, then SIGKILL to the whole group after [`STOP_TIMEOUT`].
//!
//! The port is picked by binding `127.0.0.1:0` and letting go; if another process takes it
//! before nginx binds, nginx fails with "Address already in use" and is started again on another
//! port. Ready means `GET /` gets an HTTP answer, whatever its status (502 while no uWSGI runs).

use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::{self, Supervised};
use crate::uwsgi::{http_get, HttpResponse};

/// How long nginx may take to answer its first request.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopping nginx gets after SIGTERM before its process group is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a port clash is retried with another port.
const PORT_TRIES: usize = 5;
/// How many of the error log's last lines [`NginxServer::log_tail`] shows.
const LOG_LINES: usize = 30;

/// The production values in the site template that a test replaces.
pub const TEMPLATE_LISTEN: &str = "listen 80;";
pub const TEMPLATE_ROOT: &str = "/srv/binarycrate-mvp2";
pub const TEMPLATE_SOCKET: &str = "unix:/run/binarycrate/uwsgi.sock";

/// `tests/fixtures/server/nginx-site.conf`: the production site configuration.
pub fn site_fixture() -> PathBuf {
    crate::uwsgi::fixture_dir().join("nginx-site.conf")
}

/// Debian's nginx: `nginx` on `PATH`, else `/usr/sbin/nginx` (not on a normal user's `PATH`).
pub fn nginx_bin() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// The directory of Debian's `uwsgi_params` and `mime.types`, which the configuration includes.
pub fn conf_dir() -> PathBuf {
    PathBuf::from("/etc/nginx")
}

/// Why nginx cannot be started here, if it cannot.
pub fn unavailable() -> Option<String> {
    let bin = nginx_bin();
    if !bin.is_file() {
        return Some(format!(
            "no nginx (`{}` is missing): run `scripts/test`, which installs Debian's `nginx` package",
            bin.display()
        ));
    }
    ["uwsgi_params", "mime.types"]
        .iter()
        .map(|f| conf_dir().join(f))
        .find(|p| !p.is_file())
        .map(|p| {
            format!(
                "nginx has no `{}`: reinstall Debian's `nginx-common` package",
                p.display()
            )
        })
}

/// The site configuration a test runs: the template with `listen 80;` replaced by
/// `listen 127.0.0.1:<port>;`, the server root and the uWSGI socket path replaced. Each of them
/// must be in the template, so the template cannot drift from what is tested.
pub fn render_site(
    template: &str,
    root: &Path,
    uwsgi_socket: &Path,
    port: u16,
) -> anyhow::Result<String> {
    for (what, value) in [
        ("listen", TEMPLATE_LISTEN),
        ("root", TEMPLATE_ROOT),
        ("uWSGI socket", TEMPLATE_SOCKET),
    ] {
        if !template.contains(value) {
            bail!("the nginx site template has no `{value}` (the {what} a test replaces)");
        }
    }
    let root = root.display().to_string();
    if root.contains(char::is_whitespace)
        || uwsgi_socket.to_string_lossy().contains(char::is_whitespace)
    {
        bail!(
            "nginx paths with whitespace are not supported here: `{root}`, `{}`",
            uwsgi_socket.display()
        );
    }
    Ok(template
        .replace(TEMPLATE_LISTEN, &format!("listen 127.0.0.1:{port};"))
        .replace(TEMPLATE_SOCKET, &format!("unix:{}", uwsgi_socket.display()))
        .replace(TEMPLATE_ROOT, &root))
}

/// The main configuration in place of Debian's `nginx.conf`: everything nginx writes stays in
/// `dir`, which also holds copies of Debian's `mime.types` and `uwsgi_params`. Run as root (CI), the workers run as root too, to reach the test's private temporary
/// directories and uWSGI's socket (mode 660, owned by the test's user): in production they
/// run as `www-data`, in uWSGI's group.
pub fn main_conf(dir: &Path, site: &Path, as_root: bool) -> String {
    let d = dir.display();
    let user = if as_root { "user root;\n" } else { "" };
    format!(
        "# Written by tests/src/nginx.rs for one test; the site is tests/fixtures/server/nginx-site.conf.
daemon off;
{user}worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 1024;
}}
http {{
    include mime.types;
    default_type application/octet-stream;
    sendfile on;
    log_format timed '$remote_addr [$time_local] \"$request\" $status $body_bytes_sent '
                     'rt=$request_time urt=$upstream_response_time us=$upstream_status';
    access_log {d}/access.log timed;
    client_body_temp_path {d}/temp/body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
    include {site};
}}
",
        site = site.display()
    )
}

/// Whether this process runs as root (the `Uid:` line of `/proc/self/status`).
fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A running nginx master with its workers; stopped on drop.
pub struct NginxServer {
    /// Stopped with SIGTERM, nginx's fast shutdown.
    process: Supervised,
    /// Holds the configuration, logs, pid file and temporary paths.
    dir: tempfile::TempDir,
    port: u16,
}

impl std::fmt::Debug for NginxServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NginxServer(pid {}, {}, dir {})",
            self.process.id(),
            self.url(),
            self.dir.path().display()
        )
    }
}

impl NginxServer {
    /// [`NginxServer::start`], or `None` (saying why) when nginx is not installed. Under CI (env
    /// `CI` set) that is a failure instead. Panics when the server does not come up.
    pub fn start_or_skip(root: &Path, uwsgi_socket: &Path) -> Option<Self> {
        if let Some(why) = unavailable() {
            if std::env::var_os("CI").is_some() {
                panic!("{why}");
            }
            eprintln!("skipping: {why}");
            return None;
        }
        Some(Self::start(root, uwsgi_socket).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Starts nginx serving `root`'s static files and passing the rest to the uWSGI socket
    /// `uwsgi_socket` (which need not exist yet), on a free loopback port; waits until it
    /// answers.
    pub fn start(root: &Path, uwsgi_socket: &Path) -> anyhow::Result<Self> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        let root = std::path::absolute(root)?;
        let uwsgi_socket = std::path::absolute(uwsgi_socket)?;
        let template = fs::read_to_string(site_fixture())
            .with_context(|| format!("cannot read {}", site_fixture().display()))?;
        let mut last = None;
        for _ in 0..PORT_TRIES {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let site = render_site(&template, &root, &uwsgi_socket, port)?;
            match Self::start_on(&site, port)? {
                Ok(server) => return Ok(server),
                Err(clash) => last = Some(clash),
            }
        }
        bail!(
            "nginx found no free port in {PORT_TRIES} tries; the last error log:\n{}",
            last.unwrap_or_default()
        )
    }

    /// Starts nginx on `port`: the server, or the error log when the port was taken meanwhile.
    fn start_on(site: &str, port: u16) -> anyhow::Result<Result<Self, String>> {
        let dir = tempfile::Builder::new().prefix("nginx-").tempdir()?;
        for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            fs::create_dir_all(dir.path().join("temp").join(t))?;
        }
        // The site's `include uwsgi_params;` is relative to the main configuration's directory,
        // as in /etc/nginx.
        for f in ["uwsgi_params", "mime.types"] {
            fs::copy(conf_dir().join(f), dir.path().join(f))
                .with_context(|| format!("cannot copy {}", conf_dir().join(f).display()))?;
        }
        let site_path = dir.path().join("site.conf");
        fs::write(&site_path, site)?;
        let conf = dir.path().join("nginx.conf");
        fs::write(&conf, main_conf(dir.path(), &site_path, running_as_root()))?;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("stderr.log"))?;

        // Check the configuration first: a syntax error is a clear failure, not a timeout.
        let check = Command::new(nginx_bin())
            .arg("-t")
            .arg("-q")
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .output()
            .with_context(|| format!("cannot run {}", nginx_bin().display()))?;
        if !check.status.success() {
            bail!(
                "nginx refuses the configuration {}:\n{}",
                conf.display(),
                String::from_utf8_lossy(&check.stderr)
            );
        }

        let mut command = process::command(&nginx_bin(), "TERM");
        command
            // The log for messages before the configuration is read (Debian's is stderr).
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .current_dir(dir.path())
            .stdout(out.try_clone()?)
            .stderr(out);
        let process = Supervised::spawn(&mut command, "nginx", "TERM")?;
        let mut server = NginxServer { process, dir, port };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.process.try_wait()? {
                let log = server.log();
                if log.contains("Address already in use") {
                    return Ok(Err(log));
                }
                bail!("nginx exited with {status}{}", server.log_tail());
            }
            if http_get(port, "/", Duration::from_secs(5)).is_ok() {
                return Ok(Ok(server));
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}{}",
                    server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory with its configuration and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The site configuration it runs (the rendered template).
    pub fn site_path(&self) -> PathBuf {
        self.dir.path().join("site.conf")
    }

    /// The error log so far (with nginx's own stdout and stderr).
    pub fn log(&self) -> String {
        ["error.log", "stderr.log"]
            .iter()
            .filter_map(|f| fs::read(self.dir.path().join(f)).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    /// The access log so far (with `$request_time` and the upstream's status and time).
    pub fn access_log(&self) -> String {
        fs::read(self.dir.path().join("access.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The error log's last lines, for error messages ("" when empty).
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        if lines.is_empty() {
            return String::new();
        }
        format!(
            "; the last lines of its error log in {}:\n{}",
            self.dir.path().display(),
            lines[lines.len().saturating_sub(LOG_LINES)..].join("\n")
        )
    }

    /// `GET path` (HTTP/1.0, a new connection).
    pub fn get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        http_get(self.port, path, Duration::from_secs(30))
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

impl Drop for NginxServer {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            eprintln!("{e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_site_changes_only_listen_root_and_socket() {
        let template = fs::read_to_string(site_fixture()).unwrap();
        let site = render_site(
            &template,
            Path::new("/tmp/r"),
            Path::new("/tmp/s/uwsgi.sock"),
            8123,
        )
        .unwrap();
        assert!(site.contains("listen 127.0.0.1:8123;"), "{site}");
        assert!(site.contains("alias /tmp/r/static/;"), "{site}");
        assert!(site.contains("server unix:/tmp/s/uwsgi.sock;"), "{site}");
        for gone in [TEMPLATE_LISTEN, TEMPLATE_ROOT, TEMPLATE_SOCKET] {
            assert!(!site.contains(gone), "{gone} left in\n{site}");
        }
        // Every other line is the template's.
        let changed = |l: &&str| {
            [TEMPLATE_LISTEN, TEMPLATE_ROOT, TEMPLATE_SOCKET]
                .iter()
                .any(|v| l.contains(v))
        };
        let kept: Vec<&str> = template.lines().filter(|l| !changed(l)).collect();
        let rendered: Vec<&str> = site.lines().collect();
        assert_eq!(rendered.len(), template.lines().count());
        assert!(kept.iter().all(|l| rendered.contains(l)));
        assert!(render_site("server {}\n", Path::new("/r"), Path::new("/s"), 1).is_err());
    }

    #[test]
    fn the_server_setup_doc_shows_the_tested_nginx_site_verbatim() {
        let site = fs::read_to_string(site_fixture()).unwrap();
        let doc = crate::moto::workspace_root().join("docs/server-setup.md");
        let doc = fs::read_to_string(doc).unwrap();
        assert!(
            doc.contains(&format!("```nginx\n{site}```\n")),
            "docs/server-setup.md's nginx configuration differs from {}",
            site_fixture().display()
        );
    }

    #[test]
    fn the_main_configuration_keeps_everything_in_the_test_directory() {
        let conf = main_conf(Path::new("/t/d"), Path::new("/t/d/site.conf"), false);
        assert!(conf.contains("pid /t/d/nginx.pid;"));
        assert!(conf.contains("error_log /t/d/error.log"));
        assert!(conf.contains("include /t/d/site.conf;"));
        assert!(!conf.contains("user "));
        for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            assert!(conf.contains(&format!("{t}_temp_path /t/d/temp/")), "{t}");
        }
        assert!(main_conf(Path::new("/t"), Path::new("/t/s"), true).contains("user root;"));
    }
}
