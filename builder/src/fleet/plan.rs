//! `builder deploy --plan`: what a deploy would change, shown before anything changes.
//!
//! The fleet is asked which build each instance runs (`installer status`, read-only), the
//! instances are grouped by live build, and for each group the target's manifest is compared
//! with the live build's ([`crate::changes`]): commits (from the local repository when it has
//! both, else the two manifests' commits), packages, migrations, the production template
//! (with its diff, read from the repository) and static files. Then the stages the rollout
//! would use, from the same ordering and wave sizes as [`super::rollout`]. Nothing is
//! activated; the one command sent is the status query.

use std::collections::BTreeMap;
use std::path::Path;

use common::manifest::ReleaseManifest;
use common::migrations::MigrationStep;
use common::report::ExitCode;
use common::store::ArtifactStore;
use common::BuildNumber;
use serde::Serialize;
use serde_json::json;

use super::rollout::{ordered, stages};
use super::run::{dispatch, installer_line};
use super::summary::{plural, FleetSummary};
use super::{comment, Action, InstallerInvocation, Rate, SendRequest, TransportKind};
use crate::changes::{self, ReleaseChanges, TemplateChange};
use crate::git::{self, CommitRange};

/// Commits listed per group before the rest are counted.
const MAX_COMMITS: usize = 30;

/// What `--plan` needs: the deploy's own settings, checked.
#[derive(Debug)]
pub struct PlanRequest<'a> {
    pub app: &'a str,
    pub target: &'a ReleaseManifest,
    pub store: &'a ArtifactStore,
    /// The application repository, for the commit log and the template's diff.
    pub repo: Option<&'a Path>,
    pub invocation: &'a InstallerInvocation,
    /// The deploy's request: its targets, rates and timeouts (its line is replaced).
    pub request: &'a SendRequest,
    pub transport: TransportKind,
    pub ssm_endpoint: Option<&'a str>,
    pub canary: Option<Rate>,
    pub order: &'a [String],
    pub json: bool,
}

/// The instances on one live build, and what the deploy would change there.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// None: no release is live there yet.
    pub live_build: Option<BuildNumber>,
    pub instances: Vec<String>,
    /// The target is already live: the installer will have nothing to do.
    pub already_live: bool,
    /// The two builds' commits, as their manifests record them.
    pub commit_from: Option<String>,
    pub commit_to: String,
    /// The commit log between them, when the local repository has both.
    pub commits: Option<CommitRange>,
    pub changes: Option<ReleaseChanges>,
    /// The migrations the deploy applies, from the two builds' migration graphs (Django's
    /// loader at packaging), with what undoing them would take; None when either build was
    /// packaged without a graph (then `changes` lists migration files).
    pub migrations: Option<Vec<MigrationStep>>,
    /// The production template's unified diff, when it changed and its text could be read.
    pub template_diff: Option<String>,
    /// What could not be found out, and why.
    pub notes: Vec<String>,
}

/// One stage of the rollout the deploy would run.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStage {
    pub name: String,
    pub instances: Vec<String>,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct DeployPlan {
    pub app: String,
    pub build: BuildNumber,
    pub groups: Vec<Group>,
    /// Instances that did not answer the status query: their live build is unknown; the
    /// deploy would still go to them.
    pub unanswered: Vec<String>,
    pub stages: Vec<PlannedStage>,
}

/// Asks the fleet, compares, prints; exit 0 when every instance answered, else 1.
pub fn execute(p: &PlanRequest<'_>) -> anyhow::Result<ExitCode> {
    let status = Action::Status { verify: false };
    let mut request = p.request.clone();
    request.line = installer_line(p.invocation, &status)?;
    request.comment = format!("{} (deploy plan)", comment(p.app, &status));
    eprintln!(
        "plan: asking every target which build it runs; nothing is activated, nothing changes"
    );
    let sent = dispatch(p.transport, p.ssm_endpoint, &request, &request.line)?;
    let summary = FleetSummary::new(
        status,
        sent.transport,
        sent.command_id,
        sent.targets,
        sent.watched,
    );
    let plan = build(p, &summary)?;
    if p.json {
        let mut v = serde_json::to_value(&plan)?;
        v["command"] = json!("deploy --plan");
        v["exit_code"] = json!(plan_code(&plan, &summary).code());
        println!("{}", serde_json::to_string_pretty(&v)?);
        eprint!("{}", render(&plan));
    } else {
        print!("{}", render(&plan));
    }
    let code = plan_code(&plan, &summary);
    eprintln!("\n{}", closing(&plan, code));
    Ok(code)
}

