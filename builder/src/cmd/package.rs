//! `builder package`: a git tag to a release artifact, with every build step the manual procedure ran on the
//! production box run here instead, in a throwaway staging copy.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use common::archive::writer::{pack, PackOptions};
use common::build_number::BuildNumberLine;
use common::error::BadInput;
use common::manifest::{
    AppProfile, BuildLog, Dependencies, WheelEntry, BUILD_LOG_JSON, DEPS_DIR, RELEASE_SIGNATURE,
};
use common::migrations::MigrationGraph;
use common::pyenv::PythonInfo;
use common::report::ExitCode;
use common::{atomic, Blake3Hash, BuildNumber, ReleaseManifest, Sidecar};

use crate::cli::PackageArgs;
use crate::config::{DeployConfig, PathMatcher, DEPLOY_TOML};
use crate::depcache::{DepCache, Kind, Lent};
use crate::steps::{StepCommand, StepRunner, VENV_PLACEHOLDER};
use crate::{export, repo, signing};

/// What a successful packaging produced.
#[derive(Debug)]
pub struct Packaged {
    pub artifact: PathBuf,
    pub sidecar_path: PathBuf,
    pub build_log: PathBuf,
    pub sidecar: Sidecar,
    pub log: BuildLog,
}

pub fn run(args: &PackageArgs) -> anyhow::Result<ExitCode> {
    let root = repo::root(args.repo.repo.as_deref())?;
    let build = match args.tag {
        Some(b) => b,
        None => latest_build_tag(&root)?,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("dist").join(build.tag()));
    // The key is loaded first: a wrong path or password should not cost a whole build.
    let (config, origin) = config_at_tag(&root, build)?;
    let key = signing::choose_key(
        args.signing.signing_key.as_deref(),
        args.signing.signing_password_env.as_deref(),
        &config.signing,
        &origin,
        &root,
    )?
    .map(|choice| choice.load())
    .transpose()?;
    let done = package(&root, build, &out, args.keep_staging)?;
    let signature = match &key {
        Some(key) => {
            let path = signing::sign_sidecar(key, &done.sidecar_path)?;
            eprintln!(
                "signed `release.json` with key {} into `{}`",
                key.key_id(),
                path.display()
            );
            Some(path)
        }
        None => {
            // A signature left from an earlier packaging would not match this sidecar.
            let stale = out.join(RELEASE_SIGNATURE);
            if stale.exists() {
                fs::remove_file(&stale)
                    .with_context(|| format!("cannot remove `{}`", stale.display()))?;
                eprintln!("removed the stale `{}`", stale.display());
            }
            eprintln!("not signed: no signing key configured (see `builder keygen --help`)");
            None
        }
    };
    let archive = done
        .sidecar
        .archive
        .as_ref()
        .expect("packed sidecars have an archive section");
    eprintln!("\nstep durations:");
    for t in &done.log.steps {
        eprintln!("  {:<32} {:>8.2}s", t.name, t.duration_ms as f64 / 1000.0);
    }
    eprintln!(
        "  {:<32} {:>8.2}s",
        "total",
        done.log.total_ms as f64 / 1000.0
    );
    eprintln!(
        "packaged {:#}: {} ({} bytes, BLAKE3 {}), {} entries",
        build,
        archive.file_name,
        archive.size,
        archive.blake3,
        done.sidecar.manifest.files.len()
    );
    if args.json {
        let out = serde_json::json!({
            "build": build,
            "artifact": done.artifact,
            "sidecar": done.sidecar_path,
            "build_log": done.build_log,
            "signature": signature,
            "signing_key_id": key.as_ref().map(|k| k.key_id()),
            "blake3": archive.blake3,
            "size": archive.size,
            "commit": done.sidecar.manifest.commit,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", done.artifact.display());
    }
    Ok(ExitCode::Success)
}

/// The highest `BuildNNNNNN` tag of the repository.
pub fn latest_build_tag(root: &Path) -> anyhow::Result<BuildNumber> {
    let repo = git2::Repository::open(root)
        .with_context(|| format!("cannot open the git repository `{}`", root.display()))?;
    let names = repo.tag_names(Some("Build*")).context("cannot list tags")?;
    let mut highest = None;
    for name in names.iter().flatten().flatten() {
        if let Ok(b) = BuildNumber::parse(name) {
            if b.tag() == name {
                highest = highest.max(Some(b));
            }
        }
    }
    highest.ok_or_else(|| {
        BadInput(
            "the repository has no `BuildNNNNNN` tag: run `builder prepare` first, or pass `--tag`"
                .into(),
        )
        .into()
    })
}

/// `deploy.toml` as the tag has it (the defaults when it has none), and where it came from.
fn config_at_tag(root: &Path, build: BuildNumber) -> anyhow::Result<(DeployConfig, String)> {
    let tag = build.tag();
    let origin = format!("{DEPLOY_TOML} at {tag}");
    let config = match export::read_file_at_tag(root, &tag, DEPLOY_TOML)? {
        Some(bytes) => {
            let text = String::from_utf8(bytes)
                .map_err(|_| BadInput(format!("`{DEPLOY_TOML}` at {tag} is not UTF-8")))?;
            DeployConfig::parse(&text, &origin)?
        }
        None => DeployConfig::default(),
    };
    Ok((config, origin))
}

/// Packages `build`'s tag of the repository at `root` into `out`.
pub fn package(
    root: &Path,
    build: BuildNumber,
    out: &Path,
    keep_staging: bool,
) -> anyhow::Result<Packaged> {
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let tag = build.tag();
    let (config, _) = config_at_tag(root, build)?;

    let work = tempfile::Builder::new()
        .prefix(&format!("builder-{tag}-"))
        .tempdir()
        .context("cannot create a staging directory")?;
    let staging = work.path().join("stage");
    let venv = work.path().join("venv");
    eprintln!("==> export: {tag} into `{}`", staging.display());
    let t = Instant::now();
    let exported = export::export_tag(root, &tag, &staging)?;
    eprintln!(
        "    export done in {:.2}s (commit {})",
        t.elapsed().as_secs_f64(),
        exported.commit
    );

    // Determinism for every tool the steps run: fixed time source, hash seed and zone, and no
    // bytecode written into the tree.
    let env = vec![
        (
            "SOURCE_DATE_EPOCH".to_owned(),
            exported.commit_time.to_string(),
        ),
        ("PYTHONHASHSEED".to_owned(), "0".to_owned()),
        ("PYTHONDONTWRITEBYTECODE".to_owned(), "1".to_owned()),
        ("TZ".to_owned(), "UTC".to_owned()),
        ("PIP_DISABLE_PIP_VERSION_CHECK".to_owned(), "1".to_owned()),
    ];
    let mut runner = StepRunner::new(&staging, &venv, env);
    runner.time_only("export", t.elapsed());

    let result = build_and_pack(
        &config,
        build,
        &exported,
        &mut runner,
        out,
        started,
        started_at,
    );
    if keep_staging {
        let kept = work.keep();
        eprintln!("staging kept at `{}`", kept.display());
    }
    result
}

fn build_and_pack(
    config: &DeployConfig,
    build: BuildNumber,
    exported: &export::Exported,
    runner: &mut StepRunner,
    out: &Path,
    started: Instant,
    started_at: i64,
) -> anyhow::Result<Packaged> {
    let staging = runner.staging().to_owned();
    let tag = build.tag();
    // Fail fast on a secret committed to the tag, before minutes of building.
    check_secrets(&staging, config)?;
    check_backend_build_number(&staging, config, build)?;

    let requirements = read_requirements(&staging, config)?;
    let python = probe_python(&config.python.interpreter)?;
    let python_tag = build_wheels(config, &requirements, &python, runner)?;
    let wheels = list_wheels(&staging.join("wheels"))?;
    // The dependencies, installed once here for the servers' Python and platform: the release
    // carries them as ordinary files under `deps/` (listed in the manifest, verified on the
    // servers like every other file), so a server needs neither pip nor an index.
    // Lent from the dependency cache, if it came from there: given back once packed.
    let (_lent, pieces) = ready_deps(config, &python, &wheels, runner)?;
    let venv_python = format!("{VENV_PLACEHOLDER}/bin/python");
    // collectstatic's environment: a venv without pip whose site-packages is the `deps/` just
    // installed, written as the servers write each release's.
    let venv = runner.venv().to_owned();
    runner.internal(
        "venv",
        &[
            "write-venv",
            VENV_PLACEHOLDER,
            "site-packages",
            "->",
            DEPS_DIR,
        ],
        || {
            common::pyenv::write_light_venv(&venv, &python, &staging.join(DEPS_DIR))?;
            Ok(String::new())
        },
    )?;

    if config.frontend.enabled {
        frontend_steps(config, runner)?;
    }
    let version_hash = config.django.version_hash_file.clone();
    let line = format!("VERSION_HASH = '{}'\n", exported.commit);
    runner.internal(
        "version-hash",
        &["write", &version_hash, line.trim_end()],
        || {
            atomic::write_file(&staging.join(&version_hash), line.as_bytes())?;
            Ok(String::new())
        },
    )?;
    let build_settings = build_settings(&staging, config)?;
    // Django's migration loader only reads the project: it runs beside collectstatic (two
    // Django start-ups at once), and is recorded after it as before.
    let graph = MigrationGraphRun::start(runner, config, &build_settings.module);
    let collected = runner.run(
        "collectstatic",
        StepCommand::new(&[
            venv_python.as_str(),
            &config.django.manage_py,
            "collectstatic",
            "--noinput",
        ])
        .env("DJANGO_SETTINGS_MODULE", &build_settings.module),
    );
    let collected = collected.and(graph).and_then(|graph| graph.finish(runner));
    // A generated settings module is for the build only: it never reaches the release.
    if let Some(file) = &build_settings.generated {
        fs::remove_file(file).with_context(|| format!("cannot remove `{}`", file.display()))?;
    }
    let migrations = collected?;
    if config.frontend.enabled {
        let bundle = staging.join(&config.frontend.bundle_dir);
        let module = config.frontend.build_number_module.clone();
        runner.internal("check-frontend-build-number", &["check", &config.frontend.bundle_dir, &module], || {
            let found = frontend_build_number(&bundle, &module)?;
            if found != build {
                bail!(BadInput(format!(
                    "the bundled front end says build {found} but the back end says {build}: the front end would print the wrong build number; check `{}`",
                    config.frontend.build_number_copy
                )));
            }
            Ok(format!("front end and back end both carry build {build}"))
        })?;
    }

    let removed = apply_package_rules(&staging, config)?;
    eprintln!("==> package rules: removed {removed} excluded entries");
    check_secrets(&staging, config)?;
    let profile = config.django.profile();
    // The wheels are in `deps/` now, installed; the manifest keeps their names and hashes.
    atomic::remove_tree(&staging.join("wheels"))?;
    let bytecode = compile_bytecode(config, &profile, runner)?;
    crate::appcheck::project(&staging, &profile)?;
    crate::appcheck::built(&staging, &profile)?;

    let mut base = ReleaseManifest::new(&config.app, build, exported.commit_time);
    base.commit = exported.commit.clone();
    base.submodules = exported.submodules.clone();
    base.python_tag = Some(python_tag);
    base.build_steps = runner.steps.clone();
    base.wheels = wheels;
    base.vcs = requirements.vcs();
    base.profile = Some(profile);
    base.deps = Some(Dependencies {
        dir: DEPS_DIR.into(),
        bytecode,
    });
    base.migrations = Some(migrations);
    eprintln!("==> archive: packing `{}`", staging.display());
    let t = Instant::now();
    let options = PackOptions {
        pieces,
        ..PackOptions::default()
    };
    let packed =
        pack(&staging, base, out, &options).with_context(|| format!("cannot pack {tag}"))?;
    runner.time_only("archive", t.elapsed());
    let archive = packed
        .sidecar
        .archive
        .clone()
        .expect("packed sidecars have an archive section");
    remove_stale_artifacts(out, &config.app, build, &archive.file_name)?;

    let log = BuildLog {
        build,
        artifact: archive.file_name.clone(),
        started_at,
        host: hostname(),
        total_ms: started.elapsed().as_millis() as u64,
        steps: runner.timings.clone(),
    };
    let build_log = out.join(BUILD_LOG_JSON);
    atomic::write_file(&build_log, &serde_json::to_vec_pretty(&log)?)?;
    Ok(Packaged {
        artifact: packed.artifact_path,
        sidecar_path: packed.sidecar_path,
        build_log,
        sidecar: packed.sidecar,
        log,
    })
}

/// The tag's requirements, every one pinned (or the build stops here, naming the lines); says
/// once when they carry no hashes, and what that means for a rebuild.
fn read_requirements(
    staging: &Path,
    config: &DeployConfig,
) -> anyhow::Result<crate::requirements::Requirements> {
    let file = &config.python.requirements;
    let text = fs::read_to_string(staging.join(file)).map_err(|_| {
        BadInput(format!("`{file}` is not in the tag: `python.requirements` in `{DEPLOY_TOML}` must name the pinned requirements file"))
    })?;
    let requirements = crate::requirements::parse(&text, file).map_err(BadInput)?;
    if !requirements.hashed() {
        eprintln!(
            "note: `{file}` pins versions without hashes: the wheels built now are hashed into the release, but a rebuild of this tag trusts the package index to serve the same files for these pins (`pip-compile --generate-hashes` adds the hashes)"
        );
    }
    Ok(requirements)
}

/// Builds (or, for another platform, downloads) the wheels of the requirements into `wheels/`
/// and returns the Python tag they are for. Hashes are enforced when the file has them.
fn build_wheels(
    config: &DeployConfig,
    requirements: &crate::requirements::Requirements,
    python: &PythonInfo,
    runner: &mut StepRunner,
) -> anyhow::Result<String> {
    let p = &config.python;
    let mut argv: Vec<String> = vec![p.interpreter.clone(), "-m".into(), "pip".into()];
    let tag = match (&p.platform, &p.python_version) {
        (Some(platform), Some(version)) => {
            argv.extend([
                "download".into(),
                "--only-binary=:all:".into(),
                "--platform".into(),
                platform.clone(),
            ]);
            argv.extend([
                "--python-version".into(),
                version.clone(),
                "-d".into(),
                "wheels".into(),
            ]);
            config
                .declared_python_tag()
                .expect("validated with python_version")
        }
        _ => {
            argv.extend(["wheel".into(), "-w".into(), "wheels".into()]);
            let (major, minor) = python.version;
            format!("cp{major}{minor}")
        }
    };
    if requirements.hashed() {
        argv.push("--require-hashes".into());
    }
    argv.extend(["-r".into(), p.requirements.clone()]);
    argv.extend(p.pip_args.iter().cloned());
    let staging = runner.staging().to_owned();
    let dir = staging.join("wheels");
    let text = fs::read(staging.join(&p.requirements))
        .with_context(|| format!("cannot read `{}`", p.requirements))?;
    let key = wheels_cache_key(requirements, &text, python, &argv);
    let cache = key.as_ref().and_then(|_| DepCache::open(Kind::Wheels));
    if let (Some(cache), Some(key)) = (&cache, &key) {
        let t = Instant::now();
        if cache.restore(key, &dir)? {
            let note = format!("from the wheel cache (key {})", &key[..16]);
            runner.replayed("wheels", StepCommand::new(&argv), t.elapsed(), &note);
            return Ok(tag);
        }
    }
    runner.run("wheels", StepCommand::new(&argv))?;
    if let (Some(cache), Some(key)) = (&cache, &key) {
        if let Err(e) = cache.store(key, &dir) {
            eprintln!("warning: {e:#}; the next build resolves its wheels again");
        }
    }
    Ok(tag)
}

/// The wheel cache's key for these requirements, or `None` when they do not pin every file by
/// hash: then the same names could resolve to other files, and pip runs every time. With
/// hashes, the text (hashes included) and what resolves it decide the wheel set by content.
fn wheels_cache_key(
    requirements: &crate::requirements::Requirements,
    text: &[u8],
    python: &PythonInfo,
    argv: &[String],
) -> Option<String> {
    requirements.hashed().then(|| {
        DepCache::key(&[
            format!("builder {}", env!("CARGO_PKG_VERSION")),
            format!("python {} pip {:?}", python.banner, python.pip),
            format!("resolve {}", argv.join(" ")),
            format!("requirements {}", Blake3Hash::of(text)),
        ])
    })
}

/// The identity of the Python that builds for the servers (see [`PythonInfo`]).
fn probe_python(interpreter: &str) -> anyhow::Result<PythonInfo> {
    let out = Command::new(interpreter)
        .args(["-c", common::pyenv::PROBE_WITH_PIP_SCRIPT])
        .output()
        .with_context(|| format!("cannot run the target Python `{interpreter}`: set `python.interpreter` in `{DEPLOY_TOML}`"))?;
    if !out.status.success() {
        bail!(
            "the target Python `{interpreter}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    PythonInfo::parse(&text).with_context(|| {
        format!("the target Python `{interpreter}` did not say its version and place: {text}")
    })
}

/// The settings module collectstatic runs with, and the file written for it when the app has
/// none of its own (removed again after collectstatic).
/// The script that asks Django's migration loader for the graph (see its docstring).
const MIGRATION_GRAPH_SCRIPT: &str = include_str!("../migrations.py");

/// The release's migration graph, from Django's own loader in the packaging environment with
/// the build settings (no database): which migrations each app has, in order, and what each
/// operation does, so servers and `deploy --plan` know what a deploy applies and a rollback
/// leaves behind. Started, then finished as the step `migration-graph`; dropped unfinished (a
/// step between failed), the loader is stopped.
struct MigrationGraphRun {
    child: Option<std::process::Child>,
    settings: String,
    /// The script, and the files its output goes to (files, not pipes: a large graph must not
    /// block the loader while the builder waits for collectstatic).
    scratch: [PathBuf; 3],
}

impl MigrationGraphRun {
    fn start(runner: &StepRunner, config: &DeployConfig, settings: &str) -> anyhow::Result<Self> {
        let venv_python = runner.venv().join("bin/python");
        let project = runner.staging().join(
            Path::new(&config.django.manage_py)
                .parent()
                .unwrap_or(Path::new("")),
        );
        // Beside the venv, never in the staging tree: nothing of it is packaged.
        let script = runner_scratch(&venv_python)?;
        let mut run = Self {
            child: None,
            settings: settings.to_owned(),
            scratch: [
                script.clone(),
                script.with_extension("out"),
                script.with_extension("err"),
            ],
        };
        atomic::write_file(&script, MIGRATION_GRAPH_SCRIPT.as_bytes())?;
        let create = |p: &Path| {
            fs::File::create(p).with_context(|| format!("cannot create `{}`", p.display()))
        };
        let child = std::process::Command::new(&venv_python)
            .arg(&script)
            .current_dir(&project)
            .env("DJANGO_SETTINGS_MODULE", settings)
            .env("PYTHONPATH", &project)
            // The loader imports every migration module: no `__pycache__` in the tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(std::process::Stdio::null())
            .stdout(create(&run.scratch[1])?)
            .stderr(create(&run.scratch[2])?)
            .spawn()
            .with_context(|| format!("cannot run `{}`", venv_python.display()))?;
        run.child = Some(child);
        Ok(run)
    }

    fn finish(mut self, runner: &mut StepRunner) -> anyhow::Result<MigrationGraph> {
        let mut graph = None;
        let mut child = self.child.take().expect("started");
        let [_, out, err] = &self.scratch;
        let settings = &self.settings;
        runner.internal(
            "migration-graph",
            &[
                &format!("{VENV_PLACEHOLDER}/bin/python"),
                "<builder's migration graph script>",
            ],
            || {
                let status = child
                    .wait()
                    .context("cannot wait for the migration graph script")?;
                if !status.success() {
                    eprint!("{}", String::from_utf8_lossy(&fs::read(err).unwrap_or_default()));
                    bail!(
                        "Django's migration loader failed ({status}) with settings `{settings}`: its output is above"
                    );
                }
                let printed =
                    fs::read(out).with_context(|| format!("cannot read `{}`", out.display()))?;
                let g: MigrationGraph = serde_json::from_slice(&printed).context(
                    "the migration graph script printed something that is not its JSON",
                )?;
                let apps = g.apps.len();
                let count: usize = g.apps.values().map(Vec::len).sum();
                graph = Some(g);
                Ok(format!(
                    "{count} migrations in {apps} apps (run beside collectstatic)"
                ))
            },
        )?;
        Ok(graph.expect("set by the step"))
    }
}

impl Drop for MigrationGraphRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for file in &self.scratch {
            let _ = fs::remove_file(file);
        }
    }
}

