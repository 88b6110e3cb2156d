//! Bad input through the whole path, against a live server root: build names,
//! what the store holds (file store and S3 on moto), crafted archives that get past the hash
//! check, `installer.toml`, `builder deploy` arguments and `deploy.toml`, each through the real
//! binaries. Every case must be refused with its own error text and exit code, and leave the
//! root byte-identical: a full listing with hashes outside `.deploy/`; inside it only the lock
//! file may change and the journal may only grow by one `refused` record.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::manifest::{ArtifactRef, FileEntry, Mode, RELEASE_JSON, RELEASE_SIGNATURE};
use common::{Blake3Hash, BuildNumber, Sidecar};
use tar::EntryType;
use tests::bins;
use tests::example;
use tests::moto::MotoServer;

/// The unit corpus's crafting helpers (raw tar headers, archives sealed with a sidecar that
/// matches them), shared rather than copied.
#[allow(dead_code)]
#[path = "../../../common/tests/archive/support.rs"]
mod craft;

use craft::{Crafted, RawTar};

const APP: &str = "binarycrate";
const BUCKET: &str = "bad-input";
const S3_PREFIX: &str = "releases";
/// What the bomb cases may write to any one file: far below what the bombs expand to, far above
/// anything a refusal needs (the download of a bomb is about a megabyte).
const FILE_SIZE_LIMIT: u64 = 32 << 20;

fn b(n: u32) -> BuildNumber {
    BuildNumber::new(n).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// The server root's state.

/// Every entry under `dir` (not following links) but those `skip` names: its type and mode, a
/// file's BLAKE3, a link's target.
fn listing(dir: &Path, skip: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let walk = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !skip(&e.path().strip_prefix(dir).unwrap().to_string_lossy()));
    for entry in walk {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let mode = meta.mode() & 0o7777;
        let what = if meta.file_type().is_symlink() {
            format!("link -> {}", fs::read_link(entry.path()).unwrap().display())
        } else if meta.is_dir() {
            format!("dir {mode:04o}")
        } else if meta.is_file() {
            let (hash, size) = Blake3Hash::of_file(entry.path()).unwrap();
            format!("file {mode:04o} {size} {hash}")
        } else {
            format!("special {:o}", meta.mode())
        };
        out.insert(rel, what);
    }
    out
}

/// The root as the checks see it.
#[derive(Clone)]
struct State {
    /// Everything outside `.deploy/`.
    tree: BTreeMap<String, String>,
    /// `.deploy/` but the lock file and the journal.
    deploy: BTreeMap<String, String>,
    journal: Vec<u8>,
}

impl State {
    fn of(root: &Path) -> Self {
        let deploy = root.join(".deploy");
        State {
            tree: listing(root, |rel| rel == ".deploy"),
            deploy: listing(&deploy, |rel| rel == "lock" || rel == "journal.jsonl"),
            journal: fs::read(deploy.join("journal.jsonl")).unwrap_or_default(),
        }
    }

