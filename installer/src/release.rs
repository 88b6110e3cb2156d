//! Work on one release directory: shared links, the static link, its virtualenv, the
//! production template check, and verification against its manifest.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use common::archive::links::Reserved;
use common::archive::reader::{check_manifest, SharedTree};
use common::error::{BadInput, UnpackError};
use common::manifest::{AppProfile, FileEntry, LEGACY_MARKER, RELEASE_JSON, VENV_DIR};
use common::pyenv::PythonInfo;
use common::{atomic, Blake3Hash, BuildNumber, Sidecar};

use crate::config::InstallerConfig;
use crate::layout::Layout;
use crate::lock::DeployLock;
use crate::procs;

/// The uWSGI entry point (`docs/server-setup.md`), installed as `<root>/loader.py`.
pub const LOADER: &str = include_str!("loader.py");

/// Installs or updates `<root>/loader.py` (atomically; untouched when already current).
pub fn install_loader(layout: &Layout) -> anyhow::Result<()> {
    let path = layout.root.join("loader.py");
    if fs::read(&path).ok().as_deref() != Some(LOADER.as_bytes()) {
        atomic::write_file(&path, LOADER.as_bytes())?;
    }
    Ok(())
}

/// Marks a virtualenv whose build finished (a crash mid-build leaves none, so it is rebuilt).
const VENV_COMPLETE: &str = ".binarycrate-venv-complete";

/// Shared files must exist before anything changes: the operator creates them once.
pub fn check_shared_files(layout: &Layout, profile: &AppProfile) -> anyhow::Result<()> {
    for (inside, name) in &profile.shared_files {
        let path = layout.shared().join(name);
        if !path.is_file() {
            let from = match &profile.production_template {
                Some(t) => {
                    format!("from the release's `{t}` (e.g. copy it and fill in the secrets)")
                }
                None => {
                    format!("with the values the release's `{inside}` must hold on this server")
                }
            };
            bail!(BadInput(format!(
                "the shared file `{}` is missing: create it {from}, then run again",
                path.display(),
            )));
        }
    }
    Ok(())
}

/// Links the shared files and directories into the release (replacing what the release has at
/// those paths: the server's copy wins).
pub fn link_shared(layout: &Layout, profile: &AppProfile, release: &Path) -> anyhow::Result<()> {
    for name in profile.shared_dirs.values() {
        let target = layout.shared().join(name);
        fs::create_dir_all(&target)
            .with_context(|| format!("cannot create `{}`", target.display()))?;
    }
    let links = profile
        .shared_files
        .iter()
        .chain(profile.shared_dirs.iter());
    for (inside, name) in links {
        let link = release.join(inside);
        let target = layout.shared().join(name);
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        // Only through the release's real directories: a link on the way would put the
        // server's file wherever it leads (the reader refuses such a release; this is the
        // check for one unpacked before that rule).
        let mut at = release.to_owned();
        for part in Path::new(inside)
            .parent()
            .into_iter()
            .flat_map(Path::components)
        {
            at.push(part);
            if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                bail!(BadInput(format!(
                    "`{}` is a link, so `{inside}` would not be in the release: move the release away and activate it again from the store",
                    at.display()
                )));
            }
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        match fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&link)?,
            Ok(_) => fs::remove_file(&link)?,
            Err(_) => {}
        }
        atomic::replace_symlink(&target, &link)?;
    }
    Ok(())
}

/// What the archive does not decide in a release: the paths the installer creates, and those
/// it replaces with links to `shared/`.
pub fn reserved(profile: &AppProfile) -> Reserved {
    Reserved::installer_owned().with_linked(profile.shared_paths().cloned())
}

/// The app profile of a release on disk: its manifest's, or this server's for a release
/// packaged before profiles and for the adopted checkout.
pub fn profile_at(config: &InstallerConfig, release: &Path) -> AppProfile {
    match manifest_of(release) {
        Ok(sidecar) if !is_legacy(release) => config.profile_of(&sidecar.manifest),
        _ => config.legacy_profile(),
    }
}

/// Whether `release` is the adopted checkout: links into the operator's own tree, no manifest.
/// An archive cannot make one (the reader refuses `legacy.json`), and a release unpacked
/// before that rule has its `release.json`.
pub fn is_legacy(release: &Path) -> bool {
    fs::symlink_metadata(release.join(LEGACY_MARKER)).is_ok_and(|m| m.is_file())
        && fs::symlink_metadata(release.join(RELEASE_JSON)).is_err()
}

