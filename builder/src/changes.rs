//! What deploying one release over another changes, read from their two manifests alone: the
//! Python packages, the Django migrations, the production template and the static files.
//!
//! This is what `builder deploy --plan` shows before anything is touched, so it needs neither
//! archive: every file's content is identified by its hash in the manifest. Only the template's
//! text diff ([`unified_diff`]) needs the files themselves, which the caller reads.

use std::collections::{BTreeMap, BTreeSet};

use common::manifest::{AppProfile, FileEntry, ReleaseManifest};
use common::{Blake3Hash, BuildNumber};
use serde::Serialize;

/// Everything a deploy from the live build `from` to the target `to` changes, as far as the
/// manifests tell. The application's own code is not summarised here: the commit log between
/// the two builds' commits says that (see [`crate::git::log_between`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseChanges {
    pub from: BuildNumber,
    pub to: BuildNumber,
    /// Packages added, removed or at another version, by normalised name; unchanged ones are
    /// left out.
    pub packages: Vec<PackageChange>,
    /// Migrations the target has and the live build does not: `migrate` will apply them.
    pub migrations_added: Vec<Migration>,
    /// Migrations the live build has and the target does not (a downgrade): the database may
    /// already be ahead of the code being activated.
    pub migrations_removed: Vec<Migration>,
    pub template: TemplateChange,
    pub static_files: StaticChanges,
}

impl ReleaseChanges {
    /// Whether none of what this summarises changes (the application's code still may).
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
            && self.migrations_added.is_empty()
            && self.migrations_removed.is_empty()
            && !self.template.is_change()
            && self.static_files.is_empty()
    }
}

/// One package that differs between the two releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    /// The name normalised as PEP 503 does (`django`, `python-dateutil`).
    pub name: String,
    /// The live build's version; None when the target adds the package.
    pub from: Option<String>,
    /// The target's version; None when the target removes the package.
    pub to: Option<String>,
}

/// A Django migration file of the release (the application's or a dependency's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Migration {
    /// The directory holding `migrations/`: Django's default app label.
    pub app: String,
    /// The file name without `.py` (`0012_alter_user_first_name_max_length`).
    pub name: String,
    /// The file's path in the release.
    pub path: String,
}

/// What happens to the production template, the file the server's own settings are copied
/// from: the installer refuses a changed one without `--template-reviewed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TemplateChange {
    /// Neither release has one.
    NoTemplate,
    Unchanged {
        path: String,
    },
    Changed {
        path: String,
    },
    /// Only the target has one; `path` is the target's.
    Added {
        path: String,
    },
    /// Only the live build has one; `path` is the live build's.
    Removed {
        path: String,
    },
}

impl TemplateChange {
    /// Whether the template's content differs between the two releases.
    pub fn is_change(&self) -> bool {
        matches!(
            self,
            TemplateChange::Changed { .. }
                | TemplateChange::Added { .. }
                | TemplateChange::Removed { .. }
        )
    }
}

/// How many of the static files (collectstatic's output, regular files only) change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StaticChanges {
    pub added: usize,
    pub removed: usize,
    /// Present in both with other content.
    pub changed: usize,
}

impl StaticChanges {
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.removed == 0 && self.changed == 0
    }
}

/// What deploying `to` over the live `from` changes.
pub fn compare(from: &ReleaseManifest, to: &ReleaseManifest) -> ReleaseChanges {
    let (old, new) = (packages(from), packages(to));
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let packages = names
        .into_iter()
        .filter_map(|name| {
            let (a, b) = (old.get(name), new.get(name));
            (a != b).then(|| PackageChange {
                name: name.clone(),
                from: a.cloned(),
                to: b.cloned(),
            })
        })
        .collect();

    let (old, new) = (migrations(from), migrations(to));
    let only_in = |a: &BTreeMap<(String, String), Migration>,
                   b: &BTreeMap<(String, String), Migration>| {
        a.iter()
            .filter(|(key, _)| !b.contains_key(*key))
            .map(|(_, m)| m.clone())
            .collect::<Vec<_>>()
    };

    ReleaseChanges {
        from: from.build,
        to: to.build,
        packages,
        migrations_added: only_in(&new, &old),
        migrations_removed: only_in(&old, &new),
        template: template_change(from, to),
        static_files: static_changes(from, to),
    }
}