    /// What changed since `before` beyond what a refusal may change; otherwise how many
    /// `refused` records were appended (0 or 1).
    fn changes_since(&self, before: &State) -> Result<usize, String> {
        let mut problems = diff("", &before.tree, &self.tree);
        problems.extend(diff(".deploy/", &before.deploy, &self.deploy));
        let mut refused = 0;
        match self.journal.strip_prefix(before.journal.as_slice()) {
            None => problems.push("the journal's old content was rewritten".into()),
            Some(added) => {
                let lines: Vec<&[u8]> = added
                    .split(|&c| c == b'\n')
                    .filter(|l| !l.is_empty())
                    .collect();
                if lines.len() > 1 {
                    problems.push(format!("{} journal records appended", lines.len()));
                }
                for line in lines {
                    let event = serde_json::from_slice::<serde_json::Value>(line)
                        .ok()
                        .and_then(|r| r["event"].as_str().map(str::to_owned));
                    if event.as_deref() == Some("refused") {
                        refused += 1;
                    } else {
                        problems.push(format!(
                            "journal record that is not `refused`: {}",
                            String::from_utf8_lossy(line)
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(refused)
        } else {
            Err(problems.join("; "))
        }
    }
}

fn diff(prefix: &str, a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("removed `{prefix}{k}`")),
            Some(w) if w != v => out.push(format!("changed `{prefix}{k}`: {v} -> {w}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("added `{prefix}{k}`"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Stores and crafted releases.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    File,
    S3,
}

struct Stores {
    file: PathBuf,
    moto: MotoServer,
}

impl Stores {
    fn url(&self, backend: Backend) -> String {
        match backend {
            Backend::File => format!("file://{}", self.file.display()),
            Backend::S3 => format!("s3://{BUCKET}/{S3_PREFIX}"),
        }
    }

    /// Writes one object of `build` behind every store's back, as an attacker with write
    /// access to the bucket (or a broken upload) would.
    fn put(&self, backend: Backend, build: BuildNumber, name: &str, data: &[u8]) {
        match backend {
            Backend::File => {
                let dir = self.file.join(APP).join(build.tag());
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join(name), data).unwrap();
            }
            Backend::S3 => self
                .moto
                .put_object(
                    BUCKET,
                    &format!("{S3_PREFIX}/{APP}/{}/{name}", build.tag()),
                    data.to_vec(),
                )
                .unwrap(),
        }
    }

    /// The artifact under the name its sidecar gives, then the sidecar, as `publish` does.
    fn publish(&self, backend: Backend, archive: &[u8], sidecar: &Sidecar) {
        let build = sidecar.manifest.build;
        let name = &sidecar.archive.as_ref().unwrap().file_name;
        self.put(backend, build, name, archive);
        self.put(backend, build, RELEASE_JSON, &sidecar.to_bytes());
    }
}

/// A small, valid release of `build` made with the corpus helpers; `f` adds what a case needs.
fn crafted(build: BuildNumber, f: impl FnOnce(&mut Crafted)) -> Crafted {
    let mut c = Crafted::new();
    c.m.build = build;
    c.m.tag = build.tag();
    c.dir("binarycrate")
        .file("binarycrate/hello.py", b"print('hello')\n");
    f(&mut c);
    c
}

/// A release whose `binarycrate/zeros.bin` inflates to `actual` zero bytes while its manifest
/// lists `declared` of them (gzip packs zeros about 1000:1). Streamed: never `actual` in memory.
fn bomb(build: BuildNumber, declared: u64, actual: u64) -> (Vec<u8>, Sidecar) {
    let mut c = crafted(build, |_| {});
    let zeros = vec![0u8; 1 << 20];
    let mut hasher = blake3::Hasher::new();
    let mut left = declared;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        hasher.update(&zeros[..n]);
        left -= n as u64;
    }
    c.m.files.insert(
        "binarycrate/zeros.bin".into(),
        FileEntry::File {
            size: declared,
            mode: Mode::FILE,
            blake3: hasher.finalize().into(),
        },
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&c.tar.bytes).unwrap();
    let header = RawTar::header(
        b"binarycrate/zeros.bin",
        EntryType::Regular,
        0o644,
        actual,
        b"",
    );
    gz.write_all(header.as_bytes()).unwrap();
    let mut left = actual;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        gz.write_all(&zeros[..n]).unwrap();
        left -= n as u64;
    }
    gz.write_all(&vec![0u8; ((512 - actual % 512) % 512) as usize])
        .unwrap();
    let mut tail = RawTar::new();
    tail.file(RELEASE_JSON, &craft::embedded_for(&c.m)).end();
    gz.write_all(&tail.bytes).unwrap();
    let gz = gz.finish().unwrap();
    let sidecar = craft::sidecar_for(&c.m, &gz);
    (gz, sidecar)
}

/// A sidecar's JSON with `edit` applied (fields a `Sidecar` cannot hold, or bypassing its rules).
fn edited_json(sidecar: &Sidecar, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::from_slice(&sidecar.to_bytes()).unwrap();
    edit(&mut json);
    serde_json::to_vec_pretty(&json).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Cases.

struct Case {
    name: String,
    cmd: Command,
    code: i32,
    /// Each must appear in standard error.
    expect: Vec<String>,
    /// None may appear in standard output or error.
    forbid: Vec<String>,
    /// Whether the run gets as far as the lock, so the journal must get its one `refused`
    /// record; runs refused earlier must not write to it.
    journaled: bool,
    /// Puts in place what the case needs on the server (before the state is taken).
    prepare: Option<Box<dyn FnOnce()>>,
    /// Takes it away again (after the state is compared).
    cleanup: Option<Box<dyn FnOnce()>>,
}

impl Case {
    fn new(
        name: impl Into<String>,
        cmd: Command,
        code: i32,
        expect: &[&str],
        journaled: bool,
    ) -> Self {
        Case {
            name: name.into(),
            cmd,
            code,
            expect: expect.iter().map(|s| s.to_string()).collect(),
            forbid: Vec::new(),
            journaled,
            prepare: None,
            cleanup: None,
        }
    }

    fn forbidding(mut self, texts: &[&str]) -> Self {
        self.forbid.extend(texts.iter().map(|s| s.to_string()));
        self
    }

    fn around(
        mut self,
        prepare: impl FnOnce() + 'static,
        cleanup: impl FnOnce() + 'static,
    ) -> Self {
        self.prepare = Some(Box::new(prepare));
        self.cleanup = Some(Box::new(cleanup));
        self
    }
}

/// Whatever a refusal quotes from the store, it may not write escape sequences to the terminal,
/// print more than this, or grow the journal by more than a short record.
const MAX_STDERR_BYTES: usize = 64 << 10;
const MAX_JOURNAL_GROWTH: usize = 8 << 10;

/// Everything the cases share.
struct Site {
    tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    stores: Stores,
    /// A published Build000001 artifact (the real one), for "swapped" cases.
    real_artifact: Vec<u8>,
}

impl Site {
    /// `installer` with the live configuration and moto's environment (so no run can reach a
    /// real AWS endpoint).
    fn installer(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bins::installer());
        cmd.env("BINARYCRATE_INSTALLER_CONFIG", config)
            .envs(self.stores.moto.env())
            .args(args);
        cmd
    }

    /// `installer activate --build <build>` reading `backend`.
    fn activate(&self, backend: Backend, build: BuildNumber) -> Command {
        let tag = build.tag();
        let mut args = vec!["activate", "--build", &tag, "--json"];
        let url = self.stores.url(backend);
        let endpoint = self.stores.moto.endpoint();
        if backend == Backend::S3 {
            args.extend(["--store", &url, "--s3-endpoint", &endpoint]);
        }
        self.installer(&self.config, &args)
    }

    /// The same, allowed to write at most [`FILE_SIZE_LIMIT`] bytes to any file (`prlimit
    /// --fsize`): a refusal that came only after inflating the bomb would die of it instead.
    fn activate_limited(&self, backend: Backend, build: BuildNumber) -> Command {
        wrapped(
            &["prlimit", &format!("--fsize={FILE_SIZE_LIMIT}")],
            self.activate(backend, build),
        )
    }

    fn config_file(&self, name: &str, text: &str) -> PathBuf {
        let dir = self.tmp.path().join("configs").join(name);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("installer.toml");
        fs::write(&path, text).unwrap();
        path
    }
}

/// `plain` run by another program (`prlimit …`, `timeout …`), with the same environment.
fn wrapped(prefix: &[&str], plain: Command) -> Command {
    let mut cmd = Command::new(prefix[0]);
    cmd.args(&prefix[1..])
        .arg(plain.get_program())
        .args(plain.get_args());
    for (k, v) in plain.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd
}

/// The live configuration: `root`, the file store, `top` more top-level keys and `tables` at
/// the end.
fn config_text(root: &str, store: &str, top: &str, tables: &str) -> String {
    let python = tests::moto::venv_dir().join("bin/python");
    format!(
        "root = {root:?}\nstore = {store:?}\npython = {:?}\nreload = [\"true\"]\nlock_timeout_secs = 2\n{top}\n{tables}\n",
        python.display().to_string()
    )
}

/// Builds a live root: Build000001 packaged from the example repository, published to a file
/// store, activated (shared files, static link, venv, migrated, journal) with a stand-in site
/// for the health check.
fn live_site(moto: MotoServer) -> Site {
    let (tmp, repo) = example::create_temp().unwrap();
    let file_store = crate::installer_input::publish_build1(tmp.path(), &repo);
    let root = tmp.path().join("srv");
    fs::create_dir_all(root.join("shared")).unwrap();
    fs::write(
        root.join("shared/production.py"),
        example::production_settings(&repo, &root).unwrap(),
    )
    .unwrap();
    let (port, stop) = tests::site::fake_site(&root);
    let config = tmp.path().join("installer.toml");
    fs::write(
        &config,
        config_text(
            &root.display().to_string(),
            &format!("file://{}", file_store.display()),
            "",
            &format!("[health]\nurl = \"http://127.0.0.1:{port}/\"\ntimeout_secs = 20\nconfirm_requests = 2\n"),
        ),
    )
    .unwrap();
    let out = Command::new(bins::installer())
        .env("BINARYCRATE_INSTALLER_CONFIG", &config)
        .args(["activate", "--build", "Build000001"])
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        fs::read_link(root.join("current")).unwrap(),
        Path::new("releases/Build000001")
    );
    assert_eq!(fs::read_dir(root.join("static")).unwrap().count(), 1);
    assert!(root.join("releases/Build000001/venv/bin/python").exists());

    let real_artifact = fs::read_dir(file_store.join(APP).join("Build000001"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "gz"))
        .map(|p| fs::read(p).unwrap())
        .unwrap();
    moto.create_bucket(BUCKET).unwrap();
    Site {
        tmp,
        root,
        config,
        stores: Stores {
            file: file_store,
            moto,
        },
        real_artifact,
    }
}

/// Build names with shell metacharacters and every other malformation: refused by the command
/// line itself, before the configuration, lock or journal.
fn build_name_cases(site: &Site, pwned: &Path) -> Vec<Case> {
    let p = pwned.display();
    let names = [
        ("semicolon", "000002;reboot".to_owned()),
        ("command substitution", format!("$(touch {p})")),
        ("backticks", format!("`touch {p}`")),
        ("space", "Build 000002".to_owned()),
        ("newline", "Build000002\nreboot".to_owned()),
        ("path traversal", "../Build000001".to_owned()),
        ("five digits", "Build00002".to_owned()),
        ("seven digits", "Build0000002".to_owned()),
        ("wrong case", "build000002".to_owned()),
        (
            "non-ASCII digits",
            "Build\u{0660}\u{0660}\u{0660}\u{0660}\u{0660}\u{0662}".to_owned(),
        ),
        ("zero", "Build000000".to_owned()),
        ("empty", String::new()),
    ];
    names
        .into_iter()
        .map(|(what, name)| {
            let mut cmd = site.installer(&site.config, &["activate", "--build"]);
            cmd.arg(&name);
            Case::new(
                format!("installer: build name with {what}"),
                cmd,
                2,
                &["invalid build name"],
                false,
            )
        })
        .collect()
}

/// What the store holds is wrong: the hash or size check, or the sidecar's own checks, refuse.
fn store_cases(site: &Site, backend: Backend, next: &mut u32) -> Vec<Case> {
    let s = &site.stores;
    let mut v = Vec::new();
    let on = match backend {
        Backend::File => "file store",
        Backend::S3 => "S3",
    };
    let mut build = || {
        *next += 1;
        b(*next)
    };

    // The sidecar names the archive by a hash it does not have.
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    let mut lying = sidecar.clone();
    let other = Blake3Hash::of(b"another archive");
    let info = lying.archive.as_mut().unwrap();
    info.blake3 = other;
    info.file_name = ArtifactRef::new(APP, n, other).file_name();
    s.publish(backend, &gz, &lying);
    v.push(Case::new(
        format!("{on}: sidecar hash does not match the artifact"),
        site.activate(backend, n),
        2,
        &[&format!("the sidecar says {other}"), "altered or replaced"],
        true,
    ));

    // Published correctly, then one byte of the artifact changed in the store.
    let n = build();
    let (mut gz, sidecar) = crafted(n, |_| {}).seal();
    s.publish(backend, &gz, &sidecar);
    let mid = gz.len() / 2;
    gz[mid] ^= 0x55;
    s.put(
        backend,
        n,
        &sidecar.archive.as_ref().unwrap().file_name,
        &gz,
    );
    v.push(Case::new(
        format!("{on}: artifact altered in the store after publishing"),
        site.activate(backend, n),
        2,
        &[
            "altered or replaced",
            &sidecar.archive.as_ref().unwrap().blake3.to_hex(),
        ],
        true,
    ));

    // Published correctly, then swapped for another (valid) release's artifact.
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    s.publish(backend, &gz, &sidecar);
    s.put(
        backend,
        n,
        &sidecar.archive.as_ref().unwrap().file_name,
        &site.real_artifact,
    );
    v.push(Case::new(
        format!("{on}: artifact swapped for another release's after publishing"),
        site.activate(backend, n),
        2,
        &[
            &format!(
                "is larger than its sidecar says ({} bytes), it has {}",
                gz.len(),
                site.real_artifact.len(),
            ),
            "replaced or appended to after publishing",
        ],
        true,
    ));

    // A download cut short.
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    s.publish(backend, &gz[..gz.len() / 2], &sidecar);
    v.push(Case::new(
        format!("{on}: truncated artifact"),
        site.activate(backend, n),
        2,
        &[&format!(
            "got {} bytes, the sidecar says {} (truncated or replaced)",
            gz.len() / 2,
            gz.len()
        )],
        true,
    ));

    // Larger than the sidecar says: a megabyte of something after the archive.
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    let mut big = gz.clone();
    big.extend(std::iter::repeat_n(0x41u8, 1 << 20));
    s.publish(backend, &big, &sidecar);
    v.push(Case::new(
        format!("{on}: oversized artifact"),
        site.activate(backend, n),
        2,
        &[&format!(
            "is larger than its sidecar says ({} bytes), it has {}",
            gz.len(),
            big.len()
        )],
        true,
    ));

    // A manifest from a future builder.
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    s.put(
        backend,
        n,
        &sidecar.archive.as_ref().unwrap().file_name,
        &gz,
    );
    let future = edited_json(&sidecar, |j| {
        j["schema_version"] = 3.into();
        j["manifest"]["schema_version"] = 3.into();
    });
    s.put(backend, n, RELEASE_JSON, &future);
    v.push(Case::new(
        format!("{on}: unknown manifest version"),
        site.activate(backend, n),
        2,
        &["schema version 3", "upgrade builder/installer"],
        true,
    ));

    // Not published at all: the artifact without its sidecar (an interrupted publish).
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    s.put(
        backend,
        n,
        &sidecar.archive.as_ref().unwrap().file_name,
        &gz,
    );
    v.push(Case::new(
        format!("{on}: missing sidecar"),
        site.activate(backend, n),
        2,
        &[&format!(
            "`{APP}/{}/release.json` is not in the store",
            n.tag()
        )],
        true,
    ));

    // The sidecar without its artifact.
    let n = build();
    let (_, sidecar) = crafted(n, |_| {}).seal();
    s.put(backend, n, RELEASE_JSON, &sidecar.to_bytes());
    v.push(Case::new(
        format!("{on}: missing artifact"),
        site.activate(backend, n),
        2,
        &[&format!(
            "`{APP}/{}/{}` is not in the store",
            n.tag(),
            sidecar.archive.as_ref().unwrap().file_name
        )],
        true,
    ));

    if backend == Backend::S3 {
        return v;
    }

    // Another build's sidecar under this build's key.
    let n = build();
    let elsewhere = b(n.get() + 500);
    let (gz, sidecar) = crafted(elsewhere, |_| {}).seal();
    s.put(
        backend,
        n,
        &sidecar.archive.as_ref().unwrap().file_name,
        &gz,
    );
    s.put(backend, n, RELEASE_JSON, &sidecar.to_bytes());
    v.push(Case::new(
        format!("{on}: sidecar of another build"),
        site.activate(backend, n),
        2,
        &[&format!(
            "is the sidecar of {APP} {}, not of {APP} {}: a replayed or mis-published sidecar",
            elsewhere.tag(),
            n.tag()
        )],
        true,
    ));

    // Not a sidecar at all.
    let n = build();
    s.put(
        backend,
        n,
        RELEASE_JSON,
        b"<html><body>404 Not Found</body></html>\n",
    );
    v.push(Case::new(
        format!("{on}: sidecar that is not JSON"),
        site.activate(backend, n),
        2,
        &["is not a valid release manifest"],
        true,
    ));

    // A sidecar naming a file outside the build's folder as its artifact.
    let n = build();
    let (_, sidecar) = crafted(n, |_| {}).seal();
    let evil = edited_json(&sidecar, |j| {
        j["archive"]["file_name"] = "../../../../etc/passwd".into();
    });
    s.put(backend, n, RELEASE_JSON, &evil);
    v.push(Case::new(
        format!("{on}: sidecar naming an artifact outside its folder"),
        site.activate(backend, n),
        2,
        &["archive file name `../../../../etc/passwd` should be"],
        true,
    ));

    // A manifest listing a path that climbs out of the release.
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    let evil = edited_json(&sidecar, |j| {
        j["manifest"]["files"]["../../escaped.py"] = serde_json::json!({"type": "file", "size": 1, "mode": "0644", "blake3": Blake3Hash::of(b"x")});
    });
    s.put(
        backend,
        n,
        &sidecar.archive.as_ref().unwrap().file_name,
        &gz,
    );
    s.put(backend, n, RELEASE_JSON, &evil);
    v.push(Case::new(
        format!("{on}: manifest listing a `..` path"),
        site.activate(backend, n),
        2,
        &["file `../../escaped.py`: `..` component"],
        true,
    ));
    v
}

/// One crafted archive case: what is wrong, how to make it, what the error must say.
struct Recipe {
    what: &'static str,
    craft: Box<dyn FnOnce(&mut Crafted)>,
    expect: &'static [&'static str],
}

fn recipe(
    what: &'static str,
    craft: impl FnOnce(&mut Crafted) + 'static,
    expect: &'static [&'static str],
) -> Recipe {
    Recipe {
        what,
        craft: Box::new(craft),
        expect,
    }
}