fn plan_code(plan: &DeployPlan, summary: &FleetSummary) -> ExitCode {
    if summary.instances.is_empty() || !plan.unanswered.is_empty() || summary.interrupted {
        ExitCode::Failed
    } else {
        ExitCode::Success
    }
}

/// The plan from the fleet's answers.
pub fn build(p: &PlanRequest<'_>, summary: &FleetSummary) -> anyhow::Result<DeployPlan> {
    let build = p.target.build;
    let mut by_build: BTreeMap<Option<BuildNumber>, Vec<String>> = BTreeMap::new();
    let mut unanswered = Vec::new();
    for i in &summary.instances {
        match &i.result.report {
            Some(r) => by_build
                .entry(r.build)
                .or_default()
                .push(i.instance.clone()),
            None => unanswered.push(i.instance.clone()),
        }
    }
    let repo = p.repo.and_then(|r| git2::Repository::open(r).ok());
    let mut groups = Vec::new();
    for (live, instances) in by_build {
        groups.push(group(p, repo.as_ref(), live, instances));
    }
    // The biggest group first: that is what most of the fleet goes through.
    groups.sort_by_key(|g| std::cmp::Reverse(g.instances.len()));

    let names: Vec<String> = summary
        .instances
        .iter()
        .map(|i| i.instance.clone())
        .collect();
    let names = ordered(names, p.order)?;
    let stages = stages(names.len(), p.canary, p.request.max_concurrency)
        .into_iter()
        .map(|s| PlannedStage {
            name: s.name,
            instances: s.members.iter().map(|&k| names[k].clone()).collect(),
        })
        .collect();
    Ok(DeployPlan {
        app: p.app.to_owned(),
        build,
        groups,
        unanswered,
        stages,
    })
}

/// One live build's group: the store's manifest of that build against the target's.
fn group(
    p: &PlanRequest<'_>,
    repo: Option<&git2::Repository>,
    live: Option<BuildNumber>,
    instances: Vec<String>,
) -> Group {
    let target = p.target;
    let mut g = Group {
        live_build: live,
        instances,
        already_live: live == Some(target.build),
        commit_from: None,
        commit_to: target.commit.clone(),
        commits: None,
        changes: None,
        migrations: None,
        template_diff: None,
        notes: Vec::new(),
    };
    let Some(live) = live.filter(|_| !g.already_live) else {
        return g;
    };
    let from = match p.store.fetch_sidecar(p.app, live) {
        Ok((sidecar, _)) => sidecar.manifest,
        Err(e) => {
            g.notes.push(format!(
                "{live:#} is not readable in `{}` ({e}): what changes from it is unknown",
                p.store.location()
            ));
            return g;
        }
    };
    g.commit_from = Some(from.commit.clone()).filter(|c| !c.is_empty());
    match (repo, from.commit.is_empty() || target.commit.is_empty()) {
        (_, true) => g
            .notes
            .push("a release without its commit (not packaged from git): no commit log".into()),
        (None, false) => g.notes.push(
            "no application repository here: commits shown as the two builds record them".into(),
        ),
        (Some(repo), false) => {
            match git::log_between(repo, &from.commit, &target.commit, MAX_COMMITS) {
                Ok(Some(range)) => g.commits = Some(range),
                Ok(None) => g.notes.push(
                    "the repository here lacks one of the two commits (fetch it): commits shown as the builds record them"
                        .into(),
                ),
                Err(e) => g.notes.push(format!("cannot read the commit log: {e:#}")),
            }
        }
    }
    if let (Some(new), Some(old)) = (&target.migrations, &from.migrations) {
        g.migrations = Some(new.beyond(old));
    }
    let changes = changes::compare(&from, target);
    if changes.template.is_change() {
        // From the repository when it has both commits; else from the two published artifacts.
        let diff = template_diff(repo, &from, target, &changes.template).or_else(|why| {
            eprintln!("plan: {why}: reading the templates from the two published builds instead");
            template_diff_from_store(p, &from, target, &changes.template)
        });
        match diff {
            Ok(diff) => g.template_diff = Some(diff),
            Err(why) => g
                .notes
                .push(format!("the template's diff is not shown: {why}")),
        }
    }
    g.changes = Some(changes);
    g
}

