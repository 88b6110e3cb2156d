//! The release manifest, its `release.json` sidecar, the artifact's name, and the build log.
//!
//! The sidecar is the release's identity: it must be byte-identical every time the same tag is
//! packaged, so it holds no timings, host names or wall-clock times (those go in
//! [`BuildLog`]), maps are `BTreeMap`, and serialisation is a fixed pretty-printed form.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ManifestError;
use crate::untrusted::shown;
use crate::{Blake3Hash, BuildNumber};

/// The newest manifest schema this code writes and understands.
/// 2: releases carry their dependencies installed (`deps`); installers that know only 1 refuse
/// them before downloading rather than look for wheels that are not there.
pub const SCHEMA_VERSION: u32 = 2;
/// The sidecar's file name, beside the artifact, at the archive's root and in the store.
pub const RELEASE_JSON: &str = "release.json";
/// The informational build log's file name.
pub const BUILD_LOG_JSON: &str = "build-log.json";
/// The minisign signature of the sidecar's exact bytes, beside it (locally and in the store).
pub const RELEASE_SIGNATURE: &str = "release.json.minisig";

/// Most bytes a `release.json` may have. It lists every file (about 250 bytes each), so this
/// allows well over 100,000 files, and anything larger is refused before it is read whole.
pub const MAX_SIDECAR_BYTES: u64 = 32 << 20;

/// The release's virtualenv, which the installer makes on the server.
pub const VENV_DIR: &str = "venv";
/// Where `builder package` installs the dependencies inside a release.
pub const DEPS_DIR: &str = "deps";
/// The marker `installer adopt` writes into the release that stands for an adopted checkout.
pub const LEGACY_MARKER: &str = "legacy.json";
/// Paths at a release's root that only the installer creates: an archive never contains them,
/// or it could pass for a finished virtualenv or an adopted checkout.
pub const INSTALLER_OWNED: [&str; 2] = [VENV_DIR, LEGACY_MARKER];

/// A file mode as the archive records it, serialised as four octal digits (`"0644"`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mode(pub u32);

impl Mode {
    pub const FILE: Mode = Mode(0o644);
    pub const EXECUTABLE: Mode = Mode(0o755);
    pub const DIR: Mode = Mode(0o755);
}

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match u32::from_str_radix(&s, 8) {
            Ok(m) if s.len() == 4 && m <= 0o7777 => Ok(Mode(m)),
            _ => Err(serde::de::Error::custom(format!(
                "invalid mode `{}`: expected four octal digits",
                crate::untrusted::shown(&s)
            ))),
        }
    }
}

/// One entry of the release tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FileEntry {
    File {
        size: u64,
        mode: Mode,
        blake3: Blake3Hash,
    },
    Dir {
        mode: Mode,
    },
    /// A relative link that stays inside the release tree.
    Symlink {
        target: String,
    },
}

/// One build step that ran, with paths relative to the staging root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildStep {
    pub name: String,
    pub command: Vec<String>,
}

/// A vendored wheel, by file name in the tarball's `wheels/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WheelEntry {
    pub size: u64,
    pub blake3: Blake3Hash,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The release's dependencies, installed by the builder for the servers' Python (the one
/// [`ReleaseManifest::python_tag`] names) as a site-packages directory inside the release; its
/// files are among the manifest's files like any other. Releases without it carry wheels that
/// the server installs with pip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependencies {
    /// The directory, relative to the release root (`deps`).
    pub dir: String,
    /// Whether their bytecode (and the project's) was compiled by the builder and is among the
    /// files; when not (another platform's Python), the server compiles it once.
    pub bytecode: bool,
}

