//! `installer os-update`: the server's package maintenance under the deployment lock, and
//! whether a reboot is needed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::report::{ExitCode, Outcome, Report};

use crate::cli::OsUpdateArgs;
use crate::config::InstallerConfig;
use crate::layout::Layout;
use crate::run::finish;
use crate::{lock, procs};

/// Left in `.deploy/` when this command asked the SSM agent for a reboot: the run after the
/// reboot reports it, and does not ask again when the reboot did not clear the need.
const REBOOT_MARKER: &str = "os-update-reboot";

pub fn run(args: &OsUpdateArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let mut report = Report::new("os-update");
    let mut reboot_by_agent = false;
    let result = (|| {
        let layout = Layout::new(&config.root);
        // A server without a root has no release to protect; its packages still get updated.
        let (_lock, marker) = if config.root.is_dir() {
            std::fs::create_dir_all(layout.deploy())
                .with_context(|| format!("cannot create `{}`", layout.deploy().display()))?;
            let t = Instant::now();
            let timeout =
                Duration::from_secs(args.lock_timeout.unwrap_or(config.lock_timeout_secs));
            let held = lock::acquire(&layout.lock_file(), timeout, "installer os-update");
            report.phase("lock", t.elapsed(), held.is_ok());
            (Some(held?), Some(layout.deploy().join(REBOOT_MARKER)))
        } else {
            eprintln!(
                "no server root at `{}`: updating without the deployment lock",
                config.root.display()
            );
            (None, None)
        };
        let rebooted = marker.as_deref().and_then(read_marker);
        if let Some(at) = &rebooted {
            eprintln!("back after the reboot asked for at {at}");
            report.details.insert("rebooted".into(), true.into());
            report
                .details
                .insert("reboot_asked_at".into(), at.clone().into());
        }
        let env = [("DEBIAN_FRONTEND", "noninteractive")];
        for cmd in &config.os_update.commands {
            let t = Instant::now();
            let r = procs::run(cmd, Path::new("/"), &env);
            report.phase(&cmd.join(" "), t.elapsed(), r.is_ok());
            r?;
        }
        let needed = config.os_update.reboot_required_file.exists();
        report
            .details
            .insert("reboot_required".into(), needed.into());
        if let Some(m) = &marker {
            if rebooted.is_some() {
                common::atomic::remove_file_if_exists(m)?;
            }
        }
        if !needed {
            eprintln!("no reboot required");
        } else if !args.reboot {
            let w = "a reboot is required (run again with --reboot, or reboot when convenient)"
                .to_owned();
            eprintln!("{w}");
            report.warnings.push(w);
        } else if rebooted.is_some() {
            // Asking again would reboot forever: say it and let a person look.
            let w = format!(
                "a reboot is still required after the reboot: `{}` is still there; look at the server",
                config.os_update.reboot_required_file.display()
            );
            eprintln!("{w}");
            report.warnings.push(w);
        } else if args.via_ssm {
            if let Some(m) = &marker {
                common::atomic::write_file(m, common::when::utc(common::when::now()).as_bytes())?;
            }
            eprintln!(
                "a reboot is required: asking the SSM agent for it (exit 194); it runs this command again once the server is back"
            );
            report
                .details
                .insert("reboot_requested".into(), true.into());
            reboot_by_agent = true;
        } else {
            eprintln!("a reboot is required: rebooting");
            procs::run(&config.os_update.reboot, Path::new("/"), &[])?;
        }
        Ok(Outcome::Success)
    })();
    let code = finish(report, result, args.json)?;
    Ok(if reboot_by_agent && code == ExitCode::Success {
        ExitCode::RebootBySsm
    } else {
        code
    })
}

/// When the previous run asked for the reboot, if it did.
fn read_marker(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text[..text.len().min(100)])
        .trim()
        .to_owned();
    Some(if text.is_empty() {
        "an unknown time".to_owned()
    } else {
        common::untrusted::shown(&text)
    })
}