/// Archives that pass the hash check (their sidecar describes them exactly) and must be
/// refused by the safe reader, or by the early bomb check.
fn archive_cases(site: &Site, backend: Backend, next: &mut u32, all: bool) -> Vec<Case> {
    let on = match backend {
        Backend::File => "file store",
        Backend::S3 => "S3",
    };
    let mut recipes: Vec<Recipe> = vec![
        recipe(
            "`..` traversal",
            |c| {
                c.tar.file("binarycrate/../../../escaped.py", b"x");
            },
            &["entry `binarycrate/../../../escaped.py` has a `..` component"],
        ),
        recipe(
            "symlink escaping the tree",
            |c| {
                c.symlink("binarycrate/etc", "../../../../../etc");
            },
            &["symlink `binarycrate/etc` -> `../../../../../etc` leaves the release tree"],
        ),
    ];
    if all {
        let more: Vec<Recipe> = vec![
            recipe(
                "absolute path",
                |c| {
                    c.tar.file("/etc/cron.d/evil", b"* * * * * root reboot\n");
                },
                &["entry `/etc/cron.d/evil` has an absolute path"],
            ),
            recipe(
                "absolute symlink",
                |c| {
                    c.symlink("binarycrate/passwd", "/etc/passwd");
                },
                &["symlink `binarycrate/passwd` points to absolute path `/etc/passwd`"],
            ),
            recipe(
                "entry through a symlink",
                |c| {
                    c.dir("binarycrate/sub")
                        .symlink("binarycrate/up", "sub")
                        .file("binarycrate/up/escaped.py", b"x");
                },
                &["entry `binarycrate/up/escaped.py` passes through symlink `binarycrate/up`"],
            ),
            recipe(
                "hard link escaping the tree",
                |c| {
                    c.tar.entry(
                        b"binarycrate/passwd",
                        EntryType::Link,
                        0o644,
                        b"",
                        b"/etc/passwd",
                    );
                },
                &["entry `binarycrate/passwd` is a hard link"],
            ),
            recipe(
                "character device",
                |c| {
                    c.tar
                        .entry(b"binarycrate/mem", EntryType::Char, 0o644, b"", b"");
                },
                &["entry `binarycrate/mem` is a character device"],
            ),
            recipe(
                "block device",
                |c| {
                    c.tar
                        .entry(b"binarycrate/sda", EntryType::Block, 0o644, b"", b"");
                },
                &["entry `binarycrate/sda` is a block device"],
            ),
            recipe(
                "FIFO",
                |c| {
                    c.tar
                        .entry(b"binarycrate/pipe", EntryType::Fifo, 0o644, b"", b"");
                },
                &["entry `binarycrate/pipe` is a FIFO"],
            ),
            recipe(
                "setuid bit",
                |c| {
                    c.tar.entry(
                        b"binarycrate/run",
                        EntryType::Regular,
                        0o4755,
                        b"#!/bin/sh\n",
                        b"",
                    );
                    c.list_file("binarycrate/run", b"#!/bin/sh\n", 0o755);
                },
                &["entry `binarycrate/run` has mode 4755 with a setuid"],
            ),
            recipe(
                "entry not in the manifest",
                |c| {
                    c.tar.file("binarycrate/backdoor.py", b"import os\n");
                },
                &["entry `binarycrate/backdoor.py` is not listed in the manifest"],
            ),
            recipe(
                "manifest entry missing from the archive",
                |c| {
                    c.list_file("binarycrate/settings.py", b"DEBUG = False\n", 0o644);
                },
                &["1 manifest entries are missing from the archive, first `binarycrate/settings.py`"],
            ),
            recipe(
                "content differing from the manifest",
                |c| {
                    c.tar.file("binarycrate/app.py", b"evil");
                    c.list_file("binarycrate/app.py", b"good", 0o644);
                },
                &["entry `binarycrate/app.py` does not match the manifest: BLAKE3"],
            ),
            recipe(
                "duplicate entry",
                |c| {
                    c.tar.file("binarycrate/hello.py", b"print('hello')\n");
                },
                &["entry `binarycrate/hello.py` appears more than once"],
            ),
        ];
        recipes.extend(more);
    }
    let mut v = Vec::new();
    for Recipe {
        what,
        craft,
        expect,
    } in recipes
    {
        *next += 1;
        let n = b(*next);
        let (gz, sidecar) = crafted(n, craft).seal();
        site.stores.publish(backend, &gz, &sidecar);
        let mut expect = expect.to_vec();
        let refused = format!("refused to install {}; nothing changed", n.tag());
        expect.push(&refused);
        v.push(Case::new(
            format!("{on}: {what}"),
            site.activate(backend, n),
            2,
            &expect,
            true,
        ));
    }
    if !all {
        return v;
    }

    // The embedded release.json is not the sidecar's.
    *next += 1;
    let n = b(*next);
    let mut c = crafted(n, |_| {});
    c.tar.file(RELEASE_JSON, b"{\"schema_version\": 1}\n").end();
    let (gz, sidecar) = c.seal_as_is();
    site.stores.publish(backend, &gz, &sidecar);
    v.push(Case::new(
        format!("{on}: embedded release.json differing from the sidecar"),
        site.activate(backend, n),
        2,
        &["the archive's `release.json` differs from the sidecar"],
        true,
    ));

    // Bombs, run with a small file-size limit: refused before the zeros reach the disk.
    *next += 1;
    let n = b(*next);
    let (gz, sidecar) = bomb(n, 4096, 1 << 30);
    site.stores.publish(backend, &gz, &sidecar);
    v.push(Case::new(
        format!("{on}: decompression bomb declared small ({} bytes expanding to 1 GiB)", gz.len()),
        site.activate_limited(backend, n),
        2,
        &["entry `binarycrate/zeros.bin` does not match the manifest: 1073741824 bytes, the manifest says 4096"],
        true,
    ));
    *next += 1;
    let n = b(*next);
    let (gz, sidecar) = bomb(n, 1 << 30, 1 << 30);
    site.stores.publish(backend, &gz, &sidecar);
    v.push(Case::new(
        format!(
            "{on}: decompression bomb declared in full ({} bytes expanding to 1 GiB)",
            gz.len()
        ),
        site.activate_limited(backend, n),
        2,
        &["expands more than 200:1 (possible decompression bomb)"],
        true,
    ));
    v
}