/// What a server needs to know about the application to activate and serve a release: declared
/// in `deploy.toml`, checked by the builder and carried in the release's manifest (signed with
/// it), so one server configuration serves any Django app, and two releases of one app may lay
/// it out differently. A release packaged before profiles has none; servers then use their own
/// configuration, whose defaults are [`AppProfile::binarycrate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppProfile {
    /// The Django project directory (the one holding `manage.py`), relative to the release
    /// root; empty when it is the root itself.
    pub project_dir: String,
    /// The module whose `application` the servers' WSGI loader serves (`binarycrate.wsgi`).
    pub wsgi_module: String,
    /// `DJANGO_SETTINGS_MODULE` on the servers, for migrate and the workers.
    pub settings_module: String,
    /// Where collectstatic's output is in the release (served as `static/<VERSION_HASH>`).
    pub static_root: String,
    /// The release's `VERSION_HASH = '<commit>'` file, which names its static link.
    pub version_hash_file: String,
    /// The template of the server's own settings file: a release that changes it is activated
    /// only with `--template-reviewed`. None: the app has no such template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_template: Option<String>,
    /// The server's persistent files: path in the release → file in `shared/` (must exist).
    #[serde(default)]
    pub shared_files: BTreeMap<String, String>,
    /// The server's persistent directories: path in the release → directory in `shared/`
    /// (created empty when missing).
    #[serde(default)]
    pub shared_dirs: BTreeMap<String, String>,
    /// Run in the release before the swap (argv, no shell).
    pub migrate: Vec<String>,
}

impl AppProfile {
    /// BinaryCrate's layout: what servers assume of a release that carries no profile.
    pub fn binarycrate() -> Self {
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        Self {
            project_dir: "binarycrate".into(),
            wsgi_module: "binarycrate.wsgi".into(),
            settings_module: "binarycrate.settings.production".into(),
            static_root: "binarycrate/public/static".into(),
            version_hash_file: "binarycrate/binarycrate/settings/version_hash.py".into(),
            production_template: Some(
                "binarycrate/binarycrate/settings/production_template.py".into(),
            ),
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
            migrate: words("venv/bin/python binarycrate/manage.py migrate --noinput"),
        }
    }

    /// The paths in a release the server replaces with links to its own files.
    pub fn shared_paths(&self) -> impl Iterator<Item = &String> {
        self.shared_files.keys().chain(self.shared_dirs.keys())
    }

