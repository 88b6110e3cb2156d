//! `builder package` and `builder publish` against the example application's real repositories:
//! real pip, real Django collectstatic, the example's module bundler, real git submodules.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tests::bins;
use tests::example;

/// The Python side (wheelhouse) is there, or the test is skipped with a reason (never in CI).
fn wheelhouse() -> Option<PathBuf> {
    bins::have_wheelhouse().then(example::wheelhouse_dir)
}

/// `builder` with pip pointed at the local wheelhouse, so builds are offline and fast.
fn builder(_wheelhouse: &Path, dir: &Path) -> Command {
    bins::builder_offline(dir)
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

fn package(wheelhouse: &Path, repo: &Path, tag: &str, out: &Path) -> Output {
    builder(wheelhouse, repo)
        .args(["package", "--tag", tag, "--out"])
        .arg(out)
        .output()
        .unwrap()
}

fn last_line(stdout: &str) -> PathBuf {
    PathBuf::from(stdout.lines().last().expect("a path on stdout"))
}

fn unpack(artifact: &Path, dest: &Path) {
    let out = Command::new(bins::installer())
        .arg("unpack")
        .arg(artifact)
        .arg(dest)
        .output()
        .unwrap();
    ok(out, "installer unpack");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn package_runs_every_step_in_staging_and_is_reproducible() {
    let Some(wh) = wheelhouse() else { return };
    let (tmp, repo) = example::create_temp().unwrap();
    let before = example::state(&repo.work);
    let out1 = tmp.path().join("out1");
    // Each of the first two packagings has a cache of its own (both install and compile their
    // dependencies); the third reuses the first's.
    let cache = |n: u32| tmp.path().join(format!("cache{n}"));
    let packaged = builder(&wh, &repo.work)
        .env(builder::depcache::CACHE_DIR_ENV, cache(1))
        .args(["package", "--tag", example::TAG, "--out"])
        .arg(&out1)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&packaged.stderr);
    assert!(!said.contains("from the dependency cache") && !said.contains("from the wheel cache"));
    let stdout = ok(packaged, "package");
    assert_eq!(
        example::state(&repo.work),
        before,
        "the repository must not change"
    );
    // The steps ran in the staging copy, not in the working tree.
    assert!(!repo.work.join(example::FRONT_END_BUILD_NUMBER).exists());
    assert!(!repo.work.join(example::STATIC_ROOT).exists());

    let artifact = last_line(&stdout);
    assert!(artifact
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("binarycrate-Build000001-"));
    assert_eq!(
        entries(&out1),
        vec![
            artifact.file_name().unwrap().to_str().unwrap().to_owned(),
            "build-log.json".into(),
            "release.json".into()
        ]
    );

    // The migration graph, from Django's loader: every app's migrations in order, each
    // operation judged the same on every machine.
    let sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(out1.join("release.json")).unwrap()).unwrap();
    let graph = &sidecar["manifest"]["migrations"];
    assert!(
        graph["django"]
            .as_str()
            .unwrap()
            .starts_with(char::is_numeric),
        "{graph}"
    );
    let auth = graph["apps"]["auth"].as_array().unwrap();
    assert_eq!(auth[0]["name"], "0001_initial", "{graph}");
    assert!(auth[0]["operations"][0]["kind"] == "CreateModel", "{graph}");

    let tree = tmp.path().join("tree");
    unpack(&artifact, &tree);
    let commit = repo.commit(example::TAG).unwrap();
    assert_eq!(
        fs::read_to_string(tree.join(example::VERSION_HASH_FILE)).unwrap(),
        format!("VERSION_HASH = '{commit}'\n")
    );
    let index: serde_json::Value = serde_json::from_slice(
        &fs::read(tree.join(example::BUNDLE_DIR).join("index.json")).unwrap(),
    )
    .unwrap();
    let code = index["preload"]["binarycrate.build_number"]
        .as_str()
        .expect("build number preloaded");
    assert!(code.contains("BUILD_NUMBER = '000001'"), "{code}");
    assert!(
        index["preload"]["cavorite"].is_string()
            || index["preload"]["cavorite.__init__"].is_string(),
        "{index}"
    );
    assert!(
        tree.join(example::STATIC_ROOT)
            .join("dashboard/app.css")
            .is_file(),
        "collectstatic output is packaged"
    );
    // The dependencies travel installed, with their bytecode and the project's, and without
    // the wheels they came from (recorded in the manifest).
    assert!(tree.join("deps/django/__init__.py").is_file());
    assert!(tree
        .join("deps/django/__pycache__")
        .read_dir()
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".pyc")));
    assert!(tree
        .join("binarycrate/binarycrate/__pycache__")
        .read_dir()
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("wsgi.")));
    assert!(!tree.join("wheels").exists() && !tree.join("deps/bin").exists());
    assert!(!tree.join(".git").exists() && !tree.join(".gitmodules").exists());
    assert!(
        tree.join("cavorite/cavorite/__init__.py").is_file(),
        "submodules are exported"
    );

    let sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(out1.join("release.json")).unwrap()).unwrap();
    let m = &sidecar["manifest"];
    assert_eq!(m["commit"], commit.as_str());
    assert_eq!(m["source_date"], example::TAG_TIME);
    assert_eq!(m["submodules"].as_object().unwrap().len(), 2);
    assert!(m["python_tag"].as_str().unwrap().starts_with("cp3"));
    assert_eq!(
        m["deps"],
        serde_json::json!({"dir": "deps", "bytecode": true})
    );
    assert!(m["wheels"].as_object().unwrap().len() >= 3);
    assert!(
        m["files"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|f| f.starts_with("deps/") && f.ends_with(".pyc"))
            .count()
            > 100
    );
    let steps: Vec<&str> = m["build_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for step in [
        "wheels",
        "deps",
        "venv",
        "copy-build-number",
        "bundle-add:cavorite",
        "bundle-preload:historygraph",
        "version-hash",
        "collectstatic",
        "check-frontend-build-number",
        "bytecode",
    ] {
        assert!(steps.contains(&step), "{step} missing from {steps:?}");
    }
    let text = serde_json::to_string(&m["build_steps"]).unwrap();
    assert!(
        !text.contains(tmp.path().to_str().unwrap()) && !text.contains("/tmp/"),
        "steps record relative paths only: {text}"
    );
    let log: serde_json::Value =
        serde_json::from_slice(&fs::read(out1.join("build-log.json")).unwrap()).unwrap();
    assert!(log["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "collectstatic"));

    // Another clone path, umask, time zone and staging directory: the same bytes and names.
    let clone = tmp.path().join("elsewhere/clone");
    fs::create_dir_all(clone.parent().unwrap()).unwrap();
    let mut c = example::git_command(tmp.path());
    c.args(["clone", "-q", "--recurse-submodules"])
        .arg(&repo.remote)
        .arg(&clone);
    assert!(c.status().unwrap().success());
    let out2 = tmp.path().join("out2");
    let out = builder(&wh, &clone)
        .env(builder::depcache::CACHE_DIR_ENV, cache(2))
        .env("TZ", "Pacific/Kiritimati")
        .env("TMPDIR", tmp.path())
        .arg("package")
        .args(["--tag", example::TAG, "--out"])
        .arg(&out2)
        .pre_exec_umask(0o027)
        .output()
        .unwrap();
    let artifact2 = last_line(&ok(out, "second package"));
    assert_eq!(artifact2.file_name(), artifact.file_name());
    assert_eq!(fs::read(&artifact2).unwrap(), fs::read(&artifact).unwrap());
    assert_eq!(
        fs::read(out2.join("release.json")).unwrap(),
        fs::read(out1.join("release.json")).unwrap()
    );

    // The same requirements again, with the first cache: the dependencies come from it, and
    // the release is the same bytes.
    let out3 = tmp.path().join("out3");
    let warm = builder(&wh, &clone)
        .env(builder::depcache::CACHE_DIR_ENV, cache(1))
        .args(["package", "--tag", example::TAG, "--out"])
        .arg(&out3)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&warm.stderr);
    assert!(
        said.contains("from the dependency cache") && said.contains("from the wheel cache"),
        "{said}"
    );
    let artifact3 = last_line(&ok(warm, "warm package"));
    assert_eq!(fs::read(&artifact3).unwrap(), fs::read(&artifact).unwrap());
}

