//! Zero downtime, measured: while `installer activate` (Build000002 over a live Build000001) and
//! then `installer rollback` run, a bounded load loop of several clients on loopback requests
//! pages and static files through a real nginx (`tests/fixtures/server/nginx-site.conf`) in
//! front of the real uWSGI (`tests/fixtures/server/uwsgi.ini`: 2 workers, chain reload through
//! the master FIFO). Every answer must be a 200 showing exactly one of the two builds, with
//! static URLs of that same build; requests started after `activate` exited get only the new
//! build, those started after `rollback` exited only the old one; the static files of both
//! builds answer with their own bytes throughout. Prints
//! `zero-downtime: requests=N failed=N old=N new=N`, latencies and switch times.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::report::Report;
use tests::bins;
use tests::example::{self, ExampleRepo};
use tests::nginx::NginxServer;
use tests::show;
use tests::uwsgi::{UwsgiOptions, UwsgiServer};

/// Concurrent clients: half keep their connection to nginx alive, half open one per request.
const CLIENTS: usize = 6;
/// The load stops by itself after this many requests (an activation slowed down by a busy
/// machine may take a minute: about 60,000 requests at this pace)...
const MAX_REQUESTS: usize = 200_000;
/// ... or after this long, whichever comes first.
const MAX_DURATION: Duration = Duration::from_secs(300);
/// At least this many requests in all.
const MIN_REQUESTS: usize = 2_000;
/// Requests started before `activate` begins, and after each command exits.
const AROUND_EACH: usize = 400;
/// Each client's pause between rounds, which leaves the installer some CPU.
const ROUND_PAUSE: Duration = Duration::from_millis(5);
/// One request's limit; a slower answer is a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The static file every page references and the clients fetch.
const CSS: &str = "dashboard/app.css";

/// One of the two builds: what its pages and static files must look like.
#[derive(Debug)]
struct Build {
    /// `000001`
    number: String,
    /// Its commit: `VERSION_HASH`, the static URL prefix `/static/<hash>/`.
    hash: String,
    /// `app.css` as committed in its tag.
    css: Vec<u8>,
}

impl Build {
    fn css_path(&self) -> String {
        format!("/static/{}/{CSS}", self.hash)
    }
}

/// What a request asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Page,
    /// The static file of build 0 (old) or 1 (new).
    Static(usize),
}

/// One request as a client saw it.
#[derive(Debug)]
struct Sample {
    kind: Kind,
    started: Instant,
    latency: Duration,
    /// The build (0 old, 1 new) it showed, or why it failed.
    result: Result<usize, String>,
}

/// An answer.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The server closes the connection after this answer (`Connection: close`).
    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
    }
}

/// A plain HTTP/1.1 client for one loopback port: with `keep_alive` it reuses its connection
/// until nginx says `Connection: close`; without, each request has its own connection.
struct Client {
    port: u16,
    keep_alive: bool,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(port: u16, keep_alive: bool) -> Self {
        Self {
            port,
            keep_alive,
            conn: None,
        }
    }

    /// `GET path`. Any error (refused, reset, timeout, a malformed answer) drops the
    /// connection and is reported, never retried.
    fn get(&mut self, path: &str) -> Result<Response, String> {
        let reused = self.conn.is_some();
        let result = self.exchange(path);
        if !(self.keep_alive && result.as_ref().is_ok_and(|r| !r.closes())) {
            self.conn = None;
        }
        result.map_err(|e| {
            let how = if reused { "reused" } else { "new" };
            format!("{e} (on a {how} connection)")
        })
    }

