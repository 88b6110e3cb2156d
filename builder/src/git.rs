//! git2 helpers for commands that change the application repository: cleanliness checks,
//! `Build*` tags, remote listing and pushing, compare-and-swap ref moves that can be undone,
//! putting the work tree back after a checkout, and the commits between two builds.
//!
//! Nothing here runs the `git` program.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use common::error::BadInput;
use common::BuildNumber;
use git2::build::CheckoutBuilder;
use git2::{
    Cred, CredentialType, Delta, Direction, ErrorCode, FileMode, Oid, PushOptions, RemoteCallbacks,
    Repository, Status, StatusOptions, SubmoduleIgnore, SubmoduleStatus, Tree,
};
use serde::Serialize;

/// The abbreviated commit id shown in messages (seven hex digits, as git does).
pub fn short(oid: Oid) -> String {
    let mut s = oid.to_string();
    s.truncate(7);
    s
}

/// The build number of a tag named exactly `BuildNNNNNN`; anything else (`Build12`,
/// `000012`, `Build000012-fix`) is not a build tag.
pub fn parse_build_tag(name: &str) -> Option<BuildNumber> {
    if name.starts_with(BuildNumber::TAG_PREFIX) {
        BuildNumber::parse(name).ok()
    } else {
        None
    }
}

/// Every build tag of the repository (lightweight or annotated), ascending.
pub fn build_tags(repo: &Repository) -> anyhow::Result<Vec<BuildNumber>> {
    let names = repo
        .tag_names(Some("Build*"))
        .context("cannot list the repository's tags")?;
    let mut tags: Vec<BuildNumber> = names
        .iter()
        .filter_map(|n| n.ok().flatten())
        .filter_map(parse_build_tag)
        .collect();
    tags.sort();
    Ok(tags)
}

/// Uncommitted changes to tracked files, as `state path` lines: modified, staged, deleted and
/// conflicted files, and submodules whose commit or content changed. Untracked and ignored
/// files (also inside submodules) are not changes: they are never committed.
pub fn uncommitted_changes(repo: &Repository) -> anyhow::Result<Vec<String>> {
    let mut opts = StatusOptions::new();
    opts.include_untracked(false)
        .include_ignored(false)
        .exclude_submodules(true);
    let statuses = repo
        .statuses(Some(&mut opts))
        .context("cannot read the work tree's status")?;
    let staged = Status::INDEX_NEW
        | Status::INDEX_MODIFIED
        | Status::INDEX_DELETED
        | Status::INDEX_RENAMED
        | Status::INDEX_TYPECHANGE;
    let mut out = Vec::new();
    for entry in statuses.iter() {
        let s = entry.status();
        let what = if s.contains(Status::CONFLICTED) {
            "conflicted"
        } else if s.intersects(staged) {
            "staged"
        } else if s.contains(Status::WT_DELETED) {
            "deleted"
        } else if s.intersects(Status::WT_MODIFIED | Status::WT_TYPECHANGE | Status::WT_RENAMED) {
            "modified"
        } else {
            continue;
        };
        let path = String::from_utf8_lossy(entry.path_bytes()).into_owned();
        out.push(format!("{what} {path}"));
    }
    let changed = SubmoduleStatus::INDEX_ADDED
        | SubmoduleStatus::INDEX_DELETED
        | SubmoduleStatus::INDEX_MODIFIED
        | SubmoduleStatus::WD_DELETED
        | SubmoduleStatus::WD_MODIFIED
        | SubmoduleStatus::WD_INDEX_MODIFIED
        | SubmoduleStatus::WD_WD_MODIFIED;
    let submodules = repo
        .submodules()
        .context("cannot read the submodules (.gitmodules)")?;
    for sm in &submodules {
        let Ok(name) = sm.name() else { continue };
        let status = repo
            .submodule_status(name, SubmoduleIgnore::Untracked)
            .with_context(|| format!("cannot read the status of submodule `{name}`"))?;
        if status.intersects(changed) {
            out.push(format!(
                "changed submodule {}",
                sm.path().display().to_string().trim_end_matches('/')
            ));
        }
    }
    Ok(out)
}

