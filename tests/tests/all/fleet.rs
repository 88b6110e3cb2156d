//! `builder deploy | rollback | status`: with `--transport local`, the installer run on this
//! machine exactly as SSM would run it (one quoted shell line), a real uWSGI serving the result,
//! the table and the `--json` summary, exit codes taken from the installer, and every kind of bad
//! input refused before anything runs; then through the SSM stand-in (`tests::ssm`) to two
//! "instances", each its own server root with its own uWSGI, over S3 on moto: a rolling deploy,
//! status by tag, `--max-errors 0` stopping at a broken instance, and Ctrl-C cancelling.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use tests::bins;
use tests::example::{self, ExampleRepo};
use tests::ssm::{Instance, SsmServer};
use tests::uwsgi::{UwsgiOptions, UwsgiServer};

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `builder` with no way to reach real AWS, whatever the environment says.
fn builder(dir: &Path) -> Command {
    let mut cmd = Command::new(bins::builder());
    cmd.current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
    cmd
}

/// One server: its root (with `shared/production.py`), its installer.toml and uWSGI's ports.
struct ServerRoot {
    root: PathBuf,
    config: PathBuf,
    http_port: u16,
    stats_port: u16,
}

impl ServerRoot {
    /// `dir/srv` (with BinaryCrate's `shared/production.py`) and `dir/installer.toml`.
    fn new(dir: &Path, repo: &ExampleRepo) -> Self {
        Self::with_shared(dir, |root| {
            vec![(
                "production.py",
                example::production_settings(repo, root).unwrap(),
            )]
        })
    }