    fn exchange(&mut self, path: &str) -> Result<Response, String> {
        if self.conn.is_none() {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("cannot connect: {e}"))?;
            stream
                .set_read_timeout(Some(REQUEST_TIMEOUT))
                .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
                .and_then(|()| stream.set_nodelay(true))
                .map_err(|e| e.to_string())?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let close = if self.keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: zero-downtime-test\r\n{close}\r\n",
            self.port
        );
        conn.get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| format!("cannot send: {e}"))?;

        let mut line = String::new();
        let read_line = |conn: &mut BufReader<TcpStream>, line: &mut String| {
            line.clear();
            match conn.read_line(line) {
                Ok(0) => Err("connection closed before a complete head".to_owned()),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("cannot read the answer: {e}")),
            }
        };
        read_line(conn, &mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP status line: {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            read_line(conn, &mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l
                .split_once(':')
                .ok_or_else(|| format!("malformed header {l:?}"))?;
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let length = response.header("content-length").map(str::parse::<usize>);
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        if let Some(length) = length {
            let length = length.map_err(|e| format!("bad Content-Length: {e}"))?;
            response.body.resize(length, 0);
            conn.read_exact(&mut response.body)
                .map_err(|e| format!("body cut short: {e}"))?;
        } else if chunked {
            loop {
                read_line(conn, &mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("bad chunk size {line:?}"))?;
                let mut chunk = vec![0; size + 2];
                conn.read_exact(&mut chunk)
                    .map_err(|e| format!("chunk cut short: {e}"))?;
                if size == 0 {
                    break;
                }
                response.body.extend_from_slice(&chunk[..size]);
            }
        } else {
            conn.read_to_end(&mut response.body)
                .map_err(|e| format!("body cut short: {e}"))?;
            self.conn = None;
        }
        Ok(response)
    }
}

/// Which build a page is, when it is exactly one build's page: one `Build number`, the same in
/// the visible text, and every static URL under that build's own hash.
fn check_page(r: &Response, builds: &[Build; 2]) -> Result<usize, String> {
    let body = String::from_utf8_lossy(&r.body);
    if r.status != 200 {
        return Err(format!("HTTP {}: {:.200}", r.status, body));
    }
    let shown: Vec<&str> = body
        .match_indices("Build number = ")
        .map(|(i, m)| body[i + m.len()..].get(..6).unwrap_or(""))
        .collect();
    let [number] = shown[..] else {
        return Err(format!(
            "the page shows {} build numbers: {shown:?}",
            shown.len()
        ));
    };
    let index = builds
        .iter()
        .position(|b| b.number == number)
        .ok_or_else(|| format!("the page shows build {number}, neither of the two"))?;
    let build = &builds[index];
    if !body.contains(&format!("<p class=\"build\">Build {number}</p>")) {
        return Err(format!(
            "a mix: `Build number = {number}` but another visible build"
        ));
    }
    let hashes: Vec<&str> = body
        .match_indices("/static/")
        .map(|(i, m)| body[i + m.len()..].split('/').next().unwrap_or(""))
        .collect();
    if hashes.is_empty() || !body.contains(&build.css_path()) {
        return Err(format!(
            "build {number}'s page does not link {}",
            build.css_path()
        ));
    }
    if let Some(other) = hashes.iter().find(|h| **h != build.hash) {
        return Err(format!(
            "a mix: build {number}'s page links static files of `{other}`, not `{}`",
            build.hash
        ));
    }
    Ok(index)
}

/// The static file's answer must be 200 with exactly that build's bytes.
fn check_static(r: &Response, build: &Build) -> Result<(), String> {
    if r.status != 200 {
        return Err(format!(
            "HTTP {} for {}: {:.200}",
            r.status,
            build.css_path(),
            String::from_utf8_lossy(&r.body)
        ));
    }
    if r.body != build.css {
        return Err(format!(
            "{} answered {} bytes that are not build {}'s {} bytes",
            build.css_path(),
            r.body.len(),
            build.number,
            build.css.len()
        ));
    }
    Ok(())
}

/// Shared by the clients and the test's main thread.
struct Load<'a> {
    port: u16,
    builds: &'a [Build; 2],
    /// Requests started so far (claimed before each request: the count bound).
    started: AtomicUsize,
    /// Clients still running.
    running: AtomicUsize,
    /// Some client got a page of the new build: its static files exist, fetch them too.
    new_seen: AtomicBool,
    stop: AtomicBool,
    deadline: Instant,
}

impl Load<'_> {
    /// Claims one request; false when the load must end (stopped, out of count or time).
    fn claim(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && Instant::now() < self.deadline
            && self.started.fetch_add(1, Ordering::SeqCst) < MAX_REQUESTS
    }

    /// One client: a page, then the static file it links (as a browser would), and every third
    /// round the static files of both builds as pages still open elsewhere would.
    fn client(&self, keep_alive: bool) -> Vec<Sample> {
        struct Leaving<'a>(&'a AtomicUsize);
        impl Drop for Leaving<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _leaving = Leaving(&self.running);
        let mut client = Client::new(self.port, keep_alive);
        let mut samples = Vec::new();
        let fetch_static = |client: &mut Client, samples: &mut Vec<Sample>, index: usize| {
            let build = &self.builds[index];
            let started = Instant::now();
            let result = client
                .get(&build.css_path())
                .and_then(|r| check_static(&r, build))
                .map(|()| index);
            samples.push(Sample {
                kind: Kind::Static(index),
                started,
                latency: started.elapsed(),
                result,
            });
        };
        for round in 0.. {
            if !self.claim() {
                break;
            }
            let started = Instant::now();
            let result = client.get("/").and_then(|r| check_page(&r, self.builds));
            samples.push(Sample {
                kind: Kind::Page,
                started,
                latency: started.elapsed(),
                result: result.clone(),
            });
            if let Ok(index) = result {
                if index == 1 {
                    self.new_seen.store(true, Ordering::Relaxed);
                }
                if !self.claim() {
                    break;
                }
                fetch_static(&mut client, &mut samples, index);
            }
            if round % 3 == 2 {
                for index in [0, 1] {
                    if index == 1 && !self.new_seen.load(Ordering::Relaxed) {
                        continue;
                    }
                    if !self.claim() {
                        return samples;
                    }
                    fetch_static(&mut client, &mut samples, index);
                }
            }
            std::thread::sleep(ROUND_PAUSE);
        }
        samples
    }

    /// Waits until at least `count` requests were started, the load has ended, or `MAX_DURATION`
    /// passed.
    fn wait_for(&self, count: usize) {
        while self.started.load(Ordering::SeqCst) < count
            && self.running.load(Ordering::SeqCst) > 0
            && Instant::now() < self.deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Sets the flag when dropped, so that the clients stop when the test panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// When each command ran, as the test's main thread saw it.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    activate: (Instant, Instant),
    rollback: (Instant, Instant),
}