/// `installer.toml` that is not right: refused when loaded (before anything: no journal record),
/// or when `activate` checks the store URL (its refusal is journalled, like every refused
/// activation on an existing root).
fn config_cases(site: &Site, build: BuildNumber) -> Vec<Case> {
    let root = site.root.display().to_string();
    let store = site.stores.url(Backend::File);
    let tag = build.tag();
    let args = ["activate", "--build", tag.as_str()];
    let recipes: Vec<(&str, String, &[&str], bool)> = vec![
        (
            "unknown key",
            config_text(&root, &store, "rooot = \"/srv/binarycrate-mvp2\"", ""),
            &["unknown field `rooot`", "installer.toml"],
            false,
        ),
        (
            "relative root",
            config_text("srv/binarycrate", &store, "", ""),
            &["key `root`: `srv/binarycrate` must be an absolute path"],
            false,
        ),
        (
            "malformed store URL",
            config_text(&root, "ftp://example.com/releases", "", ""),
            &["invalid store URL `ftp://example.com/releases`: unsupported scheme"],
            true,
        ),
        (
            "file store URL without an absolute path",
            config_text(&root, "file://releases", "", ""),
            &[
                "invalid store URL `file://releases`",
                "needs an absolute path",
            ],
            true,
        ),
        (
            "S3 bucket name that is not one",
            config_text(&root, "s3://Releases_2026/binarycrate", "", ""),
            &["invalid store URL `s3://Releases_2026/binarycrate`: bucket name `Releases_2026`"],
            true,
        ),
        (
            "S3 endpoint that is not a URL",
            config_text(
                &root,
                &format!("s3://{BUCKET}/{S3_PREFIX}"),
                "s3_endpoint = \"127.0.0.1:9000\"",
                "",
            ),
            &["S3 endpoint `127.0.0.1:9000` must be an `http://` or `https://` URL"],
            true,
        ),
        (
            "string where a number belongs",
            config_text(&root, &store, "", "[health]\ntimeout_secs = \"sixty\"\n"),
            &[
                "invalid type: string \"sixty\", expected u64",
                "timeout_secs",
            ],
            false,
        ),
        (
            "string where a command line belongs",
            config_text(&root, &store, "", "").replace(
                "reload = [\"true\"]",
                "reload = \"service uwsgi-emperor restart\"",
            ),
            &["invalid type: string \"service uwsgi-emperor restart\", expected a sequence"],
            false,
        ),
        (
            "negative number",
            config_text(&root, &store, "", "")
                .replace("lock_timeout_secs = 2", "lock_timeout_secs = -1"),
            &["lock_timeout_secs", "invalid value"],
            false,
        ),
        (
            "empty migrate command",
            config_text(&root, &store, "migrate = []", ""),
            &["key `migrate`: must be a command line"],
            false,
        ),
        (
            "health URL that is neither http nor https",
            config_text(&root, &store, "", "[health]\nurl = \"ftp://127.0.0.1/\"\n"),
            &["key `health.url`: `ftp://127.0.0.1/` is not an `http://` or `https://` URL"],
            false,
        ),
        (
            "shared file outside the release",
            config_text(
                &root,
                &store,
                "",
                "[shared.files]\n\"../../../etc/passwd\" = \"production.py\"\n",
            ),
            &["key `shared.files`: `../../../etc/passwd`: `..` component"],
            false,
        ),
        (
            "not TOML",
            "root = /srv/binarycrate-mvp2\n".to_owned(),
            &["installer.toml", "TOML parse error at line 1"],
            false,
        ),
    ];
    let mut v: Vec<Case> = recipes
        .into_iter()
        .enumerate()
        .map(|(i, (what, text, expect, journaled))| {
            let path = site.config_file(&format!("{i:02}"), &text);
            Case::new(
                format!("installer.toml: {what}"),
                site.installer(&path, &args),
                2,
                expect,
                journaled,
            )
        })
        .collect();
    let missing = site.tmp.path().join("configs/none/installer.toml");
    v.push(Case::new(
        "installer.toml: named but missing",
        site.installer(&missing, &args),
        2,
        &[&format!(
            "configuration file `{}` does not exist",
            missing.display()
        )],
        false,
    ));
    v
}