/// Most bytes of a release's text file (template, version hash) the installer reads.
const MAX_RELEASE_TEXT: u64 = 1 << 20;

/// Where `rel` of `release` really is, when it exists and stays inside the release once every
/// link is followed — so never a server file in `shared/` that a link leads to. A link that
/// leads out is refused (bad input): such a release cannot come from a verified archive.
/// The adopted checkout's links lead into the checkout by design and are followed.
pub fn resolve_in_release(release: &Path, rel: &str) -> anyhow::Result<Option<PathBuf>> {
    let path = release.join(rel);
    let real = match fs::canonicalize(&path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot resolve `{}`", path.display())),
    };
    if is_legacy(release) {
        return Ok(Some(real));
    }
    let root = fs::canonicalize(release)
        .with_context(|| format!("cannot resolve `{}`", release.display()))?;
    if !real.starts_with(&root) {
        bail!(BadInput(format!(
            "`{}` leads out of the release, to `{}`: the installer reads a release's own files only; move the release away and activate it again from the store",
            path.display(),
            real.display()
        )));
    }
    Ok(Some(real))
}

/// Reads a text file of a release (see [`resolve_in_release`]): only a regular file inside the
/// release, at most 1 MiB. `None` when it does not exist.
pub fn read_in_release(release: &Path, rel: &str) -> anyhow::Result<Option<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(real) = resolve_in_release(release, rel)? else {
        return Ok(None);
    };
    let shown = release.join(rel);
    let f = fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&real)
        .with_context(|| format!("cannot open `{}`", shown.display()))?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        bail!(BadInput(format!(
            "`{}` is not a regular file",
            shown.display()
        )));
    }
    let mut bytes = Vec::new();
    f.take(MAX_RELEASE_TEXT + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read `{}`", shown.display()))?;
    if bytes.len() as u64 > MAX_RELEASE_TEXT {
        bail!(BadInput(format!(
            "`{}` is larger than {MAX_RELEASE_TEXT} bytes, which no such file of a release is",
            shown.display()
        )));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The release's `VERSION_HASH` (the commit it was built from).
pub fn version_hash(release: &Path, profile: &AppProfile) -> anyhow::Result<Option<String>> {
    let Some(text) = read_in_release(release, &profile.version_hash_file)? else {
        return Ok(None);
    };
    let value = text.lines().find_map(|l| {
        l.trim().strip_prefix("VERSION_HASH").map(|r| {
            r.trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches(|c| c == '\'' || c == '"')
                .to_owned()
        })
    });
    // It becomes a path component: only plain names.
    Ok(value.filter(|v| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && v != "."
            && v != ".."
    }))
}

/// Whether [`link_static`] may re-point a link that another release on disk already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticLink {
    /// Before the swap: a link that serves another release (two builds of one commit) is left
    /// as it is, so the live site keeps its own static files if this build never goes live.
    Claim,
    /// The build is live (or being made live again): the link is its.
    TakeOver,
}

/// `static/<VERSION_HASH> -> ../releases/BuildNNNNNN/<static_root>`, so pages of every kept
/// release find their static files. Returns the hash, when the release has one.
pub fn link_static(
    layout: &Layout,
    config: &InstallerConfig,
    build: BuildNumber,
    how: StaticLink,
) -> anyhow::Result<Option<String>> {
    let release = layout.release(build);
    let profile = profile_at(config, &release);
    let Some(hash) = version_hash(&release, &profile)? else {
        return Ok(None);
    };
    let target = Path::new("..")
        .join("releases")
        .join(build.tag())
        .join(&profile.static_root);
    let link = layout.static_dir().join(&hash);
    if how == StaticLink::Claim {
        if let Some(other) = static_owner(layout, &link).filter(|b| *b != build) {
            eprintln!(
                "    `static/{hash}` serves {other:#} (the same commit); it is re-pointed at {build:#} once {build:#} is live"
            );
            return Ok(Some(hash));
        }
    }
    if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
        atomic::replace_symlink(&target, &link)?;
    }
    Ok(Some(hash))
}

