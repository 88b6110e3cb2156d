//! `builder bootstrap`: put the installer binary on the servers through SSM, where there is no
//! SSH and no AWS CLI — only a shell, `curl` or `wget`, and coreutils.
//!
//! The binary goes to the store once, addressed by its SHA-256
//! ([`common::store::ArtifactStore::tool_key`]); each server then runs one shell script (rendered by
//! [`render_script`], every value in it single-quoted) that fetches it from a presigned URL (or
//! copies it from a file store mounted at the same path), checks it with `sha256sum`, runs it
//! once to prove it starts there, and moves it into place from a temporary file in the same
//! directory, so the path holds the old installer or the new one, never part of one. Sending,
//! watching and the table's layout are the fleet's ([`crate::fleet`]); what the script reports
//! is read back from its `bootstrap-result:` line.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use common::error::{BadInput, FsError};
use common::hash::Sha256Hash;
use common::report::ExitCode;
use common::store::{DownloadSource, PutOutcome};
use serde_json::json;

use crate::cli::BootstrapArgs;
use crate::fleet::run::dispatch;
use crate::fleet::summary::{
    format_duration, last_line, plural, truncate, Instance, Kind, Summary,
};
use crate::fleet::{check_word, shell_quote, Status, MAX_COMMENT_CHARS};
use crate::store::open_store_for_servers;

/// The tool's name in the store and the program name `--version` must start with.
pub const TOOL: &str = "installer";
/// The line the script ends with on standard output, for [`parse_result`].
pub const RESULT_PREFIX: &str = "bootstrap-result: ";
/// How much longer than the command may take a presigned URL stays valid.
const URL_MARGIN: Duration = Duration::from_secs(600);

pub fn run(args: &BootstrapArgs) -> anyhow::Result<ExitCode> {
    let reach = &args.reach;
    let targets = crate::fleet::run::targets(reach)?;
    check_install_path(&args.path)?;
    // Checked before anything is uploaded.
    let config = crate::store::app_config(args.repo.repo.as_deref())?;
    crate::fleet::run::output_location(reach, config.fleet.output_s3.as_deref())?;
    let binary = match &args.installer_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find this program's own path")?
            .with_file_name(TOOL),
    };
    check_binary(&binary, args.installer_binary.is_some())?;
    let (sha256, size) = Sha256Hash::of_file(&binary)?;
    let local_version = local_version(&binary);

    let store = open_store_for_servers(&args.store, args.repo.repo.as_deref(), reach.transport)?;
    let (key, put) = store.put_tool(TOOL, &binary, &sha256)?;
    let location = store.location();
    eprintln!(
        "{} {} ({size} bytes, sha256 {sha256}): {} `{location}/{key}`",
        binary.display(),
        local_version
            .as_deref()
            .unwrap_or("(version not known here)"),
        match put {
            PutOutcome::Created => "uploaded to",
            PutOutcome::AlreadyExists => "already in",
        }
    );
    let timeout = Duration::from_secs(reach.timeout);
    let delivery = reach
        .delivery_timeout
        .map(Duration::from_secs)
        .unwrap_or(timeout);
    let source = store
        .backend()
        .download_source(&key, delivery + timeout + URL_MARGIN)?;

    let script = render_script(&Script {
        path: args.path.clone(),
        sha256,
        size,
        source,
        force: args.force,
    })?;
    let comment: String = format!("builder bootstrap {TOOL} {}", &sha256.to_hex()[..16])
        .chars()
        .take(MAX_COMMENT_CHARS)
        .collect();
    let request = crate::fleet::run::request(
        reach,
        config.fleet.output_s3.as_deref(),
        targets,
        script,
        comment,
    )?;
    let shown = format!(
        "a script that puts this {TOOL} at `{}`{} (`-v` shows each server's output)",
        args.path,
        if args.force {
            ", replacing newer ones"
        } else {
            ""
        }
    );
    let sent = dispatch(
        reach.transport,
        reach.ssm_endpoint.as_deref(),
        &request,
        &shown,
    )?;
    let kind = Bootstrap {
        sha256,
        path: args.path.clone(),
        version: local_version,
    };
    let summary = Summary::new(
        kind,
        sent.transport,
        sent.command_id,
        sent.targets,
        sent.watched,
    );
    summary.show(reach.verbose, reach.json, |v| {
        v["installer"]["key"] = key.into();
        v["installer"]["store"] = location.into();
        v["installer"]["size"] = size.into();
        v["installer"]["uploaded"] = (put == PutOutcome::Created).into();
    })
}

