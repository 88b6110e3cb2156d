//! `deploy.toml`: how an application is built into a release. Defaults reproduce the manual procedure's
//! manual procedure for BinaryCrate exactly, so BinaryCrate needs no configuration at all and
//! another Django app needs only its own file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use common::error::BadInput;
use common::manifest::{validate_app_name, validate_relative_path, AppProfile};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The configuration file's name, at the application repository's root.
pub const DEPLOY_TOML: &str = "deploy.toml";

/// This file's section of `docs/configuration.md`.
pub const DOC_SECTION: &str = "deploy.toml keys";

/// The reference table of every key, its default and meaning (`docs/configuration.md`).
pub fn reference() -> String {
    common::configdoc::table(&common::configdoc::keys(&DeployConfig::default()))
}

/// The whole `deploy.toml`. Every key is optional; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeployConfig {
    /// Application name, used in artifact names and store keys.
    pub app: String,
    /// Where `builder publish` puts releases: `file:///path`, a path relative to the repository
    /// root, or `s3://bucket/prefix`.
    pub store: String,
    /// The target Python.
    pub python: PythonConfig,
    /// Where the Django project's pieces are.
    pub django: DjangoConfig,
    /// The PyPy.js front end and its bundler.
    pub frontend: FrontendConfig,
    /// What goes into the tarball.
    pub package: PackageConfig,
    /// How releases are signed.
    #[serde(default)]
    pub signing: SigningConfig,
    /// How `deploy`, `rollback`, `status` and `os-update` talk to the servers.
    #[serde(default)]
    pub fleet: FleetConfig,
}

/// The fleet commands' settings that belong to the application rather than to one command line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Where SSM keeps every server's complete output, `s3://bucket/prefix` (as `--output-s3`,
    /// which overrides it): the builder reads an output SSM cut at 24,000 characters from there.
    /// Unset: none.
    pub output_s3: Option<String>,
}

/// How `builder package` signs `release.json` (see `builder keygen`). Nothing set: unsigned,
/// unless `--signing-key` or `BINARYCRATE_SIGNING_KEY` names a key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// The minisign secret key file; a relative path is relative to the repository root. It
    /// never goes into the repository itself (`*.key` is refused by `package.secrets`).
    pub secret_key: Option<String>,
    /// The environment variable holding a password-protected key's password
    /// [default: `BINARYCRATE_SIGNING_PASSWORD`].
    pub password_env: Option<String>,
}

/// The target Python: wheels are built for it and collectstatic runs on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PythonConfig {
    /// Interpreter that builds the wheels and the throwaway collectstatic virtualenv.
    pub interpreter: String,
    /// The requirements, relative to the repository root: every line pinned (`name==version`,
    /// with or without `--hash`; VCS URLs at a full commit). With hashes, a rebuild must get the
    /// same files.
    pub requirements: String,
    /// Build for another platform instead of `interpreter`'s own: wheels are then fetched with
    /// `pip download --only-binary=:all: --platform … --python-version …` (e.g.
    /// `manylinux2014_x86_64`). Needs `python_version`.
    pub platform: Option<String>,
    /// The target's Python version for `platform` builds, e.g. `3.5`.
    pub python_version: Option<String>,
    /// Extra arguments for every pip call (e.g. `["--no-index", "--find-links", "/wheelhouse"]`).
    pub pip_args: Vec<String>,
}

/// Where the Django project's pieces are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DjangoConfig {
    /// The project's `manage.py`, relative to the repository root.
    pub manage_py: String,
    /// Settings module collectstatic runs with (no secrets, no database); empty: a module the
    /// build writes (and never packages) that imports the app's own settings with a throwaway
    /// `SECRET_KEY` and no database.
    pub build_settings: String,
    /// Where collectstatic writes; the installer serves it as `static/<VERSION_HASH>`.
    pub static_root: String,
    /// The file holding `BUILD_NUMBER = 'NNNNNN'`.
    pub build_number_file: String,
    /// The file the build writes as `VERSION_HASH = '<commit>'`.
    pub version_hash_file: String,
    /// The template of the server-only `production.py` (the installer compares it between
    /// releases); empty: the app has none.
    pub production_template: String,
    /// The module whose `application` the servers serve (the project's `wsgi.py`).
    pub wsgi_module: String,
    /// `DJANGO_SETTINGS_MODULE` on the servers (migrate and the workers).
    pub settings_module: String,
    /// The servers' own files: path in the release → file name in the server's `shared/`
    /// (which the operator creates there; the build refuses to package it).
    pub shared_files: BTreeMap<String, String>,
    /// The servers' own directories: path in the release → directory in `shared/` (user
    /// uploads and the like; created empty on the server when missing).
    pub shared_dirs: BTreeMap<String, String>,
    /// Run in the release on each server before the swap (argv); empty:
    /// `venv/bin/python <manage_py> migrate --noinput`.
    pub migrate: Vec<String>,
}

