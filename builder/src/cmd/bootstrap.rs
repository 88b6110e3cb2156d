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
use crate::fleet::run::{dispatch, Dispatched};
use crate::fleet::summary::{
    explain_detail, format_duration, last_line, plural, render_table, truncate,
};
use crate::fleet::watch::InstanceRun;
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
    let request = crate::fleet::run::request(reach, targets, script, comment)?;
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
    let summary = BootstrapSummary::new(sent, sha256, args.path.clone(), local_version);
    if reach.verbose {
        eprint!("{}", summary.full_output());
    }
    let table = if summary.instances.is_empty() {
        String::new()
    } else {
        summary.table()
    };
    if reach.json {
        eprint!("\n{table}");
        let mut v = summary.to_json(reach.verbose);
        v["installer"]["key"] = key.into();
        v["installer"]["store"] = location.into();
        v["installer"]["size"] = size.into();
        v["installer"]["uploaded"] = (put == PutOutcome::Created).into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        eprintln!();
        print!("{table}");
    }
    eprintln!("\n{}", summary.closing_line());
    Ok(summary.exit_code())
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

/// The shell script (POSIX `sh`, `set -eu`). Every value comes in once, single-quoted, at the
/// top; the rest is fixed text that only ever uses them as `"$name"`.
pub fn render_script(s: &Script) -> Result<String, BadInput> {
    check_install_path(&s.path)?;
    let fetch = match &s.source {
        DownloadSource::Url(url) => {
            check_word("the download URL", url)?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(BadInput(format!(
                    "the download URL `{url}` is not an `http(s)://` URL"
                )));
            }
            format!(
                r#"url={url}
if command -v curl >/dev/null 2>&1; then
  {{ curl -fsS --retry 3 "$url" || : >"$tmp.failed"; }} | head -c "$limit" >"$tmp"
  how=curl
elif command -v wget >/dev/null 2>&1; then
  {{ wget -q -O - "$url" || : >"$tmp.failed"; }} | head -c "$limit" >"$tmp"
  how=wget
else
  fail "neither curl nor wget is installed on this server: install one (apt-get install curl)"
fi
check_size
[ ! -e "$tmp.failed" ] || fail "cannot download the installer with $how (an expired URL? run builder bootstrap again)""#,
                url = shell_quote(url)
            )
        }
        DownloadSource::Path(path) => {
            let path = crate::fleet::path_word("the store file", path)?;
            check_word("the store file", &path)?;
            format!(
                r#"src={src}
[ -f "$src" ] || fail "the store file \`$src\` is not on this server: a \`file://\` store must be mounted at the same path on every server (or use an \`s3://\` store)"
head -c "$limit" <"$src" >"$tmp"
check_size"#,
                src = shell_quote(&path)
            )
        }
    };
    Ok(format!(
        r#"set -eu
dest={dest}
want={want}
size={size}
force={force}
result() {{ printf '{RESULT_PREFIX}previous=%s new=%s outcome=%s\n' "$1" "$2" "$3"; }}
fail() {{ printf 'error: %s\n' "$*" >&2; exit 1; }}
# The version an installer reports (`installer 0.1.0 (commit …)`), or nothing.
version_of() {{
  line=$("$1" --version 2>/dev/null | head -n 1) || return 0
  case "$line" in {TOOL}\ *) ;; *) return 0 ;; esac
  v=${{line#{TOOL} }}
  v=${{v%% *}}
  case "$v" in ''|*[!0-9A-Za-z.+~-]*) return 0 ;; esac
  printf '%s' "$v"
}}
# Succeeds when version $1 is newer than $2 (MAJOR.MINOR.PATCH, compared as numbers).
newer() {{
  awk -v a="$1" -v b="$2" 'BEGIN {{ split(a, x, "."); split(b, y, ".");
    for (i = 1; i <= 3; i++) {{ p = x[i] + 0; q = y[i] + 0; if (p > q) exit 0; if (p < q) exit 1 }}
    exit 1 }}'
}}
sum_of() {{ sha256sum < "$1" | cut -d ' ' -f 1; }}
command -v sha256sum >/dev/null 2>&1 || fail "sha256sum is not installed on this server (coreutils)"
previous=none
if [ -e "$dest" ] || [ -L "$dest" ]; then
  [ -f "$dest" ] || fail "\`$dest\` exists and is not a file: nothing was changed"
  previous=$(version_of "$dest")
  [ -n "$previous" ] || previous=unknown
  if [ "$(sum_of "$dest")" = "$want" ]; then
    result "$previous" "$previous" unchanged
    echo "\`$dest\` is already this installer (sha256 $want): nothing to do"
    exit 0
  fi