/// The release a static link leads into, when that release is still on disk.
fn static_owner(layout: &Layout, link: &Path) -> Option<BuildNumber> {
    let target = fs::read_link(link).ok()?;
    let mut parts = target.components().skip(2);
    let build = BuildNumber::parse(parts.next()?.as_os_str().to_str()?).ok()?;
    layout.release(build).is_dir().then_some(build)
}

/// Where a release's installed dependencies are kept once for every release with the same
/// ones: `<root>/deps/<key>`, which the release's `deps` links to. None when its dependencies
/// cannot be shared (none installed, or compiled on the server).
pub fn shared_deps(layout: &Layout, manifest: &common::ReleaseManifest) -> Option<SharedTree> {
    let (dir, key) = deps_dir_and_key(manifest)?;
    Some(SharedTree {
        dir,
        store: layout.deps_trees().join(&key),
        link: deps_link(&key),
    })
}

/// The release's dependency directory and the key of the shared tree it may link to.
fn deps_dir_and_key(manifest: &common::ReleaseManifest) -> Option<(String, String)> {
    let key = manifest.deps_key()?;
    let dir = manifest.deps.as_ref()?.dir.clone();
    // The link's target climbs out of `releases/BuildNNNNNN` only: a top-level directory.
    (!dir.contains('/')).then_some((dir, key))
}

fn deps_link(key: &str) -> String {
    format!("../../deps/{key}")
}

/// The shared dependency tree a release on disk links to, if it does.
pub fn linked_deps_key(release: &Path) -> Option<String> {
    let sidecar = manifest_of(release).ok()?;
    let dir = &sidecar.manifest.deps.as_ref()?.dir;
    let target = fs::read_link(release.join(dir)).ok()?;
    let key = target.strip_prefix("../../deps").ok()?.to_str()?.to_owned();
    (deps_link(&key) == target.to_str()?).then_some(key)
}

/// Removes the shared dependency trees no release on disk links to any more (renamed out of
/// the way first, like a release). Returns their names.
pub fn remove_unused_deps(layout: &Layout) -> anyhow::Result<Vec<String>> {
    let used: BTreeSet<String> = layout
        .releases_on_disk()?
        .into_iter()
        .filter_map(|b| linked_deps_key(&layout.release(b)))
        .collect();
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(layout.deps_trees()) else {
        return Ok(removed);
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || used.contains(&name) {
            continue;
        }
        remove_release_dir(&e.path())?;
        removed.push(name);
    }
    Ok(removed)
}

/// How a release's dependencies were made ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepsReady {
    /// Its complete environment was already there.
    Reused,
    /// An environment over the dependencies it carries installed (no pip).
    Linked,
    /// A venv built with pip from the wheels it carries (releases from before `deps`).
    Pip,
}

/// Makes the release's dependencies importable through `venv/`: for a release that carries them
/// installed ([`common::manifest::Dependencies`]), a venv without pip whose site-packages is
/// that directory (a few files and links, no pip, no index); for an older one, a venv built
/// from its wheels with pip. Reused when complete.
pub fn ready_dependencies(
    config: &InstallerConfig,
    release: &Path,
    lock: &DeployLock,
) -> anyhow::Result<DepsReady> {
    let manifest = manifest_of(release)?.manifest;
    let Some(deps) = &manifest.deps else {
        return Ok(if build_venv(config, release, lock)? {
            DepsReady::Pip
        } else {
            DepsReady::Reused
        });
    };
    let venv = release.join(VENV_DIR);
    let wanted = (manifest.python_version(), deps);
    let (Some((major, minor)), deps) = wanted else {
        bail!("the release's manifest names no Python for its dependencies");
    };
    let site = venv.join(format!("lib/python{major}.{minor}/site-packages"));
    let link = format!("../../../{}", deps.dir);
    let complete = venv.join(VENV_COMPLETE).is_file()
        && fs::read_link(&site).is_ok_and(|t| t == Path::new(&link))
        && venv.join("bin/python").exists();
    if complete {
        return Ok(DepsReady::Reused);
    }
    let server = python_for(config, &manifest)?.expect("the release has deps");
    atomic::remove_tree(&venv)?;
    common::pyenv::write_light_venv(&venv, &server, Path::new(&link))?;
    if !deps.bytecode {
        // Packaged for another platform's Python: compiled here, once per release, so that no
        // worker compiles on start.
        let mut argv = procs::argv(&["venv/bin/python", "-m", "compileall", "-q", &deps.dir]);
        let profile = profile_at(config, release);
        if !profile.project_dir.is_empty() {
            argv.push(profile.project_dir.clone());
        }
        procs::run_locked(&argv, release, &[], lock, "deps:compile")?;
    }
    common::fault::point("deps:before-complete");
    atomic::write_file(&venv.join(VENV_COMPLETE), b"")?;
    Ok(DepsReady::Linked)
}

