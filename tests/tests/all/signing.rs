//! Signed releases through the real binaries: `builder keygen`, `package` (signing),
//! `sign`, `publish`, and `installer activate` refusing what its trusted keys did not sign —
//! from a file store and from S3 on moto. A refusal must leave the server root unchanged and
//! download nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::report::{Outcome, Report};
use tests::moto::MotoServer;
use tests::{bins, example};

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> Output {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    out
}

/// A key pair from `builder keygen`: the secret key's path, the public key line and its id.
struct Key {
    secret: PathBuf,
    public: String,
    id: String,
}

fn keygen(dir: &Path, name: &str) -> Key {
    let out = ok(Command::new(bins::builder())
        .args(["keygen", "--name", name, "--out-dir"])
        .arg(dir)
        .output()
        .unwrap());
    let printed = String::from_utf8(out.stdout).unwrap();
    let public = fs::read_to_string(dir.join(format!("{name}.pub")))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(
        printed.contains(&format!("public_keys = [\"{public}\"]")),
        "keygen says what to put in installer.toml: {printed}"
    );
    let id = printed
        .lines()
        .find_map(|l| l.strip_prefix("key id"))
        .unwrap()
        .trim()
        .to_owned();
    Key {
        secret: dir.join(format!("{name}.key")),
        public,
        id,
    }
}

