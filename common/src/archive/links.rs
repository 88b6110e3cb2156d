//! Symlink rules shared by the writer and the reader: a release's links lead to the release's
//! own entries, and never to what the installer puts in place of an entry on the server.
//!
//! Checking each link's text alone is not enough: `sub/up -> ..` and `sub/esc -> up/../x` each
//! stay inside lexically, yet `sub/esc` resolves to `../x`. And a link that resolves inside the
//! tree can still lead out of it once installed: the installer replaces the server's persistent
//! paths (`production.py`, `media/`) with links into `shared/`, so `static/leak ->
//! ../../settings/production.py` would serve the secrets. So every link is resolved through the
//! manifest as the kernel would resolve it on disk, and judged by where it leads.

use std::collections::{BTreeMap, BTreeSet};

use crate::manifest::{FileEntry, INSTALLER_OWNED};

/// A symlink may only be relative and must resolve (lexically) inside the tree.
pub fn check_link_target(entry: &str, target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("symlink with an empty target".into());
    }
    if target.starts_with('/') {
        return Err(format!("symlink to absolute path `{target}`; only relative links inside the release are allowed"));
    }
    // Start from the link's directory and walk the target's components.
    let mut depth = entry.split('/').count() as i64 - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("symlink to `{target}` leaves the release tree"));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Paths inside a release that the installer, not the archive, decides on the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Created by the installer in a release (its virtualenv, the adopted checkout's marker):
    /// an archive must not contain them.
    pub owned: BTreeSet<String>,
    /// Replaced by the installer with links to the server's own files in `shared/`: an archive
    /// may ship something there (it is replaced), but nothing may link to, into or above them.
    pub linked: BTreeSet<String>,
}

impl Reserved {
    /// The paths every installer creates in a release, and no shared paths.
    pub fn installer_owned() -> Self {
        Self {
            owned: INSTALLER_OWNED.iter().map(|p| (*p).to_owned()).collect(),
            linked: BTreeSet::new(),
        }
    }

    /// These reserved paths plus the server's shared paths.
    pub fn with_linked<I: IntoIterator<Item = String>>(mut self, linked: I) -> Self {
        self.linked.extend(linked);
        self
    }

    /// The owned path `path` is or lies inside, if any: such an entry is refused.
    pub fn owned_by(&self, path: &str) -> Option<&str> {
        self.owned
            .iter()
            .find(|r| is_within(path, r))
            .map(String::as_str)
    }

    /// The linked path `path` is or lies inside, if any: the installer replaces it.
    pub fn linked_by(&self, path: &str) -> Option<&str> {
        self.linked
            .iter()
            .find(|r| is_within(path, r))
            .map(String::as_str)
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        self.owned.iter().chain(self.linked.iter())
    }

    fn describe(&self, r: &str) -> &'static str {
        if self.linked.contains(r) {
            "which the installer replaces with the server's own files in `shared/`"
        } else {
            "which the installer creates on the server"
        }
    }
}