/// The build a request started at `t` must show, if only one is allowed then.
fn required_build(t: Instant, tl: &Timeline) -> Option<usize> {
    if t < tl.activate.0 {
        Some(0)
    } else if t < tl.activate.1 {
        None
    } else if t < tl.rollback.0 {
        Some(1)
    } else if t < tl.rollback.1 {
        None
    } else {
        Some(0)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

fn phases(r: &Report) -> String {
    r.phases
        .iter()
        .map(|p| format!("{} {}ms", p.name, p.duration_ms))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The phases from `swap` to the end of `health`: how long the switch itself took.
fn switch_ms(r: &Report) -> u64 {
    r.phases
        .iter()
        .filter(|p| ["swap", "reload", "health"].contains(&p.name.as_str()))
        .map(|p| p.duration_ms)
        .sum()
}

fn ready() -> bool {
    tests::ready(
        tests::uwsgi::unavailable()
            .or_else(tests::nginx::unavailable)
            .or_else(example::wheelhouse_missing),
    )
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn report(out: &Output, what: &str) -> Report {
    ok(out, what);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: not one JSON report ({e}):\n{text}"))
}

/// Packages the tag `Build<number>` and publishes it to the file store.
fn package_and_publish(repo: &ExampleRepo, out: &Path, store: &Path, number: &str) {
    let mut package = bins::builder_offline(&repo.work);
    package
        .args(["package", "--tag", &format!("Build{number}"), "--out"])
        .arg(out);
    let artifact = ok(&package.output().unwrap(), "builder package");
    let publish = Command::new(bins::builder())
        .current_dir(&repo.work)
        .arg("publish")
        .arg(artifact.lines().last().unwrap().trim())
        .arg("--store")
        .arg(format!("file://{}", store.display()))
        .output()
        .unwrap();
    ok(&publish, "builder publish");
}

fn build_of(repo: &ExampleRepo, number: &str) -> Build {
    let tag = format!("Build{number}");
    Build {
        number: number.to_owned(),
        hash: repo.commit(&tag).unwrap(),
        css: example::git(
            &repo.work,
            &["show", &format!("{tag}:binarycrate/dashboard/static/{CSS}")],
        )
        .unwrap()
        .into_bytes(),
    }
}

#[test]
fn activate_and_rollback_under_load_through_nginx_fail_no_request() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = example::create(&tmp.path().join("repo")).unwrap();
    let root = tmp.path().join("srv");
    let store = tmp.path().join("store");
    fs::create_dir_all(root.join("shared")).unwrap();
    fs::write(
        root.join("shared/production.py"),
        example::production_settings(&repo, &root).unwrap(),
    )
    .unwrap();

    // Two builds whose pages and static files differ.
    package_and_publish(&repo, &tmp.path().join("out1"), &store, "000001");
    repo.commit_and_tag("000002", |w| {
        let css = w.join("binarycrate/dashboard/static").join(CSS);
        let mut text = fs::read_to_string(&css).unwrap();
        text.push_str("/* Build000002 */\n");
        fs::write(&css, text).unwrap();
    })
    .unwrap();
    package_and_publish(&repo, &tmp.path().join("out2"), &store, "000002");
    let builds = [build_of(&repo, "000001"), build_of(&repo, "000002")];
    assert_ne!(builds[0].hash, builds[1].hash);
    assert_ne!(builds[0].css, builds[1].css);

    // nginx first (it answers 502 until uWSGI runs); the installer's health check goes through it.
    let run = tmp.path().join("run");
    fs::create_dir_all(&run).unwrap();
    let socket = run.join("uwsgi.sock");
    let Some(nginx) = NginxServer::start_or_skip(&root, &socket) else {
        return;
    };
    let (http_port, stats_port) = (tests::free_port(), tests::free_port());
    let config = tmp.path().join("installer.toml");
    fs::write(
        &config,
        format!(
            r#"root = {root:?}
store = "file://{store}"
python = {python:?}
reload_fifo = "{root}/.deploy/uwsgi.fifo"

[health]
url = "http://127.0.0.1:{nginx_port}/"
stats_url = "http://127.0.0.1:{stats_port}/"
timeout_secs = 60
confirm_requests = 10
"#,
            root = root.display().to_string(),
            store = store.display(),
            python = tests::moto::venv_dir()
                .join("bin/python")
                .display()
                .to_string(),
            nginx_port = nginx.port(),
        ),
    )
    .unwrap();
    let installer = |args: &[&str]| {
        Command::new(bins::installer())
            .env("BINARYCRATE_INSTALLER_CONFIG", &config)
            .args(args)
            .output()
            .unwrap()
    };

    // Build000001 live, served by uWSGI started once `current` exists (a fresh machine).
    let options = UwsgiOptions {
        http_port: Some(http_port),
        stats_port: Some(stats_port),
        uwsgi_socket: Some(socket.clone()),
        ..UwsgiOptions::default()
    };
    let starter = std::thread::spawn({
        let root = root.clone();
        move || {
            let t = Instant::now();
            while fs::symlink_metadata(root.join("current")).is_err() {
                assert!(
                    t.elapsed() < Duration::from_secs(120),
                    "no `current` appeared"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            UwsgiServer::start_with(&root, &options).unwrap()
        }
    });
    let first = installer(&["activate", "--build", "Build000001", "--json"]);
    let uwsgi = starter.join().unwrap();
    report(&first, "activate Build000001");
    assert!(
        root.join("static")
            .join(&builds[0].hash)
            .join(CSS)
            .is_file(),
        "no static link for build 1's hash {}",
        builds[0].hash
    );
    let mut probe = Client::new(nginx.port(), false);
    let page = probe.get("/").unwrap();
    assert_eq!(check_page(&page, &builds), Ok(0), "{}", nginx.log_tail());
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let css = probe.get(&builds[0].css_path()).unwrap();
    check_static(&css, &builds[0]).unwrap();
    assert_eq!(
        css.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    show(&format!(
        "zero-downtime: nginx {} (pid {}) -> uWSGI {} (2 workers, unix socket {})",
        nginx.url(),
        nginx.pid(),
        uwsgi.pid(),
        socket.display()
    ));

    let load = Load {
        port: nginx.port(),
        builds: &builds,
        started: AtomicUsize::new(0),
        running: AtomicUsize::new(CLIENTS),
        new_seen: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        deadline: Instant::now() + MAX_DURATION,
    };
    let load_start = Instant::now();
    let collected = Mutex::new(Vec::new());
    let mut timeline = None;
    let mut reports = None;
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&load.stop);
        for c in 0..CLIENTS {
            let (load, collected) = (&load, &collected);
            s.spawn(move || {
                let samples = load.client(c % 2 == 0);
                collected.lock().unwrap().extend(samples);
            });
        }
        load.wait_for(AROUND_EACH);
        let a0 = Instant::now();
        let act = installer(&["activate", "--build", "Build000002", "--json"]);
        let a1 = Instant::now();
        let act = report(&act, "activate Build000002 under load");
        load.wait_for(load.started.load(Ordering::SeqCst) + AROUND_EACH);
        let r0 = Instant::now();
        let rb = installer(&["rollback", "--json"]);
        let r1 = Instant::now();
        let rb = report(&rb, "rollback under load");
        load.wait_for((load.started.load(Ordering::SeqCst) + AROUND_EACH).max(MIN_REQUESTS));
        load.stop.store(true, Ordering::Relaxed);
        timeline = Some(Timeline {
            activate: (a0, a1),
            rollback: (r0, r1),
        });
        reports = Some((act, rb));
    });
    let load_time = load_start.elapsed();
    let tl = timeline.unwrap();
    let (act, rb) = reports.unwrap();
    let mut samples = collected.into_inner().unwrap();
    samples.sort_by_key(|s| s.started);

    // Judge every answer, also by when it was asked for.
    let mut failures = Vec::new();
    let (mut old, mut new) = (0, 0);
    let mut in_window = [0usize; 5];
    for s in &samples {
        let verdict = match (&s.result, s.kind) {
            (Err(e), _) => Err(e.clone()),
            (Ok(b), Kind::Page) => match required_build(s.started, &tl) {
                Some(want) if want != *b => Err(format!(
                    "build {} when only {} may answer",
                    builds[*b].number, builds[want].number
                )),
                _ => Ok(*b),
            },
            (Ok(b), Kind::Static(_)) => Ok(*b),
        };
        match (verdict, s.kind) {
            (Err(e), kind) => failures.push(format!(
                "+{:.3}s {kind:?}: {e}",
                (s.started - load_start).as_secs_f64()
            )),
            (Ok(b), Kind::Page) => {
                if b == 0 {
                    old += 1
                } else {
                    new += 1
                }
                let w = [tl.activate.0, tl.activate.1, tl.rollback.0, tl.rollback.1]
                    .iter()
                    .filter(|t| s.started >= **t)
                    .count();
                in_window[w] += 1;
            }
            (Ok(_), Kind::Static(_)) => {}
        }
    }

    // The figures.
    let latencies = |kind: fn(Kind) -> bool| {
        let mut v: Vec<Duration> = samples
            .iter()
            .filter(|s| kind(s.kind))
            .map(|s| s.latency)
            .collect();
        v.sort();
        v
    };
    let pages = latencies(|k| k == Kind::Page);
    let statics = latencies(|k| k != Kind::Page);
    let pages_ok = |from: Instant, to: Instant, b: usize| {
        samples.iter().filter(move |s| {
            s.kind == Kind::Page && s.started >= from && s.started < to && s.result == Ok(b)
        })
    };
    let mixed = |from: Instant, to: Instant, first: usize, last: usize| {
        let first_of = pages_ok(from, to, first).map(|s| s.started).next();
        let last_of = pages_ok(from, to, last).map(|s| s.started).next_back();
        match (first_of, last_of) {
            (Some(a), Some(b)) if b > a => format!("{:.2}s", (b - a).as_secs_f64()),
            _ => "0s".to_owned(),
        }
    };
    show(&format!(
        "zero-downtime: {} clients ({} keep-alive) for {:.1}s; pages {} (p50 {}, p99 {}, max {}), static files {} (p50 {}, p99 {}, max {})",
        CLIENTS,
        CLIENTS.div_ceil(2),
        load_time.as_secs_f64(),
        pages.len(),
        ms(percentile(&pages, 0.5)),
        ms(percentile(&pages, 0.99)),
        ms(pages.last().copied().unwrap_or_default()),
        statics.len(),
        ms(percentile(&statics, 0.5)),
        ms(percentile(&statics, 0.99)),
        ms(statics.last().copied().unwrap_or_default()),
    ));
    show(&format!(
        "zero-downtime: activate Build000002 {:.2}s, swap to healthy {}ms ({}); both builds answered for {} of it",
        (tl.activate.1 - tl.activate.0).as_secs_f64(),
        switch_ms(&act),
        phases(&act),
        mixed(tl.activate.0, tl.activate.1, 1, 0),
    ));
    show(&format!(
        "zero-downtime: rollback {:.2}s, swap to healthy {}ms ({}); both builds answered for {} of it",
        (tl.rollback.1 - tl.rollback.0).as_secs_f64(),
        switch_ms(&rb),
        phases(&rb),
        mixed(tl.rollback.0, tl.rollback.1, 0, 1),
    ));
    show(&format!(
        "zero-downtime: pages before activate {}, during {}, between {}, during rollback {}, after {}",
        in_window[0], in_window[1], in_window[2], in_window[3], in_window[4]
    ));
    for f in failures.iter().take(20) {
        show(&format!("zero-downtime: FAILED {f}"));
    }
    show(&format!(
        "zero-downtime: requests={} failed={} old={old} new={new}",
        samples.len(),
        failures.len()
    ));

    assert!(
        failures.is_empty(),
        "{} of {} requests failed (first: {}); nginx{}",
        failures.len(),
        samples.len(),
        failures[0],
        nginx.log_tail()
    );
    assert!(
        samples.len() >= MIN_REQUESTS,
        "only {} requests in {:.1}s (at least {MIN_REQUESTS} wanted)",
        samples.len(),
        load_time.as_secs_f64()
    );
    // The load covered the whole story: before, during and after each command.
    assert!(
        in_window.iter().all(|n| *n > 0) && in_window[2] >= 50 && in_window[4] >= 50,
        "the load did not cover every phase (pages per window {in_window:?}); it stops after {MAX_REQUESTS} requests or {MAX_DURATION:?}"
    );
    drop(uwsgi);
    drop(nginx);
}