/// `builder deploy` with bad arguments or a bad `deploy.toml`: refused before anything is sent.
/// The installer it would run is a wrapper that leaves `sent` behind before running the real
/// one on the live root, so a command that got through would show.
fn deploy_cases(site: &Site, build: BuildNumber, pwned: &Path, sent: &Path) -> Vec<Case> {
    let wrapper = site.tmp.path().join("installer-wrapper");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho sent >> '{}'\nexec '{}' \"$@\"\n",
            sent.display(),
            bins::installer().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let cwd = site.tmp.path().join("deployer");
    fs::create_dir_all(&cwd).unwrap();
    let store = site.stores.url(Backend::File);
    let config = site.config.display().to_string();
    let wrapper = wrapper.display().to_string();
    let tag = build.tag();
    let deploy = |args: &[&str]| {
        let mut cmd = Command::new(bins::builder());
        cmd.current_dir(&cwd)
            .envs(site.stores.moto.env())
            .arg("deploy")
            .args(args)
            .args(["--store", &store, "--installer", &wrapper]);
        if !args.contains(&"--installer-config") {
            cmd.args(["--installer-config", &config]);
        }
        cmd
    };
    let local = |build: &str, more: &[&str]| {
        let mut args = vec!["--build", build, "--transport", "local"];
        args.extend(more);
        deploy(&args)
    };
    // SSM at a closed loopback port: were anything sent, it would fail to connect instead.
    let ssm = |targets: &str, more: &[&str]| {
        let mut args = vec![
            "--build",
            tag.as_str(),
            "--ssm-endpoint",
            "http://127.0.0.1:9",
            "--targets",
            targets,
        ];
        args.extend(more);
        deploy(&args)
    };
    let p = pwned.display();
    let mut v = vec![
        Case::new(
            "builder deploy: build name with `;`",
            local("000160;reboot", &[]),
            2,
            &["invalid build name"],
            false,
        ),
        Case::new(
            "builder deploy: build name with `$()`",
            local(&format!("$(touch {p})"), &[]),
            2,
            &["invalid build name"],
            false,
        ),
        Case::new(
            "builder deploy: build name with backticks",
            local(&format!("`touch {p}`"), &[]),
            2,
            &["invalid build name"],
            false,
        ),
        Case::new(
            "builder deploy: build name with an option inside",
            local(&format!("{tag} --template-reviewed"), &[]),
            2,
            &["invalid build name"],
            false,
        ),
        Case::new(
            "builder deploy: target with `;`",
            ssm("i-0123456789abcdef0;reboot", &[]),
            2,
            &["invalid target `i-0123456789abcdef0;reboot`"],
            false,
        ),
        Case::new(
            "builder deploy: target with `$()`",
            ssm(&format!("$(touch {p})"), &[]),
            2,
            &["invalid target"],
            false,
        ),
        Case::new(
            "builder deploy: tag target without a value",
            ssm("tag:Role", &[]),
            2,
            &["invalid target `tag:Role`: no `=` between the tag key and its value"],
            false,
        ),
        Case::new(
            "builder deploy: targets with the local transport",
            local(&tag, &["--targets", "i-0123456789abcdef0"]),
            2,
            &["drop `--targets`"],
            false,
        ),
        Case::new(
            "builder deploy: timeout below the minimum",
            ssm("tag:Role=web", &["--timeout", "5"]),
            2,
            &["invalid value '5' for '--timeout <SECS>'", "30..=172800"],
            false,
        ),
        Case::new(
            "builder deploy: timeout that is not a number",
            ssm("tag:Role=web", &["--timeout", "10m"]),
            2,
            &["invalid value '10m' for '--timeout <SECS>'"],
            false,
        ),
        Case::new(
            "builder deploy: delivery timeout of zero",
            ssm("tag:Role=web", &["--delivery-timeout", "0"]),
            2,
            &[
                "invalid value '0' for '--delivery-timeout <SECS>'",
                "30..=2592000",
            ],
            false,
        ),
        Case::new(
            "builder deploy: installer config path with a newline",
            local(&tag, &["--installer-config", "/etc/binarycrate/x\nreboot"]),
            2,
            &["control character"],
            false,
        ),
        Case::new(
            "builder deploy: build not published",
            local("Build999999", &[]),
            2,
            &["Build999999 of binarycrate is not published"],
            false,
        ),
    ];
    let repos: [(&str, &str, &[&str]); 3] = [
        (
            "unknown key",
            "app = \"binarycrate\"\nstorre = \"s3://x/y\"\n",
            &["unknown field `storre`", "deploy.toml"],
        ),
        (
            "app name with shell metacharacters",
            "app = \"binarycrate;reboot\"\n",
            &["key `app`", "deploy.toml"],
        ),
        (
            "wrong type",
            "[python]\ninterpreter = 3\n",
            &[
                "invalid type: integer `3`, expected a string",
                "interpreter",
            ],
        ),
    ];
    for (i, (what, toml, expect)) in repos.into_iter().enumerate() {
        let repo = site.tmp.path().join(format!("app-repo-{i}"));
        fs::create_dir_all(repo.join(".git")).unwrap();
        fs::write(repo.join("deploy.toml"), toml).unwrap();
        let repo = repo.display().to_string();
        v.push(Case::new(
            format!("builder deploy: deploy.toml with {what}"),
            local(&tag, &["--repo", &repo]),
            2,
            expect,
            false,
        ));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// A hostile store: what whoever can write the bucket tries once the archive checks
// hold — links through the installer's own links into `shared/`, objects that never end, text
// meant for the operator's terminal, markers the installer trusts.

/// A release signing key made by `builder keygen`, and an `installer.toml` that requires it.
struct Signer {
    secret: PathBuf,
    config: PathBuf,
}

impl Signer {
    fn new(site: &Site) -> Self {
        let dir = site.tmp.path().join("keys");
        fs::create_dir_all(&dir).unwrap();
        let out = Command::new(bins::builder())
            .current_dir(&dir)
            .args(["keygen", "--name", "release", "--out-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let public = fs::read_to_string(dir.join("release.pub"))
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_owned();
        let config = site.config_file(
            "signed",
            &config_text(
                &site.root.display().to_string(),
                &site.stores.url(Backend::File),
                "",
                &format!("[signing]\npublic_keys = [{public:?}]\n"),
            ),
        );
        Signer {
            secret: dir.join("release.key"),
            config,
        }
    }

    /// What `builder sign` writes for `sidecar`.
    fn sign(&self, sidecar: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(RELEASE_JSON), sidecar).unwrap();
        let out = Command::new(bins::builder())
            .current_dir(dir.path())
            .arg("sign")
            .arg(dir.path())
            .arg("--signing-key")
            .arg(&self.secret)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        fs::read(dir.path().join(RELEASE_SIGNATURE)).unwrap()
    }
}

/// Where a build's objects live in the file store.
fn file_dir(site: &Site, build: BuildNumber) -> PathBuf {
    let dir = site.stores.file.join(APP).join(build.tag());
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The example app's directories that the link cases aim at: the settings package with a
/// `production.py` the server replaces, `media/` and `private/`, and the static root.
fn app_layout(c: &mut Crafted) {
    c.dir("binarycrate/binarycrate")
        .dir("binarycrate/binarycrate/settings")
        .file(
            "binarycrate/binarycrate/settings/base.py",
            b"DEBUG = False\n",
        )
        .file(
            "binarycrate/binarycrate/settings/production.py",
            b"# the server's own replaces this\n",
        )
        .dir("binarycrate/media")
        .dir("binarycrate/private")
        .dir("binarycrate/public");
}

fn static_root(c: &mut Crafted) {
    c.dir("binarycrate/public/static")
        .file("binarycrate/public/static/app.css", b"body {}\n");
}

const INTO_SHARED: &str = "which the installer replaces with the server's own files in `shared/`";

/// Packs a staged tree with `builder archive` and signs it with `builder sign`, as a release
/// builder would: the artifact, the sidecar's bytes and the signature.
fn archive_and_sign(
    site: &Site,
    signer: &Signer,
    build: BuildNumber,
    stage: impl FnOnce(&Path),
) -> (Vec<u8>, Sidecar, Vec<u8>) {
    let work = site.tmp.path().join(format!("archive-{}", build.tag()));
    let tree = work.join("tree");
    fs::create_dir_all(&tree).unwrap();
    stage(&tree);
    let out_dir = work.join("out");
    let out = Command::new(bins::builder())
        .current_dir(&work)
        .arg("archive")
        .arg(&tree)
        .args([
            "--build",
            &build.tag(),
            "--source-date",
            "1700000000",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let artifact = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let sidecar_bytes = fs::read(out_dir.join(RELEASE_JSON)).unwrap();
    let signature = signer.sign(&sidecar_bytes);
    let sidecar = Sidecar::from_bytes(&sidecar_bytes, "release.json").unwrap();
    (fs::read(artifact).unwrap(), sidecar, signature)
}

fn hostile_cases(site: &Site, signer: &Signer, next: &mut u32) -> Vec<Case> {
    let s = &site.stores;
    let mut v = Vec::new();
    let mut build = || {
        *next += 1;
        b(*next)
    };
    let refused_to = |n: BuildNumber| format!("refused to install {}; nothing changed", n.tag());

    // 1. Links that resolve inside the release's manifest, but through (or to) a path the
    //    installer replaces with a link into `shared/`. First as a release builder makes and
    //    signs it, installed on a server that requires signatures.
    let n = build();
    let (gz, sidecar, signature) = archive_and_sign(site, signer, n, |t| {
        let settings = t.join("binarycrate/binarycrate/settings");
        fs::create_dir_all(&settings).unwrap();
        fs::write(settings.join("production.py"), "# placeholder\n").unwrap();
        let stat = t.join("binarycrate/public/static");
        fs::create_dir_all(&stat).unwrap();
        fs::write(stat.join("app.css"), "body {}\n").unwrap();
        std::os::unix::fs::symlink(
            "../../binarycrate/settings/production.py",
            stat.join("leak"),
        )
        .unwrap();
    });
    s.put(Backend::File, n, RELEASE_SIGNATURE, &signature);
    s.publish(Backend::File, &gz, &sidecar);
    v.push(Case::new(
        "signed by the release builder: a static file linked to `production.py`",
        site.installer(&signer.config, &["activate", "--build", &n.tag(), "--json"]),
        2,
        &[
            "symlink `binarycrate/public/static/leak` -> `../../binarycrate/settings/production.py` resolves into `binarycrate/binarycrate/settings/production.py`",
            INTO_SHARED,
            &refused_to(n),
        ],
        true,
    ));
    let links: [(&str, &str, &str, &str); 7] = [
        (
            "static root linked to `media/..` (all of `shared/`)",
            "binarycrate/public/static",
            "../media/..",
            "resolves into `binarycrate/media`",
        ),
        (
            "static root linked to `private/`",
            "binarycrate/public/static",
            "../private",
            "resolves into `binarycrate/private`",
        ),
        (
            "`requirements.txt` linked to `production.py`",
            "requirements.txt",
            "binarycrate/binarycrate/settings/production.py",
            "resolves into `binarycrate/binarycrate/settings/production.py`",
        ),
        (
            "`wheels` linked to the user uploads",
            "wheels",
            "binarycrate/media",
            "resolves into `binarycrate/media`",
        ),
        (
            "the settings package linked to `media/`",
            "binarycrate/binarycrate/settings2",
            "../media",
            "resolves into `binarycrate/media`",
        ),
        (
            "a static link to the directory that holds `production.py`",
            "binarycrate/public/static/conf",
            "../../binarycrate/settings",
            "resolves to a directory that holds `binarycrate/binarycrate/settings/production.py`",
        ),
        (
            "a link to a file the release does not have",
            "binarycrate/public/static/gone.css",
            "missing.css",
            "resolves to `binarycrate/public/static/missing.css`, which the release does not have",
        ),
    ];
    for (what, link, target, expect) in links {
        let n = build();
        let (gz, sidecar) = crafted(n, |c| {
            app_layout(c);
            if link != "binarycrate/public/static" {
                static_root(c);
            }
            c.symlink(link, target);
        })
        .seal();
        s.publish(Backend::File, &gz, &sidecar);
        v.push(Case::new(
            format!("file store: {what}"),
            site.activate(Backend::File, n),
            2,
            &[
                &format!("symlink `{link}` -> `{target}`"),
                expect,
                &refused_to(n),
            ],
            true,
        ));
    }

    // The settings package itself a link into the static root: the installer would put the
    // server's `production.py` where nginx serves it.
    let n = build();
    let (gz, sidecar) = crafted(n, |c| {
        c.dir("binarycrate/binarycrate")
            .dir("binarycrate/public")
            .dir("binarycrate/public/static")
            .dir("binarycrate/public/static/settings")
            .file(
                "binarycrate/public/static/settings/base.py",
                b"DEBUG = False\n",
            )
            .symlink(
                "binarycrate/binarycrate/settings",
                "../public/static/settings",
            );
    })
    .seal();
    s.publish(Backend::File, &gz, &sidecar);
    v.push(Case::new(
        "file store: the settings package a link into the static root",
        site.activate(Backend::File, n),
        2,
        &[
            "symlink `binarycrate/binarycrate/settings` -> `../public/static/settings` stands where the directory of `binarycrate/binarycrate/settings/production.py` belongs",
            &refused_to(n),
        ],
        true,
    ));

    // 6. Paths only the installer creates: a finished virtualenv with the artifact's own
    //    Python, a `venv` that is a file, the adopted checkout's marker.
    let owned = [
        recipe(
            "a finished virtualenv",
            |c| {
                c.dir("venv")
                    .dir("venv/bin")
                    .file("venv/bin/python", b"#!/bin/sh\ntouch /tmp/pwned\n")
                    .file("venv/.binarycrate-venv-complete", b"");
            },
            &["entry `venv` is inside `venv`"],
        ),
        recipe(
            "`venv` as a regular file",
            |c| {
                c.file("venv", b"not a directory\n");
            },
            &["entry `venv` is inside `venv`"],
        ),
        recipe(
            "the adopted checkout's marker",
            |c| {
                c.file(
                    "legacy.json",
                    br#"{"kind": "legacy", "build": "000001", "checkout": "/"}"#,
                );
            },
            &["entry `legacy.json` is inside `legacy.json`"],
        ),
    ];
    for Recipe {
        what,
        craft,
        expect,
    } in owned
    {
        let n = build();
        let (gz, sidecar) = crafted(n, craft).seal();
        s.publish(Backend::File, &gz, &sidecar);
        let refused = refused_to(n);
        let mut expect = expect.to_vec();
        expect.extend(["which the installer creates on the server", &refused]);
        v.push(Case::new(
            format!("file store: {what}"),
            site.activate(Backend::File, n),
            2,
            &expect,
            true,
        ));
    }

    // 3. Objects larger than they may be, or not files at all.
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    let sidecar_bytes = sidecar.to_bytes();
    s.put(
        Backend::File,
        n,
        RELEASE_SIGNATURE,
        &signer.sign(&sidecar_bytes),
    );
    s.publish(Backend::File, &gz, &sidecar);
    let name = sidecar.archive.as_ref().unwrap().file_name.clone();
    let gib = fs::File::create(file_dir(site, n).join(&name)).unwrap();
    gib.set_len(1 << 30).unwrap();
    v.push(Case::new(
        format!(
            "file store: a signed {}-byte artifact replaced by 1 GiB",
            gz.len()
        ),
        wrapped(
            &["prlimit", &format!("--fsize={FILE_SIZE_LIMIT}")],
            site.installer(&signer.config, &["activate", "--build", &n.tag()]),
        ),
        2,
        &[&format!(
            "is larger than its sidecar says ({} bytes), it has {}",
            gz.len(),
            1u64 << 30
        )],
        true,
    ));
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    s.publish(Backend::S3, &gz, &sidecar);
    let name = sidecar.archive.as_ref().unwrap().file_name.clone();
    s.put(Backend::S3, n, &name, &vec![0u8; 40 << 20]);
    v.push(Case::new(
        format!("S3: a {}-byte artifact replaced by 40 MiB", gz.len()),
        site.activate_limited(Backend::S3, n),
        2,
        &[&format!(
            "is larger than its sidecar says ({} bytes), it has {}",
            gz.len(),
            40u64 << 20
        )],
        true,
    ));
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    s.publish(Backend::File, &gz, &sidecar);
    let name = sidecar.archive.as_ref().unwrap().file_name.clone();
    let path = file_dir(site, n).join(&name);
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    v.push(Case::new(
        "file store: the artifact a link to /dev/zero",
        site.activate_limited(Backend::File, n),
        2,
        &[
            &format!("`{APP}/{}/{name}`", n.tag()),
            "is a character device, not a file",
        ],
        true,
    ));
    let n = build();
    let path = file_dir(site, n).join(RELEASE_JSON);
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    v.push(Case::new(
        "file store: `release.json` a link to /dev/zero",
        site.activate(Backend::File, n),
        2,
        &["release.json` in", "is a character device, not a file"],
        true,
    ));
    let n = build();
    fs::File::create(file_dir(site, n).join(RELEASE_JSON))
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    v.push(Case::new(
        "file store: a 100 MB `release.json`",
        site.activate(Backend::File, n),
        2,
        &[&format!(
            "is larger than any sidecar may be ({} bytes), it has {}",
            32u64 << 20,
            100u64 << 20
        )],
        true,
    ));
    let n = build();
    let fifo = file_dir(site, n).join(RELEASE_JSON);
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    v.push(Case::new(
        "file store: `release.json` a FIFO (must not hang holding the lock)",
        wrapped(&["timeout", "60"], site.activate(Backend::File, n)),
        2,
        &["is a FIFO, not a file"],
        true,
    ));
    let n = build();
    fs::create_dir_all(file_dir(site, n).join(RELEASE_JSON)).unwrap();
    v.push(Case::new(
        "file store: `release.json` a directory",
        site.activate(Backend::File, n),
        2,
        &["is a directory, not a file"],
        true,
    ));
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    s.publish(Backend::File, &gz, &sidecar);
    fs::create_dir_all(file_dir(site, n).join(RELEASE_SIGNATURE)).unwrap();
    v.push(Case::new(
        "file store, signatures required: `release.json.minisig` a directory",
        site.installer(&signer.config, &["activate", "--build", &n.tag()]),
        2,
        &["release.json.minisig` in", "is a directory, not a file"],
        true,
    ));

    // 4. Text for the operator's terminal and the journal.
    let n = build();
    let (gz, sidecar) = crafted(n, |c| {
        c.tar
            .file("binarycrate/x\n\u{1b}[2K\u{1b}[1ABuild000034 is live", b"x");
    })
    .seal();
    s.publish(Backend::File, &gz, &sidecar);
    v.push(
        Case::new(
            "file store: an entry name that rewrites the terminal",
            site.activate(Backend::File, n),
            2,
            &[
                "entry `binarycrate/x\\n\\u{1b}[2K\\u{1b}[1ABuild000034 is live` is refused: the name contains a control character",
            ],
            true,
        )
        .forbidding(&["\nBuild000034 is live"]),
    );
    let n = build();
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    s.put(
        Backend::File,
        n,
        &sidecar.archive.as_ref().unwrap().file_name,
        &gz,
    );
    let evil = edited_json(&sidecar, |j| {
        j["manifest"]["files"]["binarycrate/hello.py"]["mode"] =
            "\u{1b}[2K\u{1b}[1A0644 Build000034 is live".into();
    });
    s.put(Backend::File, n, RELEASE_JSON, &evil);
    v.push(
        Case::new(
            "file store, signatures required: an unsigned sidecar whose mode rewrites the terminal",
            site.installer(&signer.config, &["activate", "--build", &n.tag()]),
            2,
            &[&format!("{} is not signed", n.tag())],
            true,
        )
        .forbidding(&["Build000034 is live"]),
    );
    let n = build();
    let (gz, sidecar) = crafted(n, |c| {
        c.m.commit = "\u{1b}]0;owned\u{7}\u{1b}[2J".into();
    })
    .seal();
    s.publish(Backend::File, &gz, &sidecar);
    v.push(Case::new(
        "file store: a sidecar whose commit is terminal escapes (printed by `builder releases`)",
        site.activate(Backend::File, n),
        2,
        &["commit `\\u{1b}]0;owned\\u{7}\\u{1b}[2J` is not a commit id"],
        true,
    ));
    let n = build();
    // Letters that do not compress well, so the name is not also refused as a bomb.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let letters: String = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect();
    let long = format!("binarycrate/{letters}");
    let (gz, sidecar) = crafted(n, |c| {
        c.tar
            .pax(&[("path", long.as_bytes())])
            .file("binarycrate/short.py", b"x");
    })
    .seal();
    s.publish(Backend::File, &gz, &sidecar);
    v.push(Case::new(
        "file store: a 16 MiB entry name",
        site.activate(Backend::File, n),
        2,
        &[
            &format!("({} bytes in all)", long.len()),
            &format!(
                "the name is {} bytes long; release paths have at most 1024",
                long.len()
            ),
        ],
        true,
    ));

    // 5. Bad input that was answered as a local failure, or in the wrong words.
    let n = build();
    let component = "n".repeat(300);
    let (gz, sidecar) = crafted(n, |c| {
        c.file(&format!("binarycrate/{component}"), b"x");
    })
    .seal();
    s.publish(Backend::File, &gz, &sidecar);
    v.push(Case::new(
        "file store: a path component over 255 bytes",
        site.activate(Backend::File, n),
        2,
        &["has a component of 300 bytes; a file name has at most 255"],
        true,
    ));
    let n = build();
    let deep: Vec<String> = (0..42)
        .map(|i| format!("{i:02}{}", "d".repeat(98)))
        .collect();
    let (gz, sidecar) = crafted(n, |c| {
        let mut path = "binarycrate".to_owned();
        for d in &deep {
            path = format!("{path}/{d}");
            c.dir(&path);
        }
        c.file(&format!("{path}/deep.py"), b"x");
    })
    .seal();
    s.publish(Backend::File, &gz, &sidecar);
    v.push(Case::new(
        "file store: a path longer than PATH_MAX",
        site.activate(Backend::File, n),
        2,
        &["release paths have at most 1024"],
        true,
    ));
    let n = build();
    let (gz, sidecar) = crafted(n, |c| {
        let mut h = RawTar::header(b"binarycrate/sparse", EntryType::GNUSparse, 0o644, 0, b"");
        h.as_gnu_mut().unwrap().realsize = *b"not a number";
        h.set_cksum();
        c.tar.push(&h, b"");
        c.list_file("binarycrate/sparse", b"", 0o644);
    })
    .seal();
    s.publish(Backend::File, &gz, &sidecar);
    v.push(Case::new(
        "file store: a GNU sparse entry with a malformed size",
        site.activate(Backend::File, n),
        2,
        &["the archive has a GNU sparse entry, which release archives never contain"],
        true,
    ));
    let n = build();
    let (gz, mut sidecar) = crafted(n, |_| {}).seal();
    sidecar.manifest.app = "otherapp".into();
    let info = sidecar.archive.as_mut().unwrap();
    info.file_name = ArtifactRef::new("otherapp", n, info.blake3).file_name();
    s.put(Backend::File, n, &info.file_name.clone(), &gz);
    s.put(Backend::File, n, RELEASE_JSON, &sidecar.to_bytes());
    v.push(Case::new(
        "file store: another app's sidecar under this build's key",
        site.activate(Backend::File, n),
        2,
        &[&format!(
            "is the sidecar of otherapp {}, not of {APP} {}",
            n.tag(),
            n.tag()
        )],
        true,
    ));

    // 1 again, for a release already on disk: unpacked before the rule existed (here with the
    // plain `installer unpack`, which knows no server's shared paths), then verified, made
    // live again, rolled back to.
    let n = build();
    let (gz, sidecar) = crafted(n, |c| {
        app_layout(c);
        static_root(c);
        c.symlink(
            "binarycrate/public/static/leak",
            "../../binarycrate/settings/production.py",
        );
    })
    .seal();
    s.publish(Backend::File, &gz, &sidecar);
    let artifact = file_dir(site, n).join(&sidecar.archive.as_ref().unwrap().file_name);
    let dest = site.root.join("releases").join(n.tag());
    let (installer, config) = (bins::installer(), site.config.clone());
    let plant = move || {
        let out = Command::new(installer)
            .env("BINARYCRATE_INSTALLER_CONFIG", config)
            .arg("unpack")
            .arg(&artifact)
            .arg(&dest)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    };
    let dest = site.root.join("releases").join(n.tag());
    let remove = move || fs::remove_dir_all(&dest).unwrap();
    let tag = n.tag();
    let leak = "`binarycrate/public/static/leak`";
    v.push(
        Case::new(
            "on disk from before the rule: `installer verify` of a release with a link into `shared/`",
            site.installer(&site.config, &["verify", &tag]),
            2,
            &[leak, "refused by the installer", INTO_SHARED, "does not verify"],
            false,
        )
        .around(plant, || {}),
    );
    v.push(Case::new(
        "on disk from before the rule: `installer activate` reusing it",
        site.installer(&site.config, &["activate", "--build", &tag]),
        2,
        &[leak, "no longer matches", "move the directory away"],
        true,
    ));
    v.push(
        Case::new(
            "on disk from before the rule: `installer rollback --to` it",
            site.installer(&site.config, &["rollback", "--to", &tag]),
            2,
            &[leak, "does not verify against its manifest"],
            false,
        )
        .around(|| {}, remove),
    );
    v
}

// ---------------------------------------------------------------------------------------------
// Hostile-store findings that are not refusals of one command: each a named step over the
// same live site, after the cases above.

/// 5: a failure before anything was unpacked (the store unreachable: exit 1) ends the run's
/// journal entry, so `status` names it as the last command instead of the last success.
fn step_a_failure_before_unpack_is_the_last_command(site: &Site, next: &mut u32) {
    *next += 1;
    let n = b(*next);
    let out = site
        .installer(
            &site.config,
            &[
                "activate",
                "--build",
                &n.tag(),
                "--store",
                "s3://bad-input/releases",
                "--s3-endpoint",
                "http://127.0.0.1:9",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status = site
        .installer(&site.config, &["status", "--json"])
        .output()
        .unwrap();
    let report: common::report::Report = serde_json::from_slice(&status.stdout).unwrap();
    let last = &report.details["last_command"];
    assert_eq!(
        (last["build"].as_str(), last["outcome"].as_str()),
        (Some(n.digits().as_str()), Some("failed")),
        "{}",
        text(&status)
    );
    assert_eq!(report.build, Some(b(1)), "{}", text(&status));
}

/// 1: the live release (unpacked before the link rules) has a `production_template.py` that is
/// a link to `production.py`, i.e. to the server's secrets: the next activation's template
/// check must refuse without printing a line of them.
fn step_a_live_template_linked_to_the_secrets_is_not_printed(site: &Site, next: &mut u32) {
    let template = site
        .root
        .join("releases/Build000001/binarycrate/binarycrate/settings/production_template.py");
    let original = fs::read(&template).unwrap();
    let secrets = fs::read_to_string(site.root.join("shared/production.py")).unwrap();
    assert!(secrets.contains("SECRET_KEY = 'test-secret"), "{secrets}");
    let shared = listing(&site.root.join("shared"), |_| false);
    fs::remove_file(&template).unwrap();
    std::os::unix::fs::symlink("production.py", &template).unwrap();
    *next += 1;
    let n = b(*next);
    let (gz, sidecar) = crafted(n, |_| {}).seal();
    site.stores.publish(Backend::File, &gz, &sidecar);
    let out = site.activate(Backend::File, n).output().unwrap();
    fs::remove_file(&template).unwrap();
    fs::write(&template, &original).unwrap();
    fs::set_permissions(&template, fs::Permissions::from_mode(0o644)).unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("leads out of the release") && all.contains("--template-reviewed"),
        "{all}"
    );
    assert!(
        !all.contains("test-secret-key"),
        "the secrets were printed: {all}"
    );
    assert_eq!(listing(&site.root.join("shared"), |_| false), shared);
    assert_eq!(
        fs::read_link(site.root.join("current")).unwrap(),
        Path::new("releases/Build000001")
    );
    assert!(!site.root.join("releases").join(n.tag()).exists());
}

/// 5: a failure with no release live says so, not that "the previous release is still serving".
fn step_a_failure_with_nothing_live_says_so(site: &Site, next: &mut u32) {
    let root = site.tmp.path().join("empty-srv");
    fs::create_dir_all(root.join("shared")).unwrap();
    fs::write(root.join("shared/production.py"), "DEBUG = False\n").unwrap();
    let config = site.config_file(
        "nothing-live",
        &config_text(
            &root.display().to_string(),
            &site.stores.url(Backend::File),
            "migrate = [\"false\"]",
            "",
        ),
    );
    *next += 1;
    let n = b(*next);
    let (gz, sidecar) = crafted(n, |c| {
        c.file("requirements.txt", b"").dir("wheels");
    })
    .seal();
    site.stores.publish(Backend::File, &gz, &sidecar);
    let out = site
        .installer(&config, &["activate", "--build", &n.tag()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        err.contains("migrate failed; `current` was not changed and no release was live before this one, and none is now"),
        "{err}"
    );
    assert!(!err.contains("still serving"), "{err}");
    assert!(fs::symlink_metadata(root.join("current")).is_err());
}

/// The static link of `hash`, as a target path.
fn static_link(site: &Site, hash: &str) -> PathBuf {
    fs::read_link(site.root.join("static").join(hash)).unwrap()
}

/// 2: a build of the same commit as the live one (same `VERSION_HASH`) whose activation fails
/// before the swap leaves the live release's static link alone; one that goes live takes the
/// link over, and a rollback takes it back.
fn step_a_build_of_the_live_commit_leaves_the_live_static_link(site: &Site, next: &mut u32) {
    let hash_file = "binarycrate/binarycrate/settings/version_hash.py";
    let live = site.root.join("releases/Build000001");
    let version_hash = fs::read(live.join(hash_file)).unwrap();
    let links = listing(&site.root.join("static"), |_| false);
    assert_eq!(links.len(), 1, "{links:?}");
    let hash = links.keys().next().unwrap().clone();
    let live_link = static_link(site, &hash);
    assert!(
        live_link.starts_with("../releases/Build000001"),
        "{live_link:?}"
    );
    let same_commit = |n: BuildNumber| {
        let (gz, sidecar) = crafted(n, |c| {
            c.dir("binarycrate/binarycrate")
                .dir("binarycrate/binarycrate/settings")
                .file(hash_file, &version_hash)
                .dir("binarycrate/public")
                .dir("binarycrate/public/static")
                .file(
                    "binarycrate/public/static/app.css",
                    b"/* another build */\n",
                )
                .file("requirements.txt", b"")
                .dir("wheels");
        })
        .seal();
        site.stores.publish(Backend::File, &gz, &sidecar);
    };
    let root = site.root.display().to_string();
    let store = site.stores.url(Backend::File);

    *next += 1;
    let failing = b(*next);
    same_commit(failing);
    let config = site.config_file(
        "same-commit-fails",
        &config_text(&root, &store, "migrate = [\"false\"]", ""),
    );
    let out = site
        .installer(
            &config,
            &["activate", "--build", &failing.tag(), "--template-reviewed"],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Build000001, the previous release, is still serving"),
        "{}",
        text(&out)
    );
    assert_eq!(listing(&site.root.join("static"), |_| false), links);
    // ...and still leads to the live release's static files.
    assert!(site.root.join("static").join(&hash).is_dir());
    assert!(!site.root.join("releases").join(failing.tag()).exists());

    let (port, stop) = tests::site::fake_site(&site.root);
    let config = site.config_file(
        "same-commit",
        &config_text(
            &root,
            &store,
            "migrate = [\"true\"]",
            &format!("[health]\nurl = \"http://127.0.0.1:{port}/\"\ntimeout_secs = 20\nconfirm_requests = 2\n"),
        ),
    );
    *next += 1;
    let going_live = b(*next);
    same_commit(going_live);
    let out = site
        .installer(
            &config,
            &[
                "activate",
                "--build",
                &going_live.tag(),
                "--template-reviewed",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        static_link(site, &hash).starts_with(format!("../releases/{}", going_live.tag())),
        "{:?}",
        static_link(site, &hash)
    );
    let out = site
        .installer(&config, &["rollback", "--to", "Build000001"])
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(static_link(site, &hash), live_link);
}

#[test]
fn bad_input_through_the_whole_path_is_refused_and_changes_nothing() {
    if !bins::have_wheelhouse() {
        return;
    }
    let Some(moto) = MotoServer::start_or_skip() else {
        return;
    };
    let site = live_site(moto);
    let pwned = site.tmp.path().join("pwned");
    let sent = site.tmp.path().join("sent");

    let mut next = 100;
    let mut cases = build_name_cases(&site, &pwned);
    cases.extend(store_cases(&site, Backend::File, &mut next));
    cases.extend(store_cases(&site, Backend::S3, &mut next));
    cases.extend(archive_cases(&site, Backend::File, &mut next, true));
    cases.extend(archive_cases(&site, Backend::S3, &mut next, false));
    // A valid release the configuration and deploy cases would install if they got through.
    next += 1;
    let good = b(next);
    let (gz, sidecar) = crafted(good, |_| {}).seal();
    site.stores.publish(Backend::File, &gz, &sidecar);
    cases.extend(config_cases(&site, good));
    cases.extend(deploy_cases(&site, good, &pwned, &sent));
    let signer = Signer::new(&site);
    cases.extend(hostile_cases(&site, &signer, &mut next));

    let mut before = State::of(&site.root);
    let (mut rejected, mut unchanged) = (0, 0);
    let mut failures = Vec::new();
    for case in &mut cases {
        if let Some(prepare) = case.prepare.take() {
            prepare();
            before = State::of(&site.root);
        }
        let out = case.cmd.output().unwrap_or_else(|e| {
            panic!(
                "{}: cannot run `{}`: {e}",
                case.name,
                case.cmd.get_program().to_string_lossy()
            )
        });
        let mut after = State::of(&site.root);
        let err = String::from_utf8_lossy(&out.stderr);
        let mut problems = Vec::new();

        let missing: Vec<&String> = case.expect.iter().filter(|e| !err.contains(*e)).collect();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let shown: Vec<&String> = case
            .forbid
            .iter()
            .filter(|f| err.contains(*f) || stdout.contains(*f))
            .collect();
        if out.status.code() != Some(case.code) || !missing.is_empty() {
            problems.push(format!(
                "expected exit {} and {missing:?} in its error",
                case.code
            ));
        } else if !shown.is_empty() {
            problems.push(format!("its output shows {shown:?}"));
        } else if out.stderr.contains(&0x1b) || out.stdout.contains(&0x1b) {
            problems.push("its output holds an escape character (ESC)".into());
        } else if out.stderr.len() > MAX_STDERR_BYTES {
            problems.push(format!("{} bytes of standard error", out.stderr.len()));
        } else {
            rejected += 1;
        }
        let mut clean = true;
        let grown = after.journal.len().saturating_sub(before.journal.len());
        if grown > MAX_JOURNAL_GROWTH {
            clean = false;
            problems.push(format!("the journal grew by {grown} bytes"));
        }
        match after.changes_since(&before) {
            Ok(refused) if refused != usize::from(case.journaled) => problems.push(format!(
                "{refused} `refused` journal records, expected {}",
                usize::from(case.journaled)
            )),
            Ok(_) => {}
            Err(changes) => {
                clean = false;
                problems.push(format!("changed the server root: {changes}"));
            }
        }
        for marker in [&pwned, &sent] {
            if marker.exists() {
                clean = false;
                problems.push(format!("`{}` exists", marker.display()));
                let _ = fs::remove_file(marker);
            }
        }
        if err.contains("Ctrl-C cancels") {
            clean = false;
            problems.push("a fleet command was sent".into());
        }
        if clean {
            unchanged += 1;
        }
        println!(
            "{:<4} exit {:<2} {:<78} {}",
            if problems.is_empty() { "ok" } else { "FAIL" },
            out.status.code().map_or("-".into(), |c| c.to_string()),
            case.name,
            err.lines()
                .find(|l| l.starts_with("error") || l.contains("caused by"))
                .unwrap_or_default()
                .chars()
                .take(100)
                .collect::<String>()
        );
        if !problems.is_empty() {
            let mut shown = text(&out);
            if shown.len() > 8192 {
                shown.truncate(shown.floor_char_boundary(8192));
                shown.push('…');
            }
            failures.push(format!(
                "{}: {}\n{}",
                case.name,
                problems.join("; "),
                shown.replace('\x1b', "<ESC>")
            ));
        }
        if let Some(cleanup) = case.cleanup.take() {
            cleanup();
            after = State::of(&site.root);
        }
        before = after;
    }

    // The checks can fail: a stray file, a rewritten mode and two journal records are seen.
    let mut tampered = before.clone();
    tampered
        .tree
        .insert("static/stray".into(), "file 0644 0 x".into());
    tampered
        .journal
        .extend_from_slice(b"{\"event\":\"started\"}\n{\"event\":\"phase\"}\n");
    let seen = tampered.changes_since(&before).unwrap_err();
    assert!(
        seen.contains("added `static/stray`") && seen.contains("2 journal records"),
        "{seen}"
    );

    let n = cases.len();
    tests::show(&format!(
        "bad-input: cases={n} rejected={rejected} state-unchanged={unchanged}"
    ));
    assert!(n >= 30, "only {n} cases");
    assert!(
        failures.is_empty() && rejected == n && unchanged == n,
        "{} of {n} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // Still the same live release, and it verifies.
    let out = Command::new(bins::installer())
        .env("BINARYCRATE_INSTALLER_CONFIG", &site.config)
        .args(["verify", "Build000001"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status = Command::new(bins::installer())
        .env("BINARYCRATE_INSTALLER_CONFIG", &site.config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let report: common::report::Report = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report.build, Some(b(1)), "{}", text(&status));
    assert_eq!(
        report.details["last_command"]["outcome"],
        "success",
        "a refusal is not the last activation: {}",
        text(&status)
    );

    step_a_failure_before_unpack_is_the_last_command(&site, &mut next);
    step_a_live_template_linked_to_the_secrets_is_not_printed(&site, &mut next);
    step_a_failure_with_nothing_live_says_so(&site, &mut next);
    step_a_build_of_the_live_commit_leaves_the_live_static_link(&site, &mut next);
}
