//! Dependencies that travel installed: a release's `deps/` (made by `builder package`) becomes
//! its environment on the server without pip, every file in it is verified like the app's, a
//! release made for another Python is refused before anything changes, and a release from
//! before `deps/` (wheels only) still gets its venv from pip.
//!
//! One story over the shared published builds and one uWSGI, in steps.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::report::Report;
use tests::published::{self, Published, ServerRoot};
use tests::show;

fn ready() -> bool {
    tests::ready(tests::uwsgi::unavailable().or_else(tests::example::wheelhouse_missing))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn report(out: &Output) -> Report {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}): {}", stderr(out)))
}

#[test]
fn dependencies_travel_installed_are_verified_and_ready_without_pip() {
    if !ready() {
        return;
    }
    let published = published::builds();
    let tmp = tempfile::tempdir().unwrap();
    let site = ServerRoot::new(tmp.path(), &published, 120).unwrap();
    let server = site.first_activation("Build000001").unwrap();

    an_upgrade_makes_its_environment_from_deps_without_pip(&site);
    an_edited_file_of_a_release_on_disk_refuses_it(&site, "binarycrate/binarycrate/urls.py");
    an_edited_file_of_a_release_on_disk_refuses_it(&site, "deps/django/__init__.py");
    a_release_for_another_python_is_refused_and_changes_nothing(&site, tmp.path());
    a_release_from_before_deps_still_gets_its_venv_from_pip(&site, &published, tmp.path());
    pruning_the_releases_it_shares_files_with_keeps_one_working(&site, &server);
    a_shared_tree_that_changed_is_not_reused(&site);
    other_dependencies_get_their_own_tree_and_prune_removes_unused_ones(&site, &server, tmp.path());
    drop(server);
}

/// The shared dependency tree a release's `deps` links to (`<root>/deps/<key>`).
fn deps_tree(site: &ServerRoot, build: &str) -> PathBuf {
    let link = site.root.join("releases").join(build).join("deps");
    let target = fs::read_link(&link)
        .unwrap_or_else(|e| panic!("{}: not a link to a shared tree: {e}", link.display()));
    let key = target
        .strip_prefix("../../deps/")
        .unwrap_or_else(|_| panic!("{}: links to `{}`", link.display(), target.display()));
    site.root.join("deps").join(key)
}

/// Step 1: Build000002's `deps` phase links its verified `deps/` as the venv's site-packages;
/// no pip runs and the venv holds no pip.
fn an_upgrade_makes_its_environment_from_deps_without_pip(site: &ServerRoot) {
    let out = site.installer(&["activate", "--build", "Build000002", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(&out);
    assert!(r.phases.iter().any(|p| p.name == "deps" && p.ok), "{r:?}");
    assert!(
        stderr(&out).contains("its installed dependencies, without pip"),
        "{}",
        stderr(&out)
    );
    let release = site.root.join("releases/Build000002");
    let site_packages = site_packages(&release.join("venv"));
    assert_eq!(
        fs::read_link(&site_packages).unwrap(),
        Path::new("../../../deps")
    );
    assert!(!release.join("venv/bin/pip").exists());
    assert!(release.join("deps/django/__init__.py").is_file());
    // One tree of dependencies on disk for both: Build000001 wrote it, Build000002 checked it
    // and links to it.
    assert_eq!(
        deps_tree(site, "Build000002"),
        deps_tree(site, "Build000001")
    );
    assert_eq!(
        r.details["unpack"]["deps"]["use"], "reused",
        "{:?}",
        r.details
    );
    // Its `deps/` comes last in the archive: only hashed, never inflated.
    assert_eq!(
        r.details["unpack"]["deps"]["inflated"], false,
        "{:?}",
        r.details
    );
    assert_eq!(fs::read_dir(site.root.join("deps")).unwrap().count(), 1);
    // Build000001's equal files were linked, not written again: one copy on disk (the
    // dependencies, not read, count as linked: they are the shared tree itself).
    let linked = r.details["unpack"]["linked_files"].as_u64().unwrap();
    assert!(linked > 1000, "{:?}", r.details);
    let old = site.root.join("releases/Build000001");
    let same = "binarycrate/binarycrate/urls.py";
    assert_eq!(inode(&release.join(same)), inode(&old.join(same)));
    // Django comes from the release's own deps/ when its venv's Python runs manage.py.
    let python = release.join("venv/bin/python");
    let where_ = Command::new(&python)
        .args(["-c", "import django; print(django.__file__)"])
        .output()
        .unwrap();
    let file = String::from_utf8_lossy(&where_.stdout).trim().to_owned();
    assert!(
        file.starts_with(release.to_str().unwrap()),
        "{file} {}",
        stderr(&where_)
    );
    // What the venv imports is verified too: its site-packages pointed elsewhere is drift.
    fs::remove_file(&site_packages).unwrap();
    std::os::unix::fs::symlink("/usr/lib/python3/dist-packages", &site_packages).unwrap();
    let out = site.installer(&["verify", "Build000002"], &[]);
    assert_ne!(out.status.code(), Some(0));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(said.contains("site-packages"), "{said}");
    fs::remove_file(&site_packages).unwrap();
    std::os::unix::fs::symlink("../../../deps", &site_packages).unwrap();
    show("deps: Build000002's venv is a link to its verified deps/, no pip ran");
}

fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap())
}

