//! The database's migrations as a release's own code sees them: which are applied, which the
//! release knows, and how the two compare (`status`, `rollback`).
//!
//! Everything here runs the release's own management command (its `migrate` command line up
//! to `migrate`, e.g. `venv/bin/python binarycrate/manage.py`), in the release, with its
//! settings module and the configuration's `migrate_env`: the same interpreter, code and
//! database settings the activation migrated with.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use common::manifest::AppProfile;
use common::migrations::MigrationGraph;
use serde::Serialize;

use crate::config::InstallerConfig;
use crate::{procs, release};

/// The release's management command: its `migrate` command line without `migrate …`.
pub fn manage_argv(profile: &AppProfile) -> Vec<String> {
    profile
        .migrate
        .iter()
        .take_while(|a| !a.starts_with("migrate"))
        .cloned()
        .collect()
}

/// The environment the release's management commands run with.
pub fn manage_env<'a>(
    config: &'a InstallerConfig,
    profile: &'a AppProfile,
) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<(&str, &str)> = vec![("DJANGO_SETTINGS_MODULE", &profile.settings_module)];
    env.extend(
        config
            .migrate_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    env
}

/// `showmigrations --list` in `dir`: every migration its code has, as `app.name`, and whether
/// the database has it applied.
pub fn listed(config: &InstallerConfig, dir: &Path) -> anyhow::Result<Vec<(String, bool)>> {
    let profile = release::profile_at(config, dir);
    let mut argv = manage_argv(&profile);
    argv.extend(["showmigrations".to_owned(), "--list".to_owned()]);
    let out = procs::output(&argv, dir, &manage_env(config, &profile))?;
    let mut app = String::new();
    let mut found = Vec::new();
    for line in out.lines() {
        if !line.starts_with(' ') {
            app = line.trim().to_owned();
        } else if let Some(rest) = line.trim().strip_prefix("[X] ") {
            found.push((format!("{app}.{}", rest.trim()), true));
        } else if let Some(rest) = line.trim().strip_prefix("[ ] ") {
            found.push((format!("{app}.{}", rest.trim()), false));
        }
    }
    Ok(found)
}

/// Every migration the release in `dir` has, as `app.name`.
pub fn known(config: &InstallerConfig, dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    Ok(listed(config, dir)?.into_iter().map(|(n, _)| n).collect())
}

/// Migrations applied in the database (as the release in `live` sees them) that are not in
/// `known` (another release's [`known`]), in the order `showmigrations` lists them.
pub fn applied_outside(
    config: &InstallerConfig,
    live: &Path,
    known: &BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    Ok(listed(config, live)?
        .into_iter()
        .filter(|(n, applied)| *applied && !known.contains(n))
        .map(|(n, _)| n)
        .collect())
}

/// Asks Django's migration recorder what the database has applied — also what no code on disk
/// knows any more — printed as one JSON list.
const APPLIED_SCRIPT: &str = "import json; from django.db import connection; from django.db.migrations.recorder import MigrationRecorder; print(json.dumps(sorted('%s.%s' % k for k in MigrationRecorder(connection).applied_migrations())))";

/// Every migration the database records as applied, as `app.name`.
pub fn applied(config: &InstallerConfig, dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let profile = release::profile_at(config, dir);
    let mut argv = manage_argv(&profile);
    argv.extend([
        "shell".to_owned(),
        "-c".to_owned(),
        APPLIED_SCRIPT.to_owned(),
    ]);
    let out = procs::output(&argv, dir, &manage_env(config, &profile))?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .context("Django's shell printed no list of applied migrations")?;
    let list: Vec<String> =
        serde_json::from_str(line).context("Django's list of applied migrations")?;
    Ok(list.into_iter().collect())
}

/// The database against the live release's migrations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SchemaState {
    /// Exactly the release's migrations are applied.
    InStep,
    /// Migrations the release does not know are applied (a rollback without `--migrate-down`).
    Ahead { ahead: Vec<String> },
    /// Some of the release's migrations are not applied.
    Behind { behind: Vec<String> },
    /// Both.
    Diverged {
        ahead: Vec<String>,
        behind: Vec<String>,
    },
}

impl SchemaState {
    /// `applied` against what `graph` has.
    pub fn of(applied: &BTreeSet<String>, graph: &MigrationGraph) -> Self {
        let known: BTreeSet<String> = graph.ids().map(|m| m.to_string()).collect();
        let ahead: Vec<String> = applied.difference(&known).cloned().collect();
        let behind: Vec<String> = graph
            .ids()
            .map(|m| m.to_string())
            .filter(|m| !applied.contains(m))
            .collect();
        match (ahead.is_empty(), behind.is_empty()) {
            (true, true) => Self::InStep,
            (false, true) => Self::Ahead { ahead },
            (true, false) => Self::Behind { behind },
            (false, false) => Self::Diverged { ahead, behind },
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Self::InStep => "in step: every migration of the live release is applied, and no other".into(),
            Self::Ahead { ahead } => format!(
                "AHEAD of the live release: {} applied that it does not know (`installer rollback --to` the newer build with them, or `--migrate-down` next time)",
                ahead.join(", ")
            ),
            Self::Behind { behind } => format!(
                "BEHIND the live release: {} not applied (its migrate did not run, or was undone)",
                behind.join(", ")
            ),
            Self::Diverged { ahead, behind } => format!(
                "DIVERGED from the live release: {} applied that it does not know; {} not applied",
                ahead.join(", "),
                behind.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::migrations::MigrationNode;

    fn graph(names: &[&str]) -> MigrationGraph {
        let mut g = MigrationGraph::default();
        for n in names {
            g.apps
                .entry("dashboard".into())
                .or_default()
                .push(MigrationNode {
                    name: (*n).into(),
                    dependencies: vec![],
                    operations: vec![],
                });
        }
        g
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| format!("dashboard.{n}")).collect()
    }

    #[test]
    fn the_database_is_in_step_ahead_behind_or_both() {
        let g = graph(&["0001_initial", "0002_stars"]);
        assert_eq!(
            SchemaState::of(&set(&["0001_initial", "0002_stars"]), &g),
            SchemaState::InStep
        );
        assert_eq!(
            SchemaState::of(&set(&["0001_initial", "0002_stars", "0003_fill"]), &g),
            SchemaState::Ahead {
                ahead: vec!["dashboard.0003_fill".into()]
            }
        );
        assert_eq!(
            SchemaState::of(&set(&["0001_initial"]), &g),
            SchemaState::Behind {
                behind: vec!["dashboard.0002_stars".into()]
            }
        );
        let both = SchemaState::of(&set(&["0001_initial", "0003_fill"]), &g);
        assert!(matches!(both, SchemaState::Diverged { .. }));
        assert!(both.describe().starts_with("DIVERGED"));
        assert_eq!(
            serde_json::to_value(SchemaState::InStep).unwrap(),
            serde_json::json!({"state": "in_step"})
        );
    }

    #[test]
    fn the_management_command_is_the_migrate_line_without_migrate() {
        let mut p = AppProfile::binarycrate();
        p.migrate = vec![
            "venv/bin/python".into(),
            "app/manage.py".into(),
            "migrate".into(),
            "--noinput".into(),
        ];
        assert_eq!(manage_argv(&p), ["venv/bin/python", "app/manage.py"]);
    }
}
