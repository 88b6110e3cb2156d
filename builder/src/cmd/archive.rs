//! `builder archive`: a staged tree to a reproducible artifact and sidecar.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use common::archive::writer::{pack, PackOptions};
use common::manifest::{validate_app_name, BuildLog, StepTiming, BUILD_LOG_JSON};
use common::report::ExitCode;
use common::{atomic, error::BadInput, ReleaseManifest};

use crate::cli::ArchiveArgs;

pub fn run(args: &ArchiveArgs) -> anyhow::Result<ExitCode> {
    validate_app_name(&args.app).map_err(BadInput)?;
    if !args.staged_dir.is_dir() {
        return Err(BadInput(format!(
            "staged tree `{}` is not a directory: give the directory to pack",
            args.staged_dir.display()
        ))
        .into());
    }
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let base = ReleaseManifest::new(&args.app, args.build, args.source_date);
    let options = PackOptions {
        threads: args.threads.unwrap_or(0),
        ..PackOptions::default()
    };
    eprintln!(
        "packing `{}` as {:#}",
        args.staged_dir.display(),
        args.build
    );
    let packed = pack(&args.staged_dir, base, &args.out, &options)
        .with_context(|| format!("cannot pack `{}`", args.staged_dir.display()))?;
    let took = started.elapsed();
    let archive = packed
        .sidecar
        .archive
        .as_ref()
        .expect("pack fills the archive section");

    let log = BuildLog {
        build: args.build,
        artifact: archive.file_name.clone(),
        started_at,
        host: hostname(),
        total_ms: took.as_millis() as u64,
        steps: vec![StepTiming {
            name: "archive".into(),
            duration_ms: took.as_millis() as u64,
        }],
    };
    let log_path = args.out.join(BUILD_LOG_JSON);
    atomic::write_file(&log_path, &serde_json::to_vec_pretty(&log)?)?;

    let files = packed.sidecar.manifest.files.len();
    eprintln!(
        "packed {files} entries into {} ({} bytes, BLAKE3 {}) in {:.2}s",
        archive.file_name,
        archive.size,
        archive.blake3,
        took.as_secs_f64()
    );
    if args.json {
        let out = serde_json::json!({
            "artifact": packed.artifact_path,
            "sidecar": packed.sidecar_path,
            "build": args.build,
            "blake3": archive.blake3,
            "size": archive.size,
            "entries": files,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", packed.artifact_path.display());
    }
    Ok(ExitCode::Success)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
