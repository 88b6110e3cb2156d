//! `installer prune`: remove old unused releases, their static links, stale temporaries and
//! cached downloads; never the current or the previous good release.

use std::time::Duration;

use common::atomic;
use common::report::{ExitCode, Outcome, Report};

use crate::cli::PruneArgs;
use crate::config::InstallerConfig;
use crate::journal::{release_state, Journal};
use crate::layout::Layout;
use crate::run::finish;
use crate::{lock, release};

pub fn run(args: &PruneArgs, config: &InstallerConfig) -> anyhow::Result<ExitCode> {
    let mut report = Report::new("prune");
    let result = (|| {
        let layout = Layout::new(&config.root);
        layout.check_exists(true)?;
        layout.ensure()?;
        let _lock = lock::acquire(
            &layout.lock_file(),
            Duration::from_secs(config.lock_timeout_secs),
            "installer prune",
        )?;
        let journal = Journal::new(&layout.journal());
        let records = journal.read()?;
        let current = layout.current_build()?;
        let previous = journal.previous_good(current)?;
        let mut kept = 0usize;
        let mut removed = Vec::new();
        for build in layout.releases_on_disk()?.into_iter().rev() {
            if Some(build) == current || Some(build) == previous {
                continue;
            }
            let failed = release_state(build, None, None, &records).is_failed();
            if !failed && kept < args.keep {
                kept += 1;
                continue;
            }
            let dir = layout.release(build);
            let profile = release::profile_at(config, &dir);
            let hash = release::version_hash(&dir, &profile).ok().flatten();
            release::remove_release_dir(&dir)?;
            if let Some(hash) = hash {
                let link = layout.static_dir().join(&hash);
                if std::fs::read_link(&link)
                    .is_ok_and(|t| t.to_string_lossy().contains(&build.tag()))
                {
                    std::fs::remove_file(&link)?;
                }
            }
            atomic::remove_tree(&layout.cache_for(build))?;
            eprintln!("removed {build:#}");
            removed.push(build);
        }
        // Dependency trees no kept release links to any more.
        let removed_deps = release::remove_unused_deps(&layout)?;
        for key in &removed_deps {
            eprintln!("removed the dependency tree `deps/{key}` (no release uses it)");
        }
        for stray in release::stray_temporaries(&layout)? {
            if stray.is_dir() {
                atomic::remove_tree(&stray)?;
            } else {
                std::fs::remove_file(&stray)?;
            }
            eprintln!("removed the stale `{}`", stray.display());
        }
        // Downloads of releases still on disk are not needed again (the release is unpacked).
        for build in layout.releases_on_disk()? {
            atomic::remove_tree(&layout.cache_for(build))?;
        }
        report
            .details
            .insert("removed".into(), serde_json::to_value(&removed)?);
        report
            .details
            .insert("removed_deps".into(), serde_json::to_value(&removed_deps)?);
        report.build = current;
        report.previous_build = previous;
        if removed.is_empty() && removed_deps.is_empty() {
            eprintln!("nothing to prune");
            return Ok(Outcome::NothingToDo);
        }
        Ok(Outcome::Success)
    })();
    finish(report, result, args.json)
}