/// Callbacks for talking to a remote: local paths need nothing; for ssh the agent is asked,
/// and libgit2's default credentials (Negotiate/NTLM) are offered where a server allows them.
/// Each kind is tried once so a refusing server ends the attempt instead of looping.
pub fn remote_callbacks<'a>() -> RemoteCallbacks<'a> {
    let mut callbacks = RemoteCallbacks::new();
    let mut tried = CredentialType::empty();
    callbacks.credentials(move |url, username, allowed| {
        if allowed.contains(CredentialType::USERNAME) && !tried.contains(CredentialType::USERNAME) {
            tried |= CredentialType::USERNAME;
            return Cred::username(username.unwrap_or("git"));
        }
        if allowed.contains(CredentialType::SSH_KEY) && !tried.contains(CredentialType::SSH_KEY) {
            tried |= CredentialType::SSH_KEY;
            return Cred::ssh_key_from_agent(username.unwrap_or("git"));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
            && !tried.contains(CredentialType::USER_PASS_PLAINTEXT)
        {
            tried |= CredentialType::USER_PASS_PLAINTEXT;
            // The user's configured `git credential` helper, as a plain `git push` would use it.
            if let Ok(config) = git2::Config::open_default() {
                return Cred::credential_helper(&config, url, username);
            }
        }
        if allowed.contains(CredentialType::DEFAULT) && !tried.contains(CredentialType::DEFAULT) {
            tried |= CredentialType::DEFAULT;
            return Cred::default();
        }
        Err(git2::Error::from_str(&format!(
            "no usable credentials for `{url}`: load your ssh key into the agent (ssh-add) or \
             check that a plain `git push` works for this remote"
        )))
    });
    callbacks
}

/// The remote's URL for messages, or a refusal naming what to do when there is no such remote.
pub fn remote_url(repo: &Repository, name: &str) -> anyhow::Result<String> {
    match repo.find_remote(name) {
        Ok(remote) => Ok(remote.url().unwrap_or("(URL not UTF-8)").to_owned()),
        Err(e) if e.code() == ErrorCode::NotFound || e.code() == ErrorCode::InvalidSpec => {
            Err(BadInput(format!(
                "there is no git remote `{name}`: add it (git remote add {name} URL) or pass \
                 `--remote NAME`"
            ))
            .into())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read git remote `{name}`")),
    }
}

/// The refs the remote advertises (`refs/heads/…`, `refs/tags/…`; peeled `^{}` entries left
/// out), read without fetching anything.
pub fn remote_refs(repo: &Repository, name: &str) -> anyhow::Result<BTreeMap<String, Oid>> {
    let url = remote_url(repo, name)?;
    let mut remote = repo.find_remote(name)?;
    let connection = remote
        .connect_auth(Direction::Fetch, Some(remote_callbacks()), None)
        .with_context(|| {
            format!("cannot reach git remote `{name}` ({url}): check the network and your access")
        })?;
    let heads = connection
        .list()
        .with_context(|| format!("cannot list the refs of git remote `{name}` ({url})"))?;
    Ok(heads
        .iter()
        .filter(|h| !h.name().ends_with("^{}"))
        .map(|h| (h.name().to_owned(), h.oid()))
        .collect())
}

/// What the remote said about one pushed ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedRef {
    pub refname: String,
    /// `None` when the remote accepted it, else its reason for rejecting it.
    pub rejected: Option<String>,
}

/// Pushes `refspecs` (never forced) to the remote. An error means the push as a whole failed
/// (unreachable remote, non-fast-forward found before sending); otherwise each ref's result.
pub fn push(repo: &Repository, name: &str, refspecs: &[String]) -> anyhow::Result<Vec<PushedRef>> {
    let url = remote_url(repo, name)?;
    let mut remote = repo.find_remote(name)?;
    let mut results = Vec::new();
    {
        let mut callbacks = remote_callbacks();
        callbacks.push_update_reference(|refname, status| {
            results.push(PushedRef {
                refname: refname.to_owned(),
                rejected: status.map(str::to_owned),
            });
            Ok(())
        });
        let mut options = PushOptions::new();
        options.remote_callbacks(callbacks);
        remote
            .push(refspecs, Some(&mut options))
            .with_context(|| format!("pushing to git remote `{name}` ({url}) failed"))?;
    }
    Ok(results)
}

/// One ref moved by a [`RefJournal`].
#[derive(Debug, Clone)]
struct RefMove {
    name: String,
    old: Option<Oid>,
    new: Oid,
}

/// Ref moves that can be undone: every update is compare-and-swap against the value read
/// before, and [`RefJournal::rollback`] puts every moved ref back (deleting created ones, and a
/// created branch's configuration with it).
pub struct RefJournal<'r> {
    repo: &'r Repository,
    moves: Vec<RefMove>,
}

impl<'r> RefJournal<'r> {
    pub fn new(repo: &'r Repository) -> Self {
        Self {
            repo,
            moves: Vec::new(),
        }
    }