fi
dir=$(dirname -- "$dest")
[ -d "$dir" ] || mkdir -p -- "$dir"
tmp=$(mktemp "$dir/.{TOOL}.bootstrap.XXXXXX")
trap 'rm -f -- "$tmp" "$tmp.failed"' EXIT
# At most one byte more than the installer has is written: a store object replaced by a huge
# one cannot fill this server's disk.
limit=$((size + 1))
check_size() {{
  [ "$(wc -c <"$tmp")" -le "$size" ] || fail "the stored installer is larger than the $size bytes it should have: the store object was replaced; nothing was replaced here"
}}
{fetch}
got=$(sum_of "$tmp")
[ "$got" = "$want" ] || fail "the downloaded installer's SHA-256 is $got, not $want: nothing was replaced"
chmod 0755 "$tmp"
new=$(version_of "$tmp")
if [ -z "$new" ]; then
  why=$("$tmp" --version 2>&1 | head -n 2 | tr '\n' ' ') || true
  fail "the new installer does not run on this server ($(getconf GNU_LIBC_VERSION 2>/dev/null || echo glibc unknown)): $why"
fi
if [ "$previous" != none ] && [ "$force" != 1 ]; then
  if [ "$previous" = unknown ]; then
    result unknown "$new" refused
    fail "\`$dest\` exists but reports no installer version: not replaced (--force replaces it)"
  fi
  if newer "$previous" "$new"; then
    result "$previous" "$new" refused
    fail "\`$dest\` is installer $previous, newer than $new: not replaced (--force replaces it)"
  fi
fi
# On disk before it takes the name, so a crash leaves the old installer or the whole new one.
sync
mv -f -- "$tmp" "$dest"
trap - EXIT
after=$("$dest" --version 2>&1) || fail "the installed \`$dest\` does not run: $after"
if [ "$previous" = none ]; then outcome=installed; else outcome=replaced; fi
result "$previous" "$new" "$outcome"
echo "$after""#,
        dest = shell_quote(&s.path),
        want = shell_quote(&s.sha256.to_hex()),
        size = s.size,
        force = if s.force { "1" } else { "0" },
    ))
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

/// One server's result.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapResult {
    pub instance: String,
    pub status: Status,
    pub detail: Option<String>,
    pub exit_code: Option<i32>,
    pub duration: Option<Duration>,
    pub result: Option<ScriptResult>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

impl BootstrapResult {
    pub fn from_run(run: InstanceRun) -> Self {
        Self {
            instance: run.state.instance,
            status: run.state.status,
            detail: run.state.detail,
            exit_code: run.output.exit_code.or(run.state.exit_code),
            duration: run.output.duration.or(run.state.duration),
            result: parse_result(&run.output.stdout),
            stdout: run.output.stdout,
            stderr: run.output.stderr,
            truncated: run.output.truncated,
        }
    }

    /// The server has this installer at the path now.
    pub fn ok(&self) -> bool {
        self.status == Status::Success
            && self.exit_code.unwrap_or(0) == 0
            && self.result.as_ref().is_some_and(|r| {
                matches!(r.outcome.as_str(), "installed" | "replaced" | "unchanged")
            })
    }

    /// The script's own error line, else why there is none.
    pub fn error(&self) -> Option<String> {
        if self.ok() {
            return None;
        }
        let mut parts: Vec<String> = Vec::new();
        if let Some(d) = self
            .detail
            .as_deref()
            .filter(|d| *d != self.status.as_str())
        {
            parts.push(explain_detail(d));
        }
        if let Some(line) = last_line(&self.stderr) {
            parts.push(line.strip_prefix("error: ").unwrap_or(line).to_owned());
        } else if self.status == Status::Success {
            parts.push("the script reported no result".into());
        }
        if parts.is_empty() {
            parts.push(self.status.to_string());
        }
        Some(parts.join(": "))
    }

    /// The OUTCOME column.
    pub fn outcome_text(&self) -> String {
        let outcome = self.result.as_ref().map(|r| r.outcome.as_str());
        match (outcome, self.error()) {
            (Some("unchanged"), None) => "unchanged: already this installer".into(),
            (Some(o), None) => o.to_owned(),
            (Some("refused"), Some(e)) => format!("refused: {e}"),
            (_, Some(e)) => format!("failed: {e}"),
            (None, None) => "?".into(),
        }
    }
}

/// Every server's result.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapSummary {
    pub transport: &'static str,
    pub command_id: String,
    pub targets: String,
    pub sha256: Sha256Hash,
    pub path: String,
    /// The binary's version as it reported it here, when it runs here.
    pub version: Option<String>,
    pub instances: Vec<BootstrapResult>,
    pub interrupted: bool,
    pub gave_up: Option<String>,
}