/// A scratch file beside the build venv for a script the builder runs.
fn runner_scratch(venv_python: &Path) -> anyhow::Result<PathBuf> {
    let venv = venv_python
        .parent()
        .and_then(Path::parent)
        .context("the build venv has no parent directory")?;
    Ok(venv.with_extension("migration-graph.py"))
}

struct BuildSettings {
    module: String,
    generated: Option<PathBuf>,
}

/// The module that holds the generated build settings, at the project directory's top.
const GENERATED_SETTINGS: &str = "builder_collectstatic_settings";

/// `django.build_settings` when set; otherwise a module written into the project that imports
/// the app's own settings — the production module when it is in the tree, else `base` beside it
/// — with a throwaway `SECRET_KEY` and no database, which is all collectstatic needs.
fn build_settings(staging: &Path, config: &DeployConfig) -> anyhow::Result<BuildSettings> {
    let django = &config.django;
    if !django.build_settings.is_empty() {
        return Ok(BuildSettings {
            module: django.build_settings.clone(),
            generated: None,
        });
    }
    let project = staging.join(
        Path::new(&django.manage_py)
            .parent()
            .unwrap_or(Path::new("")),
    );
    let exists = |module: &str| {
        let base = project.join(module.replace('.', "/"));
        base.with_extension("py").is_file() || base.join("__init__.py").is_file()
    };
    let sibling_base = django
        .settings_module
        .rsplit_once('.')
        .map(|(package, _)| format!("{package}.base"));
    let import = if exists(&django.settings_module) {
        django.settings_module.clone()
    } else if let Some(base) = sibling_base.filter(|b| exists(b)) {
        base
    } else {
        bail!(BadInput(format!(
            "collectstatic needs settings to run with, and neither `{}` nor a `base` module beside it is in the tag: set `django.build_settings` in `{DEPLOY_TOML}` to a settings module that needs no secrets and no database",
            django.settings_module
        )));
    };
    let file = project.join(format!("{GENERATED_SETTINGS}.py"));
    let text = format!(
        "{}\n",
        [
            "# Written by `builder package` for collectstatic only; never packaged.",
            "import os",
            "for _name in ('SECRET_KEY', 'DJANGO_SECRET_KEY'):",
            "    os.environ.setdefault(_name, 'collectstatic-only-not-a-secret')",
            &format!("from {import} import *  # noqa: F401,F403"),
            "SECRET_KEY = 'collectstatic-only-not-a-secret'",
            "DEBUG = False",
            "ALLOWED_HOSTS = []",
            "DATABASES = {}",
        ]
        .join("\n")
    );
    atomic::write_file(&file, text.as_bytes())?;
    eprintln!(
        "    collectstatic runs with settings from `{import}` (throwaway SECRET_KEY, no database)"
    );
    Ok(BuildSettings {
        module: GENERATED_SETTINGS.into(),
        generated: Some(file),
    })
}