/// The template's diff, from the two commits in the local repository.
fn template_diff(
    repo: Option<&git2::Repository>,
    from: &ReleaseManifest,
    to: &ReleaseManifest,
    change: &TemplateChange,
) -> Result<String, String> {
    let repo = repo.ok_or("no application repository here to read it from")?;
    let read = |m: &ReleaseManifest| -> Result<String, String> {
        let Some(path) = changes::template_path(m) else {
            return Ok(String::new());
        };
        file_at(repo, &m.commit, &path)
            .map_err(|e| format!("`{path}` at {}: {e}", &m.commit[..m.commit.len().min(12)]))
    };
    let (old, new) = (read(from)?, read(to)?);
    Ok(changes::unified_diff(template_label(change), &old, &new))
}

/// The path a template change is shown under.
fn template_label(change: &TemplateChange) -> &str {
    match change {
        TemplateChange::Changed { path }
        | TemplateChange::Added { path }
        | TemplateChange::Removed { path }
        | TemplateChange::Unchanged { path } => path.as_str(),
        TemplateChange::NoTemplate => "production template",
    }
}

/// The template's diff, from each build's artifact: downloaded and verified against its
/// sidecar, unpacked into a temporary directory by the safe reader, the one file read.
fn template_diff_from_store(
    p: &PlanRequest<'_>,
    from: &ReleaseManifest,
    to: &ReleaseManifest,
    change: &TemplateChange,
) -> Result<String, String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
    let read = |m: &ReleaseManifest| -> Result<String, String> {
        let Some(path) = changes::template_path(m) else {
            return Ok(String::new());
        };
        let dir = tmp.path().join(m.build.tag());
        std::fs::create_dir(&dir).map_err(|e| format!("`{}`: {e}", dir.display()))?;
        let fetched = p
            .store
            .fetch(p.app, m.build, &dir)
            .map_err(|e| format!("{:#}: {e}", m.build))?;
        let tree = dir.join("tree");
        common::archive::reader::unpack(
            &fetched.artifact_path,
            &fetched.sidecar,
            &tree,
            &Default::default(),
        )
        .map_err(|e| format!("{:#}: {e}", m.build))?;
        std::fs::read_to_string(tree.join(&path)).map_err(|e| format!("`{path}`: {e}"))
    };
    let (old, new) = (read(from)?, read(to)?);
    Ok(changes::unified_diff(template_label(change), &old, &new))
}

/// A file's text at a commit.
fn file_at(repo: &git2::Repository, commit: &str, path: &str) -> Result<String, String> {
    let oid = git2::Oid::from_str(commit).map_err(|e| e.message().to_owned())?;
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(|e| e.message().to_owned())?;
    let entry = tree
        .get_path(Path::new(path))
        .map_err(|e| e.message().to_owned())?;
    let blob = entry
        .to_object(repo)
        .and_then(|o| o.peel_to_blob())
        .map_err(|e| e.message().to_owned())?;
    Ok(String::from_utf8_lossy(blob.content()).into_owned())
}