/// The install path: absolute, a file name at the end, no `.` or `..`, no control characters.
pub fn check_install_path(path: &str) -> Result<(), BadInput> {
    check_word("the install path `--path`", path)?;
    let bad = |why: &str| {
        BadInput(format!(
            "invalid `--path` `{path}`: {why}; e.g. `--path /usr/local/bin/installer`"
        ))
    };
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("it must be an absolute path"))?;
    if rest.is_empty() || path.ends_with('/') {
        return Err(bad("it must name a file, not a directory"));
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("empty, `.` and `..` components are not allowed"));
    }
    Ok(())
}

/// The binary must be a regular ELF file: anything else would be installed only to fail.
fn check_binary(path: &Path, given: bool) -> anyhow::Result<()> {
    let hint = if given {
        "pass the installer binary built by `scripts/dist` (or `cargo build --release -p installer`)"
    } else {
        "none is beside this `builder`: pass `--installer-binary FILE`"
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BadInput(format!(
                "installer binary `{}` does not exist: {hint}",
                path.display()
            ))
            .into())
        }
        Err(e) => return Err(FsError::new("cannot read", path, e).into()),
    };
    if !meta.is_file() {
        return Err(BadInput(format!(
            "installer binary `{}` is not a file: {hint}",
            path.display()
        ))
        .into());
    }
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| magic == *b"\x7fELF");
    match read {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(BadInput(format!(
            "installer binary `{}` is not an ELF executable: {hint}",
            path.display()
        ))
        .into()),
    }
}

/// What the binary's own `--version` says after its name, when it runs on this machine (it may
/// not: a binary for the servers need not run here).
fn local_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().next()?.strip_prefix(TOOL)?.trim();
    (out.status.success() && !line.is_empty()).then(|| line.to_owned())
}

/// What the script does on each server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Where the installer goes (checked by [`check_install_path`]).
    pub path: String,
    pub sha256: Sha256Hash,
    /// Its size: the download stops one byte past it, whatever the store holds.
    pub size: u64,
    pub source: DownloadSource,
    /// Replace an installer reporting a newer version.
    pub force: bool,
}

/// The fixed part of the script each server runs (`bootstrap.sh`, linted by `shellcheck`).
const SCRIPT: &str = include_str!("../bootstrap.sh");

/// The shell script (POSIX `sh`, `set -eu`). Every value comes in once, single-quoted, at the
/// top; the rest is [`SCRIPT`], which only ever uses them as `"$name"`.
pub fn render_script(s: &Script) -> Result<String, BadInput> {
    check_install_path(&s.path)?;
    let (url, src) = match &s.source {
        DownloadSource::Url(url) => {
            check_word("the download URL", url)?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(BadInput(format!(
                    "the download URL `{url}` is not an `http(s)://` URL"
                )));
            }
            (url.clone(), String::new())
        }
        DownloadSource::Path(path) => {
            let path = crate::fleet::path_word("the store file", path)?;
            check_word("the store file", &path)?;
            (String::new(), path)
        }
    };
    let values = [
        ("tool", TOOL.to_owned()),
        ("result_prefix", RESULT_PREFIX.to_owned()),
        ("dest", s.path.clone()),
        ("want", s.sha256.to_hex()),
        ("size", s.size.to_string()),
        ("force", if s.force { "1" } else { "0" }.to_owned()),
        ("url", url),
        ("src", src),
    ];
    let mut script = String::from("set -eu\n");
    for (name, value) in values {
        script.push_str(&format!("{name}={}\n", shell_quote(&value)));
    }
    script.push_str(SCRIPT);
    Ok(script)
}

/// What one server's `bootstrap-result:` line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptResult {
    /// `none` (nothing was there), `unknown` (no version reported) or the version.
    pub previous: String,
    pub new: String,
    /// `installed`, `replaced`, `unchanged` or `refused`.
    pub outcome: String,
}

/// The last `bootstrap-result:` line of standard output, if any.
pub fn parse_result(stdout: &str) -> Option<ScriptResult> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(RESULT_PREFIX))?;
    let mut fields = std::collections::BTreeMap::new();
    for word in line.split_whitespace() {
        let (k, v) = word.split_once('=')?;
        fields.insert(k, v);
    }
    Some(ScriptResult {
        previous: (*fields.get("previous")?).to_owned(),
        new: (*fields.get("new")?).to_owned(),
        outcome: (*fields.get("outcome")?).to_owned(),
    })
}

/// How `bootstrap` reads each server: the script's result line.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    pub sha256: Sha256Hash,
    pub path: String,
    /// The binary's version as it reported it here, when it runs here.
    pub version: Option<String>,
}