/// Refuses (exit 2) a release whose dependencies are installed for another Python than the
/// server's: checked before anything is downloaded.
pub fn check_python(
    config: &InstallerConfig,
    manifest: &common::ReleaseManifest,
) -> anyhow::Result<()> {
    python_for(config, manifest).map(drop)
}

/// The server's Python when the release carries installed dependencies, once it is known to
/// be the one they were installed for.
fn python_for(
    config: &InstallerConfig,
    manifest: &common::ReleaseManifest,
) -> anyhow::Result<Option<PythonInfo>> {
    if manifest.deps.is_none() {
        return Ok(None);
    }
    let Some((major, minor)) = manifest.python_version() else {
        bail!("the release's manifest names no Python for its dependencies");
    };
    let server = server_python(&config.python)?;
    if server.version != (major, minor) {
        bail!(BadInput(format!(
            "{:#}'s dependencies are installed for Python {major}.{minor}, and this server's `python` (`{}`) is {}.{}: set `python` in the installer configuration to a Python {major}.{minor} (the one uWSGI embeds), or package for {}.{} (`python.python_version` in `deploy.toml`)",
            manifest.build, config.python, server.version.0, server.version.1, server.version.0, server.version.1
        )));
    }
    Ok(Some(server))
}

/// The server's Python, asked once per process: an activation needs it before downloading
/// (is the release for it?) and again for the venv.
fn server_python(python: &str) -> anyhow::Result<PythonInfo> {
    static ASKED: std::sync::Mutex<Vec<(String, PythonInfo)>> = std::sync::Mutex::new(Vec::new());
    let mut asked = ASKED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, info)) = asked.iter().find(|(p, _)| p == python) {
        return Ok(info.clone());
    }
    let info = probe_python(python)?;
    asked.push((python.to_owned(), info.clone()));
    Ok(info)
}

fn probe_python(python: &str) -> anyhow::Result<PythonInfo> {
    let out = procs::output(
        &procs::argv(&[python, "-c", common::pyenv::PROBE_SCRIPT]),
        Path::new("/"),
        &[],
    )
    .with_context(|| {
        format!(
            "cannot run the server's Python `{python}` (`python` in the installer configuration)"
        )
    })?;
    PythonInfo::parse(&out).with_context(|| {
        format!("the server's Python `{python}` did not say its version and place: {out}")
    })
}