/// `i-1, i-2, … and 26 more`.
fn names(list: &[String], shown: usize) -> String {
    if list.len() <= shown {
        return list.join(", ");
    }
    format!(
        "{} and {} more",
        list[..shown].join(", "),
        list.len() - shown
    )
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

/// The plan in words.
pub fn render(plan: &DeployPlan) -> String {
    let total: usize =
        plan.groups.iter().map(|g| g.instances.len()).sum::<usize>() + plan.unanswered.len();
    let mut out = format!(
        "plan: deploy {:#} of {} to {total} instance{}\n",
        plan.build,
        plan.app,
        plural(total)
    );
    for g in &plan.groups {
        let n = g.instances.len();
        let on = format!("{n} instance{} ({})", plural(n), names(&g.instances, 8));
        out.push('\n');
        match g.live_build {
            _ if g.already_live => {
                out.push_str(&format!(
                    "{:#} already live on {on}: nothing to do there\n",
                    plan.build
                ));
                continue;
            }
            Some(b) => out.push_str(&format!("{b:#} -> {:#} on {on}\n", plan.build)),
            None => out.push_str(&format!(
                "no release live -> {:#} on {on} (a first install)\n",
                plan.build
            )),
        }
        match &g.commits {
            Some(range) => {
                out.push_str(&format!(
                    "  commits: {} new{}\n",
                    range.added.len() + range.added_omitted,
                    if range.removed.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", {} taken away (a downgrade)",
                            range.removed.len() + range.removed_omitted
                        )
                    }
                ));
                for c in &range.added {
                    out.push_str(&format!(
                        "    + {} {} ({}, {})\n",
                        c.id,
                        common::untrusted::message(&c.summary),
                        common::untrusted::message(&c.author),
                        common::when::age(c.time, common::when::now())
                    ));
                }
                if range.added_omitted > 0 {
                    out.push_str(&format!("    + … {} more\n", range.added_omitted));
                }
                for c in &range.removed {
                    out.push_str(&format!(
                        "    - {} {}\n",
                        c.id,
                        common::untrusted::message(&c.summary)
                    ));
                }
                if range.removed_omitted > 0 {
                    out.push_str(&format!("    - … {} more\n", range.removed_omitted));
                }
            }
            None => {
                if let Some(from) = &g.commit_from {
                    out.push_str(&format!(
                        "  commits: {} -> {}\n",
                        short(from),
                        short(&g.commit_to)
                    ));
                }
            }
        }
        if let Some(c) = &g.changes {
            out.push_str(&render_changes(c, g.migrations.as_deref()));
        }
        if let Some(diff) = &g.template_diff {
            for l in diff.lines() {
                out.push_str(&format!("    {l}\n"));
            }
        }
        for n in &g.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
    }
    if !plan.unanswered.is_empty() {
        out.push_str(&format!(
            "\nno answer from {}: their live build is unknown (a deploy would still go to them)\n",
            names(&plan.unanswered, 8)
        ));
    }
    out.push_str("\nstages:\n");
    for s in &plan.stages {
        out.push_str(&format!(
            "  {:<8} {}\n",
            format!("{}:", s.name),
            names(&s.instances, 10)
        ));
    }
    out
}