    /// Sets `name` to `new`: it must currently be `old`, or not exist when `old` is `None`.
    pub fn set(&mut self, name: &str, old: Option<Oid>, new: Oid, log: &str) -> anyhow::Result<()> {
        let result = match old {
            Some(old) => self.repo.reference_matching(name, new, true, old, log),
            None => self.repo.reference(name, new, false, log),
        };
        result.with_context(|| match old {
            Some(old) => format!(
                "cannot move `{name}` from {} to {} (did something else change it meanwhile?)",
                short(old),
                short(new)
            ),
            None => format!("cannot create `{name}` (does it exist already?)"),
        })?;
        self.moves.push(RefMove {
            name: name.to_owned(),
            old,
            new,
        });
        Ok(())
    }

    /// Whether any ref has been moved.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// Puts every moved ref back, newest first. On failure, the commands that finish the job.
    pub fn rollback(self) -> Result<(), String> {
        let mut failed = Vec::new();
        for m in self.moves.iter().rev() {
            let result = match m.old {
                Some(old) => self
                    .repo
                    .reference_matching(&m.name, old, true, m.new, "builder: rollback")
                    .map(drop),
                None => self.repo.find_reference(&m.name).and_then(|mut r| {
                    if r.is_branch() {
                        git2::Branch::wrap(r).delete()
                    } else {
                        r.delete()
                    }
                }),
            };
            if let Err(e) = result {
                failed.push(match m.old {
                    Some(old) => format!("git update-ref {} {old}   # {}", m.name, e.message()),
                    None => format!("git update-ref -d {}   # {}", m.name, e.message()),
                });
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("\n"))
        }
    }
}

/// One commit, as a deploy plan lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitLine {
    /// The abbreviated id ([`short`]).
    pub id: String,
    /// The message's first paragraph, as the repository has it (the caller escapes it for a
    /// terminal).
    pub summary: String,
    /// The author's name.
    pub author: String,
    /// When it was authored, Unix seconds (what `git log` shows).
    pub time: i64,
}

/// The commits between two builds, each way, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommitRange {
    /// Reachable from the target and not from the live build: what the deploy brings.
    pub added: Vec<CommitLine>,
    /// How many more commits than `added` lists it brings.
    pub added_omitted: usize,
    /// Reachable from the live build and not from the target: what a downgrade takes away.
    pub removed: Vec<CommitLine>,
    /// How many more commits than `removed` lists it takes away.
    pub removed_omitted: usize,
}

/// Commits a deploy from `from` to `to` (commit ids or anything `git rev-parse` takes) brings
/// — reachable from `to`, not from `from` — and those it takes away (the other way round, for
/// a downgrade), newest first, at most `limit` of each, with counts of the rest. None when
/// either commit, or history between them, is not in `repo` (a shallow or another clone): a
/// plan then says it cannot tell rather than list a wrong range.
pub fn log_between(
    repo: &Repository,
    from: &str,
    to: &str,
    limit: usize,
) -> anyhow::Result<Option<CommitRange>> {
    let (Some(from), Some(to)) = (find_commit(repo, from)?, find_commit(repo, to)?) else {
        return Ok(None);
    };
    let (Some((added, added_omitted)), Some((removed, removed_omitted))) = (
        commits_only_in(repo, to, from, limit)?,
        commits_only_in(repo, from, to, limit)?,
    ) else {
        return Ok(None);
    };
    Ok(Some(CommitRange {
        added,
        added_omitted,
        removed,
        removed_omitted,
    }))
}

/// The commit `spec` names; None when the repository does not have it.
fn find_commit(repo: &Repository, spec: &str) -> anyhow::Result<Option<Oid>> {
    let object = match repo.revparse_single(spec) {
        Ok(o) => o,
        // An empty or malformed id (a release built from a tree without git) is not here
        // either.
        Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec) => {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot look up commit `{spec}`")),
    };
    let commit = object
        .peel_to_commit()
        .with_context(|| format!("`{spec}` is not a commit"))?;
    Ok(Some(commit.id()))
}

