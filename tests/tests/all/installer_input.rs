//! `installer` refusals that need no application server: a missing shared file, a release
//! directory that is not the published build, a missing store, and `os-update`'s report.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::report::Report;
use tests::bins;
use tests::example;

fn installer(config: &Path, args: &[&str]) -> Output {
    Command::new(bins::installer())
        .env("BINARYCRATE_INSTALLER_CONFIG", config)
        .args(args)
        .output()
        .unwrap()
}

/// Every file under `root` with its content, for "nothing changed" checks (`.deploy/` left out:
/// the lock file and journal may change there).
fn listing(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = walkdir_like(root)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".deploy"))
        .collect();
    v.sort();
    v
}

fn walkdir_like(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                stack.push(p);
            } else if ft.is_symlink() {
                out.push((
                    rel,
                    fs::read_link(&p)
                        .unwrap()
                        .display()
                        .to_string()
                        .into_bytes(),
                ));
            } else {
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Packages the example's Build000001 and publishes it to a file store in `dir`; the store.
pub(crate) fn publish_build1(dir: &Path, repo: &example::ExampleRepo) -> std::path::PathBuf {
    let store = dir.join("store");
    let packaged = bins::builder_offline(&repo.work)
        .args(["package", "--tag", "Build000001", "--out"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(
        packaged.status.success(),
        "{}",
        String::from_utf8_lossy(&packaged.stderr)
    );
    let artifact = String::from_utf8(packaged.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let published = Command::new(bins::builder())
        .current_dir(&repo.work)
        .arg("publish")
        .arg(&artifact)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    store
}

#[test]
fn refusals_change_nothing_and_say_what_to_do() {
    if !bins::have_wheelhouse() {
        return;
    }
    let (tmp, repo) = example::create_temp().unwrap();
    let store = publish_build1(tmp.path(), &repo);

    let root = tmp.path().join("srv");
    fs::create_dir_all(&root).unwrap();
    let config = tmp.path().join("installer.toml");
    let marker = tmp.path().join("reboot-required");
    fs::write(
        &config,
        format!(
            "root = {:?}\nstore = \"file://{}\"\nreload = [\"true\"]\n[health]\ntimeout_secs = 1\n[os_update]\ncommands = [[\"sh\", \"-c\", \"echo updating\"], [\"true\"]]\nreboot_required_file = {:?}\n",
            root.display().to_string(),
            store.display(),
            marker.display().to_string()
        ),
    )
    .unwrap();

    // No shared/production.py yet: refused before anything is fetched or unpacked.
    let before = listing(&root);
    let out = installer(&config, &["activate", "--build", "Build000001", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shared/production.py") && err.contains("production_template.py"),
        "{err}"
    );
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.exit_code, 2);
    let after: Vec<_> = listing(&root)
        .into_iter()
        .filter(|(p, _)| !p.ends_with('/'))
        .collect();
    assert_eq!(
        after,
        before
            .into_iter()
            .filter(|(p, _)| !p.ends_with('/'))
            .collect::<Vec<_>>(),
        "no file appeared"
    );
    assert!(!root.join("releases/Build000001").exists());

    // A directory under the build's name that is not the published release.
    fs::create_dir_all(root.join("shared")).unwrap();
    fs::write(root.join("shared/production.py"), "from .base import *\n").unwrap();
    fs::create_dir_all(root.join("releases/Build000001")).unwrap();
    fs::write(root.join("releases/Build000001/release.json"), "{}").unwrap();
    let before = listing(&root);
    let out = installer(&config, &["activate", "--build", "Build000001"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a complete release"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listing(&root), before);

    // Bad build names never reach anything.
    for bad in ["Build00001", "000001;reboot", "$(id)"] {
        let out = installer(&config, &["activate", "--build", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
    // No store anywhere: said so.
    let bare = tmp.path().join("bare.toml");
    fs::write(&bare, format!("root = {:?}\n", root.display().to_string())).unwrap();
    fs::remove_dir_all(root.join("releases/Build000001")).unwrap();
    let out = installer(&bare, &["activate", "--build", "Build000001"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store"));

    // os-update: runs the configured commands, reports whether a reboot is required.
    let out = installer(&config, &["os-update", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.details["reboot_required"], false);
    let phases: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(phases, ["lock", "sh -c echo updating", "true"]);
    fs::write(&marker, "").unwrap();
    let r: Report =
        serde_json::from_slice(&installer(&config, &["os-update", "--json"]).stdout).unwrap();
    assert_eq!(r.details["reboot_required"], true);
    assert!(r.warnings.iter().any(|w| w.contains("--reboot")));

    // Under SSM the agent reboots: exit 194, and the run after the reboot says so. A reboot
    // that did not clear the need is not asked for again.
    let out = installer(&config, &["os-update", "--reboot", "--via-ssm", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(194),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.details["reboot_requested"], true);
    let out = installer(&config, &["os-update", "--reboot", "--via-ssm", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.details["rebooted"], true);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("still required after the reboot")));
    fs::remove_file(&marker).unwrap();
    let r: Report = serde_json::from_slice(
        &installer(&config, &["os-update", "--reboot", "--via-ssm", "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(r.details.get("rebooted"), None, "the marker was used once");
    assert_eq!(r.details["reboot_required"], false);

    // os-update holds the deployment lock while it runs: an activation meanwhile waits for it
    // and names it.
    let slow = tmp.path().join("slow.toml");
    fs::write(
        &slow,
        fs::read_to_string(&config).unwrap().replace(
            "[\"sh\", \"-c\", \"echo updating\"], [\"true\"]",
            "[\"sleep\", \"4\"]",
        ),
    )
    .unwrap();
    let mut updating = Command::new(bins::installer())
        .env("BINARYCRATE_INSTALLER_CONFIG", &slow)
        .arg("os-update")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = root.join(".deploy/lock");
    let t = std::time::Instant::now();
    // The file keeps the last holder's text after release (the earlier os-update runs above),
    // so wait for this child's own pid in it.
    let pid = updating.id().to_string();
    while !fs::read_to_string(&lock).is_ok_and(|l| l.lines().next() == Some(pid.as_str())) {
        assert!(t.elapsed().as_secs() < 20, "os-update never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = installer(
        &config,
        &["activate", "--build", "Build000001", "--lock-timeout", "1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("installer os-update"), "{err}");
    assert!(updating.wait().unwrap().success());
}

/// kill -9 of the installer while it runs the server's Python and again between swap and reload: each time,
/// running the same command again completes the activation.
#[test]
fn an_activation_killed_mid_way_completes_when_run_again() {
    if !bins::have_wheelhouse() {
        return;
    }
    let (tmp, repo) = example::create_temp().unwrap();
    let store = publish_build1(tmp.path(), &repo);

    let root = tmp.path().join("srv");
    fs::create_dir_all(root.join("shared")).unwrap();
    fs::write(root.join("shared/production.py"), format!("from .base import *\nSECRET_KEY = 'x' * 50\nDATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', 'NAME': {:?}}}}}\n", root.join("shared/db.sqlite3").display().to_string())).unwrap();
    let (port, stop) = tests::site::fake_site(&root);
    let python = tests::moto::venv_dir().join("bin/python");
    // A "python" and a "reload" that kill the installer (their parent) with SIGKILL.
    let killer = tmp.path().join("kill-parent");
    fs::write(&killer, "#!/bin/sh\nkill -9 $PPID\nsleep 5\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&killer, fs::Permissions::from_mode(0o755)).unwrap();
    let config = |python: &Path, reload: &Path| {
        let path = tmp.path().join("installer.toml");
        fs::write(
            &path,
            format!(
                "root = {:?}\nstore = \"file://{}\"\npython = {:?}\nreload = [{:?}]\n[health]\nurl = \"http://127.0.0.1:{port}/\"\ntimeout_secs = 20\nconfirm_requests = 3\n",
                root.display().to_string(),
                store.display(),
                python.display().to_string(),
                reload.display().to_string()
            ),
        )
        .unwrap();
        path
    };

    // Killed while the server's Python is asked which it is (before the release's environment
    // is made): nothing live changed, and nothing half-made is trusted.
    let cfg = config(&killer, Path::new("/bin/true"));
    let out = installer(&cfg, &["activate", "--build", "Build000001"]);
    assert_eq!(
        out.status.code(),
        None,
        "killed by a signal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::symlink_metadata(root.join("current")).is_err());
    // Killed between the swap and the reload.
    let cfg = config(&python, &killer);
    let out = installer(&cfg, &["activate", "--build", "Build000001"]);
    assert_eq!(
        out.status.code(),
        None,
        "killed by a signal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_link(root.join("current")).unwrap(),
        Path::new("releases/Build000001")
    );
    // The same command again completes it (reload, health check, journal), reusing the work done.
    let cfg = config(&python, Path::new("/bin/true"));
    let out = installer(&cfg, &["activate", "--build", "Build000001", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.outcome, common::report::Outcome::Success);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reusing its complete environment") && err.contains("already this release"),
        "{err}"
    );
    // And now it is simply live.
    let again = installer(&cfg, &["activate", "--build", "Build000001"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to do"));
    let verify = installer(&cfg, &["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The first day with the installer, without surprises: a mistyped store URL or root is refused
/// and creates nothing, a run without configuration says which defaults it used, `status` and
/// `list` say when and by whom in words on stdout, and a `current` whose release is gone is
/// reported and then repaired by the next activation.
#[test]
fn first_day_surprises_are_said_plainly() {
    if !bins::have_wheelhouse() {
        return;
    }
    let (tmp, repo) = example::create_temp().unwrap();
    let store = publish_build1(tmp.path(), &repo);
    let cwd = tmp.path().join("cwd");
    fs::create_dir_all(&cwd).unwrap();
    let run_in = |config: &Path, args: &[&str], env: &[(&str, &str)]| -> Output {
        Command::new(bins::installer())
            .current_dir(&cwd)
            .env("BINARYCRATE_INSTALLER_CONFIG", config)
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
    };
    let said = |out: &Output| {
        format!(
            "exit {:?}\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    // Store URLs with a typo: refused, and no `s3:` directory appears where it runs.
    let root = tmp.path().join("srv");
    fs::create_dir_all(root.join("shared")).unwrap();
    fs::write(
        root.join("shared/production.py"),
        example::production_settings(&repo, &root).unwrap(),
    )
    .unwrap();
    for (url, says) in [
        ("s3:/bucket/releases", "mistyped URL"),
        ("s3//bucket/releases", "mistyped URL"),
        ("S3://bucket/releases", "lowercase"),
        ("file:/srv/store", "mistyped URL"),
        ("gopher://host/x", "unsupported scheme"),
    ] {
        let config = tmp.path().join("typo.toml");
        fs::write(
            &config,
            format!("root = {:?}\nstore = {url:?}\n", root.display().to_string()),
        )
        .unwrap();
        let out = run_in(&config, &["activate", "--build", "Build000001"], &[]);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", said(&out));
        assert!(said(&out).contains(says), "{url}: {}", said(&out));
        assert_eq!(
            fs::read_dir(&cwd).unwrap().count(),
            0,
            "{url}: created something"
        );
        assert!(!root.join("releases").exists(), "{url}");
    }

    // A mistyped root: refused by every command that would have made a layout there.
    let typo = tmp.path().join("srv-typo");
    let config = tmp.path().join("typo-root.toml");
    fs::write(
        &config,
        format!(
            "root = {:?}\nstore = \"file://{}\"\n",
            typo.display().to_string(),
            store.display()
        ),
    )
    .unwrap();
    for args in [
        &["rollback"][..],
        &["prune", "--keep", "1"],
        &["status"],
        &["list"],
        &["activate", "--build", "Build000001"],
    ] {
        let out = run_in(&config, args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", said(&out));
        assert!(
            said(&out).contains("does not exist"),
            "{args:?}: {}",
            said(&out)
        );
        assert!(!typo.exists(), "{args:?} created the mistyped root");
    }

    // No configuration file at all: the defaults, said so.
    let out = Command::new(bins::installer())
        .env_remove("BINARYCRATE_INSTALLER_CONFIG")
        .arg("config")
        .output()
        .unwrap();
    if Path::new("/etc/binarycrate/installer.toml").exists() {
        println!("skipped the no-configuration check: /etc/binarycrate/installer.toml exists here");
    } else {
        assert_eq!(out.status.code(), Some(0), "{}", said(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no configuration file") && err.contains("using the defaults"),
            "{err}"
        );
    }

    // A first activation, by a named person; status and list say when and by whom. The site
    // answers only HTTPS, with a private CA's certificate, and only to its own name.
    let site = tests::site::HttpsSite::start(&root, "shop.example.com", tmp.path()).unwrap();
    let config = tmp.path().join("installer.toml");
    let write_config = |health: &str| {
        fs::write(
            &config,
            format!(
                "root = {:?}\nstore = \"file://{}\"\npython = {:?}\nreload = [\"true\"]\n[health]\nurl = \"https://127.0.0.1:{}/\"\ntimeout_secs = 20\nconfirm_requests = 2\n{health}",
                root.display().to_string(),
                store.display(),
                tests::moto::venv_dir().join("bin/python").display().to_string(),
                site.port,
            ),
        )
        .unwrap()
    };
    // A CA file that is not there: bad input before anything changes.
    write_config("host = \"shop.example.com\"\nca_file = \"/nonexistent/ca.pem\"\n");
    let out = run_in(&config, &["activate", "--build", "Build000001"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("health.ca_file"), "{}", said(&out));
    assert!(!root.join("releases").exists());
    write_config(&format!(
        "host = \"shop.example.com\"\nca_file = {:?}\n",
        site.ca_file.display().to_string()
    ));
    let by = [("BINARYCRATE_INVOKED_BY", "alice@laptop (builder deploy)")];
    let out = run_in(&config, &["activate", "--build", "Build000001"], &by);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let out = run_in(&config, &["status"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("current: Build000001"), "{stdout}");
    assert!(
        stdout.contains(" UTC, just now by alice@laptop (builder deploy)")
            || stdout.contains(" s ago by alice@laptop (builder deploy)"),
        "{stdout}"
    );
    let out = run_in(&config, &["list"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Build000001")
            && stdout.contains("live since")
            && stdout.contains(" UTC, "),
        "{stdout}"
    );
    let out = run_in(&config, &["status", "--json"], &[]);
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report.details["activated_by"],
        "alice@laptop (builder deploy)"
    );

    // The live release's directory disappears: status says so and fails; activate repairs it.
    fs::rename(
        root.join("releases/Build000001"),
        tmp.path().join("moved-away"),
    )
    .unwrap();
    let out = run_in(&config, &["status"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(said(&out).contains("is gone"), "{}", said(&out));
    let out = run_in(&config, &["activate", "--build", "Build000001"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(!said(&out).contains("nothing to do"), "{}", said(&out));
    assert!(root.join("releases/Build000001/release.json").is_file());
    let out = run_in(&config, &["status"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    drop(site);
}