    /// Checks what a server relies on: paths inside the release and not the installer's own,
    /// plain names in `shared/`, dotted module names, a command to migrate with.
    pub fn validate(&self) -> Result<(), String> {
        let path = |what: &str, p: &str| -> Result<(), String> {
            validate_relative_path(p).map_err(|m| format!("{what} `{}`: {m}", shown(p)))?;
            if INSTALLER_OWNED
                .iter()
                .any(|o| p == *o || p.starts_with(&format!("{o}/")))
            {
                return Err(format!(
                    "{what} `{}`: the installer creates that path in every release",
                    shown(p)
                ));
            }
            Ok(())
        };
        if !self.project_dir.is_empty() {
            path("project_dir", &self.project_dir)?;
        }
        for (what, m) in [
            ("wsgi_module", &self.wsgi_module),
            ("settings_module", &self.settings_module),
        ] {
            let ok = !m.is_empty()
                && m.split('.').all(|part| {
                    part.chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !ok {
                return Err(format!(
                    "{what} `{}` is not a dotted Python module name",
                    shown(m)
                ));
            }
        }
        path("static_root", &self.static_root)?;
        path("version_hash_file", &self.version_hash_file)?;
        if let Some(t) = &self.production_template {
            path("production_template", t)?;
        }
        for (inside, name) in self.shared_files.iter().chain(&self.shared_dirs) {
            path("shared path", inside)?;
            if name.is_empty()
                || name.contains('/')
                || name == "."
                || name == ".."
                || check_name_text(name).is_err()
            {
                return Err(format!(
                    "shared name `{}` for `{}` must be a plain file name in `shared/`",
                    shown(name),
                    shown(inside)
                ));
            }
        }
        let nested = self.shared_paths().find(|a| {
            self.shared_paths()
                .any(|b| *a != b && b.starts_with(&format!("{a}/")))
        });
        if let Some(p) = nested {
            return Err(format!(
                "shared path `{}` holds another shared path: each must stand alone",
                shown(p)
            ));
        }
        if self.migrate.is_empty()
            || self
                .migrate
                .iter()
                .any(|a| a.chars().any(crate::untrusted::is_unprintable))
        {
            return Err("migrate must be a command line (argv) without control characters".into());
        }
        Ok(())
    }
}

/// Everything that identifies a release's content, except the archive's own hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    pub schema_version: u32,
    pub app: String,
    pub build: BuildNumber,
    pub tag: String,
    /// The tagged commit (hex); empty when the tree did not come from git.
    #[serde(default)]
    pub commit: String,
    /// Submodule path → the commit the tag records.
    #[serde(default)]
    pub submodules: BTreeMap<String, String>,
    /// The tagged commit's time (Unix seconds), every entry's mtime.
    pub source_date: i64,
    pub builder_version: String,
    /// The Python tag the wheels were built for (e.g. `cp311`), when there are wheels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_tag: Option<String>,
    #[serde(default)]
    pub build_steps: Vec<BuildStep>,
    #[serde(default)]
    pub wheels: BTreeMap<String, WheelEntry>,
    /// VCS requirements (URL without the commit) → the full commit their wheels were built from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vcs: BTreeMap<String, String>,
    /// What servers need to know about the app; absent in releases packaged before profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<AppProfile>,
    /// The installed dependencies; absent in releases whose servers install wheels with pip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deps: Option<Dependencies>,
    /// The Django migration graph, from Django's loader at packaging; absent in releases
    /// packaged before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<crate::migrations::MigrationGraph>,
    /// Every entry of the tree by relative path, `release.json` itself excepted.
    pub files: BTreeMap<String, FileEntry>,
}

impl ReleaseManifest {
    /// A manifest with the identity filled in and no files yet.
    pub fn new(app: &str, build: BuildNumber, source_date: i64) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            app: app.to_owned(),
            build,
            tag: build.tag(),
            commit: String::new(),
            submodules: BTreeMap::new(),
            source_date,
            builder_version: env!("CARGO_PKG_VERSION").to_owned(),
            python_tag: None,
            build_steps: Vec::new(),
            wheels: BTreeMap::new(),
            vcs: BTreeMap::new(),
            profile: None,
            deps: None,
            migrations: None,
            files: BTreeMap::new(),
        }
    }

    /// `(3, 11)` for the `python_tag` `cp311`.
    pub fn python_version(&self) -> Option<(u32, u32)> {
        let digits = self.python_tag.as_deref()?.strip_prefix("cp")?;
        if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (major, minor) = digits.split_at(1);
        Some((major.parse().ok()?, minor.parse().ok()?))
    }

    /// The name of the release's dependency tree by content, when servers may keep one copy of
    /// it for every release with the same tree (`<root>/deps/<key>`): a digest of each entry
    /// under the dependencies' directory — path, type, mode, size, BLAKE3, link target — and of
    /// the Python they were installed for. None for a release without installed dependencies,
    /// or whose bytecode the server compiles (which writes into the tree).
    pub fn deps_key(&self) -> Option<String> {
        let deps = self.deps.as_ref().filter(|d| d.bytecode)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"binarycrate deps tree 1\n");
        hasher.update(self.python_tag.as_deref().unwrap_or("").as_bytes());
        hasher.update(b"\n");
        let prefix = format!("{}/", deps.dir);
        for (path, entry) in &self.files {
            let Some(rel) = path.strip_prefix(&prefix) else {
                continue;
            };
            let line = serde_json::to_string(&(rel, entry)).expect("an entry serializes");
            hasher.update(line.as_bytes());
            hasher.update(b"\n");
        }
        Some(Blake3Hash::from(hasher.finalize()).to_hex()[..32].to_owned())
    }

    /// Checks what serde cannot: that names and paths are safe to use on disk and in keys.
    pub fn validate(&self, origin: &str) -> Result<(), ManifestError> {
        let invalid = |message: String| ManifestError::Invalid {
            path: origin.to_owned(),
            message,
        };
        if self.schema_version > SCHEMA_VERSION {
            return Err(ManifestError::UnsupportedSchema {
                path: origin.to_owned(),
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        validate_app_name(&self.app).map_err(invalid)?;
        if self.tag != self.build.tag() {
            return Err(invalid(format!(
                "tag `{}` does not match build {:#}",
                shown(&self.tag),
                self.build
            )));
        }
        // Every text field is checked here, so whatever prints one (`builder releases`, a
        // deploy plan) prints what a builder could have written, not an attacker's escapes.
        let hex = |what: &str, v: &str| {
            let ok = (v.len() == 40 || v.len() == 64) && v.bytes().all(|b| b.is_ascii_hexdigit());
            if ok {
                Ok(())
            } else {
                Err(invalid(format!(
                    "{what} `{}` is not a commit id (40 or 64 hex digits)",
                    shown(v)
                )))
            }
        };
        if !self.commit.is_empty() {
            hex("commit", &self.commit)?;
        }
        for (path, commit) in &self.submodules {
            validate_relative_path(path)
                .map_err(|m| invalid(format!("submodule `{}`: {m}", shown(path))))?;
            hex(&format!("submodule `{path}`'s commit"), commit)?;
        }
        let plain = |what: &str, v: &str| {
            if v.is_empty()
                || v.len() > 64
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-~".contains(&b))
            {
                Err(invalid(format!(
                    "{what} `{}` is not a plain name",
                    shown(v)
                )))
            } else {
                Ok(())
            }
        };
        plain("builder_version", &self.builder_version)?;
        if let Some(tag) = &self.python_tag {
            plain("python_tag", tag)?;
        }
        for name in self.wheels.keys() {
            if name.contains('/') {
                return Err(invalid(format!("wheel `{}`: not a file name", shown(name))));
            }
            check_name_text(name).map_err(|m| invalid(format!("wheel `{}`: {m}", shown(name))))?;
        }
        for step in &self.build_steps {
            let texts = std::iter::once(&step.name).chain(step.command.iter());
            if let Some(t) = texts
                .into_iter()
                .find(|t| t.chars().any(crate::untrusted::is_unprintable))
            {
                return Err(invalid(format!(
                    "build step `{}`: `{}` contains a control character",
                    shown(&step.name),
                    shown(t)
                )));
            }
        }
        for (url, commit) in &self.vcs {
            if url.chars().any(crate::untrusted::is_unprintable) || url.len() > MAX_PATH_BYTES {
                return Err(invalid(format!(
                    "VCS requirement `{}` is not a plain URL",
                    shown(url)
                )));
            }
            hex(
                &format!("VCS requirement `{}`'s commit", shown(url)),
                commit,
            )?;
        }
        if let Some(profile) = &self.profile {
            profile
                .validate()
                .map_err(|m| invalid(format!("app profile: {m}")))?;
        }
        if let Some(deps) = &self.deps {
            validate_relative_path(&deps.dir)
                .map_err(|m| invalid(format!("deps dir `{}`: {m}", shown(&deps.dir))))?;
            if deps.dir.contains('/') || INSTALLER_OWNED.contains(&deps.dir.as_str()) {
                return Err(invalid(format!(
                    "deps dir `{}` is not a plain directory name of the release",
                    shown(&deps.dir)
                )));
            }
            if self.python_version().is_none() {
                return Err(invalid(
                    "installed dependencies need a `python_tag` like `cp311`".into(),
                ));
            }
        }
        for (path, entry) in &self.files {
            validate_relative_path(path)
                .map_err(|m| invalid(format!("file `{}`: {m}", shown(path))))?;
            if path == RELEASE_JSON {
                return Err(invalid(format!(
                    "`{RELEASE_JSON}` must not be listed among the files"
                )));
            }
            if let FileEntry::Symlink { target } = entry {
                validate_link_target(target).map_err(|m| {
                    invalid(format!(
                        "symlink `{}` -> `{}`: {m}",
                        shown(path),
                        shown(target)
                    ))
                })?;
            }
        }
        Ok(())
    }
}

/// The archive a sidecar describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    pub file_name: String,
    pub blake3: Blake3Hash,
    pub size: u64,
}

/// `release.json`: the manifest plus the archive's hash, size and file name.
///
/// The copy at the root of the archive cannot contain the archive's own hash, so it is this same
/// structure with `archive` absent; the reader checks that it equals the sidecar in every other
/// byte (see [`Sidecar::embedded`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveInfo>,
    pub manifest: ReleaseManifest,
}

