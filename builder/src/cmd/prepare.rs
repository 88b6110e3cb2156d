//! `builder prepare`: the manual procedure's "preparing the code", with git2 and all or nothing.
//!
//! First everything is read and checked (state, clean tree, branches, identity, the remote's
//! refs with `--push`), then everything is computed as new git objects only: the merge commit,
//! the rewritten `build_number.py`, the build commit, the annotated tag and develop's new
//! commit. Only then does anything change: the work tree and index when HEAD is on master or
//! develop (a checkout of that branch's new commit, tried as a dry run first), then the refs,
//! each compare-and-swap against the value read at the start. Any failure puts back every ref,
//! the index and the work tree. `--push` pushes master, the tag and develop last; when the
//! remote took none of them, the local repository is put back as well.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use common::build_number::BuildNumberLine;
use common::error::BadInput;
use common::report::ExitCode;
use common::BuildNumber;
use git2::build::TreeUpdateBuilder;
use git2::{BranchType, FileMode, ObjectType, Oid, Repository, RepositoryState, Signature};

use crate::cli::PrepareArgs;
use crate::config::DeployConfig;
use crate::git::{self, short, RefJournal};
use crate::repo;

const MASTER: &str = "refs/heads/master";
const DEVELOP: &str = "refs/heads/develop";

const IDENTITY_HELP: &str = "git has no identity to sign the merge, the build commit and the \
    tag with: set one with `git config user.name \"Your Name\"` and `git config user.email \
    you@example.com` (add `--global` for every repository), then run builder prepare again";

pub fn run(args: &PrepareArgs) -> anyhow::Result<ExitCode> {
    let root = repo::root(args.repo.repo.as_deref())?;
    let config = DeployConfig::load_dir(&root)?;
    let repository = Repository::open(&root).map_err(|e| {
        BadInput(format!(
            "cannot open the git repository at `{}`: {}",
            root.display(),
            e.message()
        ))
    })?;
    // The update fills the test-only fields in test builds.
    #[allow(clippy::needless_update)]
    let options = Options {
        push: args.push,
        remote: args.remote.clone(),
        dry_run: args.dry_run,
        build_number_file: config.django.build_number_file.clone(),
        ..Options::default()
    };
    let prepared = prepare(&repository, &options)?;
    if args.json {
        let out = serde_json::json!({
            "tag": prepared.build.tag(),
            "build": prepared.build,
            "dry_run": args.dry_run,
            "master": prepared.master.to_string(),
            "develop": prepared.develop.to_string(),
            "merged": prepared.merged,
            "pushed": prepared.pushed,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", prepared.build.tag());
    }
    Ok(ExitCode::Success)
}

/// What [`prepare`] is asked to do.
#[derive(Default)]
pub struct Options {
    /// Push master, the tag and develop to `remote` afterwards.
    pub push: bool,
    /// The remote to push to; also where `develop` comes from when there is no local one.
    pub remote: String,
    /// Print the plan and change nothing.
    pub dry_run: bool,
    /// `django.build_number_file` from `deploy.toml`, relative to the repository root.
    pub build_number_file: String,
    #[cfg(test)]
    hooks: tests::Hooks,
}

/// What [`prepare`] did, or in a dry run would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub build: BuildNumber,
    /// master's new commit (the build commit). In a dry run: an object that was never written.
    pub master: Oid,
    /// develop's new commit. In a dry run: an object that was never written.
    pub develop: Oid,
    /// Whether develop was merged into master with a merge commit.
    pub merged: bool,
    /// Whether master, the tag and develop were pushed.
    pub pushed: bool,
}

/// Where HEAD was at the start; it is there again at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Head {
    Branch(String),
    Detached(Oid),
}

impl Head {
    fn describe(&self) -> String {
        match self {
            Head::Branch(r) => r.strip_prefix("refs/heads/").unwrap_or(r).to_owned(),
            Head::Detached(o) => format!("detached at {}", short(*o)),
        }
    }
}

/// Where develop comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DevelopSource {
    Local,
    /// Only `<remote>/develop` exists: a local develop tracking it is created.
    RemoteTracking(String),
}

/// Everything computed before anything changes.
#[derive(Debug)]
struct Plan {
    master: Oid,
    develop: Oid,
    develop_source: DevelopSource,
    merge_commit: Option<Oid>,
    file_number: u32,
    highest_tag: Option<BuildNumber>,
    next: BuildNumber,
    build_commit: Oid,
    tag_object: Oid,
    new_develop: Oid,
    develop_merge: bool,
}

impl Plan {
    fn tag_ref(&self) -> String {
        format!("refs/tags/{}", self.next.tag())
    }

    /// The new commit of HEAD's branch when HEAD is on master or develop.
    fn checkout_target(&self, head: &Head) -> Option<Oid> {
        match head {
            Head::Branch(r) if r == MASTER => Some(self.build_commit),
            Head::Branch(r) if r == DEVELOP => Some(self.new_develop),
            _ => None,
        }
    }
}

