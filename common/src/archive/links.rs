//! Symlink rules shared by the writer and the reader: a release's links stay inside it.

use std::collections::BTreeMap;

use crate::manifest::FileEntry;

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

/// Most symlinks followed while resolving one link (the kernel's limit).
const MAX_LINK_HOPS: usize = 40;

/// Resolves every symlink of a tree through the tree's other symlinks, as the kernel would, and
/// returns the first `(link, target)` that leads outside the tree.
///
/// [`check_link_target`] sees one link's text only: `sub/up -> ..` and `sub/esc -> up/../x`
/// each stay inside lexically, yet `sub/esc` resolves to `../x`. Chains longer than the
/// kernel follows (loops) count as escaping.
pub fn find_escaping_link(files: &BTreeMap<String, FileEntry>) -> Option<(String, String)> {
    files.iter().find_map(|(name, entry)| match entry {
        FileEntry::Symlink { target } if !resolves_inside(files, name, target) => {
            Some((name.clone(), target.clone()))
        }
        _ => None,
    })
}

fn resolves_inside(files: &BTreeMap<String, FileEntry>, link: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
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
                    return false;
                }
            }
            name => {
                at.push(name);
                if let Some(FileEntry::Symlink { target: next }) = files.get(&at.join("/")) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS || next.starts_with('/') {
                        return false;
                    }
                    at.pop();
                    todo.extend(next.split('/').rev());
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn links_through_links_are_followed() {
        let mut files = BTreeMap::new();
        files.insert(
            "sub".to_owned(),
            FileEntry::Dir {
                mode: crate::manifest::Mode::DIR,
            },
        );
        files.insert(
            "sub/up".to_owned(),
            FileEntry::Symlink {
                target: "..".into(),
            },
        );
        assert_eq!(find_escaping_link(&files), None);
        files.insert(
            "sub/esc".to_owned(),
            FileEntry::Symlink {
                target: "up/../x".into(),
            },
        );
        assert_eq!(
            find_escaping_link(&files),
            Some(("sub/esc".into(), "up/../x".into()))
        );
        let mut loops = BTreeMap::new();
        loops.insert("a".to_owned(), FileEntry::Symlink { target: "b".into() });
        loops.insert("b".to_owned(), FileEntry::Symlink { target: "a".into() });
        assert!(find_escaping_link(&loops).is_some());
    }
}