type Server = Instance<Option<ScriptResult>>;

impl Bootstrap {
    /// The script's own error line, else why there is none.
    pub fn error(&self, i: &Server) -> Option<String> {
        if self.ok(i) {
            return None;
        }
        let mut parts = i.why_not();
        if let Some(line) = last_line(&i.stderr) {
            parts.push(line.strip_prefix("error: ").unwrap_or(line).to_owned());
        } else if i.status == Status::Success {
            parts.push("the script reported no result".into());
        }
        if parts.is_empty() {
            parts.push(i.status.to_string());
        }
        Some(parts.join(": "))
    }

    /// The OUTCOME column.
    pub fn outcome_text(&self, i: &Server) -> String {
        let outcome = i.result.as_ref().map(|r| r.outcome.as_str());
        match (outcome, self.error(i)) {
            (Some("unchanged"), None) => "unchanged: already this installer".into(),
            (Some(o), None) => o.to_owned(),
            (Some("refused"), Some(e)) => format!("refused: {e}"),
            (_, Some(e)) => format!("failed: {e}"),
            (None, None) => "?".into(),
        }
    }
}

impl Kind for Bootstrap {
    type Result = Option<ScriptResult>;

    fn read(&self, stdout: &str) -> Self::Result {
        parse_result(stdout)
    }

    /// The server has this installer at the path now.
    fn ok(&self, i: &Server) -> bool {
        i.exited_ok()
            && i.result.as_ref().is_some_and(|r| {
                matches!(r.outcome.as_str(), "installed" | "replaced" | "unchanged")
            })
    }

    /// 1 when a server does not have it (see the command's help).
    fn failure_code(&self, _failed: &[&Server]) -> ExitCode {
        ExitCode::Failed
    }