/// Sets the child's umask (a process-wide setting, so never in the test process itself).
trait UmaskExt {
    fn pre_exec_umask(&mut self, mask: u32) -> &mut Self;
}

impl UmaskExt for Command {
    fn pre_exec_umask(&mut self, mask: u32) -> &mut Self {
        // Run through `sh -c 'umask …; exec "$0" "$@"'` to avoid unsafe pre_exec hooks.
        let program = self.get_program().to_owned();
        let args: Vec<_> = self.get_args().map(|a| a.to_owned()).collect();
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("umask {mask:03o}; exec \"$0\" \"$@\""))
            .arg(program)
            .args(args);
        if let Some(dir) = self.get_current_dir() {
            sh.current_dir(dir);
        }
        for (k, v) in self.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        *self = sh;
        self
    }
}

#[test]
fn secrets_failing_steps_and_mismatched_build_numbers_leave_no_artifact() {
    let Some(wh) = wheelhouse() else { return };
    let (tmp, repo) = example::create_temp().unwrap();
    // Packages `tag` into its own directory, expecting exit `code` and nothing written there;
    // returns what it said.
    let refused = |tag: &str, code: i32| {
        let out_dir = tmp.path().join(format!("out-{tag}"));
        let out = package(&wh, &repo.work, tag, &out_dir);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(
            entries(&out_dir).is_empty(),
            "{tag} wrote into `{}`",
            out_dir.display()
        );
        err
    };

    // A secret committed to the tag.
    repo.commit_and_tag("000002", |w| {
        fs::write(
            w.join(example::PRODUCTION_SETTINGS),
            "SECRET_KEY = 'hunter2'\n",
        )
        .unwrap()
    })
    .unwrap();
    let err = refused("Build000002", 2);
    assert!(
        err.contains(example::PRODUCTION_SETTINGS) && err.contains("secrets"),
        "{err}"
    );

    // A build step that fails: its name and output are shown, nothing is written.
    repo.commit_and_tag("000003", |w| {
        fs::remove_file(w.join(example::PRODUCTION_SETTINGS)).unwrap();
        let bundler = w.join(example::MODULE_BUNDLER);
        let text = fs::read_to_string(&bundler).unwrap();
        let broken = text.replacen(
            "\nimport sys\n",
            "\nimport sys\nprint('bundler exploded', file=sys.stderr); sys.exit(3)\n",
            1,
        );
        assert_ne!(broken, text, "the bundler's `import sys` line moved");
        fs::write(&bundler, broken).unwrap();
    })
    .unwrap();
    let err = refused("Build000003", 1);
    assert!(
        err.contains("step `bundle-add:cavorite` failed") && err.contains("bundler exploded"),
        "{err}"
    );

    // A front end that carries another build number than the back end.
    repo.commit_and_tag("000004", |w| {
        example::git(
            w,
            &["checkout", "Build000001", "--", example::MODULE_BUNDLER],
        )
        .unwrap();
        fs::write(
            w.join(example::FRONT_END_BUILD_NUMBER),
            "BUILD_NUMBER = '000001'\n",
        )
        .unwrap();
        let toml = fs::read_to_string(w.join("deploy.toml")).unwrap();
        fs::write(
            w.join("deploy.toml"),
            format!("{toml}build_number_copy = \"front-end/build_number_elsewhere.py\"\n"),
        )
        .unwrap();
    })
    .unwrap();
    let err = refused("Build000004", 2);
    assert!(
        err.contains("front end says build 000001 but the back end says 000004"),
        "{err}"
    );

    // A tag whose build_number.py disagrees with its name (made by hand, not by prepare).
    example::git(&repo.work, &["tag", "-a", "Build000009", "-m", "by hand"]).unwrap();
    let out = package(&wh, &repo.work, "Build000009", &tmp.path().join("out9"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("says 000004, not 000009"));

    // Bad configuration in the tag names the key.
    repo.commit_and_tag("000005", |w| {
        fs::write(
            w.join("deploy.toml"),
            "app = \"binarycrate\"\n[python]\ninterpeter = \"python3\"\n",
        )
        .unwrap();
    })
    .unwrap();
    let out = package(&wh, &repo.work, "Build000005", &tmp.path().join("out5"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("interpeter") && err.contains("deploy.toml at Build000005"),
        "{err}"
    );

    // A migration that depends on one no tag has: Django's loader (run beside collectstatic)
    // fails, its output is shown, nothing is written.
    repo.commit_and_tag("000006", |w| {
        example::git(w, &["checkout", "Build000001", "--", "deploy.toml"]).unwrap();
        fs::write(
            w.join("binarycrate/dashboard/migrations/0002_orphan.py"),
            "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n    dependencies = [('dashboard', '0099_missing')]\n    operations = []\n",
        )
        .unwrap();
    })
    .unwrap();
    let err = refused("Build000006", 1);
    assert!(
        err.contains("step `migration-graph` failed")
            && err.contains("Django's migration loader failed")
            && err.contains("0099_missing"),
        "{err}"
    );
}

#[test]
fn publish_to_the_default_file_store_and_to_s3() {
    let Some(wh) = wheelhouse() else { return };
    let (tmp, repo) = example::create_temp().unwrap();
    let out_dir = tmp.path().join("out");
    let artifact = last_line(&ok(
        package(&wh, &repo.work, example::TAG, &out_dir),
        "package",
    ));

    // Default store: `artifacts/` at the repository root.
    let publish = |extra: &[&str], envs: &[(String, String)]| {
        builder(&wh, &repo.work)
            .arg("publish")
            .arg(&artifact)
            .args(extra)
            .envs(envs.iter().cloned())
            .output()
            .unwrap()
    };
    let out = publish(&[], &[]);
    ok(out, "publish");
    let published = repo.work.join("artifacts/binarycrate/Build000001");
    assert_eq!(
        fs::read(published.join("release.json")).unwrap(),
        fs::read(out_dir.join("release.json")).unwrap()
    );
    assert!(published.join(artifact.file_name().unwrap()).is_file());
    assert!(published.join("build-log.json").is_file());
    let again = publish(&[], &[]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing to do"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(again.status.success());
    let listed = ok(
        builder(&wh, &repo.work)
            .args(["releases"])
            .output()
            .unwrap(),
        "releases",
    );
    assert!(
        listed.contains("Build000001")
            && listed.contains(artifact.file_name().unwrap().to_str().unwrap()),
        "{listed}"
    );

    // A different archive under the same build number is refused.
    let forged = tmp.path().join("forged");
    fs::create_dir(&forged).unwrap();
    let staged = tmp.path().join("staged");
    fs::create_dir(&staged).unwrap();
    fs::write(staged.join("x"), "other content").unwrap();
    let arch = Command::new(bins::builder())
        .args(["archive"])
        .arg(&staged)
        .args(["--build", "Build000001", "--source-date", "1", "--out"])
        .arg(&forged)
        .output()
        .unwrap();
    let forged_artifact = last_line(&ok(arch, "archive"));
    let out = builder(&wh, &repo.work)
        .arg("publish")
        .arg(&forged_artifact)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already published"));

    // S3 on moto.
    let Some(server) = tests::moto::MotoServer::start_or_skip() else {
        return;
    };
    server.create_bucket("releases").unwrap();
    let store = ["--store", "s3://releases/apps", "--s3-endpoint"];
    let endpoint = server.endpoint();
    let mut args: Vec<&str> = store.to_vec();
    args.push(&endpoint);
    ok(publish(&args, &server.env()), "publish to S3");
    let again = publish(&args, &server.env());
    assert!(
        again.status.success() && String::from_utf8_lossy(&again.stderr).contains("nothing to do")
    );
    let keys = server.list_keys("releases", "apps/").unwrap();
    assert!(
        keys.iter()
            .any(|k| k == "apps/binarycrate/Build000001/release.json"),
        "{keys:?}"
    );
    let mut releases = builder(&wh, &repo.work);
    releases
        .args(["releases", "--json"])
        .args(&args)
        .envs(server.env());
    let json: serde_json::Value =
        serde_json::from_str(&ok(releases.output().unwrap(), "releases on S3")).unwrap();
    assert_eq!(json[0]["tag"], "Build000001");
}

/// For a server Python other than the builder's (`python.platform` and `python.python_version`):
/// pip chooses the wheels for that target and installs them into `deps/` for it; no bytecode
/// is compiled here (the builder's Python would write its own), the manifest says so, and the
/// wheels are recorded for that Python.
#[test]
fn package_for_another_python_installs_the_dependencies_for_it() {
    let Some(wh) = wheelhouse() else { return };
    let (tmp, repo) = example::create_temp().unwrap();
    repo.commit_and_tag("000002", |w| {
        let file = w.join("deploy.toml");
        let mut text = fs::read_to_string(&file).unwrap();
        text.push_str(
            "\n[python]\nplatform = \"manylinux2014_x86_64\"\npython_version = \"3.12\"\n",
        );
        fs::write(&file, text).unwrap();
    })
    .unwrap();
    let out = tmp.path().join("out");
    let built = package(&wh, &repo.work, "Build000002", &out);
    let artifact = last_line(&ok(built, "builder package for Python 3.12"));
    let sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("release.json")).unwrap()).unwrap();
    let m = &sidecar["manifest"];
    assert_eq!(m["python_tag"], "cp312");
    assert_eq!(
        m["deps"],
        serde_json::json!({"dir": "deps", "bytecode": false})
    );
    let files = m["files"].as_object().unwrap();
    assert!(files.contains_key("deps/django/__init__.py"));
    assert!(files
        .keys()
        .any(|f| f.starts_with("deps/django-5.2.19.dist-info/")));
    assert!(
        !files.keys().any(|f| f.ends_with(".pyc")),
        "no bytecode of the builder's Python in a release for 3.12"
    );
    let steps = serde_json::to_string(&m["build_steps"]).unwrap();
    assert!(
        steps.contains("\"--platform\",\"manylinux2014_x86_64\",\"--python-version\",\"3.12\""),
        "{steps}"
    );
    let tree = tmp.path().join("tree");
    unpack(&artifact, &tree);
    assert!(tree.join("deps/sqlparse/__init__.py").is_file());
    assert!(!tree.join("wheels").exists());
}
