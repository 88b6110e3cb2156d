//! `requirements.txt` as people write it: every requirement pinned — `name==version`, with or
//! without `--hash` lines, or a VCS URL pinned to a full commit — and anything else refused,
//! naming the lines and the command that locks them.
//!
//! The wheels built from it are hashed into the manifest either way, so a release is always
//! verified on the servers; hashes in the file only decide whether a *rebuild* of the same tag
//! must get byte-identical packages from the index (`--require-hashes`).

use std::collections::BTreeMap;

/// How to pin what is not pinned, as the docs describe it.
pub const LOCK_HINT: &str = "pin every requirement: `pip-compile --generate-hashes requirements.in -o requirements.txt` (pip-tools) or `uv pip compile --generate-hashes requirements.in -o requirements.txt` writes `name==version` lines with their hashes; a VCS requirement must name a full commit (`git+https://host/repo.git@<40 hex>#egg=name`)";

/// One requirement line (continuations joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Where it starts in the file, from 1.
    pub line: usize,
    /// The requirement as written, without its options.
    pub spec: String,
    pub pin: Pin,
    /// How many `--hash` options it carries.
    pub hashes: usize,
}

/// What a requirement is pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// `name==version`.
    Version { name: String, version: String },
    /// A VCS URL at a full commit (`git+https://…@<commit>`), with the project name when the
    /// line gives one (`#egg=` or `name @ …`).
    Vcs {
        name: Option<String>,
        url: String,
        commit: String,
    },
}

/// The pinned requirements of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    pub requirements: Vec<Requirement>,
}

impl Requirements {
    /// Every line has hashes: pip checks them (`--require-hashes`).
    pub fn hashed(&self) -> bool {
        !self.requirements.is_empty() && self.requirements.iter().all(|r| r.hashes > 0)
    }

    /// The VCS requirements: URL (without the commit) → commit.
    pub fn vcs(&self) -> BTreeMap<String, String> {
        self.requirements
            .iter()
            .filter_map(|r| match &r.pin {
                Pin::Vcs { url, commit, .. } => Some((url.clone(), commit.clone())),
                Pin::Version { .. } => None,
            })
            .collect()
    }
}

/// Reads a requirements file; the error names every line that is not pinned, and what to do.
pub fn parse(text: &str, origin: &str) -> Result<Requirements, String> {
    let mut requirements = Vec::new();
    let mut refused = Vec::new();
    for (line, logical) in logical_lines(text) {
        let (spec, options) = split_options(&logical);
        if spec.is_empty() {
            // Only options: global ones (`--index-url`, `--find-links`, …) are pip's business;
            // nested files and editables cannot be checked here.
            if let Some(bad) = options.iter().find(|o| {
                [
                    "-r",
                    "--requirement",
                    "-c",
                    "--constraint",
                    "-e",
                    "--editable",
                ]
                .iter()
                .any(|p| {
                    *o == p || o.starts_with(&format!("{p}=")) || o.starts_with(&format!("{p} "))
                })
            }) {
                refused.push(format!(
                    "line {line}: `{bad}` (nested files and editable installs cannot be packaged: inline the pinned requirements)"
                ));
            }
            continue;
        }
        let hashes = options.iter().filter(|o| o.starts_with("--hash")).count();
        match pin_of(&spec) {
            Ok(pin) => requirements.push(Requirement {
                line,
                spec,
                pin,
                hashes,
            }),
            Err(why) => refused.push(format!("line {line}: `{spec}` ({why})")),
        }
    }
    if !refused.is_empty() {
        return Err(format!(
            "`{origin}` has requirements that are not pinned:\n  {}\n{LOCK_HINT}",
            refused.join("\n  ")
        ));
    }
    let hashed: Vec<&Requirement> = requirements.iter().filter(|r| r.hashes > 0).collect();
    if !hashed.is_empty() && hashed.len() != requirements.len() {
        let missing: Vec<String> = requirements
            .iter()
            .filter(|r| r.hashes == 0)
            .map(|r| format!("line {}: `{}`", r.line, r.spec))
            .collect();
        return Err(format!(
            "`{origin}` gives hashes for some requirements but not for these (pip checks all or none):\n  {}\n{LOCK_HINT}; VCS requirements cannot carry hashes, so a file with one has none",
            missing.join("\n  ")
        ));
    }
    Ok(Requirements { requirements })
}