/// Runs `builder prepare` on an open repository (its configuration supplies the identity and
/// the remotes). Progress goes to stderr.
pub fn prepare(repo: &Repository, opts: &Options) -> anyhow::Result<Prepared> {
    let Some(workdir) = repo.workdir().map(Path::to_owned) else {
        return Err(BadInput(format!(
            "`{}` is a bare repository: run builder prepare in a clone with a work tree",
            repo.path().display()
        ))
        .into());
    };
    if repo.state() != RepositoryState::Clean {
        return Err(BadInput(format!(
            "the repository is in the middle of an operation ({:?}): finish it or abort it \
             (e.g. `git merge --abort`, `git rebase --abort`), then run builder prepare again",
            repo.state()
        ))
        .into());
    }
    let head = read_head(repo)?;
    let dirty = git::uncommitted_changes(repo)?;
    if !dirty.is_empty() {
        return Err(BadInput(format!(
            "the work tree has uncommitted changes:\n  {}\ncommit them or stash them \
             (`git stash`), then run builder prepare again (untracked files may stay)",
            dirty.join("\n  ")
        ))
        .into());
    }
    let signature = repo
        .signature()
        .map_err(|_| BadInput(IDENTITY_HELP.to_owned()))?;
    let master = repo.refname_to_id(MASTER).map_err(|_| {
        BadInput(format!(
            "there is no local branch `master`: create it from the remote (`git branch master \
             {}/master`), then run builder prepare again",
            opts.remote
        ))
    })?;
    let (develop, develop_source) = find_develop(repo, &opts.remote)?;
    let remote = if opts.push {
        let url = git::remote_url(repo, &opts.remote)?;
        Some((url, git::remote_refs(repo, &opts.remote)?))
    } else {
        None
    };

    if opts.dry_run {
        // A second handle whose new objects go to memory only, so not even objects are written.
        let scratch = Repository::open(&workdir).context("cannot reopen the repository")?;
        scratch.set_config(&repo.config()?)?;
        let odb = scratch.odb()?;
        let mempack = odb.add_new_mempack_backend(1000)?;
        let plan = make_plan(&scratch, opts, &signature, master, develop, develop_source)?;
        check_before_changing(&scratch, opts, &head, &plan, remote.as_ref())?;
        print_dry_run(&scratch, opts, &head, &plan, remote.as_ref());
        mempack.reset()?;
        return Ok(Prepared {
            build: plan.next,
            master: plan.build_commit,
            develop: plan.new_develop,
            merged: plan.merge_commit.is_some(),
            pushed: false,
        });
    }

    let plan = make_plan(repo, opts, &signature, master, develop, develop_source)?;
    check_before_changing(repo, opts, &head, &plan, remote.as_ref())?;
    print_plan(opts, &head, &plan);

    let mut applied = Applied {
        journal: RefJournal::new(repo),
        restore: None,
        config: None,
    };
    if let Err(e) = apply(repo, opts, &head, &plan, &mut applied) {
        return Err(undo(repo, applied, e));
    }
    report_applied(&head, &plan);

    let mut pushed = false;
    if let Some((url, _)) = &remote {
        #[cfg(test)]
        if let Some(hook) = &opts.hooks.before_push {
            hook();
        }
        if let Err(e) = push(repo, opts, &plan, url) {
            return Err(match e {
                PushFailure::NothingPushed(e) => undo(
                    repo,
                    applied,
                    e.context(format!(
                        "nothing was pushed to `{}`: pull master and develop (the remote may \
                         have moved), then run builder prepare --push again",
                        opts.remote
                    )),
                ),
                PushFailure::Other(e) => e,
            });
        }
        pushed = true;
    }
    Ok(Prepared {
        build: plan.next,
        master: plan.build_commit,
        develop: plan.new_develop,
        merged: plan.merge_commit.is_some(),
        pushed,
    })
}

fn read_head(repo: &Repository) -> anyhow::Result<Head> {
    let head = repo
        .find_reference("HEAD")
        .context("cannot read HEAD of the repository")?;
    match head.symbolic_target().ok().flatten() {
        Some(target) => {
            if repo.refname_to_id(target).is_err() {
                return Err(BadInput(format!(
                    "HEAD is on `{target}`, which has no commit yet: check out master or \
                     develop (`git checkout develop`), then run builder prepare again"
                ))
                .into());
            }
            Ok(Head::Branch(target.to_owned()))
        }
        None => Ok(Head::Detached(
            head.target()
                .context("HEAD is neither a branch nor a commit")?,
        )),
    }
}

fn find_develop(repo: &Repository, remote: &str) -> anyhow::Result<(Oid, DevelopSource)> {
    if let Ok(oid) = repo.refname_to_id(DEVELOP) {
        return Ok((oid, DevelopSource::Local));
    }
    let tracking = format!("{remote}/develop");
    match repo.find_branch(&tracking, BranchType::Remote) {
        Ok(branch) => {
            let oid = branch
                .get()
                .target()
                .with_context(|| format!("`{tracking}` points to no commit"))?;
            Ok((oid, DevelopSource::RemoteTracking(tracking)))
        }
        Err(_) => Err(BadInput(format!(
            "there is no branch `develop`, neither local nor `{tracking}`: fetch it \
             (`git fetch {remote}`) or create it, then run builder prepare again"
        ))
        .into()),
    }
}

/// Computes every new object; moves nothing.
fn make_plan(
    repo: &Repository,
    opts: &Options,
    sig: &Signature<'_>,
    master: Oid,
    develop: Oid,
    develop_source: DevelopSource,
) -> anyhow::Result<Plan> {
    let master_commit = repo
        .find_commit(master)
        .context("master does not point to a commit")?;
    let develop_commit = repo
        .find_commit(develop)
        .context("develop does not point to a commit")?;
    let develop_in_master = develop == master || repo.graph_descendant_of(master, develop)?;

    let merged_tree = if develop_in_master {
        master_commit.tree()?
    } else {
        if repo.merge_base(master, develop).is_err() {
            return Err(BadInput(
                "master and develop have no common history, so develop cannot be merged into \
                 master: check that both are the application's branches"
                    .to_owned(),
            )
            .into());
        }
        let mut index = repo
            .merge_commits(&master_commit, &develop_commit, None)
            .context("cannot merge develop into master")?;
        if index.has_conflicts() {
            let mut paths = Vec::new();
            for conflict in index.conflicts()? {
                let conflict = conflict?;
                if let Some(e) = conflict.our.or(conflict.their).or(conflict.ancestor) {
                    let p = String::from_utf8_lossy(&e.path).into_owned();
                    if !paths.contains(&p) {
                        paths.push(p);
                    }
                }
            }
            return Err(BadInput(format!(
                "merging develop into master conflicts in: {}\nmerge by hand (`git checkout \
                 master && git merge develop --no-ff`), resolve, commit, then run builder \
                 prepare again (it will find develop already merged)",
                paths.join(", ")
            ))
            .into());
        }
        let tree = index.write_tree_to(repo)?;
        repo.find_tree(tree)?
    };

    // The build number file as it is after the merge.
    let file = opts.build_number_file.as_str();
    let entry = merged_tree.get_path(Path::new(file)).map_err(|_| {
        BadInput(format!(
            "`{file}` is not in master after merging develop: commit it, or set \
             `django.build_number_file` in deploy.toml to the file holding `BUILD_NUMBER`"
        ))
    })?;
    let mode = match (entry.kind(), entry.filemode()) {
        (Some(ObjectType::Blob), 0o100644) => FileMode::Blob,
        (Some(ObjectType::Blob), 0o100755) => FileMode::BlobExecutable,
        _ => {
            return Err(BadInput(format!(
                "`{file}` is not a regular file in master: it must be a Python file with a \
                 `BUILD_NUMBER = 'NNNNNN'` line"
            ))
            .into())
        }
    };
    let content = repo.find_blob(entry.id())?.content().to_vec();
    let line = BuildNumberLine::find(&content)
        .map_err(|m| BadInput(format!("`{file}` (in master after the merge) {m}")))?;

    let highest_tag = git::build_tags(repo)?.last().copied();
    let current = line.value.max(highest_tag.map_or(0, BuildNumber::get));
    let next = BuildNumber::new(current + 1).map_err(|_| {
        BadInput(format!(
            "the build number is already 999999 (highest tag {}, `{file}` {:06}): build \
             numbers are six digits, so there is no next one",
            highest_tag.map_or_else(|| "none".to_owned(), BuildNumber::tag),
            line.value
        ))
    })?;
    let tag_ref = format!("refs/tags/{}", next.tag());
    if repo.find_reference(&tag_ref).is_ok() {
        return Err(BadInput(format!(
            "tag `{}` already exists: delete it if it is a mistake (`git tag -d {}`), then run \
             builder prepare again",
            next.tag(),
            next.tag()
        ))
        .into());
    }

    let new_blob = repo.blob(&line.rewrite(&content, next))?;
    let bumped_tree = repo.find_tree(
        TreeUpdateBuilder::new()
            .upsert(file, new_blob, mode)
            .create_updated(repo, &merged_tree)?,
    )?;

    let merge_commit = if develop_in_master {
        None
    } else {
        Some(repo.commit(
            None,
            sig,
            sig,
            "Merge branch 'develop'\n",
            &merged_tree,
            &[&master_commit, &develop_commit],
        )?)
    };
    let parent = repo.find_commit(merge_commit.unwrap_or(master))?;
    let message = format!("Build {next}\n");
    let build_commit = repo.commit(None, sig, sig, &message, &bumped_tree, &[&parent])?;
    let build = repo.find_commit(build_commit)?;
    let tag_object = repo.tag_annotation_create(&next.tag(), build.as_object(), sig, &message)?;

    // Bring develop up to master: a fast-forward, as develop is in master by now; a merge
    // commit only if that were ever not so.
    let (new_develop, develop_merge) =
        if develop == build_commit || repo.graph_descendant_of(build_commit, develop)? {
            (build_commit, false)
        } else {
            let mut index = repo.merge_commits(&develop_commit, &build, None)?;
            if index.has_conflicts() {
                return Err(BadInput(
                    "merging master into develop conflicts: merge by hand (`git checkout \
                     develop && git merge master`), then run builder prepare again"
                        .to_owned(),
                )
                .into());
            }
            let tree = repo.find_tree(index.write_tree_to(repo)?)?;
            let oid = repo.commit(
                None,
                sig,
                sig,
                "Merge branch 'master' into develop\n",
                &tree,
                &[&develop_commit, &build],
            )?;
            (oid, true)
        };

    Ok(Plan {
        master,
        develop,
        develop_source,
        merge_commit,
        file_number: line.value,
        highest_tag,
        next,
        build_commit,
        tag_object,
        new_develop,
        develop_merge,
    })
}