/// `builder package --tag TAG --out OUT [--signing-key KEY]`; the artifact's path.
fn package(repo: &example::ExampleRepo, tag: &str, out: &Path, key: Option<&Path>) -> PathBuf {
    let mut cmd = bins::builder_offline(&repo.work);
    cmd.args(["package", "--tag", tag, "--out"]).arg(out);
    if let Some(key) = key {
        cmd.arg("--signing-key").arg(key);
    }
    let done = ok(cmd.output().unwrap());
    PathBuf::from(
        String::from_utf8(done.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
}

fn publish(
    repo: &example::ExampleRepo,
    artifact: &Path,
    store: &str,
    env: &[(String, String)],
) -> Output {
    Command::new(bins::builder())
        .current_dir(&repo.work)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("publish")
        .arg(artifact)
        .args(["--store", store])
        .output()
        .unwrap()
}

/// Copies a packaged release's directory (artifact, sidecar, signature if any).
fn copy_release(from: &Path, to: &Path, with_signature: bool) -> PathBuf {
    fs::create_dir_all(to).unwrap();
    let mut artifact = None;
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "release.json.minisig" && !with_signature {
            continue;
        }
        fs::copy(e.path(), to.join(&name)).unwrap();
        if name.ends_with(".tar.gz") {
            artifact = Some(to.join(&name));
        }
    }
    artifact.unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every entry under `root` except `.deploy/` (lock and journal may change there), with file
/// contents and link targets: "nothing changed" means this is equal before and after.
fn listing(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == ".deploy" {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.push((
                    rel,
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            } else if ft.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                walk(root, &p, out);
            } else {
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

/// A server root with its `shared/production.py`, a fake site for the health check, and an
/// `installer.toml` with `signing` as its `[signing]` table.
struct Server {
    root: PathBuf,
    config: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Server {
    fn new(dir: &Path, repo: &example::ExampleRepo, store: &str, signing: &str) -> Self {
        let root = dir.join("srv");
        // The layout an installed server has (the installer makes it on first use).
        for d in ["shared", "releases", "static", ".deploy/cache"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(
            root.join("shared/production.py"),
            example::production_settings(repo, &root).unwrap(),
        )
        .unwrap();
        let (port, stop) = tests::site::fake_site(&root);
        let config = dir.join("installer.toml");
        let python = tests::moto::venv_dir().join("bin/python");
        fs::write(
            &config,
            format!(
                "root = {:?}\nstore = {store:?}\npython = {:?}\nreload = [\"true\"]\n[health]\nurl = \"http://127.0.0.1:{port}/\"\ntimeout_secs = 30\nconfirm_requests = 2\n[signing]\n{signing}\n",
                root.display().to_string(),
                python.display().to_string(),
            ),
        )
        .unwrap();
        Self { root, config, stop }
    }

    fn set_signing(&self, signing: &str) {
        let text = fs::read_to_string(&self.config).unwrap();
        let head = text.split("[signing]").next().unwrap();
        fs::write(&self.config, format!("{head}[signing]\n{signing}\n")).unwrap();
    }

    fn set_store(&self, url: &str) {
        let text: String = fs::read_to_string(&self.config)
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("store = ") {
                    format!("store = {url:?}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        fs::write(&self.config, text).unwrap();
    }

    fn installer(&self, args: &[&str], env: &[(String, String)]) -> Output {
        Command::new(bins::installer())
            .env("BINARYCRATE_INSTALLER_CONFIG", &self.config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .output()
            .unwrap()
    }

    /// `installer activate --build TAG --json`, expected to succeed; its report.
    fn activate(&self, tag: &str, env: &[(String, String)]) -> Report {
        let out = self.installer(&["activate", "--build", tag, "--json"], env);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let report: Report = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report.outcome, Outcome::Success);
        assert_eq!(
            fs::read_link(self.root.join("current")).unwrap(),
            Path::new("releases").join(tag)
        );
        report
    }

    /// `installer activate`, expected to be refused with exit 2 before anything is downloaded
    /// and with the server root unchanged; its standard error.
    fn refuse(&self, tag: &str, env: &[(String, String)]) -> String {
        let before = listing(&self.root);
        let out = self.installer(&["activate", "--build", tag, "--json"], env);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        // A configuration error stops before there is a report to print.
        if !out.stdout.is_empty() {
            let report: Report = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report.exit_code, 2);
        }
        assert_eq!(listing(&self.root), before, "the server root changed");
        stderr(&out)
    }

    fn nothing_downloaded(&self, tag: &str) -> bool {
        let cache = self.root.join(".deploy/cache").join(tag);
        fs::read_dir(&cache).map_or(true, |mut d| d.next().is_none())
    }
}

fn signature_detail(report: &Report) -> (String, String) {
    let s = &report.details["signature"];
    (
        s["status"].as_str().unwrap_or_default().to_owned(),
        s["key_id"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn signed_releases_install_and_forgeries_are_refused() {
    if !bins::have_wheelhouse() {
        return;
    }
    let (tmp, repo) = example::create_temp().unwrap();
    let t = tmp.path();
    let keys = t.join("keys");
    let (a, b, c) = (keygen(&keys, "a"), keygen(&keys, "b"), keygen(&keys, "c"));
    assert!(a.id != b.id && b.id != c.id);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&a.secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    }
    // A key is never replaced by accident.
    let before = fs::read(&a.secret).unwrap();
    let again = Command::new(bins::builder())
        .args(["keygen", "--name", "a", "--out-dir"])
        .arg(&keys)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(stderr(&again).contains("--force"), "{}", text(&again));
    assert_eq!(fs::read(&a.secret).unwrap(), before);

    // Build000002 names its key in deploy.toml, relative to the repository root; the key
    // itself is made after tagging (it never goes into the repository).
    repo.commit_and_tag("000002", |w| {
        let toml = fs::read_to_string(w.join("deploy.toml")).unwrap();
        fs::write(
            w.join("deploy.toml"),
            format!("{toml}\n[signing]\nsecret_key = \"signing/b.key\"\n"),
        )
        .unwrap();
    })
    .unwrap();
    fs::create_dir_all(repo.work.join("signing")).unwrap();
    fs::copy(&b.secret, repo.work.join("signing/b.key")).unwrap();

    // Signed with key A; packaging again gives the identical artifact, sidecar and signature.
    let out1 = t.join("out1");
    let artifact1 = package(&repo, "Build000001", &out1, Some(&a.secret));
    let out1b = t.join("out1b");
    package(&repo, "Build000001", &out1b, Some(&a.secret));
    let mut identical = 0;
    for name in [
        artifact1.file_name().unwrap().to_str().unwrap(),
        "release.json",
        "release.json.minisig",
    ] {
        assert_eq!(
            fs::read(out1.join(name)).unwrap(),
            fs::read(out1b.join(name)).unwrap(),
            "{name} differs between two packagings"
        );
        identical += 1;
    }
    let sig1 = fs::read_to_string(out1.join("release.json.minisig")).unwrap();
    let sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(out1.join("release.json")).unwrap()).unwrap();
    let blake3 = sidecar["archive"]["blake3"].as_str().unwrap();
    assert!(
        sig1.contains(&format!(
            "trusted comment: app:binarycrate\tbuild:Build000001\tfile:release.json\tarchive:{}\tblake3:{blake3}\n",
            artifact1.file_name().unwrap().to_str().unwrap()
        )),
        "{sig1}"
    );
    assert!(!sig1.contains("timestamp"), "{sig1}");

    // Build000002: key B from deploy.toml at the tag.
    let out2 = t.join("out2");
    let artifact2 = package(&repo, "Build000002", &out2, None);
    let sig2 = fs::read_to_string(out2.join("release.json.minisig")).unwrap();
    assert!(sig2.contains(&b.id), "signed with B: {sig2}");

    let store = t.join("store");
    let store_url = format!("file://{}", store.display());
    ok(publish(&repo, &artifact1, &store_url, &[]));
    ok(publish(&repo, &artifact2, &store_url, &[]));
    assert_eq!(
        fs::read(store.join("binarycrate/Build000001/release.json.minisig")).unwrap(),
        sig1.as_bytes()
    );
    // Publishing again is a no-op; a signature by another key for the same release is refused.
    let same = ok(Command::new(bins::builder())
        .current_dir(&repo.work)
        .arg("publish")
        .arg(&artifact1)
        .args(["--store", &store_url, "--json"])
        .output()
        .unwrap());
    assert!(
        stderr(&same).contains("identical signature"),
        "{}",
        text(&same)
    );
    let said: serde_json::Value = serde_json::from_slice(&same.stdout).unwrap();
    assert_eq!(said["published"], false, "{said}");
    assert_eq!(said["signature"]["state"], "already_there", "{said}");
    assert!(
        said["sidecar"]
            .as_str()
            .unwrap()
            .ends_with("/Build000001/release.json"),
        "{said}"
    );
    let by_c = copy_release(&out1, &t.join("out1c"), false);
    let signed = ok(Command::new(bins::builder())
        .current_dir(&repo.work)
        .arg("sign")
        .arg(&by_c)
        .arg("--signing-key")
        .arg(&c.secret)
        .arg("--json")
        .output()
        .unwrap());
    let said: serde_json::Value = serde_json::from_slice(&signed.stdout).unwrap();
    assert_eq!(said["key_id"], c.id.as_str(), "{said}");
    assert_eq!(
        Path::new(said["signature"].as_str().unwrap()),
        by_c.with_file_name("release.json.minisig")
    );
    // The key pair's facts as JSON: what a CI script puts into `installer.toml`.
    let made = ok(Command::new(bins::builder())
        .args(["keygen", "--name", "j", "--json", "--out-dir"])
        .arg(&keys)
        .output()
        .unwrap());
    let said: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    let public = fs::read_to_string(keys.join("j.pub")).unwrap();
    assert_eq!(said["public_key"].as_str(), public.lines().nth(1), "{said}");
    assert_eq!(said["encrypted"], false);
    // A password-protected key signs only with its password (from the environment).
    let made = Command::new(bins::builder())
        .env("KEY_PASSWORD", "correct horse battery")
        .args([
            "keygen",
            "--name",
            "p",
            "--password-env",
            "KEY_PASSWORD",
            "--out-dir",
        ])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(stderr(&ok(made)).is_empty());
    let by_p = copy_release(&out1, &t.join("out1p"), false);
    let sign_p = |password: Option<&str>| {
        let mut cmd = Command::new(bins::builder());
        cmd.current_dir(&repo.work)
            .env_remove("BINARYCRATE_SIGNING_PASSWORD")
            .arg("sign")
            .arg(&by_p)
            .arg("--signing-key")
            .arg(keys.join("p.key"));
        if let Some(pw) = password {
            cmd.env("BINARYCRATE_SIGNING_PASSWORD", pw);
        }
        cmd.output().unwrap()
    };
    let locked = sign_p(None);
    assert_eq!(locked.status.code(), Some(2), "{}", text(&locked));
    assert!(
        stderr(&locked).contains("password-protected"),
        "{}",
        text(&locked)
    );
    let wrong = sign_p(Some("wrong"));
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    assert!(!by_p.with_file_name("release.json.minisig").exists());
    ok(sign_p(Some("correct horse battery")));
    assert!(by_p.with_file_name("release.json.minisig").is_file());

    let conflict = publish(&repo, &by_c, &store_url, &[]);
    assert_eq!(conflict.status.code(), Some(2), "{}", text(&conflict));
    assert!(
        stderr(&conflict).contains("different signature"),
        "{}",
        text(&conflict)
    );

    // Trusting A and B (rotation): Build000001 (A) and then Build000002 (B) both install.
    let trust_ab = format!("public_keys = [{:?}, {:?}]", a.public, b.public);
    let srv = Server::new(&t.join("s1"), &repo, &store_url, &trust_ab);
    let shown = ok(srv.installer(&["config"], &[]));
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("signatures required") && shown.contains(&a.id) && shown.contains(&b.id),
        "{shown}"
    );
    let r = srv.activate("Build000001", &[]);
    assert_eq!(signature_detail(&r), ("verified".into(), a.id.clone()));
    let r = srv.activate("Build000002", &[]);
    assert_eq!(signature_detail(&r), ("verified".into(), b.id.clone()));
    let mut refusals = 0;

    // From here on every refusal is tried on one server root, which must not change.
    let srv = Server::new(
        &t.join("s2"),
        &repo,
        &store_url,
        &format!("public_keys = [{:?}]", b.public),
    );
    // Wrong key: signed by A, the server trusts only B.
    let err = srv.refuse("Build000001", &[]);
    assert!(
        err.contains(&format!("signed by key {}", a.id))
            && err.contains(&b.id)
            && err.contains("Build000001"),
        "{err}"
    );
    refusals += 1;
    // Key C, trusted by no server: refused by one that trusts A and B.
    let store_c = t.join("store-c");
    let store_c_url = format!("file://{}", store_c.display());
    ok(publish(&repo, &by_c, &store_c_url, &[]));
    srv.set_signing(&trust_ab);
    srv.set_store(&store_c_url);
    let err = srv.refuse("Build000001", &[]);
    assert!(
        err.contains(&format!("signed by key {}", c.id))
            && err.contains(&a.id)
            && err.contains(&b.id),
        "{err}"
    );
    refusals += 1;
    // Tampered manifest: `release.json` altered in the store after publishing.
    let store_t = t.join("store-tampered");
    copy_tree(&store, &store_t);
    let sidecar_path = store_t.join("binarycrate/Build000001/release.json");
    let altered = fs::read_to_string(&sidecar_path)
        .unwrap()
        .replacen("\"app\"", "\"app\" ", 1);
    fs::write(&sidecar_path, altered).unwrap();
    srv.set_store(&format!("file://{}", store_t.display()));
    let err = srv.refuse("Build000001", &[]);
    assert!(
        err.contains(&format!("by trusted key {}", a.id)) && err.contains("does not match"),
        "{err}"
    );
    refusals += 1;
    // Tampered artifact: swapped in the store; the signature is fine, the hash is not.
    copy_tree(&store, &store_t);
    let name = artifact1.file_name().unwrap();
    fs::copy(
        &artifact2,
        store_t.join("binarycrate/Build000001").join(name),
    )
    .unwrap();
    let err = srv.refuse("Build000001", &[]);
    assert!(
        err.contains("altered or replaced")
            || err.contains("truncated")
            || err.contains("is larger than its sidecar says"),
        "{err}"
    );
    assert!(
        srv.nothing_downloaded("Build000001"),
        "the swapped artifact was discarded"
    );
    refusals += 1;
    // Unsigned, and this server requires signatures.
    let store_u = t.join("store-unsigned");
    let store_u_url = format!("file://{}", store_u.display());
    let unsigned = copy_release(&out1, &t.join("out1u"), false);
    let published = ok(publish(&repo, &unsigned, &store_u_url, &[]));
    assert!(
        stderr(&published).contains("unsigned"),
        "{}",
        text(&published)
    );
    srv.set_store(&store_u_url);
    let err = srv.refuse("Build000001", &[]);
    assert!(
        err.contains("Build000001 is not signed") && err.contains(&a.id),
        "{err}"
    );
    refusals += 1;
    // `require_signature = true` without keys is a configuration error.
    srv.set_signing("require_signature = true");
    let err = srv.refuse("Build000001", &[]);
    assert!(err.contains("signing.require_signature"), "{err}");
    refusals += 1;
    assert!(!srv.root.join("releases/Build000001").exists());
    assert!(srv.nothing_downloaded("Build000001"));

    // Unsigned without the requirement: installed as before, with a warning.
    srv.set_signing(&format!("{trust_ab}\nrequire_signature = false"));
    let r = srv.activate("Build000001", &[]);
    assert_eq!(signature_detail(&r).0, "unsigned");
    assert!(
        r.warnings.iter().any(|w| w.contains("not signed")),
        "{:?}",
        r.warnings
    );
    let srv3 = Server::new(&t.join("s3"), &repo, &store_u_url, "");
    let r = srv3.activate("Build000001", &[]);
    assert_eq!(signature_detail(&r).0, "not-checked");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("trusts no release signing keys")),
        "{:?}",
        r.warnings
    );

    // Publishing the signed release over the unsigned one adds its signature.
    let added = ok(publish(&repo, &artifact1, &store_u_url, &[]));
    assert!(stderr(&added).contains("signature at"), "{}", text(&added));
    assert!(store_u
        .join("binarycrate/Build000001/release.json.minisig")
        .is_file());
    // Each refusal above exited 2 with the server root unchanged and nothing downloaded.
    tests::show(&format!(
        "signing: store=file verified=2 unsigned-allowed=2 refused={refusals} state-unchanged={refusals} reproducible-files={identical}/3"
    ));
}

#[test]
fn signed_releases_over_s3() {
    if !bins::have_wheelhouse() {
        return;
    }
    let Some(moto) = MotoServer::start_or_skip() else {
        return;
    };
    let (tmp, repo) = example::create_temp().unwrap();
    let t = tmp.path();
    let a = keygen(&t.join("keys"), "a");
    let b = keygen(&t.join("keys"), "b");
    let artifact = package(&repo, "Build000001", &t.join("out"), Some(&a.secret));
    moto.create_bucket("releases").unwrap();
    let url = "s3://releases/prod";
    let env = moto.env();
    ok(publish(&repo, &artifact, url, &env));
    let keys = moto
        .list_keys("releases", "prod/binarycrate/Build000001/")
        .unwrap();
    assert!(
        keys.iter().any(|k| k.ends_with("/release.json.minisig")),
        "{keys:?}"
    );

    let srv = Server::new(t, &repo, url, &format!("public_keys = [{:?}]", b.public));
    // Wrong key.
    let err = srv.refuse("Build000001", &env);
    assert!(err.contains(&format!("signed by key {}", a.id)), "{err}");
    // The right key, but `release.json` rewritten in the bucket behind the store's back.
    srv.set_signing(&format!("public_keys = [{:?}]", a.public));
    let original = fs::read(t.join("out/release.json")).unwrap();
    let mut altered = original.clone();
    altered.extend_from_slice(b"\n");
    moto.put_object(
        "releases",
        "prod/binarycrate/Build000001/release.json",
        altered,
    )
    .unwrap();
    let err = srv.refuse("Build000001", &env);
    assert!(err.contains("does not match"), "{err}");
    assert!(srv.nothing_downloaded("Build000001"));
    // Put back as signed: installs.
    moto.put_object(
        "releases",
        "prod/binarycrate/Build000001/release.json",
        original,
    )
    .unwrap();
    let r = srv.activate("Build000001", &env);
    assert_eq!(signature_detail(&r), ("verified".into(), a.id.clone()));
    tests::show("signing: store=s3 verified=1 refused=2 state-unchanged=2");
}