    /// [`Self::new`] for the light app server (`tests/fixtures/light-app/serve.py`): no uWSGI
    /// stats to read, and a short health check.
    fn light(dir: &Path, repo: &ExampleRepo) -> Self {
        let s = Self::new(dir, repo);
        let text = fs::read_to_string(&s.config).unwrap();
        let text = text
            .lines()
            .filter(|l| !l.starts_with("stats_url"))
            .map(|l| match l {
                "timeout_secs = 40" => "timeout_secs = 10",
                "confirm_requests = 10" => "confirm_requests = 2",
                other => other,
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(&s.config, text + "\n").unwrap();
        s
    }

    /// `dir/srv` with `shared` files (given the root) and `dir/installer.toml`.
    fn with_shared(dir: &Path, shared: impl FnOnce(&Path) -> Vec<(&'static str, String)>) -> Self {
        let root = dir.join("srv");
        fs::create_dir_all(root.join("shared")).unwrap();
        let (http_port, stats_port) = (tests::free_port(), tests::free_port());
        for (name, text) in shared(&root) {
            fs::write(root.join("shared").join(name), text).unwrap();
        }
        let config = dir.join("installer.toml");
        fs::write(
            &config,
            format!(
                r#"root = {root:?}
store = "file:///nonexistent/the-builder-passes-store"
python = {python:?}
reload_file = "{root}/.deploy/reload"
lock_timeout_secs = 2

[health]
url = "http://127.0.0.1:{http_port}/"
stats_url = "http://127.0.0.1:{stats_port}/"
timeout_secs = 40
confirm_requests = 10
"#,
                root = root.display().to_string(),
                python = tests::moto::venv_dir()
                    .join("bin/python")
                    .display()
                    .to_string(),
            ),
        )
        .unwrap();
        Self {
            root,
            config,
            http_port,
            stats_port,
        }
    }

    /// Starts uWSGI on this root once the installer has made `current` (a fresh machine).
    fn uwsgi_once_current(&self) -> std::thread::JoinHandle<UwsgiServer> {
        let started = Instant::now();
        let root = self.root.clone();
        let options = UwsgiOptions {
            http_port: Some(self.http_port),
            stats_port: Some(self.stats_port),
            ..UwsgiOptions::default()
        };
        std::thread::spawn(move || {
            while fs::symlink_metadata(root.join("current")).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "no `current` appeared in `{}`",
                    root.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            UwsgiServer::start_with(&root, &options).unwrap()
        })
    }
}

/// Whether the real server side can run here (uWSGI and the wheelhouse in the test venv).
fn ready() -> bool {
    tests::ready(tests::uwsgi::unavailable().or_else(tests::example::wheelhouse_missing))
}

/// The example app with Build000001 packaged, and one server root.
struct Site {
    tmp: tempfile::TempDir,
    repo: ExampleRepo,
    server: ServerRoot,
    store: PathBuf,
}

impl Site {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let repo = example::create(&tmp.path().join("repo")).unwrap();
        let server = ServerRoot::new(tmp.path(), &repo);
        let store = tmp.path().join("store");
        Site {
            tmp,
            repo,
            server,
            store,
        }
    }

    fn store_url(&self) -> String {
        format!("file://{}", self.store.display())
    }

    /// Packages Build000001; the artifact's path.
    fn package(&self) -> String {
        let out = bins::builder_offline(&self.repo.work)
            .args(["package", "--tag", example::TAG, "--out"])
            .arg(self.tmp.path().join("out"))
            .output()
            .unwrap();
        assert!(out.status.success(), "package: {}", text(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout.lines().last().unwrap().trim().to_owned()
    }

    fn package_and_publish(&self) {
        let artifact = self.package();
        let out = Command::new(bins::builder())
            .current_dir(&self.repo.work)
            .arg("publish")
            .arg(artifact)
            .args(["--store", &self.store_url()])
            .output()
            .unwrap();
        assert!(out.status.success(), "publish: {}", text(&out));
    }

    /// `builder <args> --transport local --installer <installer> --installer-config <toml>`.
    fn fleet(&self, args: &[&str]) -> Output {
        builder(&self.repo.work)
            .args(args)
            .args(["--transport", "local", "--installer"])
            .arg(bins::installer())
            .arg("--installer-config")
            .arg(&self.server.config)
            .output()
            .unwrap()
    }
}

/// The table row of `instance`, split into columns; the table is on stdout, or on stderr with
/// `--json`.
fn row_of(out: &Output, instance: &str) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let table = if stdout.starts_with("INSTANCE") {
        &stdout
    } else {
        &stderr
    };
    let mut lines = table.lines().skip_while(|l| !l.starts_with("INSTANCE "));
    let header = lines.next().unwrap_or_default();
    assert!(header.contains("LIVE"), "no table: {}", text(out));
    let row = lines
        .take_while(|l| !l.trim().is_empty())
        .find(|l| l.starts_with(&format!("{instance} ")))
        .unwrap_or_else(|| panic!("no row for `{instance}`: {}", text(out)));
    row.split_whitespace().map(str::to_owned).collect()
}

fn local_row(out: &Output) -> Vec<String> {
    row_of(out, "local")
}

#[test]
fn deploy_status_and_rollback_through_the_local_transport() {
    if !ready() {
        return;
    }
    let site = Site::new();
    site.package_and_publish();

    // A fresh server: uWSGI is started once the installer has made `current`.
    let starter = site.server.uwsgi_once_current();
    let store = site.store_url();
    let out = site.fleet(&["deploy", "--build", "Build000001", "--store", &store]);
    let server = starter.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row = local_row(&out);
    assert_eq!(&row[..3], ["local", "Success", "0"], "{}", text(&out));
    assert_eq!(row[4], "Build000001", "{}", text(&out));
    assert_eq!(row[5], "success", "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    // The line it ran: every word quoted, the store it checked passed on.
    assert!(
        err.contains(&format!(
            "'activate' '--build' 'Build000001' '--store' '{store}' '--json'"
        )),
        "{err}"
    );
    assert!(err.contains("local: InProgress"), "{err}");
    assert!(err.contains("deploy Build000001: local succeeded"), "{err}");
    let page = server.request("/").unwrap();
    assert_eq!(page.build_number(), Some("000001"), "{}", page.body);

    // Deploying it again: the installer has nothing to do, and says so.
    let out = site.fleet(&["deploy", "--build", "000001", "--store", &store]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row = local_row(&out);
    assert_eq!(row[4], "Build000001");
    assert_eq!(row[5..].join(" "), "nothing to do", "{}", text(&out));

    // status: the table, then the JSON summary with the installer's report inside.
    let out = site.fleet(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row = local_row(&out);
    assert_eq!(row[4], "Build000001", "{}", text(&out));
    assert_eq!(row[5], "none", "the PREVIOUS column: {}", text(&out));
    let row = row.join(" ");
    assert!(
        row.contains(" activate by ")
            && row.ends_with("success; last activate Build000001: success"),
        "{}",
        text(&out)
    );
    let out = site.fleet(&["status", "--json", "-v"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
    assert_eq!(v["command"], "status");
    assert_eq!(v["transport"], "local");
    assert_eq!(v["exit_code"], 0);
    let inst = &v["instances"][0];
    assert_eq!(inst["instance"], "local");
    assert_eq!(inst["status"], "Success");
    assert_eq!(inst["live_build"], "000001");
    assert_eq!(inst["report"]["command"], "status");
    assert_eq!(inst["report"]["build"], "000001");
    assert!(inst["stderr"]
        .as_str()
        .unwrap()
        .contains("current: Build000001"));

    // rollback with no earlier release: the installer refuses (bad input, exit 2), nothing
    // changes, and builder exits with the installer's code, naming the reason.
    let out = site.fleet(&["rollback"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let row = local_row(&out);
    assert_eq!(&row[..3], ["local", "Failed", "2"], "{}", text(&out));
    assert_eq!(row[4], "Build000001", "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: ") && err.contains("--to"), "{err}");
    assert!(
        err.contains("rollback: 1 of 1 instance did not succeed (local) — exit 2"),
        "{err}"
    );
    assert_eq!(server.request("/").unwrap().build_number(), Some("000001"));

    // The health check again, as a rollout's bake asks it: healthy while uWSGI serves the
    // live build, exit 1 naming the page once it does not.
    let check = || {
        Command::new(bins::installer())
            .arg("--config")
            .arg(&site.server.config)
            .args(["status", "--check", "--json"])
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["details"]["health"], "ok", "{report}");
    assert_eq!(report["build"], "000001", "{report}");
    drop(server);
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("the health check of Build000001 failed"),
        "{report}"
    );
}

/// A stand-in installer that records its argv (one word per line, NUL-separated) and prints a
/// report; its exit code is the report's.
fn fake_installer(dir: &Path, exit: u8, outcome: &str) -> (PathBuf, PathBuf) {
    let argv = dir.join("argv");
    let script = dir.join("fake-installer");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a in \"$0\" \"$@\"; do printf '%s\\0' \"$a\"; done > {argv:?}\necho 'human text on stdout too'\ncat <<'EOF'\n{{\n  \"command\": \"status\",\n  \"build\": \"000007\",\n  \"previous_build\": \"000006\",\n  \"outcome\": \"{outcome}\",\n  \"exit_code\": {exit},\n  \"error\": \"the reason\"\n}}\nEOF\necho 'something went wrong' >&2\nexit {exit}\n",
        ),
    )
    .unwrap();
    let mut perm = fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    fs::set_permissions(&script, perm).unwrap();
    (script, argv)
}

#[test]
fn the_command_line_is_inert_and_exit_codes_come_from_the_installer() {
    let tmp = tempfile::tempdir().unwrap();
    let (script, argv_file) = fake_installer(tmp.path(), 3, "rolled_back");
    let pwned = tmp.path().join("pwned");
    let config = format!(
        "{}/it's $(touch {p}) `touch {p}` ${{HOME}} dir/installer.toml",
        tmp.path().display(),
        p = pwned.display()
    );
    let out = builder(tmp.path())
        .args(["rollback", "--transport", "local", "--to", "Build000006"])
        .arg("--installer")
        .arg(&script)
        .args(["--installer-config", &config, "--lock-timeout", "7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(!pwned.exists(), "the shell interpreted a word");
    let argv: Vec<String> = fs::read_to_string(&argv_file)
        .unwrap()
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        argv,
        [
            script.display().to_string(),
            "--config".into(),
            config.clone(),
            "rollback".into(),
            "--to".into(),
            "Build000006".into(),
            "--lock-timeout".into(),
            "7".into(),
            "--json".into(),
        ]
    );
    let row = local_row(&out);
    assert_eq!(&row[..3], ["local", "Failed", "3"], "{}", text(&out));
    // Rolled back by itself: the previous build is the one live.
    assert_eq!(row[4], "Build000006");
    assert_eq!(row[5..].join(" "), "rolled back: the reason");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed after the swap and rolled back")
            && err.contains("something went wrong"),
        "{err}"
    );

    // An installer that is not there: no report, exit 1.
    let out = builder(tmp.path())
        .args(["status", "--transport", "local", "--installer"])
        .arg(tmp.path().join("no-such-installer"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let row = local_row(&out);
    assert_eq!(&row[..3], ["local", "Failed", "127"], "{}", text(&out));
    assert!(
        row.join(" ").contains(" - - no installer report"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_input_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (script, argv_file) = fake_installer(tmp.path(), 0, "success");
    let store = tmp.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let store_url = format!("file://{}", store.display());
    let run = |args: &[&str]| -> Output {
        builder(tmp.path())
            .args(args)
            .arg("--installer")
            .arg(&script)
            .output()
            .unwrap()
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // A build name that is not one.
        (
            vec![
                "deploy",
                "--build",
                "Build00001",
                "--transport",
                "local",
                "--store",
                &store_url,
            ],
            "invalid build name",
        ),
        (
            vec![
                "deploy",
                "--build",
                "$(reboot)",
                "--transport",
                "local",
                "--store",
                &store_url,
            ],
            "invalid build name",
        ),
        // Not published in the store.
        (
            vec![
                "deploy",
                "--build",
                "Build000001",
                "--transport",
                "local",
                "--store",
                &store_url,
            ],
            "is not published",
        ),
        // A store URL that is not one.
        (
            vec![
                "deploy",
                "--build",
                "Build000001",
                "--transport",
                "local",
                "--store",
                "ftp://x/y",
            ],
            "invalid store URL",
        ),
        // The rollout's own options.
        (
            vec![
                "deploy",
                "--build",
                "Build000001",
                "--targets",
                "i-01234567",
                "--canary",
                "0",
            ],
            "--canary",
        ),
        (
            vec![
                "deploy",
                "--build",
                "Build000001",
                "--targets",
                "i-01234567",
                "--canary",
                "1",
                "--bake",
                "5x",
            ],
            "not a duration",
        ),
        (
            vec![
                "deploy",
                "--build",
                "Build000001",
                "--targets",
                "i-01234567",
                "--bake",
                "5s",
            ],
            "--canary",
        ),
        (
            vec![
                "deploy",
                "--build",
                "Build000001",
                "--targets",
                "i-01234567",
                "--order",
                "web1",
                "--store",
                &store_url,
            ],
            "`--order` takes instance ids",
        ),
        (
            vec![
                "deploy",
                "--build",
                "Build000001",
                "--transport",
                "local",
                "--order",
                "i-01234567",
                "--store",
                &store_url,
            ],
            "`--order` is for SSM targets",
        ),
        // Targets: malformed, mixed, missing, or given to the local transport.
        (
            vec![
                "deploy",
                "--build",
                "Build000001",
                "--targets",
                "i-xyz",
                "--store",
                &store_url,
            ],
            "invalid target",
        ),
        (
            vec!["status", "--targets", "i-0123456789abcdef0", "tag:Role=web"],
            "mixes instance ids and tags",
        ),
        (vec!["status", "--targets", "tag:Role"], "invalid target"),
        (vec!["rollback"], "no targets"),
        (
            vec![
                "status",
                "--transport",
                "local",
                "--targets",
                "i-0123456789abcdef0",
            ],
            "drop `--targets`",
        ),
        // Rates and timeouts.
        (
            vec![
                "status",
                "--targets",
                "i-01234567",
                "--max-concurrency",
                "0",
            ],
            "--max-concurrency",
        ),
        (
            vec!["status", "--targets", "i-01234567", "--max-errors", "101%"],
            "--max-errors",
        ),
        (
            vec!["status", "--targets", "i-01234567", "--timeout", "5"],
            "--timeout",
        ),
        (
            vec![
                "rollback",
                "--targets",
                "i-01234567",
                "--to",
                "Build0000001",
            ],
            "invalid build name",
        ),
        // A newline where the command line would carry it.
        (
            vec![
                "status",
                "--transport",
                "local",
                "--installer-config",
                "a\nb",
            ],
            "control character",
        ),
        (
            vec![
                "status",
                "--targets",
                "i-01234567",
                "--output-s3",
                "s3://Not_A_Bucket/x",
            ],
            "bucket",
        ),
        (
            vec![
                "status",
                "--targets",
                "i-01234567",
                "--output-s3",
                "https://bucket/x",
            ],
            "not an S3 location",
        ),
        (
            vec![
                "status",
                "--transport",
                "local",
                "--output-s3",
                "s3://ssm-output/x",
            ],
            "`--output-s3` is for SSM",
        ),
        (
            vec![
                "deploy",
                "--build",
                "Build000001",
                "--targets",
                "i-01234567",
                "--plan",
                "--store",
                &store_url,
            ],
            "not published",
        ),
    ];
    for (args, expect) in cases {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expect),
            "{args:?}: expected `{expect}`:\n{err}"
        );
        assert!(!argv_file.exists(), "{args:?} ran the installer");
        assert!(
            !err.contains("Ctrl-C cancels"),
            "{args:?} sent a command:\n{err}"
        );
    }

    // With SSM, the builder's own local default store is refused: the servers cannot read it.
    let tmp2 = tempfile::tempdir().unwrap();
    let repo = example::create(&tmp2.path().join("repo")).unwrap();
    let out = builder(&repo.work)
        .args([
            "deploy",
            "--build",
            "Build000001",
            "--targets",
            "i-0123456789abcdef0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the servers cannot read it"),
        "{}",
        text(&out)
    );
}

const BUCKET: &str = "releases";
const S3_STORE: &str = "s3://releases/apps";

/// The line of the closing summary (the last non-empty line of stderr).
fn closing(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn deploy_to_two_instances_through_the_ssm_stand_in() {
    if !ready() {
        return;
    }
    let site = Site::new();
    let one = &site.server;
    let two = ServerRoot::new(&site.tmp.path().join("two"), &site.repo);
    let broken_dir = site.tmp.path().join("broken");
    fs::create_dir_all(&broken_dir).unwrap();
    // Each instance runs the installer in its own directory with its own configuration.
    let fleet = |env: &[(String, String)]| -> BTreeMap<String, Instance> {
        let instance = |dir: &Path, config: &Path, role: &str| {
            env.iter()
                .fold(Instance::new(dir), |i, (k, v)| i.env(k, v))
                .env("BINARYCRATE_INSTALLER_CONFIG", config.display().to_string())
                .tag("Role", role)
        };
        BTreeMap::from([
            (
                "i-00000001".to_owned(),
                instance(site.tmp.path(), &one.config, "web"),
            ),
            (
                "i-00000002".to_owned(),
                instance(&site.tmp.path().join("two"), &two.config, "web"),
            ),
            (
                "i-00000003".to_owned(),
                instance(&broken_dir, &broken_dir.join("missing.toml"), "broken"),
            ),
        ])
    };
    let Some(ssm) = SsmServer::start_or_skip(&fleet(&[])) else {
        return;
    };
    // The installer fetches from S3 on the same moto server, with its dummy credentials.
    ssm.set_instances(&fleet(&ssm.env())).unwrap();
    ssm.moto().create_bucket(BUCKET).unwrap();
    let artifact = site.package();
    let out = Command::new(bins::builder())
        .current_dir(&site.repo.work)
        .envs(ssm.env())
        .arg("publish")
        .arg(&artifact)
        .args(["--store", S3_STORE, "--s3-endpoint", &ssm.endpoint()])
        .output()
        .unwrap();
    assert!(out.status.success(), "publish: {}", text(&out));
    let fleet_builder = |args: &[&str]| -> Command {
        let mut cmd = builder(&site.repo.work);
        cmd.envs(ssm.env())
            .args(args)
            .arg("--installer")
            .arg(bins::installer());
        cmd
    };

    // A rolling deploy to both: one after the other.
    let starters = [one.uwsgi_once_current(), two.uwsgi_once_current()];
    let out = fleet_builder(&[
        "deploy",
        "--build",
        "Build000001",
        "--targets",
        "i-00000001",
        "i-00000002",
        "--max-concurrency",
        "1",
        "--store",
        S3_STORE,
        "--s3-endpoint",
        &ssm.endpoint(),
        "--json",
    ])
    .output()
    .unwrap();
    let servers = starters.map(|s| s.join().unwrap());
    eprintln!("{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for id in ["i-00000001", "i-00000002"] {
        let row = row_of(&out, id);
        assert_eq!(&row[1..3], ["Success", "0"], "{}", text(&out));
        assert_eq!(row[4], "Build000001", "{}", text(&out));
        assert_eq!(row[5], "success", "{}", text(&out));
    }
    for server in &servers {
        let page = server.request("/").unwrap();
        assert_eq!(page.build_number(), Some("000001"), "{}", page.body);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
    assert_eq!(v["transport"], "ssm");
    assert_eq!(v["instances"][1]["report"]["command"], "activate");
    assert_eq!(v["instances"][1]["live_build"], "000001");
    // A rollout in waves of one: one command per wave, each aimed at its instance by id and
    // watched to the end before the next is sent.
    let command_ids: Vec<&str> = v["command_id"].as_str().unwrap().split(", ").collect();
    assert_eq!(command_ids.len(), 2, "{v}");
    assert_eq!(v["rollout"]["stages"][0]["name"], "wave 1", "{v}");
    assert_eq!(
        v["rollout"]["stages"][1]["instances"][0], "i-00000002",
        "{v}"
    );
    assert_eq!(v["rollout"]["mixed"], false, "{v}");
    for (n, command_id) in command_ids.iter().enumerate() {
        let sent = ssm
            .block_on(ssm.client().list_commands().command_id(*command_id).send())
            .unwrap();
        let command = &sent.commands()[0];
        assert_eq!(command.document_name(), Some("AWS-RunShellScript"));
        assert_eq!(
            command.comment(),
            Some("builder deploy binarycrate Build000001")
        );
        assert_eq!(command.instance_ids(), [format!("i-0000000{}", n + 1)]);
        assert_eq!(command.max_concurrency(), Some("1"));
        assert_eq!(command.max_errors(), Some("0"));
        let line = &command.parameters().unwrap()["commands"];
        assert_eq!(line.len(), 1, "{line:?}");
        // Who asked rides in front, for the servers' journals; then the quoted command line.
        let (by, rest) = line[0].split_once("' '").unwrap();
        assert!(
            by.starts_with("BINARYCRATE_INVOKED_BY='") && by.ends_with(" (builder deploy)"),
            "{line:?}"
        );
        assert_eq!(
            format!("'{rest}"),
            format!(
                "'{}' 'activate' '--build' 'Build000001' '--store' '{S3_STORE}' '--s3-endpoint' '{}' '--json'",
                bins::installer().display(),
                ssm.endpoint()
            )
        );
    }
    // One after the other: the second started after the first had finished.
    let times = |command_id: &str, id: &str| {
        let invocations = ssm.invocations(command_id).unwrap();
        let inv = invocations
            .iter()
            .find(|i| i.instance_id() == Some(id))
            .unwrap();
        let p = &inv.command_plugins()[0];
        (
            p.response_start_date_time().unwrap().as_secs_f64(),
            p.response_finish_date_time().unwrap().as_secs_f64(),
        )
    };
    let (first, second) = (
        times(command_ids[0], "i-00000001"),
        times(command_ids[1], "i-00000002"),
    );
    assert!(second.0 >= first.1, "{first:?} {second:?}");

    // status by tag: which build is live where.
    let out = fleet_builder(&["status", "--targets", "tag:Role=web"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for id in ["i-00000001", "i-00000002"] {
        assert_eq!(row_of(&out, id)[4], "Build000001", "{}", text(&out));
    }
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .all(|l| !l.starts_with("i-00000003")),
        "{}",
        text(&out)
    );

    // Tags that match no instance: nothing runs, exit 1.
    let out = fleet_builder(&["status", "--targets", "tag:Role=nothing"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        closing(&out).contains("no instance matched the targets (tag:Role=nothing)"),
        "{}",
        text(&out)
    );

    // A broken instance first with --max-errors 0: it fails with the installer's exit 2, the
    // others are never run, and builder names each and exits 1.
    let out = fleet_builder(&[
        "status",
        "--targets",
        "i-00000003",
        "i-00000001",
        "i-00000002",
        "--max-concurrency",
        "1",
        "--max-errors",
        "0",
    ])
    .output()
    .unwrap();
    eprintln!("{}", text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let broken = row_of(&out, "i-00000003");
    assert_eq!(&broken[1..3], ["Failed", "2"], "{}", text(&out));
    for id in ["i-00000001", "i-00000002"] {
        let row = row_of(&out, id);
        assert_eq!(row[1], "Cancelled", "{}", text(&out));
        assert!(row.join(" ").contains("--max-errors"), "{}", text(&out));
    }
    assert!(
        closing(&out).contains(
            "status: 1 of 3 instances answered; no answer from i-00000001, i-00000002; failed on i-00000003 — exit 1"
        ),
        "{}",
        text(&out)
    );
    assert!(
        broken.join(" ").contains("missing.toml` does not exist"),
        "the reason is shown: {}",
        text(&out)
    );

    // Ctrl-C while both run: the command is cancelled, and builder reports and exits 1.
    let slow = site.tmp.path().join("slow-installer");
    fs::write(&slow, "#!/bin/sh\ntouch \"$PWD/started\"\nexec sleep 120\n").unwrap();
    let mut perm = fs::metadata(&slow).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    fs::set_permissions(&slow, perm).unwrap();
    let markers = [
        site.tmp.path().join("started"),
        site.tmp.path().join("two/started"),
    ];
    let mut child = builder(&site.repo.work)
        .envs(ssm.env())
        .args(["status", "--targets", "tag:Role=web", "--installer"])
        .arg(&slow)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !markers.iter().all(|m| m.exists()) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the slow installers never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("builder did not finish after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for id in ["i-00000001", "i-00000002"] {
        assert_eq!(row_of(&out, id)[1], "Cancelled", "{}", text(&out));
    }
    assert!(
        closing(&out).contains("interrupted and cancelled"),
        "{}",
        text(&out)
    );
    drop(servers);
}

/// Breaks (`false`) or mends (`true`) the line of the example app's page that shows its build
/// number, which the installer's health check reads.
fn show_build_number(work: &Path, show: bool) {
    let t = work.join("binarycrate/dashboard/templates/dashboard/index.html");
    let (line, broken) = (
        "<!-- Build number = {{ build_number }} -->",
        "<!-- broken -->",
    );
    let (from, to) = if show { (broken, line) } else { (line, broken) };
    let text = fs::read_to_string(&t).unwrap();
    assert!(text.contains(from), "`{from}` is not in the page");
    fs::write(&t, text.replace(from, to)).unwrap();
}

/// Commits `change` on the working copy's `develop`, then `builder prepare --push`: the tag.
fn prepare_next(repo: &ExampleRepo, change: impl FnOnce(&Path)) -> String {
    change(&repo.work);
    example::git(&repo.work, &["add", "-A"]).unwrap();
    example::git(
        &repo.work,
        &[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "a change for the next build",
        ],
    )
    .unwrap();
    let out = bins::builder_offline(&repo.work)
        .args(["prepare", "--push"])
        .output()
        .unwrap();
    assert!(out.status.success(), "prepare: {}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned()
}

/// `builder package` then `builder publish` to S3 on the stand-in's moto.
fn package_and_publish_s3(repo: &ExampleRepo, ssm: &SsmServer, tag: &str, out_dir: &Path) {
    let out = bins::builder_offline(&repo.work)
        .args(["package", "--tag", tag, "--out"])
        .arg(out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "package {tag}: {}", text(&out));
    let artifact = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let out = builder(&repo.work)
        .envs(ssm.env())
        .arg("publish")
        .arg(&artifact)
        .args(["--store", S3_STORE, "--s3-endpoint", &ssm.endpoint()])
        .output()
        .unwrap();
    assert!(out.status.success(), "publish {tag}: {}", text(&out));
}

/// The whole pipeline across two instances: prepare → package → publish to S3 → rolling deploy
/// → an upgrade with a migration → fleet rollback → a build whose health check fails, which the
/// first instance rolls back by itself while `--max-errors 0` keeps it off the second.
#[test]
fn the_pipeline_end_to_end_on_two_instances() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = example::create(&tmp.path().join("repo")).unwrap();
    let one = ServerRoot::new(&tmp.path().join("one"), &repo);
    let two = ServerRoot::new(&tmp.path().join("two"), &repo);
    let fleet = |env: &[(String, String)]| -> BTreeMap<String, Instance> {
        let instance = |s: &ServerRoot| {
            env.iter()
                .fold(Instance::new(s.root.parent().unwrap()), |i, (k, v)| {
                    i.env(k, v)
                })
                .env(
                    "BINARYCRATE_INSTALLER_CONFIG",
                    s.config.display().to_string(),
                )
        };
        BTreeMap::from([
            ("i-00000001".to_owned(), instance(&one)),
            ("i-00000002".to_owned(), instance(&two)),
        ])
    };
    let Some(ssm) = SsmServer::start_or_skip(&fleet(&[])) else {
        return;
    };
    ssm.set_instances(&fleet(&ssm.env())).unwrap();
    ssm.moto().create_bucket(BUCKET).unwrap();
    let endpoint = ssm.endpoint();
    let run = |args: &[&str]| -> Output {
        builder(&repo.work)
            .envs(ssm.env())
            .args(args)
            .args([
                "--targets",
                "i-00000001",
                "i-00000002",
                "--max-concurrency",
                "1",
                "--max-errors",
                "0",
            ])
            .arg("--installer")
            .arg(bins::installer())
            .args(if args[0] == "deploy" {
                vec!["--store", S3_STORE, "--s3-endpoint", endpoint.as_str()]
            } else {
                vec![]
            })
            .output()
            .unwrap()
    };

    let b2 = prepare_next(&repo, |_| {});
    assert_eq!(b2, "Build000002");
    package_and_publish_s3(&repo, &ssm, &b2, &tmp.path().join("out2"));
    let starters = [one.uwsgi_once_current(), two.uwsgi_once_current()];
    let out = run(&["deploy", "--build", &b2]);
    let servers = starters.map(|s| s.join().unwrap());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let serving = |build: &str| {
        for s in &servers {
            for _ in 0..5 {
                let page = s.request("/").unwrap();
                assert_eq!(page.build_number(), Some(build), "{}", page.body);
            }
        }
    };
    serving("000002");

    // Build 3 adds a migration; both instances apply it and serve it.
    let b3 = prepare_next(&repo, |w| {
        let models = w.join("binarycrate/dashboard/models.py");
        fs::write(
            &models,
            fs::read_to_string(&models).unwrap().replace(
                "    created = ",
                "    stars = models.IntegerField(default=0)\n    created = ",
            ),
        )
        .unwrap();
        fs::write(
            w.join("binarycrate/dashboard/migrations/0002_project_stars.py"),
            "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [('dashboard', '0001_initial')]\n    operations = [migrations.AddField(model_name='project', name='stars', field=models.IntegerField(default=0))]\n",
        )
        .unwrap();
    });
    package_and_publish_s3(&repo, &ssm, &b3, &tmp.path().join("out3"));
    let out = run(&["deploy", "--build", &b3]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serving("000003");
    for s in [&one, &two] {
        let shown = Command::new(s.root.join("current/venv/bin/python"))
            .current_dir(s.root.join("current"))
            .env("DJANGO_SETTINGS_MODULE", "binarycrate.settings.production")
            .args(["binarycrate/manage.py", "showmigrations", "dashboard"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&shown.stdout).contains("[X] 0002_project_stars"),
            "{}",
            String::from_utf8_lossy(&shown.stdout)
        );
    }

    // The fleet goes back to build 2.
    let out = run(&["rollback"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for id in ["i-00000001", "i-00000002"] {
        assert_eq!(row_of(&out, id)[4], "Build000002", "{}", text(&out));
    }
    serving("000002");

    // Build 4 does not show its build number: the first instance rolls itself back (exit 3),
    // and with --max-errors 0 the second never runs.
    let b4 = prepare_next(&repo, |w| show_build_number(w, false));
    package_and_publish_s3(&repo, &ssm, &b4, &tmp.path().join("out4"));
    let out = run(&["deploy", "--build", &b4]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let first = row_of(&out, "i-00000001");
    assert_eq!(&first[1..3], ["Failed", "3"], "{}", text(&out));
    let second = row_of(&out, "i-00000002");
    assert_ne!(second[1], "Success", "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("i-00000001") && all.contains("health check"),
        "the reason is named: {all}"
    );
    serving("000002");
    assert_eq!(
        fs::read_link(two.root.join("current")).unwrap(),
        Path::new("releases/Build000002")
    );
    assert!(
        !two.root.join("releases").join(&b4).exists(),
        "the second instance was never touched"
    );
}

/// A Django app unlike BinaryCrate in every way that matters (`tests/fixtures/second-app`:
/// `manage.py` at the root, the project `shop`, a `.env` as the only server file, uploads in
/// `uploads/`, no front end, no template, requirements without hashes), from `builder init`
/// through prepare, package, publish to S3, a deploy through SSM served by real uWSGI, a second
/// build with a migration, and a rollback: the app's facts travel in its releases, and the same
/// installer and loader serve it.
#[test]
fn a_second_app_from_builder_init_to_rollback() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = example::create_second(&tmp.path().join("repo")).unwrap();

    let out = bins::builder_offline(&repo.work)
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let toml = fs::read_to_string(repo.work.join("deploy.toml")).unwrap();
    tests::show(&format!(
        "second-app: builder init wrote deploy.toml:\n{toml}"
    ));
    for line in [
        "app = \"shop\"",
        "manage_py = \"manage.py\"",
        "wsgi_module = \"shop.wsgi\"",
        "settings_module = \"shop.settings\"",
        "static_root = \"staticfiles\"",
        "build_number_file = \"shop/build_number.py\"",
        "version_hash_file = \"shop/version_hash.py\"",
        "production_template = \"\"",
        "shared_files = { \".env\" = \".env\" }",
        "shared_dirs = { \"uploads\" = \"uploads\" }",
        "enabled = false",
    ] {
        assert!(toml.contains(line), "`{line}` is not in:\n{toml}");
    }
    let left = String::from_utf8_lossy(&out.stderr);
    assert!(
        left.contains("Build number = {{ BUILD_NUMBER }}") && left.contains(".env"),
        "{left}"
    );
    assert_eq!(
        fs::read_to_string(repo.work.join("shop/build_number.py"))
            .unwrap()
            .lines()
            .last(),
        Some("BUILD_NUMBER = '000000'")
    );
    let again = bins::builder_offline(&repo.work)
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let out = bins::builder_offline(&repo.work)
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let checked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(checked["passed"], true, "{checked}");
    assert!(
        checked["checks"]
            .as_array()
            .is_some_and(|c| c.len() >= 5 && c.iter().all(|c| c["ok"] == true)),
        "{checked}"
    );
    let out = bins::builder_offline(&repo.work)
        .args(["config", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["config"]["app"], "shop", "{config}");
    assert_eq!(config["config"]["django"]["wsgi_module"], "shop.wsgi");
    example::git(&repo.work, &["add", "-A"]).unwrap();
    example::git(
        &repo.work,
        &["commit", "-q", "-m", "deploy.toml from builder init"],
    )
    .unwrap();
    let out = bins::builder_offline(&repo.work)
        .args(["prepare", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&plan["tag"], &plan["dry_run"]),
        (&"Build000001".into(), &true.into()),
        "{plan}"
    );

    let one = ServerRoot::with_shared(&tmp.path().join("one"), |root| {
        vec![(
            ".env",
            format!(
                "SECRET_KEY=second-app-test-secret-key-second-app-test-secret-key\nALLOWED_HOSTS=127.0.0.1,localhost\nDATABASE_PATH={}\n",
                root.join("shared/db.sqlite3").display()
            ),
        )]
    });
    // This root takes the shop's releases from the store.
    let config = fs::read_to_string(&one.config).unwrap();
    fs::write(&one.config, format!("app = \"shop\"\n{config}")).unwrap();
    let instances = |env: &[(String, String)]| {
        let i = env
            .iter()
            .fold(Instance::new(one.root.parent().unwrap()), |i, (k, v)| {
                i.env(k, v)
            })
            .env(
                "BINARYCRATE_INSTALLER_CONFIG",
                one.config.display().to_string(),
            );
        BTreeMap::from([("i-00000001".to_owned(), i)])
    };
    let Some(ssm) = SsmServer::start_or_skip(&instances(&[])) else {
        return;
    };
    ssm.set_instances(&instances(&ssm.env())).unwrap();
    ssm.moto().create_bucket(BUCKET).unwrap();
    let endpoint = ssm.endpoint();
    let run = |args: &[&str]| -> Output {
        let mut cmd = builder(&repo.work);
        cmd.envs(ssm.env())
            .args(args)
            .args(["--targets", "i-00000001", "--installer"])
            .arg(bins::installer());
        if args[0] == "deploy" {
            cmd.args(["--store", S3_STORE, "--s3-endpoint", endpoint.as_str()]);
        }
        cmd.output().unwrap()
    };

    let b1 = prepare_next(&repo, |_| {});
    assert_eq!(b1, "Build000001");
    let out = bins::builder_offline(&repo.work)
        .args(["package", "--tag", &b1, "--out"])
        .arg(tmp.path().join("out1"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        said.matches("pins versions without hashes").count(),
        1,
        "said once: {said}"
    );
    let sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.path().join("out1/release.json")).unwrap()).unwrap();
    let profile = &sidecar["manifest"]["profile"];
    assert_eq!(profile["project_dir"], "", "{profile}");
    // The project at the release root is compiled whole (its packages recursively, manage.py),
    // beside its installed dependencies.
    let files = sidecar["manifest"]["files"].as_object().unwrap();
    for module in [
        "manage",
        "shop/settings",
        "catalog/models",
        "catalog/migrations/0001_initial",
        "deps/django/__init__",
    ] {
        let (dir, stem) = module.rsplit_once('/').unwrap_or(("", module));
        let prefix = if dir.is_empty() {
            format!("__pycache__/{stem}.cpython-")
        } else {
            format!("{dir}/__pycache__/{stem}.cpython-")
        };
        assert!(
            files
                .keys()
                .any(|f| f.starts_with(&prefix) && f.ends_with(".pyc")),
            "no bytecode for {module}"
        );
    }
    assert_eq!(profile["wsgi_module"], "shop.wsgi");
    assert_eq!(profile["shared_files"][".env"], ".env");
    let files = sidecar["manifest"]["files"].as_object().unwrap();
    assert!(files.contains_key("staticfiles/catalog/shop.css"));
    assert!(
        !files
            .keys()
            .any(|f| f.contains("builder_collectstatic_settings") || f == ".env"),
        "the generated build settings and the server's file are never packaged"
    );
    package_and_publish_s3(&repo, &ssm, &b1, &tmp.path().join("out1"));
    let starter = one.uwsgi_once_current();
    let out = run(&["deploy", "--build", &b1]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let server = starter.join().unwrap();
    let serving = |build: &str| {
        for _ in 0..6 {
            let page = server.request("/").unwrap();
            assert_eq!(page.build_number(), Some(build), "{}", page.body);
        }
    };
    serving("000001");

    // Build 2: a new field and its migration.
    let b2 = prepare_next(&repo, |w| {
        let models = w.join("catalog/models.py");
        let text = fs::read_to_string(&models).unwrap();
        fs::write(
            &models,
            text + "    price = models.IntegerField(default=0)\n",
        )
        .unwrap();
        fs::write(
            w.join("catalog/migrations/0002_item_price.py"),
            "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [('catalog', '0001_initial')]\n    operations = [migrations.AddField(model_name='item', name='price', field=models.IntegerField(default=0))]\n",
        )
        .unwrap();
    });
    package_and_publish_s3(&repo, &ssm, &b2, &tmp.path().join("out2"));
    let out = run(&["deploy", "--build", &b2]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serving("000002");
    assert_eq!(
        fs::read_link(one.root.join("current/.env")).unwrap(),
        one.root.join("shared/.env")
    );
    assert!(one.root.join("shared/uploads").is_dir());

    let out = run(&["rollback"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        row_of(&out, "i-00000001")[4],
        "Build000001",
        "{}",
        text(&out)
    );
    serving("000001");
    let verified = Command::new(bins::installer())
        .env("BINARYCRATE_INSTALLER_CONFIG", &one.config)
        .arg("verify")
        .output()
        .unwrap();
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));
    tests::show("second-app: init -> check -> prepare -> package -> publish (S3) -> deploy (SSM) Build000001 -> deploy Build000002 (migration) -> rollback: served by uWSGI, verified");
}

/// `builder os-update` through SSM: one server after the other; a server that needs a reboot
/// gets it from the SSM agent (the installer exits 194, the stand-in "reboots": the instance
/// drops out of SSM, `/var/run` is emptied, the command runs again) and is back before the
/// next one starts; a failure stops the round before the servers after it.
#[test]
fn os_update_goes_one_server_at_a_time_and_waits_for_a_reboot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut instances = BTreeMap::new();
    let mut logs = Vec::new();
    for n in 1..=3 {
        let dir = tmp.path().join(format!("server{n}"));
        fs::create_dir_all(dir.join("srv")).unwrap();
        let log = dir.join("updates.log");
        let required = dir.join("reboot-required");
        let config = dir.join("installer.toml");
        // Each update notes when it ran (nanoseconds), to show no two overlapped.
        let update = format!(
            "echo start $(date +%s%N) >> {0}; sleep 1; echo end $(date +%s%N) >> {0}",
            log.display()
        );
        fs::write(
            &config,
            format!(
                "root = {:?}\n[os_update]\ncommands = [[\"sh\", \"-c\", {update:?}]]\nreboot_required_file = {:?}\nreboot = [\"false\"]\n",
                dir.join("srv").display().to_string(),
                required.display().to_string()
            ),
        )
        .unwrap();
        instances.insert(
            format!("i-0000000{n}"),
            Instance::new(&dir)
                .env("BINARYCRATE_INSTALLER_CONFIG", config.display().to_string())
                .tag("Role", "web")
                .reboot_seconds(1.0)
                .reboot_clears(&required),
        );
        logs.push(log);
    }
    fs::write(tmp.path().join("server1/reboot-required"), "").unwrap();
    let Some(ssm) = SsmServer::start_or_skip(&instances) else {
        return;
    };
    let run = |args: &[&str]| -> Output {
        builder(tmp.path())
            .envs(ssm.env())
            .args([
                "os-update",
                "--targets",
                "tag:Role=web",
                "--json",
                "--installer",
            ])
            .arg(bins::installer())
            .args(args)
            .output()
            .unwrap()
    };
    let times = |log: &Path, what: &str| -> Vec<u128> {
        fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(what)?.trim().parse().ok())
            .collect()
    };

    let out = run(&["--reboot"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reboot: Vec<&str> = said["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reboot"].as_str().unwrap())
        .collect();
    assert_eq!(reboot, ["rebooted", "not needed", "not needed"], "{said}");
    assert!(!tmp.path().join("server1/reboot-required").exists());
    // Server 1 updated twice (before and after its reboot), each other once, never two at once.
    let (s1, e1) = (times(&logs[0], "start "), times(&logs[0], "end "));
    let (s2, e2) = (times(&logs[1], "start "), times(&logs[1], "end "));
    let (s3, _) = (times(&logs[2], "start "), times(&logs[2], "end "));
    assert_eq!((s1.len(), s2.len(), s3.len()), (2, 1, 1));
    assert!(e1[1] < s2[0] && e2[0] < s3[0], "overlapping updates");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("each back online before the next"), "{said}");

    // A failing update on server 2 stops the round: server 3 is not touched.
    let config2 = tmp.path().join("server2/installer.toml");
    let text2 = fs::read_to_string(&config2).unwrap();
    let start = text2.find("commands = ").unwrap();
    let end = start + text2[start..].find('\n').unwrap();
    fs::write(
        &config2,
        format!(
            "{}commands = [[\"false\"]]{}",
            &text2[..start],
            &text2[end..]
        ),
    )
    .unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses: Vec<&str> = said["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Success", "Failed", "Cancelled"], "{said}");
    assert_eq!(times(&logs[2], "start ").len(), 1, "server 3 ran again");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not started: i-00000002 did not succeed")
    );
    tests::show(
        "os-update: 3 servers one at a time, server 1 rebooted through the agent and back before server 2; a failure on server 2 left server 3 untouched",
    );
}

/// The light app server for `roots`, one process, each root on its own port; stopped on drop.
fn light_servers(roots: &[ServerRoot]) -> tests::process::Supervised {
    let script = tests::moto::workspace_root().join("tests/fixtures/light-app/serve.py");
    let python = tests::moto::venv_dir().join("bin/python");
    let mut command = tests::process::command(&python, "TERM");
    command.arg(&script);
    for r in roots {
        command.arg(format!("{}={}", r.http_port, r.root.display()));
    }
    command.stdout(std::process::Stdio::null());
    let server =
        tests::process::Supervised::spawn(&mut command, "light app server", "TERM").unwrap();
    let t = Instant::now();
    for r in roots {
        while std::net::TcpStream::connect(("127.0.0.1", r.http_port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the light app server never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    server
}

/// A rollout over 30 instances through the SSM stand-in (real uWSGI on the first two, the light
/// app server on the rest), `--canary 1 --bake 5s --max-concurrency 25%`: a good build reaches
/// all of them canary first and then in waves, in id order; a build whose page is broken stops
/// at the canary, which rolls itself back, with no other instance touched; a build that one
/// instance of the second wave cannot serve stops the rollout there, and every instance that
/// had switched is rolled back, so the fleet ends on one build.
#[test]
fn a_rollout_over_thirty_instances_stops_itself_and_leaves_one_build() {
    if !ready() {
        return;
    }
    const N: usize = 30;
    let tmp = tempfile::tempdir().unwrap();
    let repo = example::create(&tmp.path().join("repo")).unwrap();
    let name = |n: usize| format!("i-{n:08}");
    let roots: Vec<ServerRoot> = (1..=N)
        .map(|n| {
            let dir = tmp.path().join(name(n));
            if n <= 2 {
                ServerRoot::new(&dir, &repo)
            } else {
                ServerRoot::light(&dir, &repo)
            }
        })
        .collect();
    let fleet = |env: &[(String, String)]| -> BTreeMap<String, Instance> {
        roots
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let i = env
                    .iter()
                    .fold(Instance::new(s.root.parent().unwrap()), |i, (k, v)| {
                        i.env(k, v)
                    })
                    .env(
                        "BINARYCRATE_INSTALLER_CONFIG",
                        s.config.display().to_string(),
                    )
                    .tag("Role", "web");
                (name(k + 1), i)
            })
            .collect()
    };
    let Some(ssm) = SsmServer::start_or_skip(&fleet(&[])) else {
        return;
    };
    ssm.set_instances(&fleet(&ssm.env())).unwrap();
    ssm.moto().create_bucket(BUCKET).unwrap();
    let _light = light_servers(&roots[2..]);
    let endpoint = ssm.endpoint();
    let deploy = |build: &str| -> (Output, serde_json::Value) {
        let out = builder(&repo.work)
            .envs(ssm.env())
            .args(["deploy", "--build", build, "--targets", "tag:Role=web"])
            .args(["--canary", "1", "--bake", "5s", "--max-concurrency", "25%"])
            .args(["--store", S3_STORE, "--s3-endpoint", endpoint.as_str()])
            .arg("--installer")
            .arg(bins::installer())
            .arg("--json")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
        (out, v)
    };
    let live = |k: usize| -> String {
        fs::read_link(roots[k].root.join("current"))
            .map(|t| t.display().to_string())
            .unwrap_or_default()
    };

    // 1. A good build: the canary, five seconds of checks, then waves of 7 (25% of 30).
    package_and_publish_s3(&repo, &ssm, example::TAG, &tmp.path().join("out1"));
    let starters = [roots[0].uwsgi_once_current(), roots[1].uwsgi_once_current()];
    let t = Instant::now();
    let (out, v) = deploy(example::TAG);
    let wall = t.elapsed();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let servers = starters.map(|s| s.join().unwrap());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let order: Vec<String> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, (1..=N).map(name).collect::<Vec<_>>());
    for i in v["instances"].as_array().unwrap() {
        assert_eq!(i["live_build"], "000001", "{i}");
    }
    let stages = v["rollout"]["stages"].as_array().unwrap().clone();
    assert_eq!(stages[0]["name"], "canary");
    assert_eq!(stages[0]["instances"], serde_json::json!([name(1)]));
    let waves = stages.len() - 1;
    assert_eq!(waves, 5, "29 instances in waves of 7: {v}");
    assert_eq!(stages[1]["instances"].as_array().unwrap().len(), 7);
    assert!(v["rollout"]["bake_checks"].as_u64().unwrap() >= 3, "{v}");
    for k in 0..N {
        assert_eq!(live(k), "releases/Build000001", "{}", name(k + 1));
    }
    let serving = |build: &str| {
        for s in &servers {
            let page = s.request("/").unwrap();
            assert_eq!(page.build_number(), Some(build), "{}", page.body);
        }
    };
    serving("000001");

    // 2. A build whose page lacks its build number: the canary's own health check fails, it
    //    rolls itself back, and the rollout stops there.
    let b2 = prepare_next(&repo, |w| show_build_number(w, false));
    package_and_publish_s3(&repo, &ssm, &b2, &tmp.path().join("out2"));
    let (out, v) = deploy(&b2);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        &row_of(&out, &name(1))[1..3],
        ["Failed", "3"],
        "{}",
        text(&out)
    );
    assert!(
        v["rollout"]["stopped"]
            .as_str()
            .unwrap()
            .contains(&format!("the canary {} did not succeed", name(1))),
        "{v}"
    );
    for (k, r) in roots.iter().enumerate().skip(1) {
        assert_eq!(row_of(&out, &name(k + 1))[1], "Cancelled", "{}", text(&out));
        assert!(
            !r.root.join("releases").join(&b2).exists(),
            "{} touched",
            name(k + 1)
        );
    }
    for k in 0..N {
        assert_eq!(live(k), "releases/Build000001", "{}", name(k + 1));
    }
    serving("000001");

    // 3. A good build (the page fixed) that i-00000012 (second wave: canary 1, then 2–8, then 9–15) cannot
    //    serve: the rollout stops after that wave and every instance that switched goes back.
    let b3 = prepare_next(&repo, |w| {
        show_build_number(w, true);
        let css = w.join("binarycrate/dashboard/static/dashboard/app.css");
        let mut text = fs::read_to_string(&css).unwrap();
        text.push_str("/* build three */\n");
        fs::write(&css, text).unwrap();
    });
    package_and_publish_s3(&repo, &ssm, &b3, &tmp.path().join("out3"));
    fs::write(tmp.path().join(name(12)).join("sick"), "000003\n").unwrap();
    let (out, v) = deploy(&b3);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stopped = v["rollout"]["stopped"].as_str().unwrap();
    assert!(
        stopped.contains("wave 2") && stopped.contains(&name(12)),
        "{}",
        text(&out)
    );
    let halted_at = "wave 2";
    let rolled_back = v["rollout"]["rolled_back"].as_array().unwrap();
    let back: Vec<&str> = rolled_back
        .iter()
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    let switched: Vec<String> = (1..=15).filter(|n| *n != 12).map(name).collect();
    assert_eq!(back, switched, "{v}");
    assert!(
        rolled_back
            .iter()
            .all(|r| r["ok"] == true && r["to"] == "000001"),
        "{v}"
    );
    assert_eq!(v["rollout"]["mixed"], false);
    for k in 15..N {
        assert_eq!(row_of(&out, &name(k + 1))[1], "Cancelled", "{}", text(&out));
    }
    let mixed = (0..N).filter(|&k| live(k) != live(0)).count();
    assert_eq!(live(0), "releases/Build000001");
    assert_eq!(mixed, 0);
    serving("000001");

    // 4. Two builds live: the two uWSGI instances get build 3 by id, the rest keep build 1.
    let out = builder(&repo.work)
        .envs(ssm.env())
        .args(["deploy", "--build", &b3, "--targets", &name(1), &name(2)])
        .args(["--store", S3_STORE, "--s3-endpoint", endpoint.as_str()])
        .arg("--installer")
        .arg(bins::installer())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serving("000003");

    // 5. `--plan` against that fleet: both groups, what build 3 changes for the first, the
    //    stages; and nothing changes anywhere.
    let journals = || -> Vec<Vec<u8>> {
        roots
            .iter()
            .map(|r| fs::read(r.root.join(".deploy/journal.jsonl")).unwrap_or_default())
            .collect()
    };
    let before = journals();
    let out = builder(&repo.work)
        .envs(ssm.env())
        .args([
            "deploy",
            "--build",
            &b3,
            "--targets",
            "tag:Role=web",
            "--plan",
        ])
        .args(["--canary", "1", "--max-concurrency", "25%"])
        .args(["--store", S3_STORE, "--s3-endpoint", endpoint.as_str()])
        .arg("--installer")
        .arg(bins::installer())
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
    let groups = plan["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{plan}");
    let (old, new) = (&groups[0], &groups[1]);
    assert_eq!(old["live_build"], "000001", "{plan}");
    assert_eq!(old["instances"].as_array().unwrap().len(), N - 2);
    assert_eq!(old["already_live"], false);
    let added = old["commits"]["added"].as_array().unwrap();
    assert!(added.len() >= 2, "builds 2 and 3 each add a commit: {plan}");
    let changes = &old["changes"];
    assert!(
        changes["static_files"]["changed"].as_u64().unwrap() >= 1,
        "{plan}"
    );
    assert_eq!(changes["packages"], serde_json::json!([]), "{plan}");
    assert_eq!(changes["migrations_added"], serde_json::json!([]), "{plan}");
    assert_eq!(changes["template"]["status"], "unchanged", "{plan}");
    assert_eq!(new["live_build"], "000003");
    assert_eq!(new["instances"], serde_json::json!([name(1), name(2)]));
    assert_eq!(new["already_live"], true);
    let stages = plan["stages"].as_array().unwrap();
    assert_eq!(stages[0]["instances"], serde_json::json!([name(1)]));
    assert_eq!(stages.len(), 1 + waves, "{plan}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("Build000001 -> {b3} on {} instances", N - 2))
            && said.contains(&format!("{b3} already live on 2 instances")),
        "{said}"
    );
    assert_eq!(journals(), before, "--plan changed a journal");
    for k in 0..N {
        let want = if k < 2 {
            "releases/Build000003"
        } else {
            "releases/Build000001"
        };
        assert_eq!(live(k), want, "{}", name(k + 1));
    }
    tests::show(&format!(
        "fleet: --plan over two live builds: Build000001 on {}, {b3} on 2; {} commits, {} static files changed; nothing changed",
        N - 2,
        added.len(),
        changes["static_files"]["changed"]
    ));

    // 6. `status --verify` with one instance drifted: 800 files nobody packaged in i-00000005's
    //    live release. Its report outgrows what SSM returns inline: without `--output-s3` the
    //    head of the report still says it drifted; with it, the whole report is read from S3.
    let drifted = name(5);
    // (Loose files, each its own entry: a directory nobody packaged is one entry.)
    let leftovers = roots[4].root.join("releases/Build000001");
    for n in 0..800 {
        fs::write(
            leftovers.join(format!(
                "a-file-left-behind-by-someone-editing-the-release-{n:04}.txt"
            )),
            "",
        )
        .unwrap();
    }
    let status = |extra: &[&str]| -> (Output, serde_json::Value) {
        let out = builder(&repo.work)
            .envs(ssm.env())
            .args(["status", "--targets", "tag:Role=web", "--verify", "--json"])
            .args(extra)
            .arg("--installer")
            .arg(bins::installer())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
        (out, v)
    };
    let of = |v: &serde_json::Value, id: &str| -> serde_json::Value {
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance"] == id)
            .unwrap()
            .clone()
    };
    let (out, v) = status(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let i = of(&v, &drifted);
    assert_eq!(i["output_truncated"], true, "{i}");
    assert_eq!(i["report_partial"], true, "{i}");
    assert_eq!(i["live_build"], "000001", "{i}");
    assert_eq!(i["drift"]["clean"], false, "{i}");
    let clean = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["drift"]["clean"] == true)
        .count();
    assert_eq!(clean, N - 1, "{v}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("files drifted on {drifted} ")) && said.contains("--output-s3"),
        "{said}"
    );
    let (out, v) = status(&["--output-s3", &format!("s3://{BUCKET}/ssm-output")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let i = of(&v, &drifted);
    assert_eq!(i["output_truncated"], false, "{i}");
    assert_eq!(i["report_partial"], false, "{i}");
    assert!(
        i["output_note"].as_str().unwrap().contains("read in full"),
        "{i}"
    );
    let unexpected = i["drift"]["unexpected"].as_u64().unwrap();
    assert!(unexpected >= 800, "{i}");
    assert_eq!(of(&v, &name(1))["switched_with"], "activate");
    assert_eq!(of(&v, &name(1))["previous_build"], "000001");
    tests::show(&format!(
        "fleet: status --verify: 1 of {N} drifted ({unexpected} unexpected files); its report, cut by SSM at 24,000 characters, was read in full from S3"
    ));
    tests::show(&format!(
        "fleet: instances={N} canary=1 waves={waves} deployed={} halted-at={halted_at} rolled-back={} mixed={mixed}",
        order.len(),
        back.len()
    ));
    tests::show(&format!(
        "fleet: the 30-instance deploy took {:.1}s",
        wall.as_secs_f64()
    ));
}