impl BootstrapSummary {
    pub fn new(
        sent: Dispatched,
        sha256: Sha256Hash,
        path: String,
        version: Option<String>,
    ) -> Self {
        Self {
            transport: sent.transport,
            command_id: sent.command_id,
            targets: sent.targets,
            sha256,
            path,
            version,
            instances: sent
                .watched
                .instances
                .into_iter()
                .map(BootstrapResult::from_run)
                .collect(),
            interrupted: sent.watched.interrupted,
            gave_up: sent.watched.gave_up,
        }
    }

    /// 0 when every server has the installer, else 1 (see the command's help).
    pub fn exit_code(&self) -> ExitCode {
        if !self.instances.is_empty()
            && self.instances.iter().all(BootstrapResult::ok)
            && !self.interrupted
            && self.gave_up.is_none()
        {
            ExitCode::Success
        } else {
            ExitCode::Failed
        }
    }

    pub fn table(&self) -> String {
        let version = |r: &BootstrapResult, f: fn(&ScriptResult) -> &str| {
            r.result
                .as_ref()
                .map(|s| f(s).to_owned())
                .unwrap_or_else(|| "-".into())
        };
        let rows: Vec<Vec<String>> = self
            .instances
            .iter()
            .map(|i| {
                vec![
                    i.instance.clone(),
                    i.status.to_string(),
                    version(i, |s| &s.previous),
                    version(i, |s| &s.new),
                    format_duration(i.duration),
                    truncate(&i.outcome_text(), 160),
                ]
            })
            .collect();
        render_table(
            &[
                "INSTANCE", "STATUS", "PREVIOUS", "NEW", "DURATION", "OUTCOME",
            ],
            &rows,
        )
    }

    /// Every server's full output, for `-v`.
    pub fn full_output(&self) -> String {
        let mut out = String::new();
        for i in &self.instances {
            for (name, text) in [
                ("standard output", &i.stdout),
                ("standard error", &i.stderr),
            ] {
                out.push_str(&format!("──── {}: {name} ────\n", i.instance));
                out.push_str(text);
                if !text.is_empty() && !text.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        out
    }

    pub fn closing_line(&self) -> String {
        let what = format!(
            "bootstrap {TOOL}{} at {}",
            self.version
                .as_deref()
                .and_then(|v| v.split_whitespace().next())
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            self.path
        );
        if self.instances.is_empty() {
            return format!(
                "{what}: no instance matched the targets ({}); nothing ran — exit 1",
                self.targets
            );
        }
        let total = self.instances.len();
        let failed: Vec<&str> = self
            .instances
            .iter()
            .filter(|i| !i.ok())
            .map(|i| i.instance.as_str())
            .collect();
        let mut text = if failed.is_empty() {
            format!("{what}: all {total} instance{} have it", plural(total))
        } else {
            format!(
                "{what}: {} of {total} instance{} did not get it ({})",
                failed.len(),
                plural(total),
                failed.join(", ")
            )
        };
        if self.interrupted {
            text.push_str("; interrupted and cancelled");
        }
        if let Some(g) = &self.gave_up {
            text.push_str(&format!("; {g}"));
        }
        let code = self.exit_code();
        if code != ExitCode::Success {
            text.push_str(&format!(" — exit {}", code.code()));
        }
        text
    }

    pub fn to_json(&self, verbose: bool) -> serde_json::Value {
        let instances: Vec<serde_json::Value> = self
            .instances
            .iter()
            .map(|i| {
                let mut v = json!({
                    "instance": i.instance,
                    "status": i.status.as_str(),
                    "status_detail": i.detail,
                    "exit_code": i.exit_code,
                    "duration_ms": i.duration.map(|d| d.as_millis() as u64),
                    "previous_version": i.result.as_ref().map(|r| &r.previous),
                    "new_version": i.result.as_ref().map(|r| &r.new),
                    "outcome": i.result.as_ref().map(|r| &r.outcome),
                    "ok": i.ok(),
                    "error": i.error(),
                });
                if verbose {
                    v["stdout"] = i.stdout.clone().into();
                    v["stderr"] = i.stderr.clone().into();
                }
                v
            })
            .collect();
        json!({
            "command": "bootstrap",
            "installer": {
                "sha256": self.sha256,
                "version": self.version,
                "path": self.path,
            },
            "transport": self.transport,
            "command_id": self.command_id,
            "targets": self.targets,
            "instances": instances,
            "interrupted": self.interrupted,
            "gave_up": self.gave_up,
            "exit_code": self.exit_code().code(),
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