#[derive(Deserialize)]
struct SchemaProbe {
    schema_version: u32,
}

impl Sidecar {
    pub fn new(manifest: ReleaseManifest, archive: Option<ArchiveInfo>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            archive,
            manifest,
        }
    }

    /// The canonical bytes: pretty JSON with fields in declaration order and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a sidecar always serialises");
        v.push(b'\n');
        v
    }

    /// The copy written inside the archive: this sidecar without the archive section.
    pub fn embedded(&self) -> Sidecar {
        Sidecar {
            archive: None,
            ..self.clone()
        }
    }

    /// The bytes of [`Sidecar::embedded`], without cloning the manifest (it lists every file).
    pub fn embedded_bytes(&self) -> Vec<u8> {
        Self::embedded_bytes_for(self.schema_version, &self.manifest)
    }

    /// BLAKE3 and length of [`Sidecar::embedded_bytes`], computed without materialising them.
    pub fn embedded_digest(&self) -> (Blake3Hash, u64) {
        let mut w = crate::hash::HashingWriter::new(std::io::sink());
        Self::write_embedded(self.schema_version, &self.manifest, &mut w)
            .expect("a sink never fails");
        let (_, hash, len) = w.finish();
        (hash, len)
    }

    /// The embedded copy's bytes for a manifest that has no sidecar yet (the writer's case).
    pub fn embedded_bytes_for(schema_version: u32, manifest: &ReleaseManifest) -> Vec<u8> {
        let mut v = Vec::new();
        Self::write_embedded(schema_version, manifest, &mut v).expect("a Vec never fails");
        v
    }

    /// Writes the embedded copy's bytes for `manifest` (see [`Sidecar::embedded_bytes`]).
    pub fn write_embedded(
        schema_version: u32,
        manifest: &ReleaseManifest,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        #[derive(Serialize)]
        struct View<'a> {
            schema_version: u32,
            manifest: &'a ReleaseManifest,
        }
        serde_json::to_writer_pretty(
            &mut *out,
            &View {
                schema_version,
                manifest,
            },
        )?;
        out.write_all(b"\n")
    }

    /// Parses and validates; `origin` names the source in error messages.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, ManifestError> {
        let parse = |source: serde_json::Error| ManifestError::Parse {
            path: origin.to_owned(),
            message: crate::untrusted::shown(&source.to_string()),
        };
        // Look at the version first so a future format gets "upgrade", not a field error.
        let probe: SchemaProbe = serde_json::from_slice(bytes).map_err(parse)?;
        if probe.schema_version > SCHEMA_VERSION {
            return Err(ManifestError::UnsupportedSchema {
                path: origin.to_owned(),
                found: probe.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        let sidecar: Sidecar = serde_json::from_slice(bytes).map_err(parse)?;
        sidecar.manifest.validate(origin)?;
        if let Some(a) = &sidecar.archive {
            let expected =
                ArtifactRef::new(&sidecar.manifest.app, sidecar.manifest.build, a.blake3)
                    .file_name();
            if a.file_name != expected {
                return Err(ManifestError::Invalid {
                    path: origin.to_owned(),
                    message: format!(
                        "archive file name `{}` should be `{expected}`",
                        crate::untrusted::shown(&a.file_name)
                    ),
                });
            }
        }
        Ok(sidecar)
    }

    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let bytes = std::fs::read(path).map_err(|source| ManifestError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// The artifact this sidecar names, if it is a published (not embedded) sidecar.
    pub fn artifact_ref(&self) -> Option<ArtifactRef> {
        self.archive
            .as_ref()
            .map(|a| ArtifactRef::new(&self.manifest.app, self.manifest.build, a.blake3))
    }
}

/// Names an artifact: app, build and archive hash determine its file name and store keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef {
    pub app: String,
    pub build: BuildNumber,
    pub blake3: Blake3Hash,
}

impl ArtifactRef {
    pub fn new(app: &str, build: BuildNumber, blake3: Blake3Hash) -> Self {
        Self {
            app: app.to_owned(),
            build,
            blake3,
        }
    }

    /// `binarycrate-Build000034-<first 16 hex>.tar.gz`
    pub fn file_name(&self) -> String {
        format!(
            "{}-{:#}-{}.tar.gz",
            self.app,
            self.build,
            self.blake3.short()
        )
    }
}

/// `build-log.json`: what varies between runs, kept out of the artifact and sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildLog {
    pub build: BuildNumber,
    pub artifact: String,
    /// Wall-clock start, Unix seconds.
    pub started_at: i64,
    pub host: String,
    pub total_ms: u64,
    #[serde(default)]
    pub steps: Vec<StepTiming>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub name: String,
    pub duration_ms: u64,
}