/// The release's Python packages: PEP 503 normalised name → version.
///
/// Where the dependencies are installed in the release, their `*.dist-info` directories say
/// what is there; otherwise the vendored wheels' file names do (the server installs those).
/// Names that cannot be parsed are left out rather than guessed.
pub fn packages(m: &ReleaseManifest) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(dir) = installed_deps_dir(m) {
        let prefix = format!("{dir}/");
        let dist_infos: BTreeSet<&str> = m
            .files
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter_map(|rel| rel.split('/').next())
            .filter(|top| top.ends_with(".dist-info"))
            .collect();
        for top in dist_infos {
            if let Some((name, version)) = parse_dist_info(top) {
                out.insert(name, version);
            }
        }
    } else {
        for file in m.wheels.keys() {
            if let Some((name, version)) = parse_distribution_file(file) {
                out.insert(name, version);
            }
        }
    }
    out
}

/// The release's production template path, as its servers see it (its own profile's, or BinaryCrate's); None when
/// the app has none. The caller reads each side's file from here to diff them.
pub fn template_path(m: &ReleaseManifest) -> Option<String> {
    profile(m).production_template
}

/// A unified diff of `old` and `new` (`--- a/path` / `+++ b/path`, hunks with three lines of
/// context); empty when they are equal.
///
/// The text comes from a release archive and the diff goes to a terminal, so control
/// characters other than tabs are escaped on every line.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let diff = similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string();
    let mut out = String::with_capacity(diff.len());
    for line in diff.lines() {
        out.push_str(&common::untrusted::message(line));
        out.push('\n');
    }
    out
}

/// PEP 503: lowercase, and every run of `-`, `_` and `.` becomes one `-`.
fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_run = false;
        }
    }
    out
}

/// A plausible project name and version: both non-empty, the version starting with a digit
/// (PEP 440 versions do, an optional `v` and epochs aside, which builders do not write).
fn name_version(name: &str, version: &str) -> Option<(String, String)> {
    let plausible = !name.is_empty()
        && version.chars().next().is_some_and(|c| c.is_ascii_digit())
        && !version.contains('/');
    plausible.then(|| (normalize_name(name), version.to_owned()))
}

/// `Django-4.2.7-py3-none-any.whl` (PEP 427: `-` only between the five or six fields, the name
/// escaped) or an sdist `python-dateutil-2.8.2.tar.gz` (whose name may hold `-`, so the version
/// is after the last one).
fn parse_distribution_file(file: &str) -> Option<(String, String)> {
    if let Some(stem) = file.strip_suffix(".whl") {
        let fields: Vec<&str> = stem.split('-').collect();
        if !(5..=6).contains(&fields.len()) {
            return None;
        }
        return name_version(fields[0], fields[1]);
    }
    let stem = [".tar.gz", ".tar.bz2", ".tar.xz", ".zip", ".tgz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    let (name, version) = stem.rsplit_once('-')?;
    name_version(name, version)
}

/// `Django-4.2.7.dist-info`; older installers wrote the name unescaped
/// (`python-dateutil-2.8.2.dist-info`), so the version starts after the first `-` followed by
/// a digit.
fn parse_dist_info(dir: &str) -> Option<(String, String)> {
    let stem = dir.strip_suffix(".dist-info")?;
    let at = stem
        .char_indices()
        .find(|&(i, c)| c == '-' && stem[i + 1..].starts_with(|d: char| d.is_ascii_digit()))
        .map(|(i, _)| i)?;
    name_version(&stem[..at], &stem[at + 1..])
}

/// The installed dependencies' directory, when the release has one in its tree.
fn installed_deps_dir(m: &ReleaseManifest) -> Option<&str> {
    let dir = m.deps.as_ref()?.dir.as_str();
    let prefix = format!("{dir}/");
    let present = m.files.contains_key(dir) || m.files.keys().any(|p| p.starts_with(&prefix));
    present.then_some(dir)
}

/// The release's migrations by Django's identity of one, (app label, name): a migration that
/// only moved (the project reorganised, or a dependency now installed rather than a wheel) is
/// the same migration to the database.
fn migrations(m: &ReleaseManifest) -> BTreeMap<(String, String), Migration> {
    let mut out = BTreeMap::new();
    for (path, entry) in &m.files {
        if !matches!(entry, FileEntry::File { .. }) {
            continue;
        }
        let parts: Vec<&str> = path.split('/').collect();
        // `…/<app>/migrations/<name>.py`: the file directly in `migrations/`, so nothing in
        // `__pycache__/` (or any other subdirectory) counts.
        let [.., app, "migrations", file] = parts.as_slice() else {
            continue;
        };
        let Some(name) = file.strip_suffix(".py") else {
            continue;
        };
        if name.is_empty() || name.starts_with("__") {
            continue;
        }
        let key = (app.to_string(), name.to_owned());
        out.entry(key).or_insert_with(|| Migration {
            app: app.to_string(),
            name: name.to_owned(),
            path: path.clone(),
        });
    }
    out
}

/// The profile servers use for the release: its own, or BinaryCrate's for one packaged before
/// profiles existed.
fn profile(m: &ReleaseManifest) -> AppProfile {
    m.profile.clone().unwrap_or_else(AppProfile::binarycrate)
}

/// What identifies an entry's content; directories have none.
#[derive(PartialEq, Eq)]
enum Content<'a> {
    File(Blake3Hash),
    Link(&'a str),
}

fn content(entry: &FileEntry) -> Option<Content<'_>> {
    match entry {
        FileEntry::File { blake3, .. } => Some(Content::File(*blake3)),
        FileEntry::Symlink { target } => Some(Content::Link(target)),
        FileEntry::Dir { .. } => None,
    }
}

