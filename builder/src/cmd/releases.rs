//! `builder releases`: the builds published in the artifact store.

use common::report::ExitCode;

use crate::cli::ReleasesArgs;
use crate::config::DeployConfig;
use crate::repo;
use crate::store::open_store;

pub fn run(args: &ReleasesArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.store, args.repo.repo.as_deref())?;
    let app = match repo::root(args.repo.repo.as_deref()) {
        Ok(root) => DeployConfig::load_dir(&root)?.app,
        Err(_) => common::DEFAULT_APP.to_owned(),
    };
    let builds = store.list_builds(&app)?;
    let mut rows = Vec::new();
    for build in &builds {
        let (sidecar, _) = store.fetch_sidecar(&app, *build)?;
        let archive = sidecar
            .archive
            .expect("fetch_sidecar checks the archive section");
        rows.push(serde_json::json!({
            "build": build,
            "tag": build.tag(),
            "commit": sidecar.manifest.commit,
            "artifact": archive.file_name,
            "size": archive.size,
            "blake3": archive.blake3,
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        eprintln!("no {app} builds published in {}", store.location());
    } else {
        eprintln!("{} {app} builds in {}:", rows.len(), store.location());
        for r in &rows {
            println!(
                "{}  {}  {}",
                r["tag"].as_str().unwrap_or(""),
                r["artifact"].as_str().unwrap_or(""),
                r["commit"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::Success)
}