/// App names become file names and store key segments: keep them plain.
pub fn validate_app_name(app: &str) -> Result<(), String> {
    let ok = !app.is_empty()
        && app.len() <= 64
        && app
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && app
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid app name `{}`: use lowercase letters, digits, `-` and `_` (at most 64)",
            app.escape_debug()
        ))
    }
}

/// Longest path a release may hold, in bytes: far beyond any real tree, and short enough that
/// the server root plus a temporary directory name in front of it stays below `PATH_MAX`.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest path component, in bytes (`NAME_MAX` of every Linux filesystem).
pub const MAX_NAME_BYTES: usize = 255;

/// What is wrong with a name's length or characters, if anything (shared by every check of a
/// path that came from outside).
pub fn check_name_text(path: &str) -> Result<(), String> {
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "is {} bytes long; release paths have at most {MAX_PATH_BYTES}",
            path.len()
        ));
    }
    if let Some(c) = path.split('/').find(|c| c.len() > MAX_NAME_BYTES) {
        return Err(format!(
            "has a component of {} bytes; a file name has at most {MAX_NAME_BYTES}",
            c.len()
        ));
    }
    if path.chars().any(crate::untrusted::is_unprintable) {
        return Err("contains a control character".into());
    }
    Ok(())
}

/// A symlink target as a manifest may hold it: relative, of a sane length, printable.
pub fn validate_link_target(target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("empty target".into());
    }
    if target.contains('\0') {
        return Err("NUL in target".into());
    }
    check_name_text(target).map_err(|m| format!("target {m}"))
}

