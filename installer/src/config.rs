//! `installer.toml`: where the server's releases live and how to migrate, reload and check them.
//! Defaults are today's manual setup (root `/srv/binarycrate-mvp2`, `service uwsgi-emperor restart`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use common::error::BadInput;
use common::manifest::{validate_app_name, validate_relative_path, AppProfile};
use common::ReleaseManifest;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::keys::parse_public_key;

/// Where the configuration is looked for when neither `--config` nor the environment names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/binarycrate/installer.toml";
/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "BINARYCRATE_INSTALLER_CONFIG";

/// This file's section of `docs/configuration.md`.
pub const DOC_SECTION: &str = "installer.toml keys";

/// The reference table of every key, its default and meaning (`docs/configuration.md`).
pub fn reference() -> String {
    common::configdoc::table(&common::configdoc::keys(&InstallerConfig::default()))
}

/// The whole configuration. Every key is optional except `store` for commands that download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InstallerConfig {
    /// The server layout's root: `releases/`, `shared/`, `current`, `static/`, `.deploy/`.
    pub root: PathBuf,
    /// Application name in store keys.
    pub app: String,
    /// Artifact store URL (`s3://bucket/prefix` or `file:///path`); no default on a server.
    pub store: Option<String>,
    /// S3 endpoint override (S3-compatible stores, tests).
    pub s3_endpoint: Option<String>,
    /// Interpreter that creates each release's `venv` (must match the one uWSGI embeds).
    pub python: String,
    /// Releases packaged without an app profile only: run in the release directory before the
    /// swap, with the release's own venv (newer releases carry their own migrate command).
    pub migrate: Vec<String>,
    /// Releases packaged without an app profile only: the Django settings module migrate and
    /// the app run with.
    pub settings_module: String,
    /// Environment for migrate on this server (e.g. `DATABASE_URL`), beside
    /// `DJANGO_SETTINGS_MODULE`.
    pub migrate_env: BTreeMap<String, String>,
    /// Makes the application server pick up the new `current` (argv, no shell).
    pub reload: Vec<String>,
    /// Instead of `reload`: the file uWSGI watches with `touch-chain-reload`. The installer
    /// moves its mtime forward by at least a second itself (uWSGI compares whole seconds, so a
    /// plain `touch` within the same second as the last one would be missed).
    pub reload_file: Option<PathBuf>,
    /// Instead of `reload`: uWSGI's master FIFO (`master-fifo`); the installer writes `c`
    /// (chain reload), which takes effect at once rather than at the next poll of a touch file.
    pub reload_fifo: Option<PathBuf>,
    /// Seconds to wait for the lock held by another activation.
    pub lock_timeout_secs: u64,
    /// How to prove the new build is what is served.
    pub health: HealthConfig,
    /// Releases packaged without an app profile only: server files kept across releases,
    /// linked into each one (newer releases say which paths are the server's).
    pub shared: SharedConfig,
    /// Releases packaged without an app profile only: where collectstatic's output is inside a
    /// release (linked as `static/<VERSION_HASH>`).
    pub static_root: String,
    /// Releases packaged without an app profile only: the release's `VERSION_HASH =
    /// '<commit>'` file, which names its `static/<VERSION_HASH>` link.
    pub version_hash_file: String,
    /// Releases packaged without an app profile only: the template of `production.py`; a
    /// change from the live release's needs `--template-reviewed`.
    pub production_template: String,
    /// `installer os-update`: package maintenance and whether a reboot is needed.
    pub os_update: OsUpdateConfig,
    /// Which release signatures this server trusts and whether it requires one.
    #[serde(default)]
    pub signing: SigningConfig,
}

/// How to prove the new build is what is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Page that must answer 200 and contain `Build number = NNNNNN`: `http://` or
    /// `https://`, normally on the server itself.
    pub url: String,
    /// The `Host` header the check sends (the site's name, when its `ALLOWED_HOSTS` or virtual
    /// host does not answer to the URL's host); default: the URL's host. For `https://` it is
    /// also the name the site's certificate must carry.
    pub host: Option<String>,
    /// For an `https://` URL: PEM file of the CA certificates that may sign the site's
    /// certificate (a private CA, or the certificate itself when self-signed); default: the
    /// system's trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// uWSGI's stats server (`--stats … --stats-http`): when set, every worker must have been
    /// (re)spawned after the swap before the check passes.
    pub stats_url: Option<String>,
    /// Seconds until the check gives up (and the activation rolls back).
    pub timeout_secs: u64,
    /// Requests that must all show the new build once the workers are replaced.
    pub confirm_requests: u32,
}