/// The PyPy.js front end and its module bundler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FrontendConfig {
    /// Run the front-end steps at all.
    pub enabled: bool,
    /// Where `build_number.py` is copied so the front end can import it.
    pub build_number_copy: String,
    /// The PyPy.js module bundler (`module_bundler.py`).
    pub bundler: String,
    /// Interpreter for the bundler (the real PyPy.js bundler needs Python 2).
    pub bundler_python: String,
    /// Where the bundler keeps the bundled modules and `index.json`.
    pub bundle_dir: String,
    /// Modules to `add` and then `preload`, in order.
    pub modules: Vec<BundleModule>,
    /// The bundled module whose `BUILD_NUMBER` must equal the back end's.
    pub build_number_module: String,
}

/// One module given to the bundler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleModule {
    /// Path of the module file or package directory, relative to the repository root.
    pub path: String,
    /// The module name to preload.
    pub preload: String,
    /// Skip it when `path` does not exist (modules BinaryCrate added later).
    #[serde(default)]
    pub optional: bool,
}

/// What goes into the tarball.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PackageConfig {
    /// Only these paths are packaged (empty: everything). Patterns as for `exclude`.
    pub include: Vec<String>,
    /// Never packaged. A pattern without `/` matches a name at any depth; one with `/` matches
    /// the path from the repository root. A matching directory takes its contents with it.
    pub exclude: Vec<String>,
    /// Files that must never be packaged: the build fails, naming the file.
    pub secrets: Vec<String>,
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self {
            app: common::DEFAULT_APP.into(),
            store: "artifacts".into(),
            python: PythonConfig::default(),
            django: DjangoConfig::default(),
            frontend: FrontendConfig::default(),
            package: PackageConfig::default(),
            signing: SigningConfig::default(),
            fleet: FleetConfig::default(),
        }
    }
}

impl Default for PythonConfig {
    fn default() -> Self {
        Self {
            interpreter: "python3".into(),
            requirements: "requirements.txt".into(),
            platform: None,
            python_version: None,
            pip_args: Vec::new(),
        }
    }
}

impl Default for DjangoConfig {
    fn default() -> Self {
        Self {
            manage_py: "binarycrate/manage.py".into(),
            build_settings: String::new(),
            static_root: "binarycrate/public/static".into(),
            build_number_file: "binarycrate/binarycrate/settings/build_number.py".into(),
            version_hash_file: "binarycrate/binarycrate/settings/version_hash.py".into(),
            production_template: "binarycrate/binarycrate/settings/production_template.py".into(),
            wsgi_module: "binarycrate.wsgi".into(),
            settings_module: "binarycrate.settings.production".into(),
            shared_files: [(
                "binarycrate/binarycrate/settings/production.py".to_owned(),
                "production.py".to_owned(),
            )]
            .into(),
            shared_dirs: [
                ("binarycrate/private".to_owned(), "private".to_owned()),
                ("binarycrate/media".to_owned(), "media".to_owned()),
            ]
            .into(),
            migrate: Vec::new(),
        }
    }
}

impl DjangoConfig {
    /// What the servers need to know about the app, recorded in every release's manifest.
    pub fn profile(&self) -> AppProfile {
        let project_dir = Path::new(&self.manage_py)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let migrate = if self.migrate.is_empty() {
            ["venv/bin/python", &self.manage_py, "migrate", "--noinput"]
                .map(str::to_owned)
                .to_vec()
        } else {
            self.migrate.clone()
        };
        AppProfile {
            project_dir,
            wsgi_module: self.wsgi_module.clone(),
            settings_module: self.settings_module.clone(),
            static_root: self.static_root.trim_end_matches('/').to_owned(),
            version_hash_file: self.version_hash_file.clone(),
            production_template: (!self.production_template.is_empty())
                .then(|| self.production_template.clone()),
            shared_files: self.shared_files.clone(),
            shared_dirs: self.shared_dirs.clone(),
            migrate,
        }
    }
}