/// Each side's template is read at its own profile's path, as the installer reads it: two
/// releases that moved it but kept its text have not changed it. A path the profile names but
/// the tree lacks counts as no template.
fn template_change(from: &ReleaseManifest, to: &ReleaseManifest) -> TemplateChange {
    fn side(m: &ReleaseManifest) -> Option<(String, Content<'_>)> {
        let path = template_path(m)?;
        let c = m.files.get(&path).and_then(content)?;
        Some((path, c))
    }
    let (old, new) = (side(from), side(to));
    match (old, new) {
        (None, None) => TemplateChange::NoTemplate,
        (None, Some((path, _))) => TemplateChange::Added { path },
        (Some((path, _)), None) => TemplateChange::Removed { path },
        (Some((_, a)), Some((path, b))) if a == b => TemplateChange::Unchanged { path },
        (Some(_), Some((path, _))) => TemplateChange::Changed { path },
    }
}

/// The static files compared by their path under each side's static root (what the web server
/// serves from `static/<VERSION_HASH>`), so a moved root alone changes nothing.
fn static_changes(from: &ReleaseManifest, to: &ReleaseManifest) -> StaticChanges {
    let files = |m: &ReleaseManifest| -> BTreeMap<String, Blake3Hash> {
        let prefix = format!("{}/", profile(m).static_root);
        m.files
            .iter()
            .filter_map(|(path, entry)| match entry {
                FileEntry::File { blake3, .. } => {
                    Some((path.strip_prefix(&prefix)?.to_owned(), *blake3))
                }
                _ => None,
            })
            .collect()
    };
    let (old, new) = (files(from), files(to));
    let mut changes = StaticChanges::default();
    for (path, hash) in &new {
        match old.get(path) {
            None => changes.added += 1,
            Some(h) if h != hash => changes.changed += 1,
            Some(_) => {}
        }
    }
    changes.removed = old.keys().filter(|p| !new.contains_key(*p)).count();
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::manifest::{Dependencies, Mode, WheelEntry, DEPS_DIR};

    const TEMPLATE: &str = "binarycrate/binarycrate/settings/production_template.py";
    const STATIC: &str = "binarycrate/public/static";

    fn manifest(build: u32) -> ReleaseManifest {
        ReleaseManifest::new(
            "binarycrate",
            BuildNumber::new(build).unwrap(),
            1_700_000_000,
        )
    }

    fn file(data: &[u8]) -> FileEntry {
        FileEntry::File {
            size: data.len() as u64,
            mode: Mode::FILE,
            blake3: Blake3Hash::of(data),
        }
    }

    fn add(m: &mut ReleaseManifest, path: &str, data: &[u8]) {
        m.files.insert(path.into(), file(data));
    }

    fn wheel(m: &mut ReleaseManifest, name: &str) {
        m.wheels.insert(
            name.into(),
            WheelEntry {
                size: 1,
                blake3: Blake3Hash::of(name.as_bytes()),
                sha256: None,
            },
        );
    }

    /// A release with its dependencies installed, one `*.dist-info` (with a file) per package.
    fn installed(build: u32, dists: &[&str]) -> ReleaseManifest {
        let mut m = manifest(build);
        m.python_tag = Some("cp311".into());
        m.deps = Some(Dependencies {
            dir: DEPS_DIR.into(),
            bytecode: true,
        });
        m.files
            .insert(DEPS_DIR.into(), FileEntry::Dir { mode: Mode::DIR });
        for d in dists {
            let dir = format!("{DEPS_DIR}/{d}.dist-info");
            m.files
                .insert(dir.clone(), FileEntry::Dir { mode: Mode::DIR });
            add(&mut m, &format!("{dir}/METADATA"), d.as_bytes());
        }
        m
    }

    fn change(name: &str, from: Option<&str>, to: Option<&str>) -> PackageChange {
        PackageChange {
            name: name.into(),
            from: from.map(Into::into),
            to: to.map(Into::into),
        }
    }

    #[test]
    fn package_names_are_normalised_as_pep_503_says() {
        assert_eq!(normalize_name("Django"), "django");
        assert_eq!(normalize_name("python_dateutil"), "python-dateutil");
        assert_eq!(normalize_name("Foo.-_Bar"), "foo-bar");
        assert_eq!(normalize_name("zope.interface"), "zope-interface");
    }

    #[test]
    fn wheel_and_sdist_names_are_parsed_or_skipped() {
        let p = |f: &str| parse_distribution_file(f);
        let nv = |n: &str, v: &str| Some((n.to_owned(), v.to_owned()));
        assert_eq!(p("Django-4.2.7-py3-none-any.whl"), nv("django", "4.2.7"));
        assert_eq!(
            p("python_dateutil-2.8.2-py2.py3-none-any.whl"),
            nv("python-dateutil", "2.8.2")
        );
        // With a build tag: six fields.
        assert_eq!(
            p("psycopg2_binary-2.9.9-1-cp311-cp311-manylinux_2_17_x86_64.whl"),
            nv("psycopg2-binary", "2.9.9")
        );
        assert_eq!(
            p("python-dateutil-2.8.2.tar.gz"),
            nv("python-dateutil", "2.8.2")
        );
        assert_eq!(p("cavorite-0.1.zip"), nv("cavorite", "0.1"));
        for bad in [
            "Django.whl",
            "Django-4.2.7.whl",
            "a-b-c-d-e-f-g.whl",
            "-1.0-py3-none-any.whl",
            "Django-latest-py3-none-any.whl",
            "README.txt",
            "noversion.tar.gz",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        assert_eq!(
            parse_dist_info("Django-4.2.7.dist-info"),
            nv("django", "4.2.7")
        );
        assert_eq!(
            parse_dist_info("python-dateutil-2.8.2.dist-info"),
            nv("python-dateutil", "2.8.2")
        );
        assert_eq!(parse_dist_info("weird.dist-info"), None);
        assert_eq!(parse_dist_info("Django-4.2.7.egg-info"), None);
    }

    #[test]
    fn packages_come_from_dist_info_when_installed_else_from_wheels() {
        let mut m = manifest(1);
        wheel(&mut m, "Django-4.2.6-py3-none-any.whl");
        wheel(&mut m, "six-1.16.0-py2.py3-none-any.whl");
        wheel(&mut m, "unparseable.whl");
        let expected: BTreeMap<String, String> = [("django", "4.2.6"), ("six", "1.16.0")]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .into();
        assert_eq!(packages(&m), expected);

        // Both: the installed tree is what the release runs.
        let mut both = installed(2, &["Django-4.2.7", "asgiref-3.7.2"]);
        both.wheels = m.wheels.clone();
        // Files of a package, not dist-info directories, are not packages.
        add(&mut both, "deps/django/__init__.py", b"");
        add(&mut both, "deps/six.py", b"");
        let expected: BTreeMap<String, String> = [("asgiref", "3.7.2"), ("django", "4.2.7")]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .into();
        assert_eq!(packages(&both), expected);

        // A deps entry whose directory is not in the tree: the wheels are what there is.
        let mut declared = m.clone();
        declared.deps = Some(Dependencies {
            dir: DEPS_DIR.into(),
            bytecode: false,
        });
        assert_eq!(packages(&declared), packages(&m));
    }

    #[test]
    fn only_packages_that_differ_are_listed_by_normalised_name() {
        let mut from = manifest(1);
        for w in [
            "Django-4.2.6-py3-none-any.whl",
            "six-1.16.0-py2.py3-none-any.whl",
            "Pillow-10.0.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            "gone-1.0-py3-none-any.whl",
        ] {
            wheel(&mut from, w);
        }
        // The target has them installed, under other spellings of the same names.
        let to = installed(
            2,
            &[
                "django-4.2.7",
                "six-1.16.0",
                "pillow-10.0.0",
                "python_dateutil-2.8.2",
            ],
        );
        let c = compare(&from, &to);
        assert_eq!(
            c.packages,
            vec![
                change("django", Some("4.2.6"), Some("4.2.7")),
                change("gone", Some("1.0"), None),
                change("python-dateutil", None, Some("2.8.2")),
            ]
        );
        // And back: the same packages, the other way round.
        let back = compare(&to, &from);
        assert_eq!(
            back.packages,
            vec![
                change("django", Some("4.2.7"), Some("4.2.6")),
                change("gone", None, Some("1.0")),
                change("python-dateutil", Some("2.8.2"), None),
            ]
        );
        assert_eq!((c.from.get(), c.to.get()), (1, 2));
    }

    #[test]
    fn migrations_added_and_removed_by_app_and_name() {
        let mut from = manifest(1);
        let mut to = manifest(2);
        for m in [&mut from, &mut to] {
            add(m, "binarycrate/shop/migrations/__init__.py", b"");
            add(m, "binarycrate/shop/migrations/0001_initial.py", b"1");
            add(
                m,
                "binarycrate/shop/migrations/__pycache__/0001_initial.cpython-311.pyc",
                b"",
            );
        }
        add(&mut from, "binarycrate/shop/migrations/0002_old.py", b"");
        add(&mut to, "binarycrate/shop/migrations/0002_new.py", b"");
        add(&mut to, "binarycrate/shop/migrations/0003_more.py", b"");
        add(&mut to, "binarycrate/shop/migrations/0003_more.pyc", b"");
        add(&mut to, "binarycrate/shop/migrations/README.md", b"");
        add(&mut to, "binarycrate/shop/migrations/sub/0009_x.py", b"");
        // A dependency's migrations count: they are applied with the upgrade.
        add(
            &mut to,
            "deps/django/contrib/auth/migrations/0012_alter_user_first_name_max_length.py",
            b"",
        );
        // Not a migration: no app directory above `migrations/`, or not a regular file.
        add(&mut to, "migrations/0001_root.py", b"");
        to.files.insert(
            "binarycrate/blog/migrations/0001_link.py".into(),
            FileEntry::Symlink {
                target: "x.py".into(),
            },
        );
        // Moved, same app label and name: the same migration.
        add(&mut from, "old/shop/migrations/0000_moved.py", b"");
        add(&mut to, "new/shop/migrations/0000_moved.py", b"");

        let c = compare(&from, &to);
        let names = |ms: &[Migration]| -> Vec<(String, String)> {
            ms.iter().map(|m| (m.app.clone(), m.name.clone())).collect()
        };
        assert_eq!(
            names(&c.migrations_added),
            vec![
                (
                    "auth".into(),
                    "0012_alter_user_first_name_max_length".into()
                ),
                ("shop".into(), "0002_new".into()),
                ("shop".into(), "0003_more".into()),
            ]
        );
        assert_eq!(
            c.migrations_added[0].path,
            "deps/django/contrib/auth/migrations/0012_alter_user_first_name_max_length.py"
        );
        assert_eq!(
            c.migrations_removed,
            vec![Migration {
                app: "shop".into(),
                name: "0002_old".into(),
                path: "binarycrate/shop/migrations/0002_old.py".into(),
            }]
        );
    }

    #[test]
    fn the_template_is_compared_by_content_at_each_profiles_path() {
        let with = |build: u32, text: Option<&[u8]>| {
            let mut m = manifest(build);
            if let Some(t) = text {
                add(&mut m, TEMPLATE, t);
            }
            m
        };
        let t = |a, b| compare(&with(1, a), &with(2, b)).template;
        let path = TEMPLATE.to_owned();
        assert_eq!(
            t(Some(b"A"), Some(b"A")),
            TemplateChange::Unchanged { path: path.clone() }
        );
        assert_eq!(
            t(Some(b"A"), Some(b"B")),
            TemplateChange::Changed { path: path.clone() }
        );
        assert_eq!(
            t(None, Some(b"B")),
            TemplateChange::Added { path: path.clone() }
        );
        assert_eq!(
            t(Some(b"A"), None),
            TemplateChange::Removed { path: path.clone() }
        );
        // The app declares no template (whatever a file at the default path holds).
        let mut none = with(1, Some(b"A"));
        let mut p = AppProfile::binarycrate();
        p.production_template = None;
        none.profile = Some(p.clone());
        let mut none2 = with(2, Some(b"B"));
        none2.profile = Some(p.clone());
        let c = compare(&none, &none2);
        assert_eq!(c.template, TemplateChange::NoTemplate);
        assert!(c.is_empty());
        // Moved by the target's profile, same text: unchanged, named at its new path.
        let mut moved = manifest(2);
        p.production_template = Some("settings/template.py".into());
        moved.profile = Some(p);
        add(&mut moved, "settings/template.py", b"A");
        assert_eq!(
            compare(&with(1, Some(b"A")), &moved).template,
            TemplateChange::Unchanged {
                path: "settings/template.py".into()
            }
        );
        assert_eq!(
            template_path(&moved).as_deref(),
            Some("settings/template.py")
        );
        assert_eq!(template_path(&manifest(1)).as_deref(), Some(TEMPLATE));
        // The tag a `--json` reader matches on.
        assert_eq!(
            serde_json::to_value(t(Some(b"A"), Some(b"B"))).unwrap(),
            serde_json::json!({"status": "changed", "path": TEMPLATE})
        );
        assert_eq!(
            serde_json::to_value(TemplateChange::NoTemplate).unwrap(),
            serde_json::json!({"status": "no_template"})
        );
    }

    #[test]
    fn static_files_are_counted_under_each_static_root() {
        let mut from = manifest(1);
        let mut to = manifest(2);
        let s = |p: &str| format!("{STATIC}/{p}");
        for m in [&mut from, &mut to] {
            add(m, &s("css/same.css"), b"same");
            m.files.insert(s("css"), FileEntry::Dir { mode: Mode::DIR });
            // Outside the static root: not a static file.
            add(m, "binarycrate/app.py", &[m.build.get() as u8]);
        }
        add(&mut from, &s("css/site.css"), b"old");
        add(&mut to, &s("css/site.css"), b"new");
        add(&mut from, &s("js/gone.js"), b"");
        add(&mut to, &s("js/new.js"), b"");
        add(&mut to, &s("js/new2.js"), b"");
        // Only regular files.
        to.files.insert(
            s("link.css"),
            FileEntry::Symlink {
                target: "css/same.css".into(),
            },
        );
        // A sibling whose name only starts like the root.
        add(&mut to, &format!("{STATIC}x/a.css"), b"");
        let c = compare(&from, &to);
        assert_eq!(
            c.static_files,
            StaticChanges {
                added: 2,
                removed: 1,
                changed: 1
            }
        );
        assert!(!c.is_empty());

        // Another static root in the target's profile: compared by path under each root.
        let mut p = AppProfile::binarycrate();
        p.static_root = "staticfiles".into();
        let mut moved = manifest(3);
        moved.profile = Some(p);
        for (path, entry) in &from.files {
            if let Some(rel) = path.strip_prefix(&format!("{STATIC}/")) {
                moved
                    .files
                    .insert(format!("staticfiles/{rel}"), entry.clone());
            }
        }
        assert!(compare(&from, &moved).static_files.is_empty());
    }

    #[test]
    fn identical_releases_change_nothing() {
        let mut m = installed(1, &["Django-4.2.7"]);
        add(&mut m, TEMPLATE, b"T");
        add(&mut m, "binarycrate/shop/migrations/0001_initial.py", b"");
        add(&mut m, &format!("{STATIC}/a.css"), b"");
        let mut next = m.clone();
        next.build = BuildNumber::new(2).unwrap();
        let c = compare(&m, &next);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(
            c.template,
            TemplateChange::Unchanged {
                path: TEMPLATE.into()
            }
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["from"], "000001");
        assert_eq!(json["to"], "000002");
        assert_eq!(json["static_files"]["added"], 0);
    }

    #[test]
    fn unified_diff_shows_the_changed_line_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        let diff = unified_diff("settings/production_template.py", old, new);
        assert_eq!(
            diff,
            "--- a/settings/production_template.py\n\
             +++ b/settings/production_template.py\n\
             @@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
        assert_eq!(unified_diff("x", old, old), "");
        assert_eq!(unified_diff("x", "", ""), "");
        // Text from the archive cannot drive the terminal.
        let diff = unified_diff("x", "k = 1\n", "k = '\u{1b}[2J'\n");
        assert!(diff.contains("+k = '\\u{1b}[2J'\n"), "{diff}");
        assert!(!diff.contains('\u{1b}'));
    }
}
