//! The recommended uWSGI configuration (`tests/fixtures/server/uwsgi.ini` + `loader.py`), proved
//! with real pyuwsgi on releases laid out by hand (no installer): after `current` is swapped and
//! the reload file touched, every worker runs the new release's code from the new release's own
//! venv, with no failed request on the way; and a release that cannot load never takes the
//! site down.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tests::uwsgi::{
    self, example_release, http_get, migrate, site_packages, swap_current, HttpResponse,
    UwsgiServer,
};

/// Whether uWSGI can run here; says why not (and fails under CI) otherwise.
fn uwsgi_available() -> bool {
    match uwsgi::unavailable() {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => panic!("{why}"),
        Some(why) => {
            eprintln!("skipping: {why}");
            false
        }
    }
}

/// Makes the release's application tell, in response headers, which worker answered and what
/// it imported: Django's file, a marker module that exists only in this release's venv, and
/// `sys.path`. (Test instrumentation of the hand-made release; the fixture is unchanged.)
fn instrument(release: &Path) {
    let name = release.file_name().unwrap().to_str().unwrap();
    fs::write(
        site_packages(&release.join("venv"))
            .unwrap()
            .join("release_marker.py"),
        format!("RELEASE = {name:?}\n"),
    )
    .unwrap();
    let wsgi = release.join("binarycrate/binarycrate/wsgi.py");
    let mut text = fs::read_to_string(&wsgi).unwrap();
    text.push_str(
        r#"

# ---- test instrumentation (tests/tests/all/uwsgi.rs) ----
import sys as _sys

import django as _django
import release_marker as _marker

_inner = application


def application(environ, start_response):
    def _start(status, headers, exc_info=None):
        return start_response(status, list(headers) + [
            ('X-Worker-Pid', str(os.getpid())),
            ('X-Django-File', _django.__file__),
            ('X-Venv-Marker', _marker.RELEASE),
            ('X-Sys-Path', ':'.join(_sys.path)),
        ], exc_info)
    return _inner(environ, _start)
"#,
    );
    fs::write(&wsgi, text).unwrap();
}

/// `count` GET / from `threads` threads at once.
fn burst(port: u16, count: usize, threads: usize) -> Vec<HttpResponse> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|_| http_get(port, "/", Duration::from_secs(30)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Asserts that `response` is release `release`'s page, made with that release's own venv.
fn assert_served_by(response: &HttpResponse, root: &Path, release: &str, other: &str) {
    let number = release.strip_prefix("Build").unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.build_number(), Some(number), "{response:?}");
    assert_eq!(response.header("X-Venv-Marker"), Some(release));
    let venv = root.join("releases").join(release).join("venv");
    let django = response.header("X-Django-File").unwrap();
    assert!(
        Path::new(django).starts_with(&venv),
        "Django imported from {django}, not from {}",
        venv.display()
    );
    let sys_path: Vec<&str> = response.header("X-Sys-Path").unwrap().split(':').collect();
    assert_eq!(
        Path::new(sys_path[0]),
        root.join("releases").join(release).join("binarycrate")
    );
    let test_venv = tests::moto::venv_dir();
    for entry in &sys_path {
        assert!(
            !entry.contains(other) && !Path::new(entry).starts_with(&test_venv),
            "sys.path has {entry}: {sys_path:?}"
        );
    }
}

/// Sets the flag when dropped, so that [`hammer`] stops when the test panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// GET / over and over from two threads until `stop` (or for at most a minute): each answer's
/// status and build number, or the error.
fn hammer(port: u16, stop: &AtomicBool) -> Vec<Result<(u16, String), String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        seen.push(
                            http_get(port, "/", Duration::from_secs(30))
                                .map(|r| {
                                    let build = r.build_number().unwrap_or("").to_owned();
                                    (r.status, build)
                                })
                                .map_err(|e| format!("{e:#}")),
                        );
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    seen
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Keeps requesting until every worker the stats list has answered at least once, asserting
/// each answer with `check`.
fn every_worker_answers(server: &UwsgiServer, check: impl Fn(&HttpResponse)) {
    let workers: BTreeSet<u32> = server.workers().unwrap().iter().map(|w| w.pid).collect();
    let mut answered = BTreeSet::new();
    for _ in 0..20 {
        for response in burst(server.port(), 20, 4) {
            check(&response);
            let pid: u32 = response.header("X-Worker-Pid").unwrap().parse().unwrap();
            assert!(
                workers.contains(&pid),
                "pid {pid} is not a worker of {workers:?}"
            );
            answered.insert(pid);
        }
        if answered == workers {
            return;
        }
    }
    panic!("only workers {answered:?} of {workers:?} answered");
}