impl Default for FrontendConfig {
    fn default() -> Self {
        let module = |path: &str, preload: &str, optional| BundleModule {
            path: path.into(),
            preload: preload.into(),
            optional,
        };
        Self {
            enabled: true,
            build_number_copy: "front-end/binarycrate/build_number.py".into(),
            bundler: "pypyjs-release/pypyjs-release/tools/module_bundler.py".into(),
            bundler_python: "python2".into(),
            bundle_dir: "pypyjs-release/pypyjs-release/lib/modules".into(),
            // The original three, then the ones BinaryCrate added later (used when present).
            modules: vec![
                module("cavorite/cavorite", "cavorite", false),
                module("front-end/binarycrate", "binarycrate", false),
                module("historygraph/historygraph", "historygraph", false),
                module("pypyjs_modules/munch/munch", "munch", true),
                module("pypyjs_modules/six/six.py", "six", true),
                module("pypyjs_modules/beautifulsoup4-4.6.0/bs4", "bs4", true),
            ],
            build_number_module: "binarycrate.build_number".into(),
        }
    }
}

impl Default for PackageConfig {
    fn default() -> Self {
        let list = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
        Self {
            include: Vec::new(),
            exclude: list(&[
                ".git",
                ".gitmodules",
                ".gitignore",
                "__pycache__",
                "*.pyc",
                "*.pyo",
                ".DS_Store",
            ]),
            secrets: list(&[
                "production.py",
                "*.pem",
                "*.key",
                ".env",
                "id_rsa*",
                "id_ed25519*",
                "*.sqlite3",
            ]),
        }
    }
}

