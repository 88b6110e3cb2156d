//! `installer` against a real uWSGI (pyuwsgi, 2 workers, chain reload) serving the example
//! application from `<root>/current`: first activation, an upgrade with a migration and a new
//! dependency version, a changed production template, rollback, a failing health check, a
//! failing migration, concurrent activations, verify, prune, and every command's `--json`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::report::Report;
use tests::bins;
use tests::example::{self, ExampleRepo};
use tests::uwsgi::{UwsgiOptions, UwsgiServer};

/// A server root, its store, the example repository and the ports uWSGI will use.
struct Site {
    tmp: tempfile::TempDir,
    repo: ExampleRepo,
    root: PathBuf,
    store: PathBuf,
    config: PathBuf,
    http_port: u16,
    stats_port: u16,
}

fn ready() -> bool {
    tests::ready(tests::uwsgi::unavailable().or_else(tests::example::wheelhouse_missing))
}

impl Site {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let repo = example::create(&tmp.path().join("repo")).unwrap();
        let root = tmp.path().join("srv");
        let store = tmp.path().join("store");
        fs::create_dir_all(root.join("shared")).unwrap();
        let (http_port, stats_port) = (tests::free_port(), tests::free_port());
        // The operator's production.py: the template, filled in, with the database in shared/.
        fs::write(
            root.join("shared/production.py"),
            example::production_settings(&repo, &root).unwrap(),
        )
        .unwrap();
        let venv_python = tests::moto::venv_dir().join("bin/python");
        let config = tmp.path().join("installer.toml");
        fs::write(
            &config,
            format!(
                r#"root = {root:?}
store = "file://{store}"
python = {python:?}
reload_fifo = "{root}/.deploy/uwsgi.fifo"
lock_timeout_secs = 2

[health]
url = "http://127.0.0.1:{http_port}/"
stats_url = "http://127.0.0.1:{stats_port}/"
timeout_secs = 40
confirm_requests = 10
"#,
                root = root.display().to_string(),
                store = store.display(),
                python = venv_python.display().to_string(),
            ),
        )
        .unwrap();
        Site {
            tmp,
            repo,
            root,
            store,
            config,
            http_port,
            stats_port,
        }
    }

    /// Commits a change with `build_number.py` saying `number`, tags, packages and publishes it.
    fn release(&self, number: &str, change: impl FnOnce(&Path)) {
        if number != example::BUILD_NUMBER {
            self.repo.commit_and_tag(number, change).unwrap();
        }
        self.package_and_publish(number);
    }

    fn package_and_publish(&self, number: &str) {
        let out_dir = self.tmp.path().join(format!("out{number}"));
        let mut package = bins::builder_offline(&self.repo.work);
        package
            .args(["package", "--tag", &format!("Build{number}"), "--out"])
            .arg(&out_dir);
        let artifact = ok(package.output().unwrap(), "package");
        let mut publish = Command::new(bins::builder());
        publish
            .current_dir(&self.repo.work)
            .arg("publish")
            .arg(artifact.lines().last().unwrap().trim());
        publish
            .arg("--store")
            .arg(format!("file://{}", self.store.display()));
        ok(publish.output().unwrap(), "publish");
    }

    fn installer(&self, args: &[&str]) -> Output {
        Command::new(bins::installer())
            .env("BINARYCRATE_INSTALLER_CONFIG", &self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn uwsgi_options(&self) -> UwsgiOptions {
        UwsgiOptions {
            http_port: Some(self.http_port),
            stats_port: Some(self.stats_port),
            ..UwsgiOptions::default()
        }
    }

    /// `builder deploy --build BUILD --plan` against this server (the local transport), run
    /// in `dir` (the repository, or elsewhere).
    fn plan(&self, build: &str, dir: &Path, extra: &[&str]) -> Output {
        Command::new(bins::builder())
            .current_dir(dir)
            .args(["deploy", "--build", build, "--transport", "local", "--plan"])
            .args(extra)
            .arg("--store")
            .arg(format!("file://{}", self.store.display()))
            .arg("--installer")
            .arg(bins::installer())
            .arg("--installer-config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    fn current(&self) -> String {
        fs::read_link(self.root.join("current"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn report(out: &Output) -> Report {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not one JSON report ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `n` requests; every one must be a 200 showing `build`.
fn all_serve(server: &UwsgiServer, build: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = server.request("/").unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.build_number(), Some(build), "{}", r.body);
            r.body
        })
        .collect()
}

#[test]
fn activate_upgrade_rollback_and_failures_against_real_uwsgi() {
    if !ready() {
        return;
    }
    let site = Site::new();
    site.release("000001", |_| {});

    // First activation: the server is started once `current` exists (a fresh machine).
    let started = Instant::now();
    let root = site.root.clone();
    let options = site.uwsgi_options();
    let starter = std::thread::spawn(move || {
        while fs::symlink_metadata(root.join("current")).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no `current` appeared"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        UwsgiServer::start_with(&root, &options).unwrap()
    });
    let out = site.installer(&["activate", "--build", "Build000001", "--json"]);
    let server = starter.join().unwrap();
    let r = report(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r.outcome, common::report::Outcome::Success);
    let phases: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    for p in [
        "lock", "fetch", "unpack", "link", "deps", "migrate", "swap", "reload", "health",
    ] {
        assert!(phases.contains(&p), "{p} missing from {phases:?}");
    }
    eprintln!(
        "first activation phases: {:?}",
        r.phases
            .iter()
            .map(|p| (p.name.as_str(), p.duration_ms))
            .collect::<Vec<_>>()
    );
    assert_eq!(site.current(), "releases/Build000001");
    all_serve(&server, "000001", 10);
    // The static link serves the release's collected files under its version hash.
    let hash = r.details["version_hash"].as_str().unwrap().to_owned();
    assert!(site
        .root
        .join("static")
        .join(&hash)
        .join("dashboard/app.css")
        .is_file());

    // Activating it again: nothing to do.
    let again = site.installer(&["activate", "--build", "Build000001"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to do"));

    // Build 2: a new migration and another version of a pinned dependency, shown on the page.
    let mut version = String::new();
    site.release("000002", |w| {
        version = example::pin_other_sqlparse(w);
        let models = w.join("binarycrate/dashboard/models.py");
        fs::write(&models, fs::read_to_string(&models).unwrap().replace("    created = ", "    stars = models.IntegerField(default=0)\n    created = ")).unwrap();
        fs::write(
            w.join("binarycrate/dashboard/migrations/0002_project_stars.py"),
            "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [('dashboard', '0001_initial')]\n    operations = [migrations.AddField(model_name='project', name='stars', field=models.IntegerField(default=0))]\n",
        )
        .unwrap();
        let template = w.join("binarycrate/dashboard/templates/dashboard/index.html");
        fs::write(&template, fs::read_to_string(&template).unwrap().replace("</head>", "  <!-- sqlparse = {{ sqlparse_version }} -->\n</head>")).unwrap();
        let views = w.join("binarycrate/dashboard/views.py");
        fs::write(
            &views,
            fs::read_to_string(&views).unwrap().replace("'build_number': BUILD_NUMBER,", "'build_number': BUILD_NUMBER,\n        'sqlparse_version': __import__('sqlparse').__version__,"),
        )
        .unwrap();
    });
    let out = site.installer(&["activate", "--build", "Build000002", "--json"]);
    let r = report(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        r.previous_build.map(|b| b.tag()).as_deref(),
        Some("Build000001")
    );
    eprintln!(
        "upgrade phases: {:?}",
        r.phases
            .iter()
            .map(|p| (p.name.as_str(), p.duration_ms))
            .collect::<Vec<_>>()
    );
    for body in all_serve(&server, "000002", 20) {
        assert!(
            body.contains(&format!("<!-- sqlparse = {version} -->")),
            "every worker imports the new venv: {body}"
        );
    }
    let applied = Command::new(site.root.join("current/venv/bin/python"))
        .current_dir(site.root.join("current"))
        .env("DJANGO_SETTINGS_MODULE", "binarycrate.settings.production")
        .args(["binarycrate/manage.py", "showmigrations", "dashboard"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&applied.stdout).contains("[X] 0002_project_stars"),
        "{}",
        String::from_utf8_lossy(&applied.stdout)
    );

    // status and list
    let st = site.installer(&["status", "--json"]);
    let r = report(&st);
    assert_eq!(r.build.map(|b| b.tag()).as_deref(), Some("Build000002"));
    assert_eq!(
        r.previous_build.map(|b| b.tag()).as_deref(),
        Some("Build000001")
    );
    let ls = report(&site.installer(&["list", "--json"]));
    let states: Vec<(String, String)> = ls.details["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["build"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("000002".into(), "live".into()),
            ("000001".into(), "previous".into())
        ]
    );

    // Rollback: the old build serves again, with a warning about the newer migration.
    let t = Instant::now();
    let out = site.installer(&["rollback", "--json"]);
    let r = report(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "rollback took {:.2}s: {:?}",
        t.elapsed().as_secs_f64(),
        r.phases
            .iter()
            .map(|p| (p.name.as_str(), p.duration_ms))
            .collect::<Vec<_>>()
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("dashboard.0002_project_stars")),
        "{:?}",
        r.warnings
    );
    assert_eq!(site.current(), "releases/Build000001");
    all_serve(&server, "000001", 10);

    // Forward again (the release on disk is reused, the venv kept).
    let out = site.installer(&["activate", "--build", "Build000002"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    all_serve(&server, "000002", 5);

    // Build 3 changes production_template.py: refused until reviewed; nothing changes.
    site.release("000003", |w| {
        let t = w.join(example::PRODUCTION_TEMPLATE);
        fs::write(
            &t,
            format!(
                "{}\n# New in 000003: FILL IN the cache settings\n",
                fs::read_to_string(&t).unwrap()
            ),
        )
        .unwrap();
    });
    // The plan shows the template's diff; run outside the repository, it reads both templates
    // from the published artifacts.
    let plan = site.plan("Build000003", site.tmp.path(), &[]);
    let shown = ok(plan, "deploy --plan");
    assert!(
        shown.contains("Build000002 -> Build000003 on 1 instance (local)")
            && shown.contains("production template: `binarycrate/binarycrate/settings/production_template.py` CHANGED")
            && shown.contains("    +# New in 000003: FILL IN the cache settings"),
        "{shown}"
    );
    let out = site.installer(&["activate", "--build", "Build000003"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("+ # New in 000003") && err.contains("--template-reviewed"),
        "{err}"
    );
    assert_eq!(site.current(), "releases/Build000002");
    let out = site.installer(&["activate", "--build", "Build000003", "--template-reviewed"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    all_serve(&server, "000003", 5);

    // Build 4's page does not show its build number: rolled back by itself, exit 3.
    site.release("000004", |w| {
        let template = w.join("binarycrate/dashboard/templates/dashboard/index.html");
        fs::write(
            &template,
            fs::read_to_string(&template).unwrap().replace(
                "<!-- Build number = {{ build_number }} -->",
                "<!-- broken -->",
            ),
        )
        .unwrap();
    });
    let out = site.installer(&["activate", "--build", "Build000004", "--json"]);
    let r = report(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r.outcome, common::report::Outcome::RolledBack);
    assert_eq!(site.current(), "releases/Build000003");
    all_serve(&server, "000003", 10);

    // Build 5's migration fails: `current` is never touched, exit 1.
    site.release("000005", |w| {
        fs::write(
            w.join("binarycrate/dashboard/migrations/0003_broken.py"),
            "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n    dependencies = [('dashboard', '0002_project_stars')]\n    operations = [migrations.RunSQL('THIS IS NOT SQL')]\n",
        )
        .unwrap();
    });
    let out = site.installer(&["activate", "--build", "Build000005"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("migrate failed"));
    assert_eq!(site.current(), "releases/Build000003");
    all_serve(&server, "000003", 5);

    // verify: clean, then a modified file is reported (exit 2).
    let out = site.installer(&["verify", "Build000001", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(
        site.root
            .join("releases/Build000001/binarycrate/dashboard/views.py"),
        "tampered",
    )
    .unwrap();
    let out = site.installer(&["verify", "Build000001", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let r = report(&out);
    assert!(
        r.details["changed"]["binarycrate/dashboard/views.py"]
            .as_str()
            .unwrap()
            .contains("size"),
        "{:?}",
        r.details
    );

    // Concurrent activations: the second waits for the lock, then gives up naming the holder.
    fs::write(site.root.join(".deploy/lock"), "").unwrap();
    let holder = std::thread::spawn({
        let config = site.config.clone();
        move || {
            Command::new(bins::installer())
                .env("BINARYCRATE_INSTALLER_CONFIG", &config)
                .args(["activate", "--build", "Build000002", "--template-reviewed"])
                .output()
                .unwrap()
        }
    });
    let lock = site.root.join(".deploy/lock");
    let t = Instant::now();
    while !fs::read_to_string(&lock)
        .unwrap_or_default()
        .contains("Build000002")
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the first activation never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = site.installer(&[
        "activate",
        "--build",
        "Build000003",
        "--template-reviewed",
        "--lock-timeout",
        "0",
        "--json",
    ]);
    let first = holder.join().unwrap();
    if first.status.code() == Some(0) && second.status.code() == Some(5) {
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(err.contains("Build000002") && err.contains("lock"), "{err}");
        assert_eq!(report(&second).exit_code, 5);
    } else {
        // The first finished before the second tried: then both must have succeeded in turn.
        assert_eq!(
            (first.status.code(), second.status.code()),
            (Some(0), Some(0)),
            "{}\n{}",
            String::from_utf8_lossy(&first.stderr),
            String::from_utf8_lossy(&second.stderr)
        );
    }

    // prune: failed releases go first and never count; current and previous stay.
    let out = site.installer(&["prune", "--keep", "0", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_disk: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(site.root.join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let live = site.current().trim_start_matches("releases/").to_owned();
    assert!(on_disk.contains(&live), "{on_disk:?}");
    assert_eq!(
        on_disk.len(),
        2,
        "only current and previous good remain: {on_disk:?}"
    );
    assert!(
        !on_disk.contains(&"Build000004".to_owned())
            && !on_disk.contains(&"Build000005".to_owned())
    );
    let statics = fs::read_dir(site.root.join("static")).unwrap().count();
    assert_eq!(statics, 2, "static links of pruned releases go too");
    drop(server);
}

/// The migrations in the example app's database, from Django's own table.
fn applied_migrations(site: &Site) -> Vec<String> {
    let out = Command::new(tests::moto::venv_dir().join("bin/python"))
        .arg("-c")
        .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print('\\n'.join(a + '.' + n for a, n in c.execute(\"select app, name from django_migrations where app = 'dashboard' order by id\")))")
        .arg(site.root.join("shared/db.sqlite3"))
        .output()
        .unwrap();
    ok(out, "read django_migrations")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The columns of the example app's one table.
fn project_columns(site: &Site) -> Vec<String> {
    let out = Command::new(tests::moto::venv_dir().join("bin/python"))
        .arg("-c")
        .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print('\\n'.join(r[1] for r in c.execute('pragma table_info(dashboard_project)')))")
        .arg(site.root.join("shared/db.sqlite3"))
        .output()
        .unwrap();
    ok(out, "read the table's columns")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs `installer ARGS --json` on `site`, expecting exit `code`; its report.
fn installer_expecting(site: &Site, args: &[&str], code: i32) -> Report {
    let mut argv = args.to_vec();
    argv.push("--json");
    let out = site.installer(&argv);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    report(&out)
}

/// The migrations an activation's report says it applies, as `app.name`.
fn applies(r: &Report) -> Vec<String> {
    r.details["migrations"]["apply"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}.{}",
                s["app"].as_str().unwrap(),
                s["name"].as_str().unwrap()
            )
        })
        .collect()
}

const STARS_FIELD: &str = "    stars = models.IntegerField(default=0)\n";

fn write_migration(w: &Path, name: &str, after: &str, operations: &str) {
    fs::write(
        w.join(format!("binarycrate/dashboard/migrations/{name}.py")),
        format!("from django.db import migrations, models\n\n\ndef fill(apps, schema_editor):\n    pass\n\n\nclass Migration(migrations.Migration):\n    dependencies = [('dashboard', '{after}')]\n    operations = [{operations}]\n"),
    )
    .unwrap();
}

/// `installer rollback --migrate-down` with real Django and SQLite: build 2 adds a column, build
/// 3 a `RunPython` without reverse, build 4 a migration whose reverse fails and one that drops
/// the column. The activation reports and `deploy --plan` list what each applies; a rollback to
/// build 1 with `--migrate-down` unapplies the column and serves build 1 on its schema; one
/// past the irreversible migration is refused and changes nothing; one the target's code cannot
/// run on is refused without `--migrate-down`; and one that fails midway stops before the swap,
/// its report saying exactly what is still applied.
#[test]
fn rollback_migrates_down_what_the_target_does_not_know() {
    if !ready() {
        return;
    }
    let site = Site::new();
    site.release("000001", |_| {});
    let root = site.root.clone();
    let options = site.uwsgi_options();
    let starter = std::thread::spawn(move || {
        let t = Instant::now();
        while fs::symlink_metadata(root.join("current")).is_err() {
            assert!(t.elapsed() < Duration::from_secs(120), "no `current`");
            std::thread::sleep(Duration::from_millis(50));
        }
        UwsgiServer::start_with(&root, &options).unwrap()
    });
    let r = installer_expecting(&site, &["activate", "--build", "Build000001"], 0);
    let server = starter.join().unwrap();
    assert!(applies(&r).contains(&"dashboard.0001_initial".to_owned()));

    // 1. Build 2 adds a column; its activation says so.
    site.release("000002", |w| {
        let models = w.join("binarycrate/dashboard/models.py");
        let text = fs::read_to_string(&models).unwrap();
        fs::write(&models, text.replace("    created = ", &format!("{STARS_FIELD}    created = "))).unwrap();
        write_migration(w, "0002_project_stars", "0001_initial", "migrations.AddField(model_name='project', name='stars', field=models.IntegerField(default=0))");
    });
    let r = installer_expecting(&site, &["activate", "--build", "Build000002"], 0);
    assert_eq!(applies(&r), ["dashboard.0002_project_stars"]);
    assert!(project_columns(&site).contains(&"stars".to_owned()));

    // 2. Back to build 1 with --migrate-down: the column goes, build 1 serves on its schema.
    let r = installer_expecting(
        &site,
        &["rollback", "--to", "Build000001", "--migrate-down"],
        0,
    );
    assert_eq!(
        r.details["migrate_down"],
        serde_json::json!({"unapplied": ["dashboard.0002_project_stars"], "still_applied": []})
    );
    assert!(
        r.phases.iter().any(|p| p.name == "migrate-down"),
        "{:?}",
        r.phases
    );
    assert_eq!(site.current(), "releases/Build000001");
    assert_eq!(applied_migrations(&site), ["dashboard.0001_initial"]);
    assert!(!project_columns(&site).contains(&"stars".to_owned()));
    all_serve(&server, "000001", 5);
    let status = report(&site.installer(&["status", "--json"]));
    assert_eq!(
        status.details["schema"]["state"], "in_step",
        "{:?}",
        status.details
    );
    let unapplied = 1;
    let column_report = serde_json::to_string_pretty(&serde_json::json!({
        "outcome": r.outcome, "build": r.build, "previous_build": r.previous_build,
        "migrate_down": r.details["migrate_down"],
    }))
    .unwrap();

    // 3. Build 3 adds a RunPython without reverse. From build 1, the plan lists both migrations
    //    and flags the irreversible one; the activation (from build 2) applies the one.
    site.release("000003", |w| {
        write_migration(
            w,
            "0003_fill",
            "0002_project_stars",
            "migrations.RunPython(fill)",
        );
    });
    let plan = site.plan("Build000003", &site.repo.work, &["--json"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let steps = v["groups"][0]["migrations"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["0002_project_stars", "0003_fill"], "{v}");
    assert_eq!(
        steps[1]["irreversible"],
        serde_json::json!(["RunPython without reverse_code"])
    );
    assert!(String::from_utf8_lossy(&plan.stderr)
        .contains("IRREVERSIBLE: RunPython without reverse_code"));
    ok(
        site.installer(&["activate", "--build", "Build000002"]),
        "activate 2 again",
    );
    let r = installer_expecting(&site, &["activate", "--build", "Build000003"], 0);
    assert_eq!(applies(&r), ["dashboard.0003_fill"]);

    // 4. Past the irreversible one: refused, and nothing changes — schema, `current`, journal.
    let journal = site.root.join(".deploy/journal.jsonl");
    let state = |site: &Site| {
        (
            site.current(),
            applied_migrations(site),
            project_columns(site),
            fs::read_to_string(&journal).unwrap(),
        )
    };
    let mut state_unchanged = 0;
    let before = state(&site);
    let r = installer_expecting(
        &site,
        &["rollback", "--to", "Build000001", "--migrate-down"],
        2,
    );
    let irreversible = r.error.unwrap();
    assert!(
        irreversible
            .contains("dashboard.0003_fill (RunPython without reverse_code) cannot be undone"),
        "{irreversible}"
    );
    assert_eq!(state(&site), before);
    state_unchanged += 1;
    let refused_irreversible = 1;
    all_serve(&server, "000003", 3);

    // 5. Build 4: a migration whose reverse fails, then one that drops the column. Without
    //    --migrate-down, build 3's code cannot run on that schema: refused, nothing changes.
    site.release("000004", |w| {
        let models = w.join("binarycrate/dashboard/models.py");
        let text = fs::read_to_string(&models).unwrap();
        fs::write(&models, text.replace(STARS_FIELD, "")).unwrap();
        write_migration(
            w,
            "0004_bad_reverse",
            "0003_fill",
            "migrations.RunSQL('SELECT 1', reverse_sql='THIS IS NOT SQL')",
        );
        write_migration(
            w,
            "0005_remove_project_stars",
            "0004_bad_reverse",
            "migrations.RemoveField(model_name='project', name='stars')",
        );
    });
    let r = installer_expecting(&site, &["activate", "--build", "Build000004"], 0);
    assert_eq!(
        applies(&r),
        [
            "dashboard.0004_bad_reverse",
            "dashboard.0005_remove_project_stars"
        ]
    );
    let destructive = &r.details["migrations"]["apply"][1]["destructive"];
    assert_eq!(
        destructive,
        &serde_json::json!(["removes the field project.stars"])
    );
    assert!(!project_columns(&site).contains(&"stars".to_owned()));
    let before = state(&site);
    let r = installer_expecting(&site, &["rollback", "--to", "Build000003"], 2);
    let refusal = r.error.unwrap();
    assert!(
        refusal.contains("removes the field project.stars") && refusal.contains("--migrate-down"),
        "{refusal}"
    );
    assert_eq!(state(&site), before);
    state_unchanged += 1;

    // 6. With --migrate-down it fails midway: the column is back, the bad reverse is still
    //    applied, build 4 still serves, and the report says exactly that.
    let r = installer_expecting(
        &site,
        &["rollback", "--to", "Build000003", "--migrate-down"],
        1,
    );
    assert_eq!(
        r.details["migrate_down"],
        serde_json::json!({"unapplied": ["dashboard.0005_remove_project_stars"], "still_applied": ["dashboard.0004_bad_reverse"]})
    );
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("still applied dashboard.0004_bad_reverse"),
        "{:?}",
        r.error
    );
    assert_eq!(site.current(), "releases/Build000004");
    assert_eq!(
        applied_migrations(&site),
        [
            "dashboard.0001_initial",
            "dashboard.0002_project_stars",
            "dashboard.0003_fill",
            "dashboard.0004_bad_reverse"
        ]
    );
    assert!(project_columns(&site).contains(&"stars".to_owned()));
    all_serve(&server, "000004", 5);
    let journal_text = fs::read_to_string(&journal).unwrap();
    assert!(
        journal_text.contains("still applied: dashboard.0004_bad_reverse"),
        "{journal_text}"
    );
    // The journal lists what each run applied and unapplied.
    let records: Vec<serde_json::Value> = journal_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let listed = |key: &str| -> Vec<String> {
        records
            .iter()
            .flat_map(|r| r[key].as_array().cloned().unwrap_or_default())
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(listed("migrations_applied").contains(&"dashboard.0002_project_stars".to_owned()));
    assert_eq!(
        listed("migrations_unapplied"),
        [
            "dashboard.0002_project_stars",
            "dashboard.0005_remove_project_stars"
        ]
    );
    // And `installer status` compares the database with the live release: one behind.
    let status = report(&site.installer(&["status", "--json"]));
    assert_eq!(
        status.details["schema"],
        serde_json::json!({"state": "behind", "behind": ["dashboard.0005_remove_project_stars"]})
    );

    eprintln!("the rollback report for the column case:\n{column_report}");
    eprintln!("the refusal past the irreversible migration: {irreversible}");
    tests::show(&format!(
        "migrate-down: unapplied={unapplied} refused-irreversible={refused_irreversible} state-unchanged={state_unchanged}"
    ));
    drop(server);
}