/// Packages, migrations (from the graphs when both builds have one), template and static
/// files of one group.
fn render_changes(c: &ReleaseChanges, graph: Option<&[MigrationStep]>) -> String {
    let mut out = String::new();
    if c.packages.is_empty() {
        out.push_str("  packages: unchanged\n");
    } else {
        let words: Vec<String> = c
            .packages
            .iter()
            .map(|p| match (&p.from, &p.to) {
                (None, Some(to)) => format!("+{} {to}", p.name),
                (Some(from), None) => format!("-{} {from}", p.name),
                (Some(from), Some(to)) => format!("{} {from} -> {to}", p.name),
                (None, None) => p.name.clone(),
            })
            .collect();
        out.push_str(&format!("  packages: {}\n", words.join(", ")));
    }
    if let Some(steps) = graph {
        if steps.is_empty() {
            out.push_str("  migrations: none to apply\n");
        }
        for m in steps {
            out.push_str(&format!("  migration to apply: {}.{}\n", m.app, m.name));
            for why in &m.destructive {
                out.push_str(&format!(
                    "    DESTRUCTIVE: {why}: older builds cannot run against this schema; a rollback past this build needs `--migrate-down` or a restore\n"
                ));
            }
            for why in &m.irreversible {
                out.push_str(&format!(
                    "    IRREVERSIBLE: {why}: `--migrate-down` cannot undo it\n"
                ));
            }
        }
        for m in &c.migrations_removed {
            out.push_str(&format!(
                "  migration the target does not have: {}.{} (the database stays ahead of the code)\n",
                m.app, m.name
            ));
        }
    } else if c.migrations_added.is_empty() && c.migrations_removed.is_empty() {
        out.push_str("  migrations: none to apply\n");
    } else {
        for m in &c.migrations_added {
            out.push_str(&format!("  migration to apply: {}.{}\n", m.app, m.name));
        }
        for m in &c.migrations_removed {
            out.push_str(&format!(
                "  migration the target does not have: {}.{} (the database stays ahead of the code)\n",
                m.app, m.name
            ));
        }
    }
    out.push_str(&match &c.template {
        TemplateChange::NoTemplate => "  production template: none\n".to_owned(),
        TemplateChange::Unchanged { .. } => "  production template: unchanged\n".to_owned(),
        TemplateChange::Changed { path } => format!(
            "  production template: `{path}` CHANGED: update `shared/` on the servers, then deploy with `--template-reviewed`\n"
        ),
        TemplateChange::Added { path } => format!(
            "  production template: `{path}` ADDED: the servers need their settings file; deploy with `--template-reviewed`\n"
        ),
        TemplateChange::Removed { path } => {
            format!("  production template: `{path}` removed in the target\n")
        }
    });
    let s = &c.static_files;
    out.push_str(&if s.is_empty() {
        "  static files: unchanged\n".to_owned()
    } else {
        format!(
            "  static files: {} changed, {} added, {} removed\n",
            s.changed, s.added, s.removed
        )
    });
    out
}