/// The refusals that need the plan: the remote is ahead or has the tag; the checkout would
/// overwrite untracked files.
fn check_before_changing(
    repo: &Repository,
    opts: &Options,
    head: &Head,
    plan: &Plan,
    remote: Option<&(String, BTreeMap<String, Oid>)>,
) -> anyhow::Result<()> {
    if let Some((url, refs)) = remote {
        let name = &opts.remote;
        for branch in ["master", "develop"] {
            let Some(&theirs) = refs.get(&format!("refs/heads/{branch}")) else {
                continue;
            };
            let known = repo.find_commit(theirs).is_ok();
            let contained = known
                && [plan.master, plan.develop].iter().any(|&ours| {
                    ours == theirs || repo.graph_descendant_of(ours, theirs).unwrap_or(false)
                });
            if !contained {
                return Err(BadInput(format!(
                    "`{name}` ({url}) has commits on {branch} ({}) that the local branches \
                     lack: pull first (`git checkout {branch} && git pull {name} {branch}`, and \
                     the same for the other branch), then run builder prepare again",
                    short(theirs)
                ))
                .into());
            }
        }
        let taken: Vec<String> = refs
            .keys()
            .filter_map(|r| r.strip_prefix("refs/tags/"))
            .filter_map(git::parse_build_tag)
            .filter(|b| *b >= plan.next)
            .map(BuildNumber::tag)
            .collect();
        if !taken.is_empty() {
            return Err(BadInput(format!(
                "`{name}` ({url}) already has tag {} that this repository lacks, so {} may be \
                 taken: fetch tags and pull (`git fetch --tags {name}`, then pull master and \
                 develop), then run builder prepare again",
                taken.join(", "),
                plan.next.tag()
            ))
            .into());
        }
    }
    if let Some(target) = plan.checkout_target(head) {
        let from = repo.head()?.peel_to_tree()?;
        let to = repo.find_commit(target)?.tree()?;
        let in_the_way = git::paths_in_the_way(repo, &from, &to)?;
        if !in_the_way.is_empty() {
            return Err(BadInput(format!(
                "updating the work tree to the new {} would overwrite untracked files: {}\n\
                 move them away, then run builder prepare again",
                head.describe(),
                in_the_way.join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// What has been changed so far, to be undone on failure.
struct Applied<'r> {
    journal: RefJournal<'r>,
    /// The checkout's target tree, HEAD's tree before it, and the index file before it.
    restore: Option<(Oid, Oid, Option<Vec<u8>>)>,
    /// The configuration file before a local develop tracking the remote's was set up.
    config: Option<Vec<u8>>,
}

fn apply(
    repo: &Repository,
    opts: &Options,
    head: &Head,
    plan: &Plan,
    applied: &mut Applied<'_>,
) -> anyhow::Result<()> {
    let log = format!("builder prepare: {}", plan.next.tag());
    if let Some(target) = plan.checkout_target(head) {
        let before = repo.head()?.peel_to_tree()?.id();
        let tree = repo.find_commit(target)?.tree()?;
        applied.restore = Some((tree.id(), before, git::save_index(repo)?));
        git::checkout(repo, &tree)?;
    }
    #[cfg(test)]
    if opts.hooks.fail_after_checkout {
        anyhow::bail!("injected failure after the checkout");
    }
    #[cfg(not(test))]
    let _ = opts;
    if let DevelopSource::RemoteTracking(upstream) = &plan.develop_source {
        applied.config = git::save_config(repo)?;
        applied.journal.set(DEVELOP, None, plan.new_develop, &log)?;
        repo.find_branch("develop", BranchType::Local)?
            .set_upstream(Some(upstream))
            .with_context(|| format!("cannot make develop track `{upstream}`"))?;
    }
    applied
        .journal
        .set(MASTER, Some(plan.master), plan.build_commit, &log)?;
    applied
        .journal
        .set(&plan.tag_ref(), None, plan.tag_object, &log)?;
    if plan.develop_source == DevelopSource::Local {
        applied
            .journal
            .set(DEVELOP, Some(plan.develop), plan.new_develop, &log)?;
    }
    #[cfg(test)]
    if opts.hooks.fail_after_refs {
        anyhow::bail!("injected failure after moving the refs");
    }
    Ok(())
}

/// Puts back everything `applied` changed and says so in front of `cause`.
fn undo(repo: &Repository, applied: Applied<'_>, cause: anyhow::Error) -> anyhow::Error {
    let moved = !applied.journal.is_empty() || applied.restore.is_some();
    let mut refs = applied.journal.rollback();
    if let (Ok(()), Some(config)) = (&refs, &applied.config) {
        // Deleting the branch leaves an empty `[branch "develop"]` behind: put the file back.
        if let Err(e) = git::restore_config(repo, config) {
            refs = Err(format!(
                "the configuration file could not be put back ({e:#}): remove the \
                 `[branch \"develop\"]` section from .git/config"
            ));
        }
    }
    let tree = match &applied.restore {
        Some((from, to, index)) => (|| {
            let from = repo.find_tree(*from)?;
            let to = repo.find_tree(*to)?;
            git::restore_work_tree(repo, &from, &to, index.as_deref())
        })(),
        None => Ok(()),
    };
    match (refs, tree) {
        (Ok(()), Ok(())) if moved => cause.context(
            "builder prepare failed and undid its changes: refs, index and work tree are as \
             they were",
        ),
        (Ok(()), Ok(())) => cause.context("builder prepare failed before changing anything"),
        (refs, tree) => {
            let mut help = String::from(
                "builder prepare failed, and undoing its changes failed too; put the \
                 repository back by hand:",
            );
            if let Err(commands) = refs {
                help.push('\n');
                help.push_str(&commands);
            }
            if let Err(e) = tree {
                help.push_str(&format!(
                    "\nthe work tree could not be restored ({e:#}): run `git checkout -f` on \
                     your branch once the refs are right"
                ));
            }
            cause.context(help)
        }
    }
}

enum PushFailure {
    /// The remote has none of the new refs: the local changes can be undone.
    NothingPushed(anyhow::Error),
    /// Some refs arrived, or it is unknown: the local repository keeps its new state.
    Other(anyhow::Error),
}

fn push(repo: &Repository, opts: &Options, plan: &Plan, url: &str) -> Result<(), PushFailure> {
    let name = &opts.remote;
    let tag = plan.next.tag();
    let refspecs: Vec<String> = [MASTER.to_owned(), plan.tag_ref(), DEVELOP.to_owned()]
        .iter()
        .map(|r| format!("{r}:{r}"))
        .collect();
    let failure = match git::push(repo, name, &refspecs) {
        Ok(results) => {
            let lines: Vec<String> = results
                .iter()
                .map(|r| match &r.rejected {
                    None => format!("{} ok", short_ref(&r.refname)),
                    Some(why) => format!("{} REJECTED ({why})", short_ref(&r.refname)),
                })
                .collect();
            eprintln!("push: {name} ({url}): {}", lines.join(", "));
            if results.iter().all(|r| r.rejected.is_none()) {
                return Ok(());
            }
            anyhow::anyhow!("`{name}` rejected some refs: {}", lines.join(", "))
        }
        Err(e) => e,
    };
    let landed = git::remote_refs(repo, name).map(|refs| {
        refs.get(MASTER) == Some(&plan.build_commit)
            || refs.get(DEVELOP) == Some(&plan.new_develop)
            || refs.contains_key(&plan.tag_ref())
    });
    Err(match landed {
        Ok(false) => PushFailure::NothingPushed(failure),
        Ok(true) => PushFailure::Other(failure.context(format!(
            "the push to `{name}` was only partly accepted; the local repository keeps {tag}: \
             once the cause is fixed, push the rest with `git push {name} master {tag} develop`"
        ))),
        Err(e) => PushFailure::Other(failure.context(format!(
            "the push to `{name}` failed and what the remote has now is unknown ({e:#}); the \
             local repository keeps {tag}: check with `git ls-remote {name}` and push with \
             `git push {name} master {tag} develop`"
        ))),
    })
}

fn short_ref(name: &str) -> &str {
    name.strip_prefix("refs/heads/")
        .or_else(|| name.strip_prefix("refs/tags/"))
        .unwrap_or(name)
}

fn number_source(plan: &Plan, file: &str) -> String {
    format!(
        "highest tag {}, `{file}` {:06}",
        plan.highest_tag
            .map_or_else(|| "none".to_owned(), BuildNumber::tag),
        plan.file_number
    )
}

fn print_plan(opts: &Options, head: &Head, plan: &Plan) {
    let develop_from = match &plan.develop_source {
        DevelopSource::Local => String::new(),
        DevelopSource::RemoteTracking(t) => format!(" (from {t})"),
    };
    eprintln!(
        "prepare: master {}, develop {}{develop_from}, HEAD on {}",
        short(plan.master),
        short(plan.develop),
        head.describe()
    );
    match plan.merge_commit {
        Some(m) => eprintln!(
            "merge: develop into master, merge commit {} (parents {}, {})",
            short(m),
            short(plan.master),
            short(plan.develop)
        ),
        None => eprintln!("merge: develop is already in master, no merge commit"),
    }
    eprintln!(
        "build number: {:06} -> {} ({})",
        plan.file_number
            .max(plan.highest_tag.map_or(0, BuildNumber::get)),
        plan.next,
        number_source(plan, &opts.build_number_file)
    );
}

fn report_applied(head: &Head, plan: &Plan) {
    eprintln!(
        "commit: {} \"Build {}\" on master",
        short(plan.build_commit),
        plan.next
    );
    eprintln!(
        "tag: {} (annotated) -> {}",
        plan.next.tag(),
        short(plan.build_commit)
    );
    match (&plan.develop_source, plan.develop_merge) {
        (DevelopSource::RemoteTracking(t), _) => eprintln!(
            "develop: created at {}, tracking {t}",
            short(plan.new_develop)
        ),
        (DevelopSource::Local, false) => eprintln!(
            "develop: fast-forwarded {} -> {}",
            short(plan.develop),
            short(plan.new_develop)
        ),
        (DevelopSource::Local, true) => eprintln!(
            "develop: merged master into develop, merge commit {}",
            short(plan.new_develop)
        ),
    }
    match plan.checkout_target(head) {
        Some(t) => eprintln!("work tree: {} checked out at {}", head.describe(), short(t)),
        None => eprintln!("work tree: unchanged (HEAD {})", head.describe()),
    }
}

fn print_dry_run(
    repo: &Repository,
    opts: &Options,
    head: &Head,
    plan: &Plan,
    remote: Option<&(String, BTreeMap<String, Oid>)>,
) {
    let subject = |oid: Oid| {
        repo.find_commit(oid)
            .ok()
            .and_then(|c| c.summary().ok().flatten().map(str::to_owned))
            .unwrap_or_default()
    };
    eprintln!("dry run: nothing will be changed");
    eprintln!("master: {} {}", short(plan.master), subject(plan.master));
    match &plan.develop_source {
        DevelopSource::Local => {
            eprintln!("develop: {} {}", short(plan.develop), subject(plan.develop))
        }
        DevelopSource::RemoteTracking(t) => eprintln!(
            "develop: {} {} (from {t}; a local develop tracking it would be created)",
            short(plan.develop),
            subject(plan.develop)
        ),
    }
    match plan.merge_commit {
        Some(_) => eprintln!(
            "merge: develop into master with a merge commit (parents {}, {})",
            short(plan.master),
            short(plan.develop)
        ),
        None => eprintln!("merge: none, develop is already in master"),
    }
    eprintln!(
        "build number: {:06} -> {} ({})",
        plan.file_number
            .max(plan.highest_tag.map_or(0, BuildNumber::get)),
        plan.next,
        number_source(plan, &opts.build_number_file)
    );
    eprintln!(
        "commit: \"Build {}\" on master, changing only the BUILD_NUMBER line of `{}`",
        plan.next, opts.build_number_file
    );
    eprintln!("tag: {} (annotated)", plan.next.tag());
    eprintln!(
        "develop: {}",
        if plan.develop_merge {
            "master merged into it with a merge commit"
        } else {
            "fast-forwarded to the new master"
        }
    );
    match plan.checkout_target(head) {
        Some(_) => eprintln!(
            "work tree: {} checked out at its new commit",
            head.describe()
        ),
        None => eprintln!("work tree: unchanged (HEAD {})", head.describe()),
    }
    match remote {
        Some((url, _)) => eprintln!(
            "push: master, {}, develop to `{}` ({url})",
            plan.next.tag(),
            opts.remote
        ),
        None => eprintln!("push: nothing (no --push)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use git2::build::CheckoutBuilder;
    use git2::{Config, ConfigLevel, RepositoryInitOptions};
    use tempfile::TempDir;

    /// Test-only ways to make `prepare` fail at chosen points.
    #[derive(Default)]
    pub(super) struct Hooks {
        pub fail_after_checkout: bool,
        pub fail_after_refs: bool,
        pub before_push: Option<Box<dyn Fn()>>,
    }

    const BN: &str = "binarycrate/binarycrate/settings/build_number.py";

    fn build_number_py(n: &str) -> Vec<u8> {
        format!(
            "# -*- coding: utf-8 -*-\n# Copyright (C) 2017 BinaryCrate Ltd. All rights reserved.\n\
             # Licensed under the MIT licence: see LICENCE (first release was 000001).\n\n\
             BUILD_NUMBER = '{n}'\n\n# builder prepare rewrites the line above.\n"
        )
        .into_bytes()
    }

    /// The same file with only the digits of the BUILD_NUMBER line changed.
    fn with_number(file: &[u8], old: &str, new: &str) -> Vec<u8> {
        let text = String::from_utf8(file.to_vec()).unwrap();
        let needle = format!("BUILD_NUMBER = '{old}'");
        assert_eq!(text.matches(&needle).count(), 1);
        text.replace(&needle, &format!("BUILD_NUMBER = '{new}'"))
            .into_bytes()
    }

    /// A work repository (HEAD on develop, one commit ahead of master, tag Build000001 on
    /// master) and its bare `origin`, which has all three.
    struct Fixture {
        _tmp: TempDir,
        work: PathBuf,
        origin: PathBuf,
    }

    /// Opens a repository with only its own configuration file, so the user's global and
    /// system configuration (identity, autocrlf, …) cannot change what the tests see.
    fn open(path: &Path) -> Repository {
        let repo = Repository::open(path).unwrap();
        let mut config = Config::new().unwrap();
        config
            .add_file(&repo.path().join("config"), ConfigLevel::Local, false)
            .unwrap();
        repo.set_config(&config).unwrap();
        repo
    }

    fn set_identity(repo: &Repository) {
        let mut config = Config::open(&repo.path().join("config")).unwrap();
        config.set_str("user.name", "Release Manager").unwrap();
        config.set_str("user.email", "release@example.com").unwrap();
    }

    fn sig() -> Signature<'static> {
        Signature::now("Developer", "dev@example.com").unwrap()
    }

    /// Commits `files` on `branch` (created from nothing if missing); when HEAD is on it (and
    /// the repository has a work tree) the work tree follows.
    fn commit(repo: &Repository, branch: &str, files: &[(&str, &[u8])], msg: &str) -> Oid {
        let refname = format!("refs/heads/{branch}");
        let parent = repo
            .refname_to_id(&refname)
            .ok()
            .map(|o| repo.find_commit(o).unwrap());
        let base = match &parent {
            Some(p) => p.tree().unwrap(),
            None => repo
                .find_tree(repo.treebuilder(None).unwrap().write().unwrap())
                .unwrap(),
        };
        let mut update = TreeUpdateBuilder::new();
        for (path, content) in files {
            update.upsert(*path, repo.blob(content).unwrap(), FileMode::Blob);
        }
        let tree = repo
            .find_tree(update.create_updated(repo, &base).unwrap())
            .unwrap();
        let head_here = repo
            .find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().ok().flatten().map(str::to_owned))
            .as_deref()
            == Some(refname.as_str());
        if head_here && !repo.is_bare() {
            repo.checkout_tree(tree.as_object(), Some(CheckoutBuilder::new().safe()))
                .unwrap();
        }
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(Some(&refname), &sig(), &sig(), msg, &tree, &parents)
            .unwrap()
    }

    /// `git checkout branch`.
    fn switch(repo: &Repository, branch: &str) {
        let refname = format!("refs/heads/{branch}");
        let tree = repo
            .find_commit(repo.refname_to_id(&refname).unwrap())
            .unwrap()
            .tree()
            .unwrap();
        repo.checkout_tree(tree.as_object(), Some(CheckoutBuilder::new().safe()))
            .unwrap();
        repo.set_head(&refname).unwrap();
    }

    fn fixture() -> Fixture {
        let tmp = TempDir::new().unwrap();
        let work = tmp.path().join("work");
        let origin = tmp.path().join("origin.git");
        let repo =
            Repository::init_opts(&work, RepositoryInitOptions::new().initial_head("master"))
                .unwrap();
        set_identity(&repo);
        let repo = open(&work);
        let first = commit(
            &repo,
            "master",
            &[
                (BN, &build_number_py("000001")),
                ("README.md", b"The app.\n"),
                ("binarycrate/manage.py", b"print('manage')\n"),
            ],
            "Initial commit",
        );
        let first = repo.find_commit(first).unwrap();
        repo.tag(
            "Build000001",
            first.as_object(),
            &sig(),
            "Build 000001\n",
            false,
        )
        .unwrap();
        repo.branch("develop", &first, false).unwrap();
        switch(&repo, "develop");
        commit(
            &repo,
            "develop",
            &[("binarycrate/app.py", b"print('feature')\n")],
            "A feature",
        );
        Repository::init_bare(&origin).unwrap();
        repo.remote("origin", origin.to_str().unwrap()).unwrap();
        let pushed = git::push(
            &repo,
            "origin",
            &[
                "refs/heads/master:refs/heads/master".into(),
                "refs/heads/develop:refs/heads/develop".into(),
                "refs/tags/Build000001:refs/tags/Build000001".into(),
            ],
        )
        .unwrap();
        assert!(pushed.iter().all(|p| p.rejected.is_none()), "{pushed:?}");
        assert!(repo.refname_to_id("refs/remotes/origin/develop").is_ok());
        Fixture {
            _tmp: tmp,
            work,
            origin,
        }
    }

    fn options() -> Options {
        Options {
            remote: "origin".into(),
            build_number_file: BN.into(),
            ..Options::default()
        }
    }

    fn pushing() -> Options {
        Options {
            push: true,
            ..options()
        }
    }

    fn run_prepare(fx: &Fixture, opts: &Options) -> anyhow::Result<Prepared> {
        prepare(&open(&fx.work), opts)
    }

    /// HEAD, every ref, the index entries, every work tree file and the configuration.
    #[derive(Debug, PartialEq, Eq)]
    struct Snapshot {
        head: String,
        refs: BTreeMap<String, String>,
        index: Vec<(String, Oid, u32, u16)>,
        files: BTreeMap<String, Vec<u8>>,
        config: String,
    }

    fn snapshot(path: &Path) -> Snapshot {
        let repo = open(path);
        let describe = |r: &git2::Reference<'_>| match r.symbolic_target().ok().flatten() {
            Some(t) => format!("-> {t}"),
            None => r.target().unwrap().to_string(),
        };
        let head = describe(&repo.find_reference("HEAD").unwrap());
        let refs = repo
            .references()
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (r.name().unwrap().to_owned(), describe(&r))
            })
            .collect();
        let mut index = repo.index().unwrap();
        index.read(true).unwrap();
        let index = index
            .iter()
            .map(|e| {
                (
                    String::from_utf8(e.path.clone()).unwrap(),
                    e.id,
                    e.mode,
                    e.flags,
                )
            })
            .collect();
        let mut files = BTreeMap::new();
        walk(path, path, &mut files);
        let config = std::fs::read_to_string(repo.path().join("config")).unwrap();
        Snapshot {
            head,
            refs,
            index,
            files,
            config,
        }
    }

    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel == ".git" {
                continue;
            }
            if path.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }

    fn object_files(fx: &Fixture) -> Vec<String> {
        let mut files = BTreeMap::new();
        let objects = fx.work.join(".git/objects");
        walk(&objects, &objects, &mut files);
        files.into_keys().collect()
    }

    fn is_bad_input(err: &anyhow::Error) -> bool {
        common::error::exit_code_for(err.as_ref()) == ExitCode::BadInput
    }

    /// Runs `prepare`, expects a refusal (exit code 2) whose message contains `needle`, and
    /// checks that nothing changed.
    fn refused(fx: &Fixture, opts: &Options, needle: &str) -> String {
        let before = snapshot(&fx.work);
        let err = run_prepare(fx, opts).expect_err("prepare should refuse");
        let message = format!("{err:#}");
        assert!(is_bad_input(&err), "not bad input: {message}");
        assert!(message.contains(needle), "`{needle}` not in: {message}");
        assert_eq!(before, snapshot(&fx.work), "a refusal changed something");
        message
    }

    fn tip(repo: &Repository, name: &str) -> Oid {
        repo.refname_to_id(name).unwrap()
    }

    fn blob_at(repo: &Repository, commit: Oid, path: &str) -> Vec<u8> {
        let tree = repo.find_commit(commit).unwrap().tree().unwrap();
        let entry = tree.get_path(Path::new(path)).unwrap();
        repo.find_blob(entry.id()).unwrap().content().to_vec()
    }

    #[test]
    fn prepares_from_develop_with_a_merge_commit() {
        let fx = fixture();
        let repo = open(&fx.work);
        let (old_master, old_develop) = (tip(&repo, MASTER), tip(&repo, DEVELOP));
        std::fs::write(fx.work.join("notes.txt"), "untracked, stays\n").unwrap();

        let done = run_prepare(&fx, &options()).unwrap();
        assert_eq!(done.build.tag(), "Build000002");
        assert!(done.merged && !done.pushed);

        let repo = open(&fx.work);
        let master = tip(&repo, MASTER);
        assert_eq!(done.master, master);
        // The build commit sits on a real merge commit of master and develop.
        let build = repo.find_commit(master).unwrap();
        assert_eq!(build.message().unwrap(), "Build 000002\n");
        assert_eq!(build.author().name().unwrap(), "Release Manager");
        assert_eq!(build.parent_count(), 1);
        let merge = build.parent(0).unwrap();
        assert_eq!(
            merge.parent_ids().collect::<Vec<_>>(),
            [old_master, old_develop]
        );
        // Only the BUILD_NUMBER line changed, and only in that file.
        let expected = with_number(&build_number_py("000001"), "000001", "000002");
        assert_eq!(blob_at(&repo, master, BN), expected);
        let diff = repo
            .diff_tree_to_tree(
                Some(&merge.tree().unwrap()),
                Some(&build.tree().unwrap()),
                None,
            )
            .unwrap();
        assert_eq!(diff.deltas().len(), 1);
        // The annotated tag points at the build commit.
        let tag_ref = repo.find_reference("refs/tags/Build000002").unwrap();
        let tag = repo.find_tag(tag_ref.target().unwrap()).unwrap();
        assert_eq!(tag.target_id(), master);
        assert_eq!(tag.name().unwrap(), "Build000002");
        assert_eq!(tag.message().unwrap(), Some("Build 000002\n"));
        assert_eq!(
            tag.tagger().unwrap().email().unwrap(),
            "release@example.com"
        );
        // develop caught up; HEAD is still on develop, and the work tree and index followed.
        assert_eq!(tip(&repo, DEVELOP), master);
        assert_eq!(
            repo.find_reference("HEAD")
                .unwrap()
                .symbolic_target()
                .unwrap(),
            Some(DEVELOP)
        );
        assert_eq!(std::fs::read(fx.work.join(BN)).unwrap(), expected);
        assert!(fx.work.join("binarycrate/app.py").exists());
        assert!(git::uncommitted_changes(&repo).unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(fx.work.join("notes.txt")).unwrap(),
            "untracked, stays\n"
        );
        // Nothing was pushed.
        let origin = Repository::open_bare(&fx.origin).unwrap();
        assert_eq!(tip(&origin, MASTER), old_master);
        assert!(origin.find_reference("refs/tags/Build000002").is_err());
    }

    #[test]
    fn from_master_and_again() {
        let fx = fixture();
        let repo = open(&fx.work);
        switch(&repo, "master");
        assert_eq!(run_prepare(&fx, &options()).unwrap().build.get(), 2);
        let repo = open(&fx.work);
        assert_eq!(
            repo.find_reference("HEAD")
                .unwrap()
                .symbolic_target()
                .unwrap(),
            Some(MASTER)
        );
        assert!(fx.work.join("binarycrate/app.py").exists());
        assert!(git::uncommitted_changes(&repo).unwrap().is_empty());
        // A second run: develop is already in master, so no merge commit this time.
        let before = tip(&repo, MASTER);
        let done = run_prepare(&fx, &options()).unwrap();
        assert_eq!(done.build.tag(), "Build000003");
        assert!(!done.merged);
        let build = repo.find_commit(tip(&repo, MASTER)).unwrap();
        assert_eq!(build.parent_ids().collect::<Vec<_>>(), [before]);
        assert_eq!(
            std::fs::read(fx.work.join(BN)).unwrap(),
            with_number(&build_number_py("000001"), "000001", "000003")
        );
    }

    #[test]
    fn master_ancestor_of_develop_still_gets_a_merge_commit() {
        let fx = fixture();
        let repo = open(&fx.work);
        let (m, d) = (tip(&repo, MASTER), tip(&repo, DEVELOP));
        assert!(repo.graph_descendant_of(d, m).unwrap());
        let done = run_prepare(&fx, &options()).unwrap();
        let repo = open(&fx.work);
        let merge = repo.find_commit(done.master).unwrap().parent(0).unwrap();
        assert_eq!(merge.parent_count(), 2);
        assert_eq!(merge.tree_id(), repo.find_commit(d).unwrap().tree_id());
    }

    #[test]
    fn file_ahead_of_tags() {
        let fx = fixture();
        let repo = open(&fx.work);
        commit(
            &repo,
            "develop",
            &[(BN, &build_number_py("000007"))],
            "Bump by hand",
        );
        let done = run_prepare(&fx, &options()).unwrap();
        assert_eq!(done.build.tag(), "Build000008");
        assert_eq!(
            blob_at(&open(&fx.work), done.master, BN),
            build_number_py("000008")
        );
    }

    #[test]
    fn tag_ahead_of_file_and_odd_tags_ignored() {
        let fx = fixture();
        let repo = open(&fx.work);
        let target = repo.revparse_single("master").unwrap();
        repo.tag_lightweight("Build000041", &target, false).unwrap();
        for odd in [
            "Build999999x",
            "Build99",
            "Build0999999",
            "Build",
            "Build000000",
        ] {
            repo.tag_lightweight(odd, &target, false).unwrap();
        }
        let done = run_prepare(&fx, &options()).unwrap();
        assert_eq!(done.build.tag(), "Build000042");
        assert_eq!(
            blob_at(&open(&fx.work), done.master, BN),
            build_number_py("000042")
        );
    }

    #[test]
    fn keeps_line_endings_quotes_and_everything_else() {
        let fx = fixture();
        let repo = open(&fx.work);
        let original: &[u8] = b"\xEF\xBB\xBF# Licence: MIT \xC2\xA9 2017\r\n# BUILD_NUMBER history: 000001\r\n\r\nBUILD_NUMBER  =  \"000005\"   # set by builder\r\nOTHER = '000005'\r\n\r\n";
        commit(&repo, "develop", &[(BN, original)], "CRLF file");
        run_prepare(&fx, &options()).unwrap();
        let expected: &[u8] = b"\xEF\xBB\xBF# Licence: MIT \xC2\xA9 2017\r\n# BUILD_NUMBER history: 000001\r\n\r\nBUILD_NUMBER  =  \"000006\"   # set by builder\r\nOTHER = '000005'\r\n\r\n";
        assert_eq!(std::fs::read(fx.work.join(BN)).unwrap(), expected);
    }

    #[test]
    fn pushes_master_tag_and_develop() {
        let fx = fixture();
        let done = run_prepare(&fx, &pushing()).unwrap();
        assert!(done.pushed);
        let repo = open(&fx.work);
        let origin = Repository::open_bare(&fx.origin).unwrap();
        assert_eq!(tip(&origin, MASTER), done.master);
        assert_eq!(tip(&origin, DEVELOP), done.master);
        assert_eq!(
            tip(&origin, "refs/tags/Build000002"),
            tip(&repo, "refs/tags/Build000002")
        );
        assert_eq!(tip(&repo, "refs/remotes/origin/master"), done.master);
    }

    #[test]
    fn develop_from_the_remote_only() {
        let fx = fixture();
        let repo = open(&fx.work);
        switch(&repo, "master");
        repo.find_reference(DEVELOP).unwrap().delete().unwrap();
        let remote_develop = tip(&repo, "refs/remotes/origin/develop");

        // A failure after the refs moved removes the created develop and its configuration.
        let before = snapshot(&fx.work);
        let mut opts = options();
        opts.hooks.fail_after_refs = true;
        let err = run_prepare(&fx, &opts).unwrap_err();
        assert!(!is_bad_input(&err));
        assert!(format!("{err:#}").contains("undid its changes"), "{err:#}");
        assert_eq!(before, snapshot(&fx.work));

        let done = run_prepare(&fx, &options()).unwrap();
        let repo = open(&fx.work);
        assert_eq!(tip(&repo, DEVELOP), done.master);
        let merge = repo.find_commit(done.master).unwrap().parent(0).unwrap();
        assert_eq!(merge.parent_id(1).unwrap(), remote_develop);
        let develop = repo.find_branch("develop", BranchType::Local).unwrap();
        assert_eq!(
            develop.upstream().unwrap().name().unwrap(),
            Some("origin/develop")
        );
    }

    #[test]
    fn detached_head_stays_detached() {
        let fx = fixture();
        let repo = open(&fx.work);
        let at = tip(&repo, MASTER);
        repo.checkout_tree(
            &repo.find_object(at, None).unwrap(),
            Some(CheckoutBuilder::new().safe()),
        )
        .unwrap();
        repo.set_head_detached(at).unwrap();
        let before = snapshot(&fx.work);
        let done = run_prepare(&fx, &options()).unwrap();
        let after = snapshot(&fx.work);
        assert_eq!(after.head, at.to_string());
        assert_eq!(before.files, after.files);
        assert_eq!(before.index, after.index);
        assert_eq!(tip(&open(&fx.work), DEVELOP), done.master);
    }

    #[test]
    fn dry_run_changes_nothing_not_even_objects() {
        let fx = fixture();
        let before = snapshot(&fx.work);
        let objects = object_files(&fx);
        let mut opts = pushing();
        opts.dry_run = true;
        let done = run_prepare(&fx, &opts).unwrap();
        assert_eq!(done.build.tag(), "Build000002");
        assert!(!done.pushed);
        assert_eq!(before, snapshot(&fx.work));
        assert_eq!(objects, object_files(&fx));
        let origin = Repository::open_bare(&fx.origin).unwrap();
        assert!(origin.find_reference("refs/tags/Build000002").is_err());
        // And the real thing still works afterwards.
        assert_eq!(run_prepare(&fx, &options()).unwrap().build.get(), 2);
    }

    #[test]
    fn run_reads_deploy_toml_and_takes_repo() {
        let fx = fixture();
        let before = snapshot(&fx.work);
        let args = PrepareArgs {
            repo: crate::cli::RepoArg {
                repo: Some(fx.work.join("binarycrate")),
            },
            push: false,
            remote: "origin".into(),
            dry_run: true,
            json: false,
        };
        assert_eq!(run(&args).unwrap(), ExitCode::Success);
        assert_eq!(before, snapshot(&fx.work));
        // A deploy.toml naming another file is followed.
        std::fs::write(
            fx.work.join("deploy.toml"),
            "[django]\nbuild_number_file = \"missing.py\"\n",
        )
        .unwrap();
        let err = run(&args).unwrap_err();
        assert!(is_bad_input(&err));
        assert!(
            format!("{err:#}").contains("`missing.py` is not in master"),
            "{err:#}"
        );
    }

    #[test]
    fn refuses_a_dirty_tree() {
        let fx = fixture();
        std::fs::write(fx.work.join("README.md"), "changed\n").unwrap();
        refused(&fx, &options(), "modified README.md");

        let fx = fixture();
        std::fs::write(fx.work.join("new.txt"), "new\n").unwrap();
        let repo = open(&fx.work);
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("new.txt")).unwrap();
        index.write().unwrap();
        refused(&fx, &options(), "staged new.txt");

        let fx = fixture();
        std::fs::remove_file(fx.work.join("README.md")).unwrap();
        refused(&fx, &options(), "deleted README.md");
    }

    #[test]
    fn refuses_a_conflict_naming_the_paths() {
        let fx = fixture();
        let repo = open(&fx.work);
        commit(
            &repo,
            "master",
            &[("README.md", b"hotfix on master\n")],
            "Hotfix",
        );
        commit(
            &repo,
            "develop",
            &[("README.md", b"change on develop\n")],
            "Docs",
        );
        let message = refused(&fx, &options(), "conflicts in: README.md");
        assert!(message.contains("git merge develop"), "{message}");
    }

    #[test]
    fn refuses_when_the_numbers_run_out() {
        let fx = fixture();
        let repo = open(&fx.work);
        commit(
            &repo,
            "develop",
            &[(BN, &build_number_py("999999"))],
            "Last",
        );
        refused(&fx, &options(), "999999");
    }

    #[test]
    fn refuses_without_identity() {
        let fx = fixture();
        let repo = open(&fx.work);
        let mut config = Config::open(&repo.path().join("config")).unwrap();
        config.remove("user.name").unwrap();
        config.remove("user.email").unwrap();
        refused(&fx, &options(), "git config user.name");
    }

    #[test]
    fn refuses_missing_branches() {
        let fx = fixture();
        let repo = open(&fx.work);
        repo.find_reference(MASTER).unwrap().delete().unwrap();
        refused(&fx, &options(), "no local branch `master`");

        let fx = fixture();
        let repo = open(&fx.work);
        switch(&repo, "master");
        repo.find_reference(DEVELOP).unwrap().delete().unwrap();
        repo.find_reference("refs/remotes/origin/develop")
            .unwrap()
            .delete()
            .unwrap();
        refused(&fx, &options(), "no branch `develop`");
    }

    #[test]
    fn refuses_when_the_remote_is_ahead() {
        let fx = fixture();
        let origin = Repository::open_bare(&fx.origin).unwrap();
        commit(
            &origin,
            "master",
            &[("HOTFIX", b"x\n")],
            "Pushed by someone else",
        );
        refused(&fx, &pushing(), "pull first");
        // Without --push the remote is not consulted.
        assert!(run_prepare(&fx, &options()).is_ok());
    }

    #[test]
    fn refuses_a_tag_the_remote_already_has() {
        let fx = fixture();
        let origin = Repository::open_bare(&fx.origin).unwrap();
        let target = origin.revparse_single("master").unwrap();
        origin
            .tag_lightweight("Build000002", &target, false)
            .unwrap();
        refused(&fx, &pushing(), "already has tag Build000002");
    }

    #[test]
    fn refuses_to_overwrite_untracked_files() {
        let fx = fixture();
        let repo = open(&fx.work);
        switch(&repo, "master");
        std::fs::write(fx.work.join("binarycrate/app.py"), "mine\n").unwrap();
        refused(&fx, &options(), "binarycrate/app.py");
    }

    #[test]
    fn refuses_without_the_build_number_line() {
        let fx = fixture();
        let repo = open(&fx.work);
        commit(&repo, "develop", &[(BN, b"# nothing here\n")], "Oops");
        refused(&fx, &options(), "has no `BUILD_NUMBER");
    }

    #[test]
    fn failures_after_changes_restore_everything() {
        for (on_master, after_checkout) in
            [(false, true), (false, false), (true, true), (true, false)]
        {
            let fx = fixture();
            if on_master {
                switch(&open(&fx.work), "master");
            }
            std::fs::write(fx.work.join("notes.txt"), "untracked\n").unwrap();
            let before = snapshot(&fx.work);
            let mut opts = options();
            opts.hooks.fail_after_checkout = after_checkout;
            opts.hooks.fail_after_refs = !after_checkout;
            let err = run_prepare(&fx, &opts).unwrap_err();
            assert!(!is_bad_input(&err), "{err:#}");
            assert!(format!("{err:#}").contains("undid its changes"), "{err:#}");
            assert_eq!(
                before,
                snapshot(&fx.work),
                "master {on_master}, checkout {after_checkout}"
            );
            assert!(git::uncommitted_changes(&open(&fx.work))
                .unwrap()
                .is_empty());
        }
    }

    #[test]
    fn a_push_that_lands_nothing_is_undone() {
        let fx = fixture();
        let before = snapshot(&fx.work);
        let origin_path = fx.origin.clone();
        let mut opts = pushing();
        // Someone pushes to master between the check and the push.
        opts.hooks.before_push = Some(Box::new(move || {
            let origin = Repository::open_bare(&origin_path).unwrap();
            commit(&origin, "master", &[("HOTFIX", b"x\n")], "Racing push");
        }));
        let err = run_prepare(&fx, &opts).unwrap_err();
        let message = format!("{err:#}");
        assert!(!is_bad_input(&err), "{message}");
        assert!(message.contains("nothing was pushed"), "{message}");
        assert!(message.contains("undid its changes"), "{message}");
        assert_eq!(before, snapshot(&fx.work));
        let origin = Repository::open_bare(&fx.origin).unwrap();
        assert!(origin.find_reference("refs/tags/Build000002").is_err());
    }
}