/// Logical lines with the number of their first physical line: comments dropped, `\`
/// continuations joined.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if current.is_empty() {
            start = i + 1;
        }
        let line = strip_comment(raw);
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let done = current.trim().to_owned();
                if !done.is_empty() {
                    out.push((start, done));
                }
                current.clear();
            }
        }
    }
    let done = current.trim().to_owned();
    if !done.is_empty() {
        out.push((start, done));
    }
    out
}

/// A `#` starts a comment at the line's start or after whitespace (not in `…#egg=name`).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return line[..i].trim_end();
        }
    }
    line.trim_end()
}

/// The requirement itself and its options (`--hash=…`, …), each option as written.
fn split_options(line: &str) -> (String, Vec<String>) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut spec = Vec::new();
    let mut options = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if w.starts_with('-') {
            // `--opt value` and `--opt=value` both become one option.
            let takes_value = !w.contains('=')
                && !matches!(w, "--pre" | "--no-deps" | "--require-hashes")
                && words.get(i + 1).is_some_and(|n| !n.starts_with('-'));
            if takes_value && spec.is_empty() {
                options.push(format!("{w} {}", words[i + 1]));
                i += 2;
                continue;
            }
            if takes_value && w == "--hash" {
                options.push(format!("--hash={}", words[i + 1]));
                i += 2;
                continue;
            }
            options.push(w.to_owned());
        } else if options.is_empty() {
            spec.push(w);
        } else {
            // Words after the options belong to them (`--hash` values on their own).
            options.push(w.to_owned());
        }
        i += 1;
    }
    (spec.join(" "), options)
}

const VCS_SCHEMES: [&str; 4] = ["git+", "hg+", "svn+", "bzr+"];

fn pin_of(spec: &str) -> Result<Pin, String> {
    // `name @ url` (PEP 508) or a bare VCS URL.
    let (name, url) = match spec
        .split_once(" @ ")
        .or_else(|| spec.split_once('@').filter(|(n, _)| is_name(n.trim())))
    {
        Some((n, u)) if VCS_SCHEMES.iter().any(|s| u.trim().starts_with(s)) => {
            (Some(n.trim().to_owned()), u.trim())
        }
        _ if VCS_SCHEMES.iter().any(|s| spec.starts_with(s)) => (None, spec),
        _ => return version_pin(spec),
    };
    let url = url.split(';').next().unwrap_or(url).trim();
    let (url, fragment) = url.split_once('#').unwrap_or((url, ""));
    let egg = fragment
        .split('&')
        .find_map(|kv| kv.strip_prefix("egg="))
        .map(str::to_owned);
    // The revision is after the last `@` of the path (not the `user@` of `ssh://git@host`).
    let path_start = url.find("://").map_or(0, |i| i + 3);
    let (base, commit) = match url[path_start..].rsplit_once('@') {
        Some((_, rev)) => (&url[..url.len() - rev.len() - 1], rev),
        None => {
            return Err(
                "a VCS requirement without a commit follows a branch: name a full commit".into(),
            )
        }
    };
    let full =
        (commit.len() == 40 || commit.len() == 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !full {
        return Err(format!(
            "`{commit}` is not a full commit id (a branch, a tag or a short id can move): name the 40-hex commit"
        ));
    }
    Ok(Pin::Vcs {
        name: name.or(egg),
        url: base.to_owned(),
        commit: commit.to_ascii_lowercase(),
    })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'[' | b']' | b',')
        })
}

