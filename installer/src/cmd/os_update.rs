//! `installer os-update`: the server's package maintenance, and whether a reboot is needed.

use common::report::{ExitCode, Outcome, Report};

use crate::cli::OsUpdateArgs;
use crate::config::InstallerConfig;
use crate::procs;
use crate::run::finish;

pub fn run(args: &OsUpdateArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let mut report = Report::new("os-update");
    let result = (|| {
        let env = [("DEBIAN_FRONTEND", "noninteractive")];
        for cmd in &config.os_update.commands {
            let t = std::time::Instant::now();
            let r = procs::run(cmd, std::path::Path::new("/"), &env);
            report.phase(&cmd.join(" "), t.elapsed(), r.is_ok());
            r?;
        }
        let needed = config.os_update.reboot_required_file.exists();
        report
            .details
            .insert("reboot_required".into(), needed.into());
        if needed {
            if args.reboot {
                eprintln!("a reboot is required: rebooting");
                procs::run(&config.os_update.reboot, std::path::Path::new("/"), &[])?;
            } else {
                let w = "a reboot is required (run again with --reboot, or reboot when convenient)"
                    .to_owned();
                eprintln!("{w}");
                report.warnings.push(w);
            }
        } else {
            eprintln!("no reboot required");
        }
        Ok(Outcome::Success)
    })();
    finish(report, result, args.json)
}