/// `deps/`: the wheels installed for the servers' Python and platform and (same Python) their
/// bytecode compiled — lent by the dependency cache when the same wheels were installed the
/// same way before on this machine (the [`Lent`] returned puts it back when dropped, after
/// packing), else by pip and compileall (and then kept in the cache). Either way the release
/// records the same steps and holds the same bytes. With the cache, also where the archive
/// writer keeps the tree's compressed pieces.
fn ready_deps(
    config: &DeployConfig,
    python: &PythonInfo,
    wheels: &BTreeMap<String, WheelEntry>,
    runner: &mut StepRunner,
) -> anyhow::Result<(Option<Lent>, Option<PathBuf>)> {
    let staging = runner.staging().to_owned();
    let deps = staging.join(DEPS_DIR);
    if fs::symlink_metadata(&deps).is_ok() {
        bail!(BadInput(format!(
            "the tag has `{DEPS_DIR}` at its root, where the builder installs the dependencies: rename it"
        )));
    }
    let install = deps_install_command(config, wheels)?;
    let compile = deps_compile_command(config);
    let cache = DepCache::open(Kind::Deps);
    let key = deps_cache_key(config, python, wheels, &install);
    if let Some(cache) = &cache {
        let t = Instant::now();
        if let Some(lent) = cache.lend(&key, &deps)? {
            let took = t.elapsed();
            let note = format!("from the dependency cache (key {})", &key[..16]);
            runner.replayed("deps", StepCommand::new(&install), took, &note);
            if let Some(compile) = &compile {
                runner.replayed(
                    "deps-bytecode",
                    compile_step(compile),
                    Duration::ZERO,
                    &note,
                );
            }
            return Ok((Some(lent), cache.pieces(&key)));
        }
    }
    runner.run("deps", StepCommand::new(&install))?;
    // Console scripts name this machine's interpreter in their first line; servers run
    // `manage.py`.
    atomic::remove_tree(&deps.join("bin"))?;
    if let Some(compile) = &compile {
        runner.run("deps-bytecode", compile_step(compile))?;
    }
    if let Some(cache) = &cache {
        if let Err(e) = cache.store(&key, &deps) {
            eprintln!("warning: {e:#}; the next build installs its dependencies again");
        }
    }
    Ok((None, cache.and_then(|c| c.pieces(&key))))
}