/// Commits reachable from `tip` and not from `hidden`, newest first: the first `limit`, and
/// how many more there are. None when history is missing on the way.
fn commits_only_in(
    repo: &Repository,
    tip: Oid,
    hidden: Oid,
    limit: usize,
) -> anyhow::Result<Option<(Vec<CommitLine>, usize)>> {
    let missing = |e: &git2::Error| e.code() == ErrorCode::NotFound;
    let mut walk = repo.revwalk()?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME)?;
    walk.push(tip)?;
    match walk.hide(hidden) {
        Ok(()) => {}
        Err(e) if missing(&e) => return Ok(None),
        Err(e) => return Err(e).context("cannot walk the history"),
    }
    let mut lines = Vec::new();
    let mut omitted = 0;
    for oid in walk {
        let oid = match oid {
            Ok(oid) => oid,
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(e).context("cannot walk the history"),
        };
        if lines.len() == limit {
            // Only counted: reading every commit of a long range would be wasted.
            omitted += 1;
            continue;
        }
        let commit = repo.find_commit(oid)?;
        let author = commit.author();
        lines.push(CommitLine {
            id: short(oid),
            summary: String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default())
                .into_owned(),
            author: String::from_utf8_lossy(author.name_bytes()).into_owned(),
            time: author.when().seconds(),
        });
    }
    Ok(Some((lines, omitted)))
}

/// The untracked files a checkout from `from` (HEAD's tree, work tree clean) to `to` would
/// have to overwrite: something not ignored where `to` adds a file, or a file where `to` needs
/// a directory. git refuses such a checkout, and so does this program.
pub fn paths_in_the_way(
    repo: &Repository,
    from: &Tree<'_>,
    to: &Tree<'_>,
) -> anyhow::Result<Vec<String>> {
    let workdir = repo
        .workdir()
        .context("the repository has no work tree")?
        .to_owned();
    let diff = repo.diff_tree_to_tree(Some(from), Some(to), None)?;
    let mut in_the_way = Vec::new();
    for delta in diff.deltas() {
        let added = match delta.status() {
            Delta::Added => true,
            Delta::Typechange => false,
            _ => continue,
        };
        let file = delta.new_file();
        let Some(path) = file.path() else { continue };
        let exists = |p: &Path| std::fs::symlink_metadata(workdir.join(p)).ok();
        if added
            && file.mode() != FileMode::Commit
            && exists(path).is_some()
            && !repo.status_should_ignore(path)?
        {
            in_the_way.push(path.display().to_string());
            continue;
        }
        for parent in path.ancestors().skip(1) {
            if parent.as_os_str().is_empty() {
                break;
            }
            match exists(parent) {
                Some(m) if !m.is_dir() && from.get_path(parent).is_err() => {
                    in_the_way.push(parent.display().to_string());
                    break;
                }
                _ => {}
            }
        }
    }
    in_the_way.sort();
    in_the_way.dedup();
    Ok(in_the_way)
}

/// Safe checkout of `to` (files with uncommitted changes or untracked files in the way are
/// never overwritten); a refusal names the paths.
pub fn checkout(repo: &Repository, to: &Tree<'_>) -> anyhow::Result<()> {
    let mut conflicts = Vec::new();
    let result = {
        let mut co = CheckoutBuilder::new();
        co.safe()
            .notify_on(git2::CheckoutNotificationType::CONFLICT)
            .notify(|_, path, _, _, _| {
                if let Some(p) = path {
                    conflicts.push(p.display().to_string());
                }
                true
            });
        repo.checkout_tree(to.as_object(), Some(&mut co))
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.code() == ErrorCode::Conflict => Err(BadInput(format!(
            "updating the work tree would overwrite: {}\nmove these files away, then try again",
            conflicts.join(", ")
        ))
        .into()),
        Err(e) => Err(e).context("cannot update the work tree"),
    }
}

/// The index file's bytes, to put back exactly after a failure.
pub fn save_index(repo: &Repository) -> anyhow::Result<Option<Vec<u8>>> {
    save_file(&repo.path().join("index"))
}

/// The repository's own configuration file's bytes (`.git/config`), to put back after a
/// failure.
pub fn save_config(repo: &Repository) -> anyhow::Result<Option<Vec<u8>>> {
    save_file(&repo.commondir().join("config"))
}

/// Puts back bytes saved by [`save_config`].
pub fn restore_config(repo: &Repository, bytes: &[u8]) -> anyhow::Result<()> {
    common::atomic::write_file(&repo.commondir().join("config"), bytes)?;
    Ok(())
}

fn save_file(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    }
}