/// Server files kept across releases, linked into each one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SharedConfig {
    /// Path in the release → file in `shared/` (must exist: created by the operator).
    pub files: BTreeMap<String, String>,
    /// Path in the release → directory in `shared/` (created empty if missing).
    pub dirs: BTreeMap<String, String>,
}

/// `installer os-update`: the server's package maintenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OsUpdateConfig {
    /// The maintenance commands, run in order.
    pub commands: Vec<Vec<String>>,
    /// Present when a reboot is needed (Debian/Ubuntu convention).
    pub reboot_required_file: PathBuf,
    /// Reboots the server (argv), run only with `installer os-update --reboot`.
    pub reboot: Vec<String>,
}

impl Default for InstallerConfig {
    fn default() -> Self {
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        Self {
            root: PathBuf::from("/srv/binarycrate-mvp2"),
            app: common::DEFAULT_APP.into(),
            store: None,
            s3_endpoint: None,
            python: "python3".into(),
            migrate: words("venv/bin/python binarycrate/manage.py migrate --noinput"),
            settings_module: "binarycrate.settings.production".into(),
            migrate_env: BTreeMap::new(),
            reload: words("service uwsgi-emperor restart"),
            reload_file: None,
            reload_fifo: None,
            lock_timeout_secs: 600,
            health: HealthConfig::default(),
            shared: SharedConfig::default(),
            static_root: "binarycrate/public/static".into(),
            version_hash_file: "binarycrate/binarycrate/settings/version_hash.py".into(),
            production_template: "binarycrate/binarycrate/settings/production_template.py".into(),
            os_update: OsUpdateConfig::default(),
            signing: SigningConfig::default(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1/".into(),
            host: None,
            ca_file: None,
            stats_url: None,
            timeout_secs: 60,
            confirm_requests: 10,
        }
    }
}

impl Default for SharedConfig {
    fn default() -> Self {
        let mut files = BTreeMap::new();
        files.insert(
            "binarycrate/binarycrate/settings/production.py".into(),
            "production.py".into(),
        );
        let mut dirs = BTreeMap::new();
        dirs.insert("binarycrate/private".into(), "private".into());
        dirs.insert("binarycrate/media".into(), "media".into());
        Self { files, dirs }
    }
}

impl Default for OsUpdateConfig {
    fn default() -> Self {
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        Self {
            commands: vec![
                words("apt-get update"),
                words("apt-get dist-upgrade -y"),
                words("apt-get autoremove -y"),
            ],
            reboot_required_file: PathBuf::from("/var/run/reboot-required"),
            reboot: words("reboot"),
        }
    }
}

impl InstallerConfig {
    /// `--config`, else `$BINARYCRATE_INSTALLER_CONFIG`, else `/etc/binarycrate/installer.toml`
    /// if it exists, else the defaults.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Self> {
        let (path, required) = match explicit {
            Some(p) => (p.to_owned(), true),
            None => match std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
                Some(p) => (PathBuf::from(p), true),
                None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                let d = Self::default();
                eprintln!(
                    "note: no configuration file (`{}` does not exist; `--config FILE` or ${CONFIG_ENV} name another): using the defaults, root `{}`, app `{}`, no store (`installer config` prints them all)",
                    path.display(),
                    d.root.display(),
                    d.app
                );
                Ok(d)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BadInput(format!(
                "configuration file `{}` does not exist",
                path.display()
            ))
            .into()),
            Err(e) => Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        }
    }

    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)
            .map_err(|e| BadInput(format!("`{origin}`: {}", e.to_string().trim_end())))?;
        config
            .validate()
            .map_err(|e| BadInput(format!("`{origin}`: {e}")))?;
        Ok(config)
    }

    /// The app profile of a release packaged before profiles: this server's own keys, whose
    /// defaults are BinaryCrate's layout.
    pub fn legacy_profile(&self) -> AppProfile {
        AppProfile {
            project_dir: AppProfile::binarycrate().project_dir,
            wsgi_module: AppProfile::binarycrate().wsgi_module,
            settings_module: self.settings_module.clone(),
            static_root: self.static_root.clone(),
            version_hash_file: self.version_hash_file.clone(),
            production_template: Some(self.production_template.clone()),
            shared_files: self.shared.files.clone(),
            shared_dirs: self.shared.dirs.clone(),
            migrate: self.migrate.clone(),
        }
    }

    /// The app profile a release's manifest gives, or, for one packaged before profiles, this
    /// server's ([`InstallerConfig::legacy_profile`]).
    pub fn profile_of(&self, manifest: &ReleaseManifest) -> AppProfile {
        manifest
            .profile
            .clone()
            .unwrap_or_else(|| self.legacy_profile())
    }

    fn validate(&self) -> Result<(), String> {
        let key = |k: &str, m: String| format!("key `{k}`: {m}");
        for (k, v) in &self.migrate_env {
            let plain = !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit());
            if !plain || v.contains('\0') {
                return Err(key(
                    "migrate_env",
                    format!("`{}` is not an environment variable name", k.escape_debug()),
                ));
            }
        }
        if !self.root.is_absolute() {
            return Err(key(
                "root",
                format!("`{}` must be an absolute path", self.root.display()),
            ));
        }
        validate_app_name(&self.app).map_err(|m| key("app", m))?;
        for (k, v) in [("migrate", &self.migrate), ("reload", &self.reload)] {
            if v.is_empty() || v[0].is_empty() {
                return Err(key(k, "must be a command line as a list of words, e.g. [\"touch\", \"/srv/app/.deploy/reload\"]".into()));
            }
        }
        crate::health::check_url(&self.health.url).map_err(|m| {
            key(
                "health.url",
                format!("{m} (the page the check asks, normally on the server itself)"),
            )
        })?;
        if let Some(ca) = &self.health.ca_file {
            // Read now, so a wrong path is bad input before anything changes, not a rollback.
            crate::health::Site::new(&self.health.url, self.health.host.as_deref(), Some(ca))
                .map_err(|e| key("health.ca_file", format!("{e:#}")))?;
        }
        if let Some(h) = &self.health.host {
            if h.is_empty()
                || h.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '/')
            {
                return Err(key(
                    "health.host",
                    format!("`{}` is not a host name", h.escape_debug()),
                ));
            }
        }
        if let Some(s) = &self.health.stats_url {
            if !s.starts_with("http://") {
                return Err(key(
                    "health.stats_url",
                    format!("`{s}` must be a plain `http://` URL (uWSGI `--stats-http`)"),
                ));
            }
        }
        let rel = [
            ("static_root", &self.static_root),
            ("version_hash_file", &self.version_hash_file),
            ("production_template", &self.production_template),
        ];
        for (k, v) in rel {
            validate_relative_path(v).map_err(|m| key(k, format!("`{v}`: {m}")))?;
        }
        self.signing.validate()?;
        for (table, map) in [
            ("shared.files", &self.shared.files),
            ("shared.dirs", &self.shared.dirs),
        ] {
            for (inside, name) in map {
                validate_relative_path(inside)
                    .map_err(|m| key(table, format!("`{inside}`: {m}")))?;
                validate_relative_path(name).map_err(|m| key(table, format!("`{name}`: {m}")))?;
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration always serialises")
    }
}