/// A manifest path: `/`-separated, relative, no empty, `.` or `..` components, no NUL or other
/// control character, at most [`MAX_PATH_BYTES`] with components of [`MAX_NAME_BYTES`].
pub fn validate_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    if path.contains('\0') {
        return Err("NUL in path".into());
    }
    check_name_text(path).map_err(|m| format!("path {m}"))?;
    for c in path.split('/') {
        match c {
            "" | "." => return Err("empty or `.` component".into()),
            ".." => return Err("`..` component".into()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Sidecar {
        let build = BuildNumber::parse("Build000034").unwrap();
        let mut m = ReleaseManifest::new("binarycrate", build, 1_700_000_000);
        m.builder_version = "0.1.0".into();
        m.commit = "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into();
        m.submodules.insert(
            "cavorite".into(),
            "1111111111111111111111111111111111111111".into(),
        );
        m.submodules.insert(
            "historygraph".into(),
            "2222222222222222222222222222222222222222".into(),
        );
        m.python_tag = Some("cp311".into());
        m.build_steps.push(BuildStep {
            name: "copy-build-number".into(),
            command: vec![
                "cp".into(),
                "binarycrate/binarycrate/settings/build_number.py".into(),
                "front-end/binarycrate/build_number.py".into(),
            ],
        });
        m.wheels.insert(
            "Django-4.2.16-py3-none-any.whl".into(),
            WheelEntry {
                size: 8_000_000,
                blake3: Blake3Hash::of(b"django"),
                sha256: None,
            },
        );
        m.deps = Some(Dependencies {
            dir: DEPS_DIR.into(),
            bytecode: true,
        });
        m.files
            .insert("binarycrate".into(), FileEntry::Dir { mode: Mode::DIR });
        m.files.insert(
            "binarycrate/manage.py".into(),
            FileEntry::File {
                size: 3,
                mode: Mode::EXECUTABLE,
                blake3: Blake3Hash::of(b"py\n"),
            },
        );
        m.files.insert(
            "static-link".into(),
            FileEntry::Symlink {
                target: "binarycrate".into(),
            },
        );
        let archive = ArchiveInfo {
            file_name: ArtifactRef::new("binarycrate", build, Blake3Hash::of(b"archive"))
                .file_name(),
            blake3: Blake3Hash::of(b"archive"),
            size: 1234,
        };
        Sidecar::new(m, Some(archive))
    }

    #[test]
    fn sidecar_snapshot() {
        let mut s = example();
        s.manifest.profile = Some(AppProfile::binarycrate());
        insta::assert_snapshot!(String::from_utf8(s.to_bytes()).unwrap());
    }

    #[test]
    fn a_sidecar_from_before_profiles_still_parses_and_says_so() {
        // `example()` has no profile: exactly what builders wrote before profiles existed.
        let bytes = example().to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("profile"));
        let back = Sidecar::from_bytes(&bytes, "old").unwrap();
        assert_eq!(back.manifest.profile, None);
    }

    #[test]
    fn app_profiles_are_checked_before_a_server_relies_on_them() {
        assert_eq!(AppProfile::binarycrate().validate(), Ok(()));
        let twelve = AppProfile {
            project_dir: String::new(),
            wsgi_module: "shop.wsgi".into(),
            settings_module: "shop.settings".into(),
            static_root: "staticfiles".into(),
            version_hash_file: "shop/version_hash.py".into(),
            production_template: None,
            shared_files: [(".env".to_owned(), "env".to_owned())].into(),
            shared_dirs: [("uploads".to_owned(), "uploads".to_owned())].into(),
            migrate: vec![
                "venv/bin/python".into(),
                "manage.py".into(),
                "migrate".into(),
            ],
        };
        assert_eq!(twelve.validate(), Ok(()));
        let bad = |f: fn(&mut AppProfile)| {
            let mut p = twelve.clone();
            f(&mut p);
            p.validate().unwrap_err()
        };
        assert!(bad(|p| p.static_root = "../x".into()).contains("`..`"));
        assert!(bad(|p| p.wsgi_module = "shop/wsgi".into()).contains("dotted Python module"));
        assert!(bad(|p| p.settings_module = "1shop.settings".into()).contains("dotted"));
        assert!(bad(|p| {
            p.shared_dirs.insert("venv".into(), "v".into());
        })
        .contains("the installer creates"));
        assert!(bad(|p| {
            p.shared_files.insert("a".into(), "../etc".into());
        })
        .contains("plain file name"));
        assert!(bad(|p| {
            p.shared_dirs.insert("uploads/x".into(), "x".into());
        })
        .contains("holds another shared path"));
        assert!(bad(|p| p.migrate.clear()).contains("command line"));
    }

    #[test]
    fn sidecar_round_trips_byte_for_byte() {
        let s = example();
        let bytes = s.to_bytes();
        let back = Sidecar::from_bytes(&bytes, "test").unwrap();
        assert_eq!(back, s);
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.embedded().archive, None);
        assert_eq!(back.embedded_bytes(), back.embedded().to_bytes());
        let bytes = back.embedded_bytes();
        assert_eq!(
            back.embedded_digest(),
            (Blake3Hash::of(&bytes), bytes.len() as u64)
        );
    }

    #[test]
    fn installed_dependencies_name_their_python() {
        let mut m = example().manifest;
        assert_eq!(m.python_version(), Some((3, 11)));
        m.validate("x").unwrap();
        m.python_tag = Some("py3".into());
        assert_eq!(m.python_version(), None);
        assert!(m
            .validate("x")
            .unwrap_err()
            .to_string()
            .contains("python_tag"));
        m.python_tag = Some("cp35".into());
        assert_eq!(m.python_version(), Some((3, 5)));
        for dir in ["venv", "a/b", "../x", ""] {
            m.deps = Some(Dependencies {
                dir: dir.into(),
                bytecode: false,
            });
            assert!(m.validate("x").is_err(), "{dir}");
        }
    }

    #[test]
    fn the_dependency_tree_is_named_by_its_content_only() {
        let mut m = example().manifest;
        let file = |data: &[u8]| FileEntry::File {
            size: data.len() as u64,
            mode: Mode::FILE,
            blake3: Blake3Hash::of(data),
        };
        m.files
            .insert("deps".into(), FileEntry::Dir { mode: Mode::DIR });
        m.files.insert("deps/six.py".into(), file(b"six"));
        let key = m.deps_key().unwrap();
        assert_eq!(key.len(), 32);
        // Another build of the app with the same dependencies: the same tree.
        let mut other = m.clone();
        other.build = BuildNumber::new(9).unwrap();
        other
            .files
            .insert("binarycrate/manage.py".into(), file(b"changed"));
        assert_eq!(other.deps_key().unwrap(), key);
        // Any change below `deps/`, or another Python: another tree.
        let mut changed = m.clone();
        changed.files.insert("deps/six.py".into(), file(b"seven"));
        assert_ne!(changed.deps_key().unwrap(), key);
        let mut added = m.clone();
        added.files.insert("deps/extra.pth".into(), file(b""));
        assert_ne!(added.deps_key().unwrap(), key);
        let mut python = m.clone();
        python.python_tag = Some("cp312".into());
        assert_ne!(python.deps_key().unwrap(), key);
        // Compiled on the server (it writes into the tree), or none: nothing to share.
        m.deps.as_mut().unwrap().bytecode = false;
        assert_eq!(m.deps_key(), None);
        m.deps = None;
        assert_eq!(m.deps_key(), None);
    }

    #[test]
    fn future_schema_is_a_clear_error() {
        let mut v: serde_json::Value = serde_json::from_slice(&example().to_bytes()).unwrap();
        v["schema_version"] = 3.into();
        v["manifest"] = "something new".into();
        let err = Sidecar::from_bytes(v.to_string().as_bytes(), "x/release.json").unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::UnsupportedSchema {
                    found: 3,
                    supported: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade"));
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let mut v: serde_json::Value = serde_json::from_slice(&example().to_bytes()).unwrap();
        v["signed_by"] = "someone".into();
        v["manifest"]["new_field"] = serde_json::json!({"a": 1});
        let back = Sidecar::from_bytes(v.to_string().as_bytes(), "x").unwrap();
        assert_eq!(back, example());
    }

    #[test]
    fn rejects_unsafe_names() {
        let mut s = example();
        s.manifest
            .files
            .insert("../etc/passwd".into(), FileEntry::Dir { mode: Mode::DIR });
        assert!(Sidecar::from_bytes(&s.to_bytes(), "x").is_err());
        let mut s = example();
        s.archive.as_mut().unwrap().file_name = "../../x.tar.gz".into();
        assert!(Sidecar::from_bytes(&s.to_bytes(), "x").is_err());
        let mut s = example();
        s.manifest.app = "Bad App".into();
        assert!(Sidecar::from_bytes(&s.to_bytes(), "x").is_err());
        let mut s = example();
        s.manifest.tag = "Build000035".into();
        assert!(Sidecar::from_bytes(&s.to_bytes(), "x").is_err());
        let text = String::from_utf8(example().to_bytes())
            .unwrap()
            .replace("\"000034\"", "\"00034;\"");
        assert!(Sidecar::from_bytes(text.as_bytes(), "x").is_err());
    }

    #[test]
    fn artifact_name() {
        let r = ArtifactRef::new(
            "binarycrate",
            BuildNumber::parse("000034").unwrap(),
            Blake3Hash::of(b"a"),
        );
        let name = r.file_name();
        assert!(name.starts_with("binarycrate-Build000034-"));
        assert!(name.ends_with(".tar.gz"));
        assert_eq!(name.len(), "binarycrate-Build000034-".len() + 16 + 7);
    }
}
