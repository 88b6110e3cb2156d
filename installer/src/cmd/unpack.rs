//! `installer unpack`: verify an artifact against its sidecar and unpack it into a new tree.

use std::time::Instant;

use anyhow::Context;
use common::archive::links::Reserved;
use common::archive::reader::{unpack, UnpackOptions};
use common::error::exit_code_for;
use common::manifest::RELEASE_JSON;
use common::report::{ExitCode, Outcome, Report};
use common::Sidecar;

use crate::cli::UnpackArgs;

pub fn run(args: &UnpackArgs) -> anyhow::Result<ExitCode> {
    let mut report = Report::new("unpack");
    let started = Instant::now();
    let result = unpack_verified(args, &mut report);
    report.phase("unpack", started.elapsed(), result.is_ok());
    match result {
        Ok(()) => {
            report.finish(Outcome::Success, None);
            if args.json {
                println!("{}", report.to_json());
            }
            Ok(ExitCode::Success)
        }
        Err(err) if args.json => {
            let code = exit_code_for(err.as_ref());
            let outcome = if code == ExitCode::BadInput {
                Outcome::BadInput
            } else {
                Outcome::Failed
            };
            report.finish(outcome, Some(format!("{err:#}")));
            println!("{}", report.to_json());
            eprintln!("error: {}", common::untrusted::message(&format!("{err:#}")));
            Ok(code)
        }
        Err(err) => Err(err),
    }
}

fn unpack_verified(args: &UnpackArgs, report: &mut Report) -> anyhow::Result<()> {
    let sidecar_path = match &args.sidecar {
        Some(p) => p.clone(),
        None => common::atomic::parent_of(&args.artifact).join(RELEASE_JSON),
    };
    let sidecar = Sidecar::read(&sidecar_path).context("cannot use the sidecar")?;
    report.build = Some(sidecar.manifest.build);
    let options = UnpackOptions {
        max_unpacked_bytes: args.max_unpacked_bytes,
        max_ratio: args.max_ratio,
        reserved: Reserved::installer_owned(),
        ..UnpackOptions::default()
    };
    let summary = unpack(&args.artifact, &sidecar, &args.dest, &options).with_context(|| {
        format!(
            "refused to unpack `{}` (nothing was written to `{}`)",
            args.artifact.display(),
            args.dest.display()
        )
    })?;
    eprintln!(
        "unpacked {:#}: {} files, {} directories, {} symlinks, {} bytes into `{}`",
        sidecar.manifest.build,
        summary.files,
        summary.dirs,
        summary.symlinks,
        summary.bytes,
        args.dest.display()
    );
    for (k, v) in [
        ("files", summary.files),
        ("dirs", summary.dirs),
        ("symlinks", summary.symlinks),
        ("bytes", summary.bytes),
    ] {
        report.details.insert(k.into(), v.into());
    }
    report
        .details
        .insert("dest".into(), args.dest.display().to_string().into());
    Ok(())
}