impl DeployConfig {
    /// Parses `deploy.toml` text; `origin` names it in messages. Unknown keys and bad values are
    /// errors that name the key.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let config: DeployConfig = toml::from_str(text)
            .map_err(|e| BadInput(format!("`{origin}`: {}", e.to_string().trim_end())))?;
        config
            .validate()
            .map_err(|e| BadInput(format!("`{origin}`: {e}")))?;
        Ok(config)
    }

    /// Reads `deploy.toml` from a directory; the defaults when it has none.
    pub fn load_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(DEPLOY_TOML);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        }
    }

    /// The effective configuration as TOML, for `builder config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration always serialises")
    }

    fn validate(&self) -> Result<(), String> {
        let key = |k: &str, m: String| format!("key `{k}`: {m}");
        validate_app_name(&self.app).map_err(|m| key("app", m))?;
        if let Some(url) = &self.fleet.output_s3 {
            crate::fleet::OutputS3::parse(url).map_err(|m| key("fleet.output_s3", m))?;
        }
        let paths = [
            ("python.requirements", &self.python.requirements),
            ("django.manage_py", &self.django.manage_py),
            ("django.static_root", &self.django.static_root),
            ("django.build_number_file", &self.django.build_number_file),
            ("django.version_hash_file", &self.django.version_hash_file),
            (
                "frontend.build_number_copy",
                &self.frontend.build_number_copy,
            ),
            ("frontend.bundler", &self.frontend.bundler),
            ("frontend.bundle_dir", &self.frontend.bundle_dir),
        ];
        for (k, v) in paths {
            validate_relative_path(v.trim_end_matches('/')).map_err(|m| {
                key(
                    k,
                    format!("`{v}`: {m}; use a path relative to the repository root"),
                )
            })?;
        }
        if !self.django.production_template.is_empty() {
            validate_relative_path(&self.django.production_template).map_err(|m| {
                key(
                    "django.production_template",
                    format!("`{}`: {m}", self.django.production_template),
                )
            })?;
        }
        self.django
            .profile()
            .validate()
            .map_err(|m| key("django", m))?;
        for (i, m) in self.frontend.modules.iter().enumerate() {
            validate_relative_path(m.path.trim_end_matches('/')).map_err(|e| {
                key(
                    &format!("frontend.modules[{i}].path"),
                    format!("`{}`: {e}", m.path),
                )
            })?;
            if !is_module_name(&m.preload) {
                return Err(key(
                    &format!("frontend.modules[{i}].preload"),
                    format!("`{}` is not a Python module name", m.preload),
                ));
            }
        }
        if !is_module_name(&self.frontend.build_number_module) {
            return Err(key(
                "frontend.build_number_module",
                format!(
                    "`{}` is not a Python module name",
                    self.frontend.build_number_module
                ),
            ));
        }
        if !self.django.build_settings.is_empty() && !is_module_name(&self.django.build_settings) {
            return Err(key(
                "django.build_settings",
                format!(
                    "`{}` is not a Python module name",
                    self.django.build_settings
                ),
            ));
        }
        for (k, v) in [
            ("python.interpreter", &self.python.interpreter),
            ("frontend.bundler_python", &self.frontend.bundler_python),
        ] {
            if v.trim().is_empty() {
                return Err(key(k, "must name an interpreter, e.g. `python3`".into()));
            }
        }
        match (&self.python.platform, &self.python.python_version) {
            (Some(_), None) => {
                return Err(key(
                    "python.python_version",
                    "is required with `python.platform`, e.g. `3.5`".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(key(
                    "python.platform",
                    "is required with `python.python_version`, e.g. `manylinux2014_x86_64`".into(),
                ))
            }
            (_, Some(v)) if !is_python_version(v) => {
                return Err(key(
                    "python.python_version",
                    format!("`{v}` is not a version like `3.5`"),
                ))
            }
            _ => {}
        }
        if self
            .signing
            .secret_key
            .as_deref()
            .is_some_and(|k| k.trim().is_empty())
        {
            return Err(key(
                "signing.secret_key",
                "must name the secret key file made by `builder keygen`".into(),
            ));
        }
        if let Some(var) = &self.signing.password_env {
            if !is_env_name(var) {
                return Err(key(
                    "signing.password_env",
                    format!("`{var}` is not an environment variable name"),
                ));
            }
        }
        for (k, patterns) in [
            ("package.include", &self.package.include),
            ("package.exclude", &self.package.exclude),
            ("package.secrets", &self.package.secrets),
        ] {
            PathMatcher::new(patterns).map_err(|e| key(k, e))?;
        }
        Ok(())
    }

    /// The Python tag wheels are built for, e.g. `cp311`, for `platform` builds; interpreter
    /// builds ask the interpreter.
    pub fn declared_python_tag(&self) -> Option<String> {
        self.python
            .python_version
            .as_ref()
            .map(|v| format!("cp{}", v.replace('.', "")))
    }
}

fn is_module_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// `NAME_1`: what a shell accepts as a variable name.
pub fn is_env_name(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_python_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    (1..=2).contains(&(parts.len() - 1))
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Matches repository-relative paths against `exclude`-style patterns.
#[derive(Debug, Clone)]
pub struct PathMatcher {
    by_name: globset::GlobSet,
    by_path: globset::GlobSet,
}

impl PathMatcher {
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut by_name = globset::GlobSetBuilder::new();
        let mut by_path = globset::GlobSetBuilder::new();
        for p in patterns {
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                return Err("empty pattern".into());
            }
            let glob = globset::GlobBuilder::new(trimmed.trim_start_matches('/'))
                .literal_separator(true)
                .build()
                .map_err(|e| format!("bad pattern `{p}`: {e}"))?;
            if trimmed.contains('/') {
                by_path.add(glob);
            } else {
                by_name.add(glob);
            }
        }
        let build = |b: globset::GlobSetBuilder| b.build().map_err(|e| e.to_string());
        Ok(Self {
            by_name: build(by_name)?,
            by_path: build(by_path)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.by_path.is_empty()
    }

    /// Whether `path` itself (not an ancestor) matches.
    pub fn matches(&self, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        self.by_name.is_match(name) || self.by_path.is_match(path)
    }

    /// Whether `path` or one of its ancestor directories matches.
    pub fn matches_or_inside(&self, path: &str) -> bool {
        let mut end = path.len();
        loop {
            if self.matches(&path[..end]) {
                return true;
            }
            match path[..end].rfind('/') {
                Some(i) => end = i,
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_reference_is_current() {
        let keys = common::configdoc::keys(&DeployConfig::default());
        let undocumented: Vec<&str> = keys
            .iter()
            .filter(|k| k.meaning.is_empty())
            .map(|k| k.key.as_str())
            .collect();
        assert!(
            undocumented.is_empty(),
            "keys without a doc comment: {undocumented:?}"
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let have = common::configdoc::section(&doc, DOC_SECTION).unwrap_or_default();
        let want = reference();
        let first = have
            .lines()
            .zip(want.lines())
            .find(|(h, w)| h != w)
            .map(|(h, w)| format!("the file has\n  {h}\nthe code says\n  {w}"))
            .unwrap_or_else(|| "the tables differ in length".into());
        assert!(
            have == want,
            "`docs/configuration.md` is stale ({first}): run `cargo run -p builder -- generate-docs --config-doc docs/configuration.md`"
        );
    }

    #[test]
    fn defaults_reproduce_the_manual_procedure() {
        let c = DeployConfig::parse("", "deploy.toml").unwrap();
        assert_eq!(c, DeployConfig::default());
        assert_eq!(c.app, "binarycrate");
        let paths: Vec<_> = c
            .frontend
            .modules
            .iter()
            .filter(|m| !m.optional)
            .map(|m| m.path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "cavorite/cavorite",
                "front-end/binarycrate",
                "historygraph/historygraph"
            ]
        );
        assert_eq!(c.frontend.bundler_python, "python2");
        // The printed configuration reads back as the same configuration.
        assert_eq!(DeployConfig::parse(&c.to_toml(), "printed").unwrap(), c);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        for (text, key) in [
            ("apps = 'x'", "apps"),
            ("[python]\ninterpreterr = 'python3'", "interpreterr"),
            ("app = 'Bad Name'", "app"),
            ("[django]\nmanage_py = '../manage.py'", "django.manage_py"),
            (
                "[django]\nstatic_root = '/srv/static'",
                "django.static_root",
            ),
            (
                "[frontend]\nmodules = [{ path = 'x', preload = 'not a module' }]",
                "frontend.modules[0].preload",
            ),
            (
                "[python]\nplatform = 'manylinux2014_x86_64'",
                "python.python_version",
            ),
            (
                "[python]\nplatform = 'x'\npython_version = 'three'",
                "python.python_version",
            ),
            ("[package]\nexclude = ['a[']", "package.exclude"),
            ("[frontend]\nenabled = 'yes'", "enabled"),
            ("[signing]\nsecret_key = ''", "signing.secret_key"),
            (
                "[signing]\npassword_env = 'MY-PASS'",
                "signing.password_env",
            ),
            ("[signing]\nkey = 'a.key'", "key"),
        ] {
            let err = DeployConfig::parse(text, "deploy.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("deploy.toml"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn signing_is_off_by_default_and_reads_back() {
        let c = DeployConfig::parse(
            "[signing]\nsecret_key = 'keys/ci.key'\npassword_env = 'CI_KEY_PASSWORD'\n",
            "deploy.toml",
        )
        .unwrap();
        assert_eq!(c.signing.secret_key.as_deref(), Some("keys/ci.key"));
        assert_eq!(c.signing.password_env.as_deref(), Some("CI_KEY_PASSWORD"));
        assert_eq!(DeployConfig::parse(&c.to_toml(), "printed").unwrap(), c);
        assert_eq!(DeployConfig::default().signing, SigningConfig::default());
        assert!(is_env_name("_A1") && !is_env_name("1A") && !is_env_name(""));
    }

    #[test]
    fn patterns_match_names_anywhere_and_paths_from_the_root() {
        let m = PathMatcher::new(&[
            "*.pyc".into(),
            "__pycache__".into(),
            "binarycrate/public".into(),
            "docs/*.md".into(),
        ])
        .unwrap();
        assert!(m.matches("a/b/c.pyc"));
        assert!(m.matches("__pycache__"));
        assert!(m.matches_or_inside("x/__pycache__/y.py"));
        assert!(m.matches_or_inside("binarycrate/public/static/app.js"));
        assert!(!m.matches_or_inside("other/binarycrate/public/x"));
        assert!(m.matches("docs/a.md"));
        assert!(!m.matches("docs/sub/a.md"));
        assert!(!m.matches("a.py"));
    }

    #[test]
    fn python_tag_for_platform_builds() {
        let c = DeployConfig::parse(
            "[python]\nplatform = 'manylinux2014_x86_64'\npython_version = '3.5'",
            "d",
        )
        .unwrap();
        assert_eq!(c.declared_python_tag().as_deref(), Some("cp35"));
    }
}