    fn header(&self) -> &'static [&'static str] {
        &[
            "INSTANCE", "STATUS", "PREVIOUS", "NEW", "DURATION", "OUTCOME",
        ]
    }

    fn row(&self, i: &Server) -> Vec<String> {
        let version = |f: fn(&ScriptResult) -> &str| {
            i.result
                .as_ref()
                .map(|s| f(s).to_owned())
                .unwrap_or_else(|| "-".into())
        };
        vec![
            i.instance.clone(),
            i.status.to_string(),
            version(|s| &s.previous),
            version(|s| &s.new),
            format_duration(i.duration),
            truncate(&self.outcome_text(i), 160),
        ]
    }

    fn subject(&self) -> String {
        format!(
            "bootstrap {TOOL}{} at {}",
            self.version
                .as_deref()
                .and_then(|v| v.split_whitespace().next())
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            self.path
        )
    }

    fn all_done(&self, total: usize, _only: Option<&str>) -> String {
        format!("all {total} instance{} have it", plural(total))
    }

    fn not_done(&self, failed: usize, total: usize, names: &str) -> String {
        format!(
            "{failed} of {total} instance{} did not get it ({names})",
            plural(total)
        )
    }

    fn json_head(&self) -> serde_json::Value {
        json!({
            "command": "bootstrap",
            "installer": {
                "sha256": self.sha256,
                "version": self.version,
                "path": self.path,
            },
        })
    }

    fn json_instance(&self, i: &Server) -> serde_json::Value {
        json!({
            "previous_version": i.result.as_ref().map(|r| &r.previous),
            "new_version": i.result.as_ref().map(|r| &r.new),
            "outcome": i.result.as_ref().map(|r| &r.outcome),
            "error": self.error(i),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sh(script: &str, cwd: &Path) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(cwd)
            .output()
            .unwrap()
    }

    /// A fake installer: a shell script that prints `installer VERSION (…)`.
    fn fake(path: &Path, version: &str) {
        std::fs::write(
            path,
            format!("#!/bin/sh\necho 'installer {version} (commit fake, glibc >= 2.23)'\n"),
        )
        .unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn paths_are_checked() {
        for good in ["/usr/local/bin/installer", "/opt/it's here/installer"] {
            check_install_path(good).unwrap();
        }
        for bad in [
            "installer",
            "/",
            "/usr/local/bin/",
            "/usr/../bin/installer",
            "/usr//installer",
            "/usr/./installer",
            "/tmp/a\nb",
            "",
        ] {
            assert!(check_install_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn results_are_parsed_from_the_last_result_line() {
        let out = "noise\nbootstrap-result: previous=none new=0.1.0 outcome=installed\ninstaller 0.1.0 (commit x, glibc >= 2.23)\n";
        assert_eq!(
            parse_result(out),
            Some(ScriptResult {
                previous: "none".into(),
                new: "0.1.0".into(),
                outcome: "installed".into()
            })
        );
        assert_eq!(parse_result("bootstrap-result: previous=1\n"), None);
        assert_eq!(parse_result("nothing"), None);
    }

    /// The script itself, run by `sh` against fake installers, with the source a local file:
    /// each decision it makes and that a hostile path is never code.
    #[test]
    fn the_script_installs_keeps_refuses_and_forces() {
        let dir = tempfile::tempdir().unwrap();
        let new_bin = dir.path().join("new-installer");
        fake(&new_bin, "0.2.0");
        let (sha256, size) = Sha256Hash::of_file(&new_bin).unwrap();
        let dest_dir = dir.path().join("bin $(touch pwned) 'q'");
        let dest = dest_dir.join("installer");
        let script = |force: bool| {
            render_script(&Script {
                path: dest.to_str().unwrap().to_owned(),
                sha256,
                size,
                source: DownloadSource::Path(new_bin.clone()),
                force,
            })
            .unwrap()
        };
        let run = |force: bool| sh(&script(force), dir.path());
        let text = |o: &std::process::Output| {
            format!(
                "{:?}\n{}\n{}",
                o.status.code(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };

        // Nothing there: installed (its directory created).
        let o = run(false);
        assert!(o.status.success(), "{}", text(&o));
        let r = parse_result(&String::from_utf8_lossy(&o.stdout)).unwrap();
        assert_eq!(
            (r.previous.as_str(), r.new.as_str(), r.outcome.as_str()),
            ("none", "0.2.0", "installed")
        );
        assert_eq!(Sha256Hash::of_file(&dest).unwrap().0, sha256);
        assert!(!dir.path().join("pwned").exists());

        // The same binary again: nothing to do.
        let o = run(false);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(
            parse_result(&String::from_utf8_lossy(&o.stdout))
                .unwrap()
                .outcome,
            "unchanged"
        );

        // An older one is replaced.
        fake(&dest, "0.1.9");
        let o = run(false);
        assert!(o.status.success(), "{}", text(&o));
        let r = parse_result(&String::from_utf8_lossy(&o.stdout)).unwrap();
        assert_eq!(
            (r.previous.as_str(), r.outcome.as_str()),
            ("0.1.9", "replaced")
        );

        // A newer one is refused and kept, unless forced.
        fake(&dest, "0.10.0");
        let before = std::fs::read(&dest).unwrap();
        let o = run(false);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("newer than 0.2.0"),
            "{}",
            text(&o)
        );
        assert_eq!(
            parse_result(&String::from_utf8_lossy(&o.stdout))
                .unwrap()
                .outcome,
            "refused"
        );
        assert_eq!(std::fs::read(&dest).unwrap(), before);
        let o = run(true);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(Sha256Hash::of_file(&dest).unwrap().0, sha256);

        // A file that is no installer is refused too.
        std::fs::write(&dest, "not an installer").unwrap();
        let o = run(false);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("reports no installer version"));

        // A source that does not match the hash replaces nothing; no temporary file is left.
        fake(&dest, "0.1.0");
        std::fs::write(&new_bin, "tampered").unwrap();
        let o = run(true);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("SHA-256"),
            "{}",
            text(&o)
        );
        assert!(std::fs::read_to_string(&dest).unwrap().contains("0.1.0"));
        let left: Vec<_> = std::fs::read_dir(&dest_dir).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");

        // A source far larger than the installer (replaced in the store) is read no further
        // than one byte past its size, and refused.
        let huge = std::fs::File::create(&new_bin).unwrap();
        huge.set_len(1 << 40).unwrap();
        let o = run(true);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr)
                .contains(&format!("larger than the {size} bytes it should have")),
            "{}",
            text(&o)
        );
        assert!(std::fs::read_to_string(&dest).unwrap().contains("0.1.0"));
        let left: Vec<_> = std::fs::read_dir(&dest_dir).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn urls_must_be_http_and_single_line() {
        let s = |url: &str| Script {
            path: "/usr/local/bin/installer".into(),
            sha256: Sha256Hash::of(b"x"),
            size: 1,
            source: DownloadSource::Url(url.into()),
            force: false,
        };
        let ok = render_script(&s("https://b.s3.amazonaws.com/k?X-Amz-Signature=a&b='c'")).unwrap();
        assert!(ok.contains(r"url='https://b.s3.amazonaws.com/k?X-Amz-Signature=a&b='\''c'\'''"));
        assert!(render_script(&s("ftp://x/y")).is_err());
        assert!(render_script(&s("https://x/y\nreboot")).is_err());
    }
}