/// `[signing]` in `installer.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// Trusted minisign public keys: the base64 line (`RW…`) of each `.pub` file that
    /// `builder keygen` wrote. Several keys: any one of them is enough (key rotation).
    pub public_keys: Vec<String>,
    /// Trusted public key files (minisign `.pub` format), read whenever a release is checked.
    pub public_key_files: Vec<PathBuf>,
    /// Refuse releases that are not signed [default: on when any key is configured].
    pub require_signature: Option<bool>,
}

impl SigningConfig {
    pub fn has_keys(&self) -> bool {
        !self.public_keys.is_empty() || !self.public_key_files.is_empty()
    }

    pub fn required(&self) -> bool {
        self.require_signature.unwrap_or(self.has_keys())
    }

    /// Checks what can be checked without reading files; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (i, k) in self.public_keys.iter().enumerate() {
            parse_public_key(k).map_err(|e| format!("key `signing.public_keys[{i}]`: {e}"))?;
        }
        for (i, p) in self.public_key_files.iter().enumerate() {
            if !p.is_absolute() {
                return Err(format!(
                    "key `signing.public_key_files[{i}]`: `{}` must be an absolute path",
                    p.display()
                ));
            }
        }
        if self.require_signature == Some(true) && !self.has_keys() {
            return Err("key `signing.require_signature`: is true but no key is trusted; add the release signing public key to `signing.public_keys` (the `RW…` line `builder keygen` printed), or drop `require_signature`".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_reference_is_current() {
        let keys = common::configdoc::keys(&InstallerConfig::default());
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
            "`docs/configuration.md` is stale ({first}): run `cargo run -p installer -- generate-docs --config-doc docs/configuration.md`"
        );
    }

    /// What the Debian package installs as the conffile `/etc/binarycrate/installer.toml`.
    const EXAMPLE: &str = include_str!("../package/installer.toml");

    #[test]
    fn the_packaged_example_changes_nothing() {
        let c = InstallerConfig::parse(EXAMPLE, "installer.toml").unwrap();
        assert_eq!(c, InstallerConfig::default());
    }

    /// Uncommenting every `#key = value` line gives the defaults (plus the typical values shown
    /// for keys that have none), and every key is shown, so the example cannot go stale.
    #[test]
    fn the_packaged_example_shows_every_key_and_its_default() {
        let uncommented: String = EXAMPLE
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest)
                    if rest.starts_with(|c: char| c.is_ascii_lowercase() || "[\"".contains(c)) =>
                {
                    rest
                }
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let mut c = InstallerConfig::parse(&uncommented, "uncommented example").unwrap();
        assert_eq!(
            c.store.take().as_deref(),
            Some("s3://binarycrate-releases/releases")
        );
        assert_eq!(
            c.reload_fifo.take(),
            Some(PathBuf::from("/srv/binarycrate-mvp2/.deploy/uwsgi.fifo"))
        );
        assert_eq!(
            c.health.stats_url.take().as_deref(),
            Some("http://127.0.0.1:9191/")
        );
        assert_eq!(c, InstallerConfig::default());

        let mut every = InstallerConfig {
            s3_endpoint: Some("x".into()),
            reload_file: Some("x".into()),
            ..InstallerConfig::default()
        };
        every.signing.public_keys = vec!["x".into()];
        every.signing.public_key_files = vec!["x".into()];
        every.signing.require_signature = Some(true);
        // (dotted path of the table, key, whether the value is itself a table)
        fn keys(table: &str, value: &toml::Value, out: &mut Vec<(String, String, bool)>) {
            if let toml::Value::Table(t) = value {
                for (k, v) in t {
                    out.push((table.to_owned(), k.clone(), v.is_table()));
                    let path = if table.is_empty() {
                        k.clone()
                    } else {
                        format!("{table}.{k}")
                    };
                    keys(&path, v, out);
                }
            }
        }
        let mut all = Vec::new();
        keys("", &toml::Value::try_from(&every).unwrap(), &mut all);
        every.store = Some("x".into());
        every.reload_fifo = Some("x".into());
        every.health.stats_url = Some("x".into());
        keys("", &toml::Value::try_from(&every).unwrap(), &mut all);
        for (table, key, is_table) in all {
            let full = if table.is_empty() {
                key.clone()
            } else {
                format!("{table}.{key}")
            };
            let shown = if is_table {
                EXAMPLE.contains(&format!("[{full}]")) || EXAMPLE.contains(&format!("[{full}."))
            } else {
                EXAMPLE.contains(&format!("{key} = ")) || EXAMPLE.contains(&format!("\"{key}\" = "))
            };
            assert!(shown, "`{full}` is missing from package/installer.toml");
        }
    }

    #[test]
    fn defaults_are_the_manual_setup() {
        let c = InstallerConfig::parse("", "installer.toml").unwrap();
        assert_eq!(c.root, Path::new("/srv/binarycrate-mvp2"));
        assert_eq!(c.reload, ["service", "uwsgi-emperor", "restart"]);
        assert_eq!(
            c.migrate,
            [
                "venv/bin/python",
                "binarycrate/manage.py",
                "migrate",
                "--noinput"
            ]
        );
        assert_eq!(c.store, None);
        assert_eq!(InstallerConfig::parse(&c.to_toml(), "printed").unwrap(), c);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        for (text, key) in [
            ("rooot = '/srv'", "rooot"),
            ("root = 'relative'", "root"),
            ("reload = []", "reload"),
            ("[health]\nurl = 'ftp://x/'", "health.url"),
            ("[health]\nurl = 'https:///'", "health.url"),
            (
                "[health]\nurl = 'https://x/'\nca_file = '/nonexistent/ca.pem'",
                "health.ca_file",
            ),
            // A CA file for a plain URL, and a file that holds no certificate.
            (
                concat!(
                    "[health]\nurl = 'http://x/'\nca_file = '",
                    env!("CARGO_MANIFEST_DIR"),
                    "/Cargo.toml'"
                ),
                "health.ca_file",
            ),
            (
                concat!(
                    "[health]\nurl = 'https://x/'\nca_file = '",
                    env!("CARGO_MANIFEST_DIR"),
                    "/Cargo.toml'"
                ),
                "health.ca_file",
            ),
            ("[shared.files]\n'../x' = 'production.py'", "shared.files"),
            ("lock_timeout_secs = -1", "lock_timeout_secs"),
            (
                "[signing]\nrequire_signature = true",
                "signing.require_signature",
            ),
            (
                "[signing]\npublic_keys = ['RWnotakey']",
                "signing.public_keys[0]",
            ),
            ("[signing]\npublic_key = 'x'", "public_key"),
        ] {
            let err = InstallerConfig::parse(text, "installer.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("installer.toml"),
                "{text}: {err}"
            );
        }
    }
}