/// Undoes a checkout from `to` (HEAD's tree, which must already be restored) to `from`: files
/// only in `from` are removed, every other changed path is written back from `to`, and the
/// index file gets its saved bytes back. Untracked files are never touched, and neither are
/// submodule directories.
pub fn restore_work_tree(
    repo: &Repository,
    from: &Tree<'_>,
    to: &Tree<'_>,
    index: Option<&[u8]>,
) -> anyhow::Result<()> {
    let workdir = repo
        .workdir()
        .context("the repository has no work tree")?
        .to_owned();
    let diff = repo.diff_tree_to_tree(Some(from), Some(to), None)?;
    let mut rewrite: Vec<PathBuf> = Vec::new();
    for delta in diff.deltas() {
        if delta.status() == Delta::Deleted {
            let file = delta.old_file();
            if file.mode() == FileMode::Commit {
                continue;
            }
            if let Some(p) = file.path() {
                remove_with_empty_parents(&workdir, p)?;
            }
        } else if let Some(p) = delta.new_file().path() {
            rewrite.push(p.to_owned());
        }
    }
    if !rewrite.is_empty() {
        let mut co = CheckoutBuilder::new();
        co.force()
            .recreate_missing(true)
            .disable_pathspec_match(true);
        for p in &rewrite {
            co.path(p);
        }
        repo.checkout_tree(to.as_object(), Some(&mut co))
            .context("cannot write the files back")?;
    }
    if let Some(bytes) = index {
        let path = repo.path().join("index");
        common::atomic::write_file(&path, bytes)?;
        repo.index()?.read(true)?;
    }
    Ok(())
}

fn remove_with_empty_parents(workdir: &Path, rel: &Path) -> anyhow::Result<()> {
    let path = workdir.join(rel);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove `{}`", path.display()))?,
        Err(_) => return Ok(()),
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == workdir || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{Signature, Time};

    /// Commits an empty tree on HEAD, authored at `time`.
    fn commit(repo: &Repository, message: &str, time: i64) -> Oid {
        let sig = Signature::new("Ada", "ada@example.com", &Time::new(time, 0)).unwrap();
        let tree = repo
            .find_tree(repo.treebuilder(None).unwrap().write().unwrap())
            .unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .unwrap()
    }

    fn ids(lines: &[CommitLine]) -> Vec<&str> {
        lines.iter().map(|l| l.summary.as_str()).collect()
    }

    #[test]
    fn log_between_lists_what_a_deploy_brings_and_takes_away() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let one = commit(&repo, "one", 1_700_000_000);
        let two = commit(&repo, "two\n\nwith a body", 1_700_000_100);
        let three = commit(&repo, "three", 1_700_000_200);
        let (one, two, three) = (one.to_string(), two.to_string(), three.to_string());

        let up = log_between(&repo, &one, &three, 10).unwrap().unwrap();
        assert_eq!(ids(&up.added), ["three", "two"]);
        assert!(up.removed.is_empty());
        assert_eq!((up.added_omitted, up.removed_omitted), (0, 0));
        let newest = &up.added[0];
        assert_eq!(newest.id, three[..7]);
        assert_eq!(newest.author, "Ada");
        assert_eq!(newest.time, 1_700_000_200);
        assert_eq!(up.added[1].summary, "two");

        // A downgrade takes them away again.
        let down = log_between(&repo, &three, &one, 10).unwrap().unwrap();
        assert!(down.added.is_empty());
        assert_eq!(ids(&down.removed), ["three", "two"]);

        // Capped, with the rest counted; an abbreviated id works too.
        let capped = log_between(&repo, &one, &three[..12], 1).unwrap().unwrap();
        assert_eq!(ids(&capped.added), ["three"]);
        assert_eq!(capped.added_omitted, 1);

        assert_eq!(
            log_between(&repo, &two, &two, 10).unwrap().unwrap(),
            CommitRange::default()
        );

        // A commit this clone does not have, or no commit at all: the range is unknown.
        let foreign = "1111111111111111111111111111111111111111";
        assert_eq!(log_between(&repo, foreign, &three, 10).unwrap(), None);
        assert_eq!(log_between(&repo, &one, foreign, 10).unwrap(), None);
        assert_eq!(log_between(&repo, "", &three, 10).unwrap(), None);
    }

    #[test]
    fn log_between_sees_both_sides_of_diverged_builds() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let base = commit(&repo, "base", 1_700_000_000);
        let fix = commit(&repo, "hotfix", 1_700_000_100);
        // Another line of work from `base`.
        repo.set_head_detached(base).unwrap();
        let feature = commit(&repo, "feature", 1_700_000_200);
        let r = log_between(&repo, &fix.to_string(), &feature.to_string(), 10)
            .unwrap()
            .unwrap();
        assert_eq!(ids(&r.added), ["feature"]);
        assert_eq!(ids(&r.removed), ["hotfix"]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["removed"][0]["summary"], "hotfix");
        assert_eq!(json["added_omitted"], 0);
    }
}