/// Builds `venv/` from the release's own wheels only (no index). Reused when complete.
fn build_venv(config: &InstallerConfig, release: &Path, lock: &DeployLock) -> anyhow::Result<bool> {
    let venv = release.join(VENV_DIR);
    if venv.join(VENV_COMPLETE).is_file() {
        return Ok(false);
    }
    atomic::remove_tree(&venv)?;
    // Exactly the release's wheels (every dependency is among them, built by `builder
    // package` and verified against the manifest at unpack), without the index and without
    // resolving again: the requirements file may name VCS URLs a server cannot reach, or pin
    // without hashes. The wheels must be the release's own files, not links out of it.
    let dir = resolve_in_release(release, "wheels")?
        .context("the release has no `wheels/` to build its virtualenv from")?;
    let mut wheels = Vec::new();
    for e in fs::read_dir(&dir)
        .with_context(|| format!("cannot read `{}`", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        resolve_in_release(release, &format!("wheels/{name}"))?;
        if name.ends_with(".whl") {
            wheels.push(format!("wheels/{name}"));
        }
    }
    wheels.sort();
    let py = &config.python;
    let any = !wheels.is_empty();
    let mut install_args = procs::argv(&["install", "--no-index", "--no-deps"]);
    install_args.extend(wheels);
    // `venv --without-pip` plus the interpreter's own pip is much faster than seeding pip into
    // every venv; pip learned `--python` in 22.3.
    if pip_supports_python_option(py) {
        procs::run_locked(
            &[
                py.clone(),
                "-m".into(),
                "venv".into(),
                "--without-pip".into(),
                "venv".into(),
            ],
            release,
            &[],
            lock,
            "venv:create",
        )?;
        let mut argv = vec![
            py.clone(),
            "-m".into(),
            "pip".into(),
            "--python".into(),
            "venv/bin/python".into(),
        ];
        argv.extend(install_args);
        if any {
            procs::run_locked(
                &argv,
                release,
                &[("PIP_DISABLE_PIP_VERSION_CHECK", "1")],
                lock,
                "deps:pip",
            )?;
        }
    } else {
        procs::run_locked(
            &[py.clone(), "-m".into(), "venv".into(), "venv".into()],
            release,
            &[],
            lock,
            "venv:create",
        )?;
        let mut argv = procs::argv(&["venv/bin/python", "-m", "pip"]);
        argv.extend(install_args);
        if any {
            procs::run_locked(
                &argv,
                release,
                &[("PIP_DISABLE_PIP_VERSION_CHECK", "1")],
                lock,
                "deps:pip",
            )?;
        }
    }
    atomic::write_file(&venv.join(VENV_COMPLETE), b"")?;
    Ok(true)
}

fn pip_supports_python_option(python: &str) -> bool {
    let Ok(out) = procs::output(
        &procs::argv(&[python, "-m", "pip", "--version"]),
        Path::new("/"),
        &[],
    ) else {
        return false;
    };
    let version = out.split_whitespace().nth(1).unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (22, 3)
}

/// A line diff of the production template between two releases, when it changed.
///
/// Each side is read only from inside its release ([`read_in_release`]): a template that is a
/// link to the server's `production.py` would otherwise print its secrets. A side that cannot
/// be read that way counts as changed, and the diff says why instead of showing it.
pub fn template_change(
    config: &InstallerConfig,
    old_release: &Path,
    new_release: &Path,
) -> anyhow::Result<Option<String>> {
    let read = |dir: &Path| -> anyhow::Result<Option<String>> {
        match &profile_at(config, dir).production_template {
            Some(t) => read_in_release(dir, t),
            None => Ok(None),
        }
    };
    let (old, new) = (read(old_release), read(new_release));
    if let (Ok(old), Ok(new)) = (&old, &new) {
        if old == new {
            return Ok(None);
        }
    }
    let mut diff = String::new();
    let lines = |side: &anyhow::Result<Option<String>>, diff: &mut String| match side {
        Ok(text) => text.clone().unwrap_or_default(),
        Err(e) => {
            diff.push_str(&format!("! not compared: {e:#}\n"));
            String::new()
        }
    };
    let (old, new) = (lines(&old, &mut diff), lines(&new, &mut diff));
    let old_lines: BTreeSet<&str> = old.lines().collect();
    let new_lines: BTreeSet<&str> = new.lines().collect();
    for l in old.lines().filter(|l| !new_lines.contains(l)) {
        diff.push_str(&format!("- {}\n", common::untrusted::message(l)));
    }
    for l in new.lines().filter(|l| !old_lines.contains(l)) {
        diff.push_str(&format!("+ {}\n", common::untrusted::message(l)));
    }
    Ok(Some(diff))
}

/// The files of the releases on disk by content and mode, for the unpacker to hard-link equal
/// entries to instead of writing them again (what makes five releases with one dependency set
/// cost little more than one). The live release comes first, then the newest; files the
/// installer replaced with links into `shared/` and adopted checkouts are left out, so nothing
/// of the server's own files is ever linked into a release.
pub fn content_on_disk(
    config: &InstallerConfig,
    layout: &Layout,
    current: Option<BuildNumber>,
    except: BuildNumber,
) -> HashMap<(Blake3Hash, u32), PathBuf> {
    let mut builds = layout.releases_on_disk().unwrap_or_default();
    builds.retain(|b| *b != except && Some(*b) != current);
    builds.reverse();
    builds.splice(0..0, current.filter(|c| *c != except));
    let mut content = HashMap::new();
    for build in builds {
        let dir = layout.release(build);
        if is_legacy(&dir) {
            continue;
        }
        let Ok(sidecar) = manifest_of(&dir) else {
            continue;
        };
        let profile = config.profile_of(&sidecar.manifest);
        let shared: Vec<String> = profile.shared_paths().cloned().collect();
        let under_shared = |p: &str| {
            shared.iter().any(|s| {
                p == s
                    || p.strip_prefix(s.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
        };
        for (path, entry) in &sidecar.manifest.files {
            if let FileEntry::File { mode, blake3, .. } = entry {
                if !under_shared(path) {
                    content
                        .entry((*blake3, mode.0))
                        .or_insert_with(|| dir.join(path));
                }
            }
        }
    }
    content
}

/// The manifest a release was unpacked from (its embedded `release.json`).
pub fn manifest_of(release: &Path) -> anyhow::Result<Sidecar> {
    let path = release.join(RELEASE_JSON);
    Ok(Sidecar::read(&path)?)
}

/// What `verify` found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Drift {
    /// Listed entries that differ or are missing, with what is wrong.
    pub changed: Vec<(String, String)>,
    /// Entries not in the manifest (outside `venv/`, `__pycache__` and the installer's links).
    pub extra: Vec<String>,
}

impl Drift {
    pub fn is_clean(&self) -> bool {
        self.changed.is_empty() && self.extra.is_empty()
    }

    /// The error a drifted release is refused or reported with (exit 2).
    pub fn refusal(&self, build: common::BuildNumber) -> common::error::BadInput {
        common::error::BadInput(format!(
            "{build:#} does not verify: {} changed or missing, {} unexpected",
            self.changed.len(),
            self.extra.len()
        ))
    }
}

/// Re-hashes a release against its manifest, and judges its manifest by today's rules: a
/// release unpacked before a rule existed (a link into `shared/`, a path the installer owns)
/// is drift too.
pub fn verify(config: &InstallerConfig, release: &Path) -> anyhow::Result<Drift> {
    let sidecar = manifest_of(release)?;
    let profile = config.profile_of(&sidecar.manifest);
    let shared: BTreeSet<String> = profile.shared_paths().cloned().collect();
    let under_shared = |p: &str| {
        shared
            .iter()
            .any(|s| p == s || p.starts_with(&format!("{s}/")))
    };
    let mut drift = Drift::default();
    let shared = deps_dir_and_key(&sidecar.manifest).map(|(dir, key)| (dir, deps_link(&key)));
    if let Err(e) = check_manifest(&sidecar, &reserved(&profile)) {
        let entry = match &e {
            UnpackError::InstallerOwned { entry, .. }
            | UnpackError::UnsafeLink { entry, .. }
            | UnpackError::LinkEscapes { entry, .. } => entry.clone(),
            _ => String::new(),
        };
        drift
            .changed
            .push((entry, format!("refused by the installer: {e}")));
    }
    for (path, entry) in &sidecar.manifest.files {
        if under_shared(path) {
            continue;
        }
        let full = release.join(path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(_) => {
                drift.changed.push((path.clone(), "missing".into()));
                continue;
            }
        };
        let problem = match entry {
            FileEntry::Dir { .. } if meta.is_dir() => None,
            // The shared copy of its dependencies: checked below like the release's own files.
            FileEntry::Dir { .. } if shared.as_ref().is_some_and(|(dir, _)| dir == path) => {
                let want = &shared.as_ref().expect("matched").1;
                let ok = meta.file_type().is_symlink()
                    && fs::read_link(&full).is_ok_and(|t| t == Path::new(want))
                    && full.is_dir();
                (!ok).then(|| format!("must be the directory or a link to `{want}`"))
            }
            FileEntry::Symlink { target } if meta.file_type().is_symlink() => {
                (fs::read_link(&full)?.to_str() != Some(target.as_str()))
                    .then(|| "symlink target changed".to_owned())
            }
            FileEntry::File { size, mode, blake3 } if meta.is_file() => {
                if meta.len() != *size {
                    Some(format!("size {} instead of {size}", meta.len()))
                } else if meta.permissions().mode() & 0o7777 != mode.0 {
                    Some(format!(
                        "mode {:04o} instead of {:04o}",
                        meta.permissions().mode() & 0o7777,
                        mode.0
                    ))
                } else if Blake3Hash::of_file(&full)?.0 != *blake3 {
                    Some("content changed".into())
                } else {
                    None
                }
            }
            _ => Some("type changed".into()),
        };
        if let Some(p) = problem {
            drift.changed.push((path.clone(), p));
        }
    }
    // The environment the installer made over `deps/` is not in the manifest, but what it
    // imports is decided by one link: it must lead to the release's own dependencies.
    if let (Some(deps), Some((major, minor))) =
        (&sidecar.manifest.deps, sidecar.manifest.python_version())
    {
        let site = format!("{VENV_DIR}/lib/python{major}.{minor}/site-packages");
        let want = format!("../../../{}", deps.dir);
        match fs::read_link(release.join(&site)) {
            Ok(t) if t == Path::new(&want) => {}
            // Not made yet (the activation was interrupted before its deps phase).
            Err(_) if fs::symlink_metadata(release.join(&site)).is_err() => {}
            _ => drift
                .changed
                .push((site, format!("must be a link to `{want}`"))),
        }
    }
    // The release, and the shared dependency tree it links to as if it were inside it.
    let mut walk_roots = vec![(release.to_owned(), String::new())];
    if let Some((dir, _)) = &shared {
        if fs::symlink_metadata(release.join(dir)).is_ok_and(|m| m.file_type().is_symlink())
            && release.join(dir).is_dir()
        {
            walk_roots.push((release.join(dir), format!("{dir}/")));
        }
    }
    for (base, prefix) in walk_roots {
        find_extra(&base, &prefix, &sidecar.manifest, &under_shared, &mut drift)?;
    }
    Ok(drift)
}

/// Adds to `drift.extra` what is under `base` (a release, or the shared tree it links to as
/// `prefix`) but not in the manifest, outside the installer's own paths.
fn find_extra(
    base: &Path,
    prefix: &str,
    manifest: &common::ReleaseManifest,
    under_shared: &dyn Fn(&str) -> bool,
    drift: &mut Drift,
) -> anyhow::Result<()> {
    let mut walk = walkdir::WalkDir::new(base)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry?;
        let rel = format!(
            "{prefix}{}",
            entry
                .path()
                .strip_prefix(base)
                .expect("below the base")
                .to_string_lossy()
        );
        let name = entry.file_name().to_string_lossy();
        let ours =
            rel == VENV_DIR || rel == RELEASE_JSON || name == "__pycache__" || under_shared(&rel);
        if ours {
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        if name.ends_with(".pyc") {
            continue;
        }
        if !manifest.files.contains_key(&rel) {
            drift.extra.push(rel);
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
        }
    }
    Ok(())
}

/// Removes what [`stray_temporaries`] finds; what cannot be removed becomes a warning.
pub fn remove_strays(layout: &Layout, warnings: &mut Vec<String>) -> anyhow::Result<()> {
    for stray in stray_temporaries(layout)? {
        eprintln!("removing `{}` left by an interrupted run", stray.display());
        let removed = if fs::symlink_metadata(&stray).is_ok_and(|m| m.is_dir()) {
            atomic::remove_tree(&stray).map_err(anyhow::Error::from)
        } else {
            fs::remove_file(&stray).map_err(anyhow::Error::from)
        };
        if let Err(e) = removed {
            warnings.push(format!("cannot remove `{}`: {e:#}", stray.display()));
        }
    }
    Ok(())
}

/// A release directory this run is creating. Unless the run reaches its swap ([`keep`]), it
/// is removed again with its static link, so a failed activation (a full disk, a failed
/// migration) leaves no partial release behind. A directory that existed before the run, or
/// that `current` names, is never touched.
///
/// [`keep`]: NewRelease::keep
pub struct NewRelease<'a> {
    layout: &'a Layout,
    config: &'a InstallerConfig,
    build: BuildNumber,
    armed: bool,
}

impl<'a> NewRelease<'a> {
    pub fn new(
        layout: &'a Layout,
        config: &'a InstallerConfig,
        build: BuildNumber,
        created_now: bool,
    ) -> Self {
        Self {
            layout,
            config,
            build,
            armed: created_now,
        }
    }

    /// The run got as far as the swap: the release stays.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for NewRelease<'_> {
    fn drop(&mut self) {
        let dir = self.layout.release(self.build);
        if !self.armed
            || !dir.exists()
            || self.layout.current_build().ok().flatten() == Some(self.build)
        {
            return;
        }
        if let Ok(Some(hash)) = version_hash(&dir, &profile_at(self.config, &dir)) {
            let link = self.layout.static_dir().join(hash);
            let ours = Path::new("..").join("releases").join(self.build.tag());
            if fs::read_link(&link).is_ok_and(|t| t.starts_with(&ours)) {
                let _ = fs::remove_file(&link);
            }
        }
        match remove_release_dir(&dir) {
            Ok(()) => eprintln!(
                "removed the partial release `{}` this run created",
                dir.display()
            ),
            Err(e) => eprintln!("warning: {e:#}: remove it by hand"),
        }
    }
}

/// Removes a release directory: renamed out of the way first, so a kill mid-removal leaves a
/// hidden stray that the next run deletes, never a half-deleted `releases/BuildNNNNNN` that
/// would look like a release.
pub fn remove_release_dir(dir: &Path) -> Result<(), common::error::FsError> {
    let doomed = atomic::temp_sibling(dir, "remove");
    atomic::rename(dir, &doomed)?;
    atomic::remove_tree(&doomed)
}

/// Stray temporary trees a crash can leave in `releases/` (unpacks, downloads), and the
/// temporary links and files of the atomic helpers in the root and `static/`.
pub fn stray_temporaries(layout: &Layout) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for dir in [layout.root.clone(), layout.static_dir()] {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && (name.contains(".link-") || name.contains(".tmp-")) {
                found.push(e.path());
            }
        }
    }
    for dir in [layout.releases(), layout.cache(), layout.deps_trees()] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".Build")
                || name.starts_with(".binarycrate-")
                || name.contains(".unpack-")
                || name.contains(".download-")
                || (name.starts_with('.') && name.contains(".remove-"))
            {
                found.push(e.path());
            }
        }
        // Downloads in progress live inside each build's cache folder.
        if dir == layout.cache() {
            for e in fs::read_dir(&dir)?.flatten() {
                for f in fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    if f.file_name().to_string_lossy().contains(".download-") {
                        found.push(f.path());
                    }
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_release_leaves_nothing_and_an_interrupted_removal_only_a_stray() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.ensure().unwrap();
        let build: BuildNumber = "Build000007".parse().unwrap();
        let release = layout.release(build);
        fs::create_dir_all(release.join("binarycrate/app")).unwrap();
        fs::write(release.join("binarycrate/app/views.py"), "x").unwrap();

        remove_release_dir(&release).unwrap();
        assert!(!release.exists());
        assert_eq!(fs::read_dir(layout.releases()).unwrap().count(), 0);

        // Killed after the rename: what is left is a stray for the next run, not a release.
        fs::create_dir_all(release.join("binarycrate")).unwrap();
        let doomed = atomic::temp_sibling(&release, "remove");
        fs::rename(&release, &doomed).unwrap();
        assert!(layout.releases_on_disk().unwrap().is_empty());
        assert_eq!(stray_temporaries(&layout).unwrap(), [doomed]);
        let missing = remove_release_dir(&release).unwrap_err();
        assert!(missing.to_string().contains("cannot rename"), "{missing}");
    }

    #[test]
    fn only_dependency_trees_no_release_links_to_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.ensure().unwrap();
        let mut manifest =
            common::ReleaseManifest::new("binarycrate", BuildNumber::new(1).unwrap(), 0);
        manifest.python_tag = Some("cp311".into());
        manifest.deps = Some(common::manifest::Dependencies {
            dir: "deps".into(),
            bytecode: true,
        });
        let tree = shared_deps(&layout, &manifest).unwrap();
        let key = tree.store.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(tree.link, format!("../../deps/{key}"));
        for name in [key.as_str(), "0123456789abcdef0123456789abcdef"] {
            fs::create_dir_all(layout.deps_trees().join(name).join("django")).unwrap();
        }
        let release = layout.release(BuildNumber::new(1).unwrap());
        fs::create_dir_all(&release).unwrap();
        fs::write(
            release.join(RELEASE_JSON),
            Sidecar::new(manifest, None).to_bytes(),
        )
        .unwrap();
        std::os::unix::fs::symlink(&tree.link, release.join("deps")).unwrap();
        assert_eq!(linked_deps_key(&release), Some(key.clone()));

        let removed = remove_unused_deps(&layout).unwrap();
        assert_eq!(removed, ["0123456789abcdef0123456789abcdef"]);
        assert!(tree.store.join("django").is_dir());
        assert!(release.join("deps/django").is_dir());
        // Once no release links to it, it goes too.
        remove_release_dir(&release).unwrap();
        assert_eq!(remove_unused_deps(&layout).unwrap(), [key]);
        assert_eq!(fs::read_dir(layout.deps_trees()).unwrap().count(), 0);
    }
}
