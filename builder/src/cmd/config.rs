//! `builder config`: the effective `deploy.toml`, defaults filled in.

use common::report::ExitCode;

use crate::cli::ConfigArgs;
use crate::config::{DeployConfig, DEPLOY_TOML};
use crate::{export, repo};

pub fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let root = repo::root(args.repo.repo.as_deref())?;
    let (config, origin) = match args.tag {
        Some(build) => {
            let tag = build.tag();
            let origin = format!("{DEPLOY_TOML} at {tag}");
            match export::read_file_at_tag(&root, &tag, DEPLOY_TOML)? {
                Some(bytes) => (
                    DeployConfig::parse(&String::from_utf8_lossy(&bytes), &origin)?,
                    origin,
                ),
                None => (
                    DeployConfig::default(),
                    format!("defaults ({tag} has no {DEPLOY_TOML})"),
                ),
            }
        }
        None => {
            let path = root.join(DEPLOY_TOML);
            let origin = if path.is_file() {
                path.display().to_string()
            } else {
                format!("defaults (no `{}`)", path.display())
            };
            (DeployConfig::load_dir(&root)?, origin)
        }
    };
    if args.json {
        let out = serde_json::json!({ "origin": origin, "config": config });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("# effective configuration from {origin}");
        print!("{}", config.to_toml());
    }
    Ok(ExitCode::Success)
}