/// pip installing the wheels into `deps/` as a site-packages directory for the target, without
/// compiling and without resolving. Requirements are given by name and version, found among
/// the wheels: installed from a file path, pip would record that temporary path in each
/// `direct_url.json`.
fn deps_install_command(
    config: &DeployConfig,
    wheels: &BTreeMap<String, WheelEntry>,
) -> anyhow::Result<Vec<String>> {
    let p = &config.python;
    let mut argv: Vec<String> = [
        p.interpreter.as_str(),
        "-m",
        "pip",
        "install",
        "--target",
        DEPS_DIR,
        "--no-index",
        "--find-links",
        "wheels",
        "--no-deps",
        "--no-compile",
        "--disable-pip-version-check",
    ]
    .map(str::to_owned)
    .to_vec();
    if let (Some(platform), Some(version)) = (&p.platform, &p.python_version) {
        argv.extend(
            [
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--platform",
                platform,
                "--python-version",
                version,
            ]
            .map(str::to_owned),
        );
    }
    for name in wheels.keys() {
        argv.push(wheel_requirement(name)?);
    }
    Ok(argv)
}

/// The bytecode of `deps/`, when the builder's Python is the servers' (see [`compile_bytecode`]).
fn deps_compile_command(config: &DeployConfig) -> Option<Vec<String>> {
    config.python.platform.is_none().then(|| {
        let mut argv = compile_argv(config);
        argv.push(DEPS_DIR.to_owned());
        argv
    })
}