#[test]
fn a_chain_reload_moves_every_worker_to_the_new_release_and_its_own_venv() {
    if !uwsgi_available() {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| example_release(root, "000001"));
        let b = s.spawn(|| example_release(root, "000002"));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    migrate(root, &a).unwrap();
    instrument(&a);
    instrument(&b);
    swap_current(root, "Build000001").unwrap();
    let setup = started.elapsed();

    let server = UwsgiServer::start(root).unwrap();
    let up = started.elapsed() - setup;
    let before = server.workers().unwrap();
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(
        before.iter().all(|w| w.accepting && w.pid != 0),
        "{before:?}"
    );
    every_worker_answers(&server, |r| {
        assert_served_by(r, root, "Build000001", "Build000002")
    });

    // The installer's switch: swap `current`, then ask for a chain reload, with requests
    // arriving all along.
    let stop = AtomicBool::new(false);
    let (took, during) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let during = s.spawn(|| hammer(server.port(), &stop));
        std::thread::sleep(Duration::from_millis(200));
        swap_current(root, "Build000002").unwrap();
        server.reload().unwrap();
        let took = server.wait_for_new_workers(&before, Duration::from_secs(30));
        stop.store(true, Ordering::Relaxed);
        (took.unwrap(), during.join().unwrap())
    });
    println!(
        "uWSGI: release setup {setup:.1?}, start {up:.1?}, chain reload of 2 workers {took:.2?} \
         after the touch ({} requests meanwhile)",
        during.len()
    );
    assert!(!during.is_empty());
    for answer in &during {
        match answer {
            Ok((200, build)) if build == "000001" || build == "000002" => {}
            other => panic!(
                "a request failed during the chain reload: {other:?}{}",
                server.log_tail()
            ),
        }
    }

    // Every worker now serves B's code with B's venv, and nothing of A.
    let after = server.workers().unwrap();
    for response in burst(server.port(), 50, 5) {
        assert_served_by(&response, root, "Build000002", "Build000001");
    }
    every_worker_answers(&server, |r| {
        assert_served_by(r, root, "Build000002", "Build000001")
    });
    assert_eq!(
        server
            .workers()
            .unwrap()
            .iter()
            .map(|w| w.pid)
            .collect::<Vec<_>>(),
        after.iter().map(|w| w.pid).collect::<Vec<_>>(),
        "no worker was respawned since"
    );
    let log = server.log();
    assert!(
        log.contains("has been touched... chain reload !!!"),
        "{log}"
    );
    assert!(log.contains("chain reloading complete"), "{log}");
    server.stop().unwrap();
}

#[test]
fn a_release_that_cannot_load_never_takes_the_site_down() {
    if !uwsgi_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = example_release(root, "000001").unwrap();
    migrate(root, &a).unwrap();
    instrument(&a);
    // Build000003: its application fails on import.
    let c = root.join("releases/Build000003");
    fs::create_dir_all(c.join("binarycrate/binarycrate")).unwrap();
    fs::write(c.join("binarycrate/binarycrate/__init__.py"), "").unwrap();
    fs::write(
        c.join("binarycrate/binarycrate/wsgi.py"),
        "raise ImportError('Build000003 is broken')\n",
    )
    .unwrap();
    let python = site_packages(&a.join("venv")).unwrap();
    let python = python.parent().unwrap().file_name().unwrap();
    fs::create_dir_all(c.join("venv/lib").join(python).join("site-packages")).unwrap();
    swap_current(root, "Build000001").unwrap();

    let server = UwsgiServer::start(root).unwrap();
    let before = server.workers().unwrap();

    let stop = AtomicBool::new(false);
    let (stuck, during) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let during = s.spawn(|| hammer(server.port(), &stop));
        swap_current(root, "Build000003").unwrap();
        server.reload().unwrap();
        // The chain reload's first worker cannot load the release and keeps being respawned;
        // the other keeps serving Build000001.
        let deadline = Instant::now() + Duration::from_secs(30);
        let stuck = loop {
            let now = server.workers().unwrap();
            let respawned = now
                .iter()
                .zip(&before)
                .filter(|(n, b)| n.respawn_count >= b.respawn_count + 2)
                .count();
            if respawned > 0 {
                break now;
            }
            assert!(Instant::now() < deadline, "{now:?}{}", server.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        (stuck, during.join().unwrap())
    });
    assert_eq!(
        stuck
            .iter()
            .filter(|w| before.iter().any(|b| b.pid == w.pid))
            .count(),
        1,
        "one worker is the old one, still serving: {stuck:?}"
    );
    assert!(!during.is_empty());
    for answer in &during {
        assert_eq!(
            answer,
            &Ok((200, "000001".to_owned())),
            "{}",
            server.log_tail()
        );
    }
    let log = server.log();
    assert!(log.contains("Build000003 is broken"), "{log}");
    assert!(log.contains("cannot load"), "{log}");

    // Rolling back (swap back, touch) completes the chain on Build000001.
    let started = Instant::now();
    swap_current(root, "Build000001").unwrap();
    server.reload().unwrap();
    server
        .wait_for_new_workers(&before, Duration::from_secs(30))
        .unwrap();
    println!(
        "uWSGI: recovered from a broken release in {:.2?} after the rollback",
        started.elapsed()
    );
    every_worker_answers(&server, |r| {
        assert_served_by(r, root, "Build000001", "Build000003")
    });
    server.stop().unwrap();
}