/// `path` is `dir` or inside it.
fn is_within(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Why a link is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkProblem {
    /// Absolute, above the release's root, or a loop the kernel would give up on.
    Escapes,
    /// Resolves to (or through) a path the manifest does not list.
    Missing(String),
    /// Resolves to or through a reserved path.
    Into(String, &'static str),
    /// Resolves to a directory that holds a linked path, which is then reachable through it.
    Above(String, &'static str),
    /// Stands where a reserved path's directory should be: the installer would put the
    /// server's file wherever the link leads.
    Holds(String, &'static str),
}

impl LinkProblem {
    /// How the refusal reads after "symlink `a` -> `b` ".
    pub fn reason(&self) -> String {
        use crate::untrusted::shown;
        match self {
            LinkProblem::Escapes => "leaves the release tree".into(),
            LinkProblem::Missing(p) if p.is_empty() => "resolves to a path the release does not have".into(),
            LinkProblem::Missing(p) => format!(
                "resolves to `{}`, which the release does not have: a link must lead to an entry of the release",
                shown(p)
            ),
            LinkProblem::Into(r, what) => format!("resolves into `{}`, {what}", shown(r)),
            LinkProblem::Above(r, what) => format!(
                "resolves to a directory that holds `{}`, {what}",
                shown(r)
            ),
            LinkProblem::Holds(r, what) => format!(
                "stands where the directory of `{}` belongs, {what}: that path must be reached through real directories",
                shown(r)
            ),
        }
    }
}

/// Most symlinks followed while resolving one link (the kernel's limit).
const MAX_LINK_HOPS: usize = 40;

/// Resolves every symlink of a tree through the tree's other symlinks, as the kernel would, and
/// returns the first `(link, target, problem)` that does not lead to an entry of the tree, or
/// leads to or into a `reserved` path, or above a linked one. Links that are themselves at a linked path are
/// not judged: the installer replaces them.
pub fn find_unsafe_link(
    files: &BTreeMap<String, FileEntry>,
    reserved: &Reserved,
) -> Option<(String, String, LinkProblem)> {
    files.iter().find_map(|(name, entry)| match entry {
        FileEntry::Symlink { target } if reserved.linked_by(name).is_none() => {
            let inside = format!("{name}/");
            if let Some(r) = reserved.all().find(|r| r.starts_with(&inside)) {
                let problem = LinkProblem::Holds(r.clone(), reserved.describe(r));
                return Some((name.clone(), target.clone(), problem));
            }
            resolve(files, reserved, name, target)
                .err()
                .map(|p| (name.clone(), target.clone(), p))
        }
        _ => None,
    })
}

/// Where `link -> target` leads, or why it may not lead there.
fn resolve(
    files: &BTreeMap<String, FileEntry>,
    reserved: &Reserved,
    link: &str,
    target: &str,
) -> Result<String, LinkProblem> {
    if target.starts_with('/') {
        return Err(LinkProblem::Escapes);
    }
    // The resolved directories so far (all real, never links), starting at the link's own.
    let mut at: Vec<&str> = link.split('/').collect();
    at.pop();
    // Components still to walk, the next one last.
    let mut todo: Vec<&str> = target.split('/').rev().collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c {
            "" | "." => {}
            ".." => {
                if at.pop().is_none() {
                    return Err(LinkProblem::Escapes);
                }
            }
            name => {
                at.push(name);
                let here = at.join("/");
                if let Some(r) = reserved.all().find(|r| is_within(&here, r)) {
                    return Err(LinkProblem::Into(r.clone(), reserved.describe(r)));
                }
                match files.get(&here) {
                    Some(FileEntry::Symlink { target: next }) => {
                        hops += 1;
                        if hops > MAX_LINK_HOPS || next.starts_with('/') {
                            return Err(LinkProblem::Escapes);
                        }
                        at.pop();
                        todo.extend(next.split('/').rev());
                    }
                    Some(FileEntry::Dir { .. }) => {}
                    Some(FileEntry::File { .. })
                        if todo.iter().all(|c| c.is_empty() || *c == ".") => {}
                    // A file with more to walk after it is a path the release does not have.
                    Some(FileEntry::File { .. }) => {
                        let rest: Vec<&str> = todo.iter().rev().copied().collect();
                        return Err(LinkProblem::Missing(format!("{here}/{}", rest.join("/"))));
                    }
                    None => return Err(LinkProblem::Missing(here)),
                }
            }
        }
    }
    // What the installer creates is no secret, but the server's own files are: a directory
    // that holds one of their links exposes them to whatever serves the link (nginx).
    let end = at.join("/");
    if let Some(r) = reserved
        .linked
        .iter()
        .find(|r| end.is_empty() || r.starts_with(&format!("{end}/")))
    {
        return Err(LinkProblem::Above(r.clone(), reserved.describe(r)));
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Mode;

    #[test]
    fn link_targets_must_stay_inside() {
        assert!(check_link_target("a/link", "b").is_ok());
        assert!(check_link_target("a/link", "../b").is_ok());
        assert!(check_link_target("a/b/link", "../../c/./d").is_ok());
        assert!(check_link_target("link", "../x").is_err());
        assert!(check_link_target("a/link", "../../x").is_err());
        assert!(check_link_target("a/link", "/etc/passwd").is_err());
        assert!(check_link_target("a/link", "").is_err());
        assert!(check_link_target("a/link", "b/../../..").is_err());
    }

    fn dir() -> FileEntry {
        FileEntry::Dir { mode: Mode::DIR }
    }

    fn file() -> FileEntry {
        FileEntry::File {
            size: 0,
            mode: Mode::FILE,
            blake3: crate::Blake3Hash::of(b""),
        }
    }

    fn link(target: &str) -> FileEntry {
        FileEntry::Symlink {
            target: target.into(),
        }
    }

    fn tree(entries: &[(&str, FileEntry)]) -> BTreeMap<String, FileEntry> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn links_through_links_are_followed() {
        let none = Reserved::default();
        let mut files = tree(&[("sub", dir()), ("x", file()), ("sub/up", link(".."))]);
        assert_eq!(find_unsafe_link(&files, &none), None);
        files.insert("sub/via".into(), link("up/x"));
        assert_eq!(find_unsafe_link(&files, &none), None);
        // Lexically inside, but `up` is the root, so `up/..` is above it.
        files.insert("sub/esc".into(), link("up/../x"));
        assert_eq!(
            find_unsafe_link(&files, &none),
            Some(("sub/esc".into(), "up/../x".into(), LinkProblem::Escapes))
        );
        let loops = tree(&[("a", link("b")), ("b", link("a"))]);
        assert_eq!(
            find_unsafe_link(&loops, &none).map(|p| p.2),
            Some(LinkProblem::Escapes)
        );
    }

    #[test]
    fn links_must_lead_to_entries_of_the_release() {
        let none = Reserved::default();
        let dangling = tree(&[("a", dir()), ("a/l", link("gone.py"))]);
        assert_eq!(
            find_unsafe_link(&dangling, &none).map(|p| p.2),
            Some(LinkProblem::Missing("a/gone.py".into()))
        );
        // A file used as a directory.
        let through_file = tree(&[("f", file()), ("l", link("f/x"))]);
        assert_eq!(
            find_unsafe_link(&through_file, &none).map(|p| p.2),
            Some(LinkProblem::Missing("f/x".into()))
        );
        let fine = tree(&[("f", file()), ("l", link("./f/."))]);
        assert_eq!(find_unsafe_link(&fine, &none), None);
    }

    #[test]
    fn links_to_into_or_above_reserved_paths_are_refused() {
        let reserved = Reserved::installer_owned().with_linked([
            "app/settings/production.py".to_owned(),
            "app/media".to_owned(),
        ]);
        let base = [
            ("app", dir()),
            ("app/settings", dir()),
            ("app/settings/base.py", file()),
            ("app/settings/production.py", file()),
            ("app/media", dir()),
            ("app/media/logo.png", file()),
            ("app/public", dir()),
            ("app/public/static", dir()),
            ("app/public/static/app.css", file()),
        ];
        let with = |extra: (&str, FileEntry)| {
            let mut t = tree(&base);
            t.insert(extra.0.into(), extra.1);
            find_unsafe_link(&t, &reserved).map(|p| p.2)
        };
        assert_eq!(with(("app/public/static/ok.css", link("app.css"))), None);
        assert_eq!(with(("app/b", link("settings/base.py"))), None);
        for (name, target, want) in [
            (
                "app/public/static/leak",
                "../../settings/production.py",
                "app/settings/production.py",
            ),
            ("app/public/static/all", "../../media/..", "app/media"),
            ("app/public/static/up", "../../media/logo.png", "app/media"),
            ("app/x", "../venv/bin/python", "venv"),
            ("app/y", "../legacy.json", "legacy.json"),
        ] {
            match with((name, link(target))) {
                Some(LinkProblem::Into(r, _)) => assert_eq!(r, want, "{name} -> {target}"),
                other => panic!("{name} -> {target}: {other:?}"),
            }
        }
        // Above: the directory reached holds a reserved path.
        assert!(matches!(
            with(("app/public/static/s", link("../../settings"))),
            Some(LinkProblem::Above(r, _)) if r == "app/settings/production.py"
        ));
        assert!(matches!(
            with(("app/public/static/root", link("../../.."))),
            Some(LinkProblem::Above(..))
        ));
        // A link where the settings package belongs would carry `production.py` elsewhere.
        let mut t = tree(&base);
        t.insert("app/public/static/settings".into(), dir());
        t.insert("app/settings".into(), link("public/static/settings"));
        t.retain(|k, _| !k.starts_with("app/settings/"));
        assert!(matches!(
            find_unsafe_link(&t, &reserved).map(|p| p.2),
            Some(LinkProblem::Holds(r, _)) if r == "app/settings/production.py"
        ));
        // A link at a linked path is replaced by the installer, so it is not judged.
        let mut t = tree(&base);
        t.insert("app/media/x".into(), link("../../../outside-is-replaced"));
        assert_eq!(find_unsafe_link(&t, &reserved), None);
        assert_eq!(reserved.owned_by("venv/bin/python"), Some("venv"));
        assert_eq!(reserved.owned_by("venvs/x"), None);
        assert_eq!(reserved.linked_by("app/media/a"), Some("app/media"));
    }
}