/// `python -m compileall` as every bytecode step runs it: hash-checked `.pyc` files (valid
/// whatever the files' times), in one process so that they are the same bytes every time.
fn compile_argv(config: &DeployConfig) -> Vec<String> {
    [
        config.python.interpreter.as_str(),
        "-m",
        "compileall",
        "-q",
        "-j",
        "1",
        "--invalidation-mode",
        "checked-hash",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// What decides the bytes of `deps/`: the wheels by content, the command that installs them,
/// and the Python and pip that install and compile them.
fn deps_cache_key(
    config: &DeployConfig,
    python: &PythonInfo,
    wheels: &BTreeMap<String, WheelEntry>,
    install: &[String],
) -> String {
    let mut parts = vec![
        format!("builder {}", env!("CARGO_PKG_VERSION")),
        format!("python {} pip {:?}", python.banner, python.pip),
        format!("install {}", install.join(" ")),
        format!("bytecode {}", config.python.platform.is_none()),
    ];
    parts.extend(
        wheels
            .iter()
            .map(|(name, w)| format!("wheel {name} {} {}", w.size, w.blake3)),
    );
    DepCache::key(&parts)
}

/// `name==version` for a wheel file name (`Django-5.2.19-py3-none-any.whl`).
fn wheel_requirement(file: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = file
        .strip_suffix(".whl")
        .unwrap_or(file)
        .split('-')
        .collect();
    if parts.len() < 5 || parts[0].is_empty() || parts[1].is_empty() {
        bail!("`{file}` is not a wheel file name (name-version-python-abi-platform.whl)");
    }
    Ok(format!("{}=={}", parts[0], parts[1]))
}

/// Compiles the project's bytecode (the dependencies' is compiled with them), once, here, when
/// the builder's Python is the servers' (no `python.platform`): under relative names, so that
/// the files are the same bytes wherever the staging directory is. They are release files like
/// any other, so no worker compiles on start and nothing a worker loads escapes verification.
/// For another platform's Python the servers compile (`false`).
fn compile_bytecode(
    config: &DeployConfig,
    profile: &AppProfile,
    runner: &mut StepRunner,
) -> anyhow::Result<bool> {
    if config.python.platform.is_some() {
        return Ok(false);
    }
    let mut argv = compile_argv(config);
    if profile.project_dir.is_empty() {
        // The project is the release root: its top-level modules and packages (not `deps/`,
        // compiled already, nor the front end's files), each named (compileall's `-l` would
        // apply to the packages too).
        let root = runner.staging().to_owned();
        let mut names: Vec<String> = fs::read_dir(&root)?
            .flatten()
            .filter(|e| {
                let path = e.path();
                e.file_name() != DEPS_DIR
                    && (path.join("__init__.py").is_file()
                        || (path.is_file() && path.extension().is_some_and(|x| x == "py")))
            })
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        argv.extend(names);
    } else {
        argv.push(profile.project_dir.clone());
    }
    runner.run("bytecode", compile_step(&argv))?;
    Ok(true)
}

/// A compile step: it must write the bytecode the other steps are kept from writing.
fn compile_step(argv: &[String]) -> StepCommand {
    StepCommand::new(argv).env("PYTHONDONTWRITEBYTECODE", "")
}

fn list_wheels(dir: &Path) -> anyhow::Result<BTreeMap<String, WheelEntry>> {
    let mut wheels = BTreeMap::new();
    let entries = fs::read_dir(dir)
        .with_context(|| format!("the wheels step wrote no `{}`", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.ends_with(".whl") {
            bail!("unexpected file `{name}` among the wheels: only `.whl` files can be installed offline");
        }
        let (blake3, size) = Blake3Hash::of_file(&path)?;
        wheels.insert(
            name,
            WheelEntry {
                size,
                blake3,
                sha256: None,
            },
        );
    }
    if wheels.is_empty() {
        bail!("the wheels step produced no wheels");
    }
    Ok(wheels)
}

/// The manual procedure's front-end steps: copy `build_number.py`, then bundler `add` and `preload` for
/// every module (optional ones only when present).
fn frontend_steps(config: &DeployConfig, runner: &mut StepRunner) -> anyhow::Result<()> {
    let f = &config.frontend;
    let staging = runner.staging().to_owned();
    let (from, to) = (
        config.django.build_number_file.clone(),
        f.build_number_copy.clone(),
    );
    runner.internal("copy-build-number", &["cp", &from, &to], || {
        let dest = staging.join(&to);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        fs::copy(staging.join(&from), &dest)
            .with_context(|| format!("cannot copy `{from}` to `{to}`"))?;
        Ok(String::new())
    })?;
    if !staging.join(&f.bundler).is_file() {
        bail!(BadInput(format!("the bundler `{}` is not in the tag: set `frontend.bundler` in `{DEPLOY_TOML}`, or `frontend.enabled = false`", f.bundler)));
    }
    let mut present = Vec::new();
    for m in &f.modules {
        if staging.join(m.path.trim_end_matches('/')).exists() {
            present.push(m);
        } else if !m.optional {
            bail!(BadInput(format!(
                "front-end module `{}` is not in the tag (is the submodule recorded?): fix `frontend.modules` in `{DEPLOY_TOML}`",
                m.path
            )));
        }
    }
    let bundle_dir = format!("{}/", f.bundle_dir.trim_end_matches('/'));
    for m in &present {
        let path = if staging.join(&m.path).is_dir() {
            format!("{}/", m.path.trim_end_matches('/'))
        } else {
            m.path.clone()
        };
        runner.run(
            &format!("bundle-add:{}", m.preload),
            StepCommand::new(&[
                f.bundler_python.as_str(),
                &f.bundler,
                "add",
                &bundle_dir,
                &path,
            ]),
        )?;
    }
    for m in &present {
        runner.run(
            &format!("bundle-preload:{}", m.preload),
            StepCommand::new(&[
                f.bundler_python.as_str(),
                &f.bundler,
                "preload",
                &bundle_dir,
                &m.preload,
            ]),
        )?;
    }
    Ok(())
}

/// The number in a `build_number.py`: the `BUILD_NUMBER = 'NNNNNN'` line, read as `builder
/// prepare` writes it ([`BuildNumberLine`]).
pub fn parse_build_number_py(text: &str, origin: &str) -> anyhow::Result<BuildNumber> {
    BuildNumberLine::build_in(text.as_bytes())
        .map_err(|m| BadInput(format!("`{origin}` {m}")).into())
}

fn check_backend_build_number(
    staging: &Path,
    config: &DeployConfig,
    build: BuildNumber,
) -> anyhow::Result<()> {
    let file = &config.django.build_number_file;
    let text = fs::read_to_string(staging.join(file)).with_context(|| {
        format!(
            "cannot read `{file}` from the tag: set `django.build_number_file` in `{DEPLOY_TOML}`"
        )
    })?;
    let found = parse_build_number_py(&text, file)?;
    if found != build {
        bail!(BadInput(format!(
            "`{file}` at {:#} says {found}, not {build}: tags made by `builder prepare` always agree; was the tag made by hand?",
            build
        )));
    }
    Ok(())
}

/// The build number the bundled front end carries: the module's source, preloaded into
/// `index.json` or still a file in the bundle.
pub fn frontend_build_number(bundle: &Path, module: &str) -> anyhow::Result<BuildNumber> {
    let index_path = bundle.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(
        &fs::read(&index_path)
            .with_context(|| format!("cannot read `{}`", index_path.display()))?,
    )
    .with_context(|| format!("`{}` is not valid JSON", index_path.display()))?;
    let code = if let Some(code) = index["preload"][module].as_str() {
        code.to_owned()
    } else if let Some(file) = index["modules"][module]["file"].as_str() {
        fs::read_to_string(bundle.join(file))
            .with_context(|| format!("cannot read bundled module file `{file}`"))?
    } else {
        bail!(BadInput(format!(
            "the bundled front end has no module `{module}` in `index.json`: was `build_number.py` copied and bundled? (see `frontend.build_number_module`)"
        )));
    };
    parse_build_number_py(&code, &format!("{module} in index.json"))
}

/// Removes what must not be packaged; returns how many entries went.
fn apply_package_rules(staging: &Path, config: &DeployConfig) -> anyhow::Result<usize> {
    let exclude = PathMatcher::new(&config.package.exclude).map_err(BadInput)?;
    let include = PathMatcher::new(&config.package.include).map_err(BadInput)?;
    let mut removed = 0;
    let mut walk = walk(staging).into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry?;
        let rel = relative(staging, entry.path());
        let is_dir = entry.file_type().is_dir();
        // The rules choose among the repository's files; the installed dependencies are the
        // builder's own output and go whole.
        if rel == DEPS_DIR {
            walk.skip_current_dir();
            continue;
        }
        if exclude.matches(&rel) {
            remove(entry.path(), is_dir)?;
            removed += 1;
            if is_dir {
                walk.skip_current_dir();
            }
        } else if !is_dir && !include.is_empty() && !include.matches_or_inside(&rel) {
            remove(entry.path(), false)?;
            removed += 1;
        }
    }
    if !include.is_empty() {
        // Directories left empty by the include rules go too (deepest first).
        for entry in walk_contents_first(staging) {
            let entry = entry?;
            let rel = relative(staging, entry.path());
            if entry.file_type().is_dir()
                && !include.matches_or_inside(&rel)
                && fs::read_dir(entry.path())?.next().is_none()
            {
                fs::remove_dir(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

fn check_secrets(staging: &Path, config: &DeployConfig) -> anyhow::Result<()> {
    let secrets = PathMatcher::new(&config.package.secrets).map_err(BadInput)?;
    let exclude = PathMatcher::new(&config.package.exclude).map_err(BadInput)?;
    // `deps/` is what the wheels hold (a CA bundle is a `.pem`), not the repository's files.
    let repository = walk(staging)
        .into_iter()
        .filter_entry(|e| relative(staging, e.path()) != DEPS_DIR);
    for entry in repository {
        let entry = entry?;
        let rel = relative(staging, entry.path());
        if exclude.matches_or_inside(&rel) {
            continue;
        }
        if secrets.matches(&rel) {
            bail!(BadInput(format!(
                "refusing to package `{rel}`: it matches `package.secrets` in `{DEPLOY_TOML}`; secrets live only on the servers (in `shared/`), remove it from the repository"
            )));
        }
    }
    Ok(())
}

fn walk(dir: &Path) -> walkdir::WalkDir {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
}

fn walk_contents_first(dir: &Path) -> walkdir::WalkDir {
    walk(dir).contents_first(true)
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn remove(path: &Path, is_dir: bool) -> anyhow::Result<()> {
    let r = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.with_context(|| {
        format!(
            "cannot remove `{}` from the staging directory",
            path.display()
        )
    })
}

/// Earlier artifacts of the same build in `out` (from a build whose inputs differed) would
/// leave two candidates beside one `release.json`.
fn remove_stale_artifacts(
    out: &Path,
    app: &str,
    build: BuildNumber,
    keep: &str,
) -> anyhow::Result<()> {
    let prefix = format!("{app}-{build:#}-");
    for entry in fs::read_dir(out)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".tar.gz") && name != keep {
            fs::remove_file(out.join(&name))?;
            eprintln!("    removed the stale `{name}`");
        }
    }
    Ok(())
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_sets_are_cached_only_for_requirements_pinned_by_hash() {
        let python =
            PythonInfo::parse("3 11 2\n/usr/bin/python3.11\n3.11.2 (main)\n24.0\n").unwrap();
        let argv: Vec<String> = ["python3", "-m", "pip", "wheel"]
            .map(str::to_owned)
            .to_vec();
        let key = |text: &str| {
            let parsed = crate::requirements::parse(text, "requirements.txt").unwrap();
            wheels_cache_key(&parsed, text.as_bytes(), &python, &argv)
        };
        assert_eq!(
            key("django==5.2.1\n"),
            None,
            "names alone never key the cache"
        );
        let a = key("django==5.2.1 --hash=sha256:aa\n").expect("hashed");
        let b = key("django==5.2.1 --hash=sha256:ab\n").expect("hashed");
        assert_ne!(a, b, "another file for the same name is another key");
        let other = PythonInfo {
            pip: Some("25.0".into()),
            ..python.clone()
        };
        let parsed = crate::requirements::parse("django==5.2.1 --hash=sha256:aa\n", "r").unwrap();
        assert_ne!(
            wheels_cache_key(&parsed, b"django==5.2.1 --hash=sha256:aa\n", &other, &argv),
            Some(a),
            "another pip resolves anew"
        );
    }

    #[test]
    fn build_number_py_is_read_like_prepare_writes_it() {
        let text = "# Copyright\n# licence\n\nBUILD_NUMBER = '000034'\n";
        assert_eq!(parse_build_number_py(text, "f").unwrap().get(), 34);
        assert_eq!(
            parse_build_number_py("BUILD_NUMBER=\"000002\"", "f")
                .unwrap()
                .get(),
            2
        );
        assert!(parse_build_number_py("X = 1\n", "f").is_err());
        assert!(parse_build_number_py("BUILD_NUMBER = '34'\n", "f").is_err());
        // What `builder prepare` accepts and rewrites, a trailing comment kept, is accepted.
        assert_eq!(
            parse_build_number_py("BUILD_NUMBER = '000006'  # set by builder\n", "f")
                .unwrap()
                .get(),
            6
        );
    }

    #[test]
    fn frontend_number_from_preload_or_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("index.json"), r#"{"modules": {}, "preload": {"binarycrate.build_number": "BUILD_NUMBER = '000005'\n"}}"#).unwrap();
        assert_eq!(
            frontend_build_number(dir.path(), "binarycrate.build_number")
                .unwrap()
                .get(),
            5
        );
        fs::write(dir.path().join("bn.py"), "BUILD_NUMBER = '000006'\n").unwrap();
        fs::write(
            dir.path().join("index.json"),
            r#"{"modules": {"binarycrate.build_number": {"file": "bn.py"}}, "preload": {}}"#,
        )
        .unwrap();
        assert_eq!(
            frontend_build_number(dir.path(), "binarycrate.build_number")
                .unwrap()
                .get(),
            6
        );
        let err = frontend_build_number(dir.path(), "other")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no module `other`"), "{err}");
    }

    #[test]
    fn rules_remove_excluded_and_refuse_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        for f in [
            "a/x.py",
            "a/__pycache__/x.cpython-311.pyc",
            "a/y.pyc",
            ".gitmodules",
            "keep/z.txt",
        ] {
            fs::create_dir_all(s.join(f).parent().unwrap()).unwrap();
            fs::write(s.join(f), "x").unwrap();
        }
        let config = DeployConfig::default();
        assert_eq!(apply_package_rules(s, &config).unwrap(), 3);
        assert!(
            s.join("a/x.py").exists()
                && !s.join("a/__pycache__").exists()
                && !s.join("a/y.pyc").exists()
        );
        check_secrets(s, &config).unwrap();
        fs::write(s.join("a/production.py"), "SECRET_KEY = 'x'").unwrap();
        let err = check_secrets(s, &config).unwrap_err().to_string();
        assert!(err.contains("`a/production.py`"), "{err}");

        let mut only = config.clone();
        only.package.include = vec!["a".into()];
        apply_package_rules(s, &only).unwrap();
        assert!(s.join("a/x.py").exists() && !s.join("keep").exists());
    }
}