fn site_packages(venv: &Path) -> PathBuf {
    let lib = venv.join("lib");
    let dir = fs::read_dir(&lib).unwrap().flatten().next().unwrap().path();
    dir.join("site-packages")
}

/// Steps 2 and 3: a file changed in Build000001 on disk (an app file, then a dependency's) is
/// drift for `verify` and refuses `rollback --to` and `activate --build` of it; restored, the
/// release verifies again.
fn an_edited_file_of_a_release_on_disk_refuses_it(site: &ServerRoot, file: &str) {
    let path = site.root.join("releases/Build000001").join(file);
    let original = fs::read(&path).unwrap();
    let mut edited = original.clone();
    edited.extend_from_slice(b"\nimport os; os.system('echo owned')\n");
    fs::write(&path, &edited).unwrap();

    let out = site.installer(&["verify", "Build000001"], &[]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(said.contains(file), "{said}");
    for args in [
        &["rollback", "--to", "Build000001"][..],
        &["activate", "--build", "Build000001"][..],
    ] {
        let out = site.installer(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_eq!(
            site.current().as_deref(),
            Some("releases/Build000002"),
            "{args:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), edited, "{args:?} left it alone");
    }
    fs::write(&path, &original).unwrap();
    let out = site.installer(&["verify", "Build000001"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    show(&format!(
        "deps: `{file}` edited on disk: verify finds it, rollback --to and activate --build refuse it"
    ));
}

/// Step 4: a server whose `python` is another version refuses Build000003 with exit 2 and
/// leaves nothing of it behind.
fn a_release_for_another_python_is_refused_and_changes_nothing(site: &ServerRoot, dir: &Path) {
    let fake = dir.join("python3.5");
    fs::write(&fake, "#!/bin/sh\necho '3 5 10'\necho /usr/bin/python3.5\n").unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = dir.join("old-python.toml");
    let text = fs::read_to_string(&site.config).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("python = ") {
                format!("python = {:?}", fake.display().to_string())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&config, text).unwrap();
    let out = Command::new(tests::bins::installer())
        .env("BINARYCRATE_INSTALLER_CONFIG", &config)
        .env_remove(common::fault::ENV)
        .args(["activate", "--build", "Build000003"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("installed for Python 3.") && err.contains("is 3.5"),
        "{err}"
    );
    assert!(!site.root.join("releases/Build000003").exists());
    assert_eq!(site.current().as_deref(), Some("releases/Build000002"));
    show("deps: a release for Python 3.x on a 3.5 server: exit 2, nothing left behind");
}

/// Step 5: Build000005 packed as releases were before `deps/` (its wheels, no `deps` in its
/// manifest) activates with a venv built by pip, and serves.
fn a_release_from_before_deps_still_gets_its_venv_from_pip(
    site: &ServerRoot,
    published: &Published,
    dir: &Path,
) {
    let artifact = fs::read_dir(published.tmp.path().join("out000004"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .unwrap();
    let tree = dir.join("old-tree");
    let out = Command::new(tests::bins::installer())
        .arg("unpack")
        .arg(&artifact)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    fs::remove_file(tree.join("release.json")).unwrap();
    fs::remove_dir_all(tree.join("deps")).unwrap();
    let pycache: Vec<PathBuf> = walkdir::WalkDir::new(&tree)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name() == "__pycache__")
        .map(|e| e.path().to_owned())
        .collect();
    for d in pycache {
        fs::remove_dir_all(d).unwrap();
    }
    let number_file = tree.join(tests::example::BUILD_NUMBER_FILE);
    let text = fs::read_to_string(&number_file).unwrap();
    fs::write(&number_file, text.replace("000004", "000005")).unwrap();
    fs::create_dir(tree.join("wheels")).unwrap();
    let requirements = fs::read_to_string(tree.join("requirements.txt")).unwrap();
    for wheel in fs::read_dir(tests::example::wheelhouse_dir())
        .unwrap()
        .flatten()
    {
        let name = wheel.file_name().to_string_lossy().into_owned();
        let mut parts = name.split('-');
        let pin = format!(
            "{}=={}",
            parts.next().unwrap(),
            parts.next().unwrap_or_default()
        );
        if requirements.to_lowercase().contains(&pin.to_lowercase()) {
            fs::copy(wheel.path(), tree.join("wheels").join(&name)).unwrap();
        }
    }
    assert_eq!(fs::read_dir(tree.join("wheels")).unwrap().count(), 3);
    let out_dir = dir.join("old-out");
    let packed = Command::new(tests::bins::builder())
        .args([
            "archive",
            "--build",
            "Build000005",
            "--source-date",
            "1700000000",
            "--out",
        ])
        .arg(&out_dir)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(packed.status.success(), "{}", stderr(&packed));
    let artifact = String::from_utf8_lossy(&packed.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let publish = Command::new(tests::bins::builder())
        .current_dir(dir)
        .arg("publish")
        .arg(&artifact)
        .arg("--store")
        .arg(format!("file://{}", dir.join("old-store").display()))
        .output()
        .unwrap();
    assert!(publish.status.success(), "{}", stderr(&publish));
    let sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("release.json")).unwrap()).unwrap();
    assert!(sidecar["manifest"].get("deps").is_none());

    let out = site.installer(
        &[
            "activate",
            "--build",
            "Build000005",
            "--store",
            &format!("file://{}", dir.join("old-store").display()),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a venv built from its wheels with pip"),
        "{}",
        stderr(&out)
    );
    let venv = site.root.join("releases/Build000005/venv");
    assert!(site_packages(&venv).join("django").is_dir());
    assert!(!fs::symlink_metadata(site_packages(&venv))
        .unwrap()
        .file_type()
        .is_symlink());
    let out = site.installer(&["verify"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    show("deps: a release from before deps/ (wheels only) activated with pip and verifies");
}

/// Step 6: Build000003 shares its files with the releases on disk; pruning all of them leaves
/// it complete and serving.
fn pruning_the_releases_it_shares_files_with_keeps_one_working(
    site: &ServerRoot,
    server: &tests::uwsgi::UwsgiServer,
) {
    let out = site.installer(&["activate", "--build", "Build000003", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let three = site.root.join("releases/Build000003");
    let shared = inode(&three.join("deps/django/__init__.py"));
    assert_eq!(
        shared,
        inode(
            &site
                .root
                .join("releases/Build000002/deps/django/__init__.py")
        )
    );
    let out = site.installer(&["prune", "--keep", "0"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Prune keeps the previous good release (Build000005); the ones before it are gone.
    for gone in ["Build000001", "Build000002"] {
        assert!(!site.root.join("releases").join(gone).exists(), "{gone}");
    }
    let out = site.installer(&["verify"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(inode(&three.join("deps/django/__init__.py")), shared);
    assert!(
        deps_tree(site, "Build000003").is_dir(),
        "the tree it uses stays"
    );
    let page = server.request("/").unwrap();
    assert_eq!(page.build_number(), Some("000003"), "{}", page.body);
    show("deps: Build000003 linked to the files of the releases on disk; pruned them, it verifies and serves");
}

/// Step 7: a file added to the shared tree the live Build000003 uses (a `.pth` file would run
/// in every worker) is drift for `verify`, and Build000004, which has the same dependencies, is
/// given its own checked copy instead of that tree.
fn a_shared_tree_that_changed_is_not_reused(site: &ServerRoot) {
    let tree = deps_tree(site, "Build000003");
    let planted = tree.join("zzz-planted.pth");
    fs::write(&planted, "import os; os.system('echo owned')\n").unwrap();
    let out = site.installer(&["verify", "Build000003"], &[]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(said.contains("deps/zzz-planted.pth"), "{said}");

    let out = site.installer(&["activate", "--build", "Build000004", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(&out);
    assert_eq!(r.details["unpack"]["deps"]["use"], "own", "{:?}", r.details);
    assert!(
        r.warnings.iter().any(|w| w.contains("zzz-planted.pth")),
        "{:?}",
        r.warnings
    );
    let four = site.root.join("releases/Build000004");
    let meta = fs::symlink_metadata(four.join("deps")).unwrap();
    assert!(meta.is_dir(), "its own copy, not a link");
    assert!(!four.join("deps/zzz-planted.pth").exists());
    let out = site.installer(&["verify", "Build000004"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    fs::remove_file(&planted).unwrap();
    let out = site.installer(&["verify", "Build000003"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    show("deps: a file planted in a shared tree: verify finds it, the next release gets its own copy");
}

/// Step 8: Build000006 pins another sqlparse. It gets a tree of its own (whose files equal to
/// those on disk are hard links to them), verifies and serves; `prune` then removes the tree
/// only the pruned releases used.
fn other_dependencies_get_their_own_tree_and_prune_removes_unused_ones(
    site: &ServerRoot,
    server: &tests::uwsgi::UwsgiServer,
    dir: &Path,
) {
    let mut version = String::new();
    let three = site.root.join("releases/Build000003");
    let repo = tests::example::create(&dir.join("other-deps")).unwrap();
    repo.commit_and_tag("000006", |work| {
        version = tests::example::pin_other_sqlparse(work);
        // Build000002's migration is applied on this server: the model keeps it.
        for f in [
            "binarycrate/dashboard/models.py",
            "binarycrate/dashboard/migrations/0002_project_stars.py",
        ] {
            fs::copy(three.join(f), work.join(f)).unwrap();
        }
    })
    .unwrap();
    let out_dir = dir.join("other-deps-out");
    let packaged = tests::bins::builder_offline(&repo.work)
        .args(["package", "--tag", "Build000006", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(packaged.status.success(), "{}", stderr(&packaged));
    let artifact = String::from_utf8_lossy(&packaged.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let store = format!("file://{}", dir.join("other-deps-store").display());
    let publish = Command::new(tests::bins::builder())
        .current_dir(&repo.work)
        .args(["publish", &artifact, "--store", &store])
        .output()
        .unwrap();
    assert!(publish.status.success(), "{}", stderr(&publish));

    let out = site.installer(
        &[
            "activate",
            "--build",
            "Build000006",
            "--store",
            &store,
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(&out);
    assert_eq!(
        r.details["unpack"]["deps"]["use"], "created",
        "{:?}",
        r.details
    );
    let six = site.root.join("releases/Build000006");
    let (old_tree, new_tree) = (
        deps_tree(site, "Build000003"),
        deps_tree(site, "Build000006"),
    );
    assert_ne!(old_tree, new_tree);
    assert!(six
        .join(format!("deps/sqlparse-{version}.dist-info"))
        .is_dir());
    // Django did not change: its files are the ones already on disk (Build000004's copy, the
    // live release when it was unpacked).
    assert_eq!(
        inode(&six.join("deps/django/__init__.py")),
        inode(
            &site
                .root
                .join("releases/Build000004/deps/django/__init__.py")
        )
    );
    let out = site.installer(&["verify", "Build000006"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let page = server.request("/").unwrap();
    assert_eq!(page.build_number(), Some("000006"), "{}", page.body);

    // Build000004 is the previous good release and kept; Build000003 and 000005 go, and with
    // them the tree only Build000003 used.
    let out = site.installer(&["prune", "--keep", "0", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(&out);
    let key = old_tree.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        r.details["removed_deps"],
        serde_json::json!([key]),
        "{:?}",
        r.details
    );
    assert!(!site.root.join("deps").join(&key).exists());
    assert!(deps_tree(site, "Build000006").is_dir());
    let out = site.installer(&["verify"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let page = server.request("/").unwrap();
    assert_eq!(page.build_number(), Some("000006"), "{}", page.body);
    show("deps: other dependencies get their own tree, linked to equal files; prune removes the unused tree");
}