fn closing(plan: &DeployPlan, code: ExitCode) -> String {
    let builds: Vec<String> = plan
        .groups
        .iter()
        .map(|g| {
            format!(
                "{} on {}",
                g.live_build.map_or("none".into(), |b| b.tag()),
                g.instances.len()
            )
        })
        .collect();
    let mut text = format!(
        "deploy {:#} --plan: {} live build{} ({}), {} stage{}; nothing was changed",
        plan.build,
        plan.groups.len(),
        plural(plan.groups.len()),
        builds.join(", "),
        plan.stages.len(),
        plural(plan.stages.len())
    );
    if !plan.unanswered.is_empty() {
        text.push_str(&format!("; {} did not answer", plan.unanswered.len()));
    }
    if code != ExitCode::Success {
        text.push_str(&format!(" — exit {}", code.code()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::{Migration, PackageChange, StaticChanges};
    use crate::git::CommitLine;

    fn b(n: &str) -> BuildNumber {
        BuildNumber::parse(n).unwrap()
    }

    #[test]
    fn the_plan_reads_group_by_group() {
        let ids = |r: std::ops::RangeInclusive<u32>| -> Vec<String> {
            r.map(|n| format!("i-{n:08}")).collect()
        };
        let changes = ReleaseChanges {
            from: b("000001"),
            to: b("000003"),
            packages: vec![
                PackageChange {
                    name: "django".into(),
                    from: Some("4.2.7".into()),
                    to: Some("4.2.8".into()),
                },
                PackageChange {
                    name: "requests".into(),
                    from: None,
                    to: Some("2.31.0".into()),
                },
            ],
            migrations_added: vec![Migration {
                app: "catalog".into(),
                name: "0002_item_price".into(),
                path: "catalog/migrations/0002_item_price.py".into(),
            }],
            migrations_removed: vec![],
            template: TemplateChange::Changed {
                path: "binarycrate/production_template.py".into(),
            },
            static_files: StaticChanges {
                added: 1,
                removed: 0,
                changed: 2,
            },
        };
        let plan = DeployPlan {
            app: "binarycrate".into(),
            build: b("000003"),
            groups: vec![
                Group {
                    live_build: Some(b("000001")),
                    instances: ids(3..=12),
                    already_live: false,
                    commit_from: Some("a".repeat(40)),
                    commit_to: "b".repeat(40),
                    commits: Some(CommitRange {
                        added: vec![CommitLine {
                            id: "1234567".into(),
                            summary: "Add a price\u{1b}[2J".into(),
                            author: "Ada".into(),
                            time: common::when::now() - 120,
                        }],
                        added_omitted: 3,
                        removed: vec![],
                        removed_omitted: 0,
                    }),
                    changes: Some(changes),
                    migrations: Some(vec![MigrationStep {
                        app: "catalog".into(),
                        name: "0003_drop_colour".into(),
                        irreversible: vec!["RunPython without reverse_code".into()],
                        destructive: vec!["removes the field item.colour".into()],
                    }]),
                    template_diff: Some("--- a/t\n+++ b/t\n-X = 1\n+X = 2\n".into()),
                    notes: vec![],
                },
                Group {
                    live_build: Some(b("000003")),
                    instances: ids(1..=2),
                    already_live: true,
                    commit_from: None,
                    commit_to: "b".repeat(40),
                    commits: None,
                    changes: None,
                    migrations: None,
                    template_diff: None,
                    notes: vec![],
                },
            ],
            unanswered: vec!["i-00000013".into()],
            stages: vec![
                PlannedStage {
                    name: "canary".into(),
                    instances: ids(1..=1),
                },
                PlannedStage {
                    name: "wave 1".into(),
                    instances: ids(2..=13),
                },
            ],
        };
        let text = render(&plan);
        for line in [
            "plan: deploy Build000003 of binarycrate to 13 instances",
            "Build000001 -> Build000003 on 10 instances (i-00000003, i-00000004, i-00000005, i-00000006, i-00000007, i-00000008, i-00000009, i-00000010 and 2 more)",
            "  commits: 4 new",
            "    + … 3 more",
            "  packages: django 4.2.7 -> 4.2.8, +requests 2.31.0",
            "  migration to apply: catalog.0003_drop_colour",
            "    DESTRUCTIVE: removes the field item.colour: older builds cannot run against this schema; a rollback past this build needs `--migrate-down` or a restore",
            "    IRREVERSIBLE: RunPython without reverse_code: `--migrate-down` cannot undo it",
            "  static files: 2 changed, 1 added, 0 removed",
            "    +X = 2",
            "Build000003 already live on 2 instances (i-00000001, i-00000002): nothing to do there",
            "no answer from i-00000013: their live build is unknown (a deploy would still go to them)",
            "  canary:  i-00000001",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        assert!(text.contains("+ 1234567 Add a price"), "{text}");
        assert!(text.contains("2 min ago"), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "a commit message reached the terminal raw"
        );
        assert!(text.contains("CHANGED: update `shared/`"), "{text}");
        assert_eq!(
            closing(&plan, ExitCode::Failed),
            "deploy Build000003 --plan: 2 live builds (Build000001 on 10, Build000003 on 2), 2 stages; nothing was changed; 1 did not answer — exit 1"
        );
    }

    #[test]
    fn the_template_is_read_from_each_builds_commit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let sig =
            git2::Signature::new("t", "t@example.com", &git2::Time::new(1_700_000_000, 0)).unwrap();
        let mut parent: Option<git2::Oid> = None;
        let mut commits = Vec::new();
        for text in ["X = 1\n", "X = 2\n"] {
            let blob = repo.blob(text.as_bytes()).unwrap();
            let mut sub = repo.treebuilder(None).unwrap();
            sub.insert("production_template.py", blob, 0o100644)
                .unwrap();
            let sub = sub.write().unwrap();
            let mut root = repo.treebuilder(None).unwrap();
            root.insert("app", sub, 0o040000).unwrap();
            let tree = repo.find_tree(root.write().unwrap()).unwrap();
            let parents: Vec<git2::Commit> = parent
                .iter()
                .map(|p| repo.find_commit(*p).unwrap())
                .collect();
            let refs: Vec<&git2::Commit> = parents.iter().collect();
            let oid = repo.commit(None, &sig, &sig, "c", &tree, &refs).unwrap();
            parent = Some(oid);
            commits.push(oid.to_string());
        }
        assert_eq!(
            file_at(&repo, &commits[0], "app/production_template.py").unwrap(),
            "X = 1\n"
        );
        assert!(file_at(&repo, &commits[1], "app/missing.py").is_err());
        assert!(file_at(&repo, "not-a-commit", "app/production_template.py").is_err());
    }
}
