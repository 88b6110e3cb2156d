//! Concurrent activations and a full disk, against a real uWSGI.
//!
//! Four `installer activate` of four different builds start together on one server root: the
//! lock serializes them, each either succeeds or gives up (exit 5) naming the holder, the
//! journal records exactly the ones that ran and `current` ends at a complete release. Then,
//! on a small tmpfs the test mounts, an activation runs out of space while unpacking: it fails
//! cleanly (exit 1, saying the disk is full and where), leaves no partial release and the old
//! build keeps serving.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::report::Report;
use common::Sidecar;
use tests::published::{self, ServerRoot};
use tests::show;

use crate::crash::strays;

fn ready() -> bool {
    tests::ready(tests::uwsgi::unavailable().or_else(tests::example::wheelhouse_missing))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn report(out: &Output) -> Report {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON report ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

#[test]
fn four_concurrent_activations_are_serialized_by_the_lock() {
    if !ready() {
        return;
    }
    let published = published::builds();
    let tmp = tempfile::tempdir().unwrap();
    // Long enough that the second one usually gets its turn, too short for all four to.
    let lock_timeout = "20";
    let site = ServerRoot::new(tmp.path(), &published, 600).unwrap();

    // uWSGI starts once the first activation has made `current`, as on a fresh machine.
    let root = site.root.clone();
    let options = site.uwsgi_options();
    let starter = std::thread::spawn(move || {
        let t = Instant::now();
        while fs::symlink_metadata(root.join("current")).is_err() {
            assert!(t.elapsed().as_secs() < 600, "no `current` appeared");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        tests::uwsgi::UwsgiServer::start_with(&root, &options).unwrap()
    });
    let children: Vec<(String, std::process::Child)> = published::BUILDS
        .iter()
        .map(|n| {
            let build = format!("Build{n}");
            let child = site
                .installer_command(
                    &[
                        "activate",
                        "--build",
                        &build,
                        "--lock-timeout",
                        lock_timeout,
                        "--json",
                    ],
                    &[],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (build, child)
        })
        .collect();
    let results: Vec<(String, u32, Output)> = children
        .into_iter()
        .map(|(build, child)| {
            let pid = child.id();
            (build, pid, child.wait_with_output().unwrap())
        })
        .collect();
    let server = starter.join().unwrap();

    let journal: Vec<serde_json::Value> =
        fs::read_to_string(site.root.join(".deploy/journal.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journal line {l}: {e}")))
            .collect();
    let mut succeeded = Vec::new();
    let mut locked_out = 0;
    for (build, pid, out) in &results {
        let r = report(out);
        let mine: Vec<&serde_json::Value> = journal.iter().filter(|j| j["pid"] == *pid).collect();
        match out.status.code() {
            Some(0) => {
                assert_eq!(
                    r.outcome,
                    common::report::Outcome::Success,
                    "{}",
                    stderr(out)
                );
                // It ran: started, and finished with success, under its own pid.
                for event in ["started", "live", "finished"] {
                    assert!(
                        mine.iter()
                            .any(|j| j["event"] == event && j["build"] == build[5..]),
                        "{build}: no `{event}` record for pid {pid} in the journal"
                    );
                }
                succeeded.push(build.clone());
            }
            Some(5) => {
                // Gave up waiting, naming who held the lock, in words and in the report.
                let err = stderr(out);
                let named = results
                    .iter()
                    .any(|(other, _, _)| other != build && err.contains(other.as_str()));
                assert!(
                    err.contains("lock") && err.contains("pid") && named,
                    "{build}: {err}"
                );
                assert_eq!(r.exit_code, 5);
                assert_eq!(r.outcome, common::report::Outcome::Locked);
                assert!(
                    r.error.as_deref().is_some_and(|e| e.contains("lock")),
                    "{:?}",
                    r.error
                );
                assert!(mine.is_empty(), "{build} never ran but journalled {mine:?}");
                locked_out += 1;
            }
            other => panic!("{build} exited {other:?}:\n{}", stderr(out)),
        }
    }
    assert!(!succeeded.is_empty(), "none of the activations succeeded");

    // `current` is one complete release: the last one proven live.
    let last_live = journal
        .iter()
        .rev()
        .find(|j| j["event"] == "live")
        .and_then(|j| j["build"].as_str())
        .map(|b| format!("Build{b}"))
        .expect("a live record");
    assert_eq!(
        site.current().as_deref(),
        Some(format!("releases/{last_live}").as_str())
    );
    let verify = site.installer(&["verify"], &[]);
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
    for _ in 0..5 {
        let r = server.request("/").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.build_number(), Some(&last_live[5..]));
    }
    assert!(strays(&site.root).is_empty(), "{:?}", strays(&site.root));
    show(&format!(
        "concurrency: activations=4 succeeded={} locked-out={locked_out} current={last_live} (succeeded: {})",
        succeeded.len(),
        succeeded.join(", ")
    ));
}

/// Unmounts the test's tmpfs, even when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.0).status();
        if !status.is_ok_and(|s| s.success()) {
            // Something still has a file open there: detach it now, freed when it closes.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
fn available(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().map(|w| w.parse::<u64>().unwrap());
    words.next().unwrap() * words.next().unwrap()
}

#[test]
fn an_activation_that_fills_the_disk_fails_cleanly_and_the_old_build_keeps_serving() {
    if !ready() {
        return;
    }
    if !is_root() {
        let why = "mounting a tmpfs needs root";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipping: {why}");
        return;
    }
    let published = published::builds();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    fs::create_dir(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=320m,mode=0755", "tmpfs"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs failed");
    let _mounted = Mounted(disk.clone());

    let site = ServerRoot::new(&disk, &published, 60).unwrap();
    let server = site.first_activation("Build000001").unwrap();

    // Leave less room than Build000002 needs: its download (artifact and sidecar) fits, its
    // unpacked tree does not — even though most of its files are hard links to Build000001's
    // equal ones and take no space, the files that differ and its own `release.json` (the
    // archive's last entry, as large as the sidecar) do.
    let sidecar_path = published.store.join("binarycrate/Build000002/release.json");
    let sidecar = Sidecar::read(&sidecar_path).unwrap();
    let archive = sidecar.archive.as_ref().unwrap().size;
    let sidecar_bytes = fs::metadata(&sidecar_path).unwrap().len();
    let room = archive + sidecar_bytes + (256 << 10);
    let free = available(&disk);
    assert!(free > room, "the tmpfs is too small: {free} bytes free");
    let ballast = disk.join("ballast");
    {
        let mut f = fs::File::create(&ballast).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        let mut left = free - room;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        f.sync_all().unwrap();
    }
    let releases_before = names(&site.root.join("releases"));
    let statics_before = names(&site.root.join("static"));

    let out = site.installer(&["activate", "--build", "Build000002", "--json"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let r = report(&out);
    assert_eq!(r.exit_code, 1);
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("the disk is full")
            && error.contains(&site.root.display().to_string())
            && err.contains("the disk is full"),
        "{error}\n{err}"
    );
    show(&format!(
        "full disk: {}",
        error.lines().next().unwrap_or("")
    ));
    // Nothing partial stays; the good release and its static link do.
    assert_eq!(names(&site.root.join("releases")), releases_before);
    assert_eq!(names(&site.root.join("static")), statics_before);
    assert!(strays(&site.root).is_empty(), "{:?}", strays(&site.root));
    assert_eq!(site.current().as_deref(), Some("releases/Build000001"));
    for _ in 0..10 {
        let r = server.request("/").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.build_number(), Some("000001"));
    }
    let verify = site.installer(&["verify"], &[]);
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));

    // With the space back, the same command goes through.
    fs::remove_file(&ballast).unwrap();
    let out = site.installer(&["activate", "--build", "Build000002"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.request("/").unwrap().build_number(), Some("000002"));
    drop(server);
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