/// `name[extras]==version[; markers]`.
fn version_pin(spec: &str) -> Result<Pin, String> {
    let requirement = spec.split(';').next().unwrap_or(spec).trim();
    if requirement.contains("://") || requirement.starts_with('.') || requirement.starts_with('/') {
        return Err("a URL or a path, not a pinned version".into());
    }
    let name_end = requirement
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        .unwrap_or(requirement.len());
    let name = &requirement[..name_end];
    let mut rest = requirement[name_end..].trim_start();
    if name.is_empty() {
        return Err("no project name".into());
    }
    if rest.starts_with('[') {
        let close = rest.find(']').ok_or("an unclosed `[extras]`")?;
        rest = rest[close + 1..].trim_start();
    }
    let rest = rest.trim_start_matches('(').trim_end_matches(')').trim();
    let version = rest
        .strip_prefix("===")
        .or_else(|| rest.strip_prefix("=="))
        .map(str::trim);
    match version {
        Some(v) if !v.is_empty() && !v.contains([',', '*', '<', '>', '=', '!', '~', ' ']) => {
            Ok(Pin::Version {
                name: name.to_owned(),
                version: v.to_owned(),
            })
        }
        _ if rest.is_empty() => Err("no version: pin it with `==`".into()),
        _ => Err(format!("`{rest}` is a range: pin one version with `==`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn pins_with_and_without_hashes_are_read() {
        let hashed = "# comment\nasgiref==3.13.0 \\\n    --hash=sha256:aa\ndjango==5.2.19 --hash=sha256:bb \\\n    --hash=sha256:cc\n";
        let r = parse(hashed, "requirements.txt").unwrap();
        assert!(r.hashed());
        assert_eq!(r.requirements.len(), 2);
        assert_eq!(r.requirements[1].hashes, 2);
        assert_eq!(
            r.requirements[1].pin,
            Pin::Version {
                name: "django".into(),
                version: "5.2.19".into()
            }
        );
        let plain = "--index-url https://pypi.org/simple\nDjango==5.2.19  # LTS\nrequests[socks]==2.32.3 ; python_version >= '3.8'\n";
        let r = parse(plain, "requirements.txt").unwrap();
        assert!(!r.hashed());
        assert_eq!(r.requirements.len(), 2);
        assert_eq!(r.requirements[1].line, 3);
    }

    #[test]
    fn vcs_lines_need_a_full_commit() {
        let text = format!(
            "django==5.2.19\ngit+https://github.com/x/cavorite.git@{COMMIT}#egg=cavorite\nhistorygraph @ git+ssh://git@github.com/x/historygraph.git@{}\n",
            COMMIT.to_uppercase()
        );
        let r = parse(&text, "requirements.txt").unwrap();
        assert_eq!(
            r.requirements[1].pin,
            Pin::Vcs {
                name: Some("cavorite".into()),
                url: "git+https://github.com/x/cavorite.git".into(),
                commit: COMMIT.into()
            }
        );
        assert_eq!(
            r.vcs().get("git+ssh://git@github.com/x/historygraph.git"),
            Some(&COMMIT.to_owned())
        );
        for (line, why) in [
            ("git+https://github.com/x/y.git#egg=y", "without a commit"),
            (
                "git+https://github.com/x/y.git@main#egg=y",
                "not a full commit",
            ),
            (
                "git+https://github.com/x/y.git@0123abc#egg=y",
                "not a full commit",
            ),
        ] {
            let e = parse(line, "r.txt").unwrap_err();
            assert!(e.contains(why) && e.contains("line 1"), "{line}: {e}");
        }
    }

    #[test]
    fn unpinned_lines_are_refused_all_at_once_with_the_lock_command() {
        let text = "django>=5.2\nrequests\nsix~=1.16\nflask==3.*\nok==1.0\n-e .\n./local-pkg\nhttps://x/y.whl\n";
        let e = parse(text, "requirements.txt").unwrap_err();
        for n in [1, 2, 3, 4, 6, 7, 8] {
            assert!(e.contains(&format!("line {n}:")), "line {n}: {e}");
        }
        assert!(!e.contains("line 5:"), "{e}");
        assert!(e.contains("pip-compile --generate-hashes"), "{e}");
        assert!(e.contains("uv pip compile --generate-hashes"), "{e}");
    }

    #[test]
    fn hashes_for_some_lines_only_are_refused() {
        let e = parse("a==1 --hash=sha256:aa\nb==2\n", "r.txt").unwrap_err();
        assert!(
            e.contains("line 2: `b==2`") && !e.contains("line 1:"),
            "{e}"
        );
    }
}
