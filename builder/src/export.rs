//! Exporting a `BuildNNNNNN` tag, and the submodule commits it records, into a staging directory.
//!
//! The manual procedure deployed by checking the tag out *in place* and resetting the submodules, which is
//! exactly what made deploys fragile: whatever was checked out, staged or half-edited got in the
//! way or got shipped. Here the release is read only from git's object database, so the
//! repository's HEAD, index, work tree and submodule checkouts are never read for content nor
//! written, and the result depends on the tag alone.
//!
//! Everything goes through `git2` (no `git` subprocess), so no user configuration, hooks, filters
//! or `core.autocrlf` can change the bytes: files are the blobs' exact bytes, modes are reduced
//! to the two git knows (0755 / 0644) and set explicitly so the umask cannot leak in, and
//! symlinks stay symlinks (the archive writer decides later whether their targets are allowed).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use common::error::BadInput;
use common::BuildNumber;
use git2::{ErrorCode, ObjectType, Repository, Tree};

/// What was exported: the release identity the manifest records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The tag name, e.g. `Build000034`.
    pub tag: String,
    /// The build number the tag names (already validated).
    pub build: BuildNumber,
    /// Hex of the commit the tag points to (annotated tags peeled).
    pub commit: String,
    /// The tagged commit's *committer* time in Unix seconds: the source date used as every
    /// archive entry's mtime. Committer rather than author time because rebases and cherry-picks
    /// keep the author time, so it would not tell two different commits apart.
    pub commit_time: i64,
    /// Every submodule recorded by the tag, nested ones included: path relative to the staging
    /// root (`/`-separated) → the commit recorded in the tree, as hex.
    pub submodules: BTreeMap<String, String>,
}

/// Reads one file from the tag's tree, so `deploy.toml` can be the tag's version rather than
/// whatever the work tree holds. `Ok(None)` when the path is not in the tag; a directory,
/// submodule or symlink at that path is an error (configuration must be a plain file).
pub fn read_file_at_tag(repo: &Path, tag: &str, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
    check_tag_name(tag)?;
    let rel = Path::new(path);
    if path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(BadInput(format!(
            "`{path}` is not a relative path inside the repository"
        ))
        .into());
    }
    let git = open_repository(repo)?;
    let commit = tag_commit(&git, repo, tag)?;
    let tree = commit
        .tree()
        .with_context(|| format!("cannot read the tree of tag `{tag}`"))?;
    let entry = match tree.get_path(rel) {
        Ok(entry) => entry,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot look up `{path}` in tag `{tag}`"));
        }
    };
    match entry.filemode() {
        MODE_FILE | MODE_FILE_GROUP_WRITABLE | MODE_EXECUTABLE => {}
        MODE_TREE => bail!("`{path}` in tag `{tag}` is a directory, not a file"),
        MODE_GITLINK => bail!("`{path}` in tag `{tag}` is a submodule, not a file"),
        MODE_SYMLINK => bail!("`{path}` in tag `{tag}` is a symbolic link, not a file"),
        mode => bail!("`{path}` in tag `{tag}` has unsupported git mode {mode:o}"),
    }
    let blob = git
        .find_blob(entry.id())
        .with_context(|| format!("cannot read `{path}` from tag `{tag}`"))?;
    Ok(Some(blob.content().to_vec()))
}

/// Exports `tag` into `dest`, which must not exist or be an empty directory, so that nothing
/// left over from another build can end up in the release.
///
/// Submodules (gitlinks) are exported at the commit the tag records, from the submodule's own
/// local repository, recursively. On failure `dest` is put back as it was found (removed if
/// this call created it, emptied otherwise) so a half-exported tree is never packaged.
pub fn export_tag(repo: &Path, tag: &str, dest: &Path) -> anyhow::Result<Exported> {
    let build = check_tag_name(tag)?;
    let git = open_repository(repo)?;
    let commit = tag_commit(&git, repo, tag)?;
    let created = prepare_dest(dest)?;

    let mut submodules = BTreeMap::new();
    let result = commit
        .tree()
        .with_context(|| format!("cannot read the tree of tag `{tag}`"))
        .and_then(|tree| {
            let mut level = Level {
                repo: &git,
                names: submodule_names(&git, &tree, "")?,
                out_prefix: String::new(),
            };
            export_tree(&mut level, &tree, "", dest, &mut submodules)
        });
    if let Err(err) = result {
        undo_dest(dest, created);
        return Err(err.context(format!(
            "cannot export tag `{tag}` into `{}`",
            dest.display()
        )));
    }

    let commit_time = commit.committer().when().seconds();
    Ok(Exported {
        tag: tag.to_owned(),
        build,
        commit: commit.id().to_string(),
        commit_time,
        submodules,
    })
}

// Git's tree entry modes. 0100664 is an obsolete mode old gits wrote; git treats it as 0100644.
const MODE_TREE: i32 = 0o040000;
const MODE_FILE: i32 = 0o100644;
const MODE_FILE_GROUP_WRITABLE: i32 = 0o100664;
const MODE_EXECUTABLE: i32 = 0o100755;
const MODE_SYMLINK: i32 = 0o120000;
const MODE_GITLINK: i32 = 0o160000;

/// Only the canonical tag form: `000034` parses as a build number but is not a tag, and
/// accepting it would let two spellings name the same release.
fn check_tag_name(tag: &str) -> anyhow::Result<BuildNumber> {
    let build = BuildNumber::parse(tag)?;
    if build.tag() != tag {
        return Err(BadInput(format!(
            "`{tag}` is not a release tag: expected `BuildNNNNNN`, e.g. `{}`",
            build.tag()
        ))
        .into());
    }
    Ok(build)
}

/// Opens exactly `repo` (no upward search): the caller has already found the root, and a
/// search could silently pick an enclosing repository.
fn open_repository(repo: &Path) -> anyhow::Result<Repository> {
    Repository::open(repo)
        .with_context(|| format!("cannot open the git repository at `{}`", repo.display()))
}

fn tag_commit<'r>(git: &'r Repository, repo: &Path, tag: &str) -> anyhow::Result<git2::Commit<'r>> {
    let reference = match git.find_reference(&format!("refs/tags/{tag}")) {
        Ok(r) => r,
        Err(e) if e.code() == ErrorCode::NotFound => return Err(missing_tag(git, repo, tag)),
        Err(e) => return Err(e).with_context(|| format!("cannot read tag `{tag}`")),
    };
    reference
        .peel_to_commit()
        .with_context(|| format!("tag `{tag}` does not point to a commit"))
}

/// The error for a tag that does not exist, listing the closest existing build tags because
/// the usual cause is a typo or a tag that was not fetched.
fn missing_tag(git: &Repository, repo: &Path, tag: &str) -> anyhow::Error {
    let wanted = BuildNumber::parse(tag).map(|b| b.get()).unwrap_or(0);
    let mut existing: Vec<BuildNumber> = git
        .tag_names(Some("Build*"))
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.ok().flatten())
                .filter_map(|n| check_tag_name(n).ok())
                .collect()
        })
        .unwrap_or_default();
    existing.sort_by_key(|b| (b.get().abs_diff(wanted), b.get()));
    existing.truncate(3);
    existing.sort();
    let nearest = if existing.is_empty() {
        "the repository has no `BuildNNNNNN` tags".to_owned()
    } else {
        let names: Vec<String> = existing.iter().map(|b| format!("`{}`", b.tag())).collect();
        format!("nearest build tags: {}", names.join(", "))
    };
    BadInput(format!(
        "tag `{tag}` does not exist in `{}` ({nearest}); create it with `builder prepare` or fetch tags with `git fetch --tags`",
        repo.display()
    ))
    .into()
}

/// Makes sure `dest` is an empty directory; returns whether it was created here.
fn prepare_dest(dest: &Path) -> anyhow::Result<bool> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            let mut entries =
                fs::read_dir(dest).with_context(|| format!("cannot read `{}`", dest.display()))?;
            if entries.next().is_some() {
                return Err(BadInput(format!(
                    "export destination `{}` is not empty",
                    dest.display()
                ))
                .into());
            }
            Ok(false)
        }
        Ok(_) => Err(BadInput(format!(
            "export destination `{}` exists and is not a directory",
            dest.display()
        ))
        .into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dest)
                .with_context(|| format!("cannot create `{}`", dest.display()))?;
            set_mode(dest, 0o755)?;
            Ok(true)
        }
        Err(e) => Err(e).with_context(|| format!("cannot inspect `{}`", dest.display())),
    }
}

/// Best effort: the export error is what matters, so cleanup failures are not reported.
fn undo_dest(dest: &Path, created: bool) {
    if created {
        let _ = fs::remove_dir_all(dest);
        return;
    }
    if let Ok(entries) = fs::read_dir(dest) {
        for entry in entries.flatten() {
            let path = entry.path();
            // `file_type` does not follow symlinks, so a link to a directory is unlinked, not
            // emptied.
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
        }
    }
}

/// One repository being exported: the superproject or a submodule.
struct Level<'r> {
    repo: &'r Repository,
    /// `.gitmodules` of the commit being exported: path inside this repository → name.
    names: HashMap<String, String>,
    /// Where this repository's root sits in the staging tree (`""` or `a/b/`).
    out_prefix: String,
}

/// Writes `tree` (at `rel` inside the level's repository, `rel` being `""` or ending in `/`)
/// into the directory `dir`.
fn export_tree(
    level: &mut Level<'_>,
    tree: &Tree<'_>,
    rel: &str,
    dir: &Path,
    submodules: &mut BTreeMap<String, String>,
) -> anyhow::Result<()> {
    for entry in tree.iter() {
        let raw_name = entry.name_bytes();
        let name = std::str::from_utf8(raw_name).map_err(|_| {
            anyhow!(
                "`{}{rel}{}` is not a UTF-8 file name",
                level.out_prefix,
                String::from_utf8_lossy(raw_name)
            )
        })?;
        let shown = format!("{}{rel}{name}", level.out_prefix);
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            bail!(
                "the tree contains an unsafe file name `{}`",
                shown.escape_debug()
            );
        }
        // Git never checks out an entry called `.git` (in any case), and the release must not
        // carry repository metadata either.
        if name.eq_ignore_ascii_case(".git") {
            continue;
        }
        let path = dir.join(name);
        match entry.filemode() {
            MODE_TREE => {
                let sub = level
                    .repo
                    .find_tree(entry.id())
                    .with_context(|| format!("cannot read directory `{shown}`"))?;
                make_dir(&path)?;
                export_tree(level, &sub, &format!("{rel}{name}/"), &path, submodules)?;
            }
            mode @ (MODE_FILE | MODE_FILE_GROUP_WRITABLE | MODE_EXECUTABLE) => {
                let blob = level
                    .repo
                    .find_blob(entry.id())
                    .with_context(|| format!("cannot read `{shown}`"))?;
                let perm = if mode == MODE_EXECUTABLE {
                    0o755
                } else {
                    0o644
                };
                write_file(&path, blob.content(), perm)?;
            }
            MODE_SYMLINK => {
                let blob = level
                    .repo
                    .find_blob(entry.id())
                    .with_context(|| format!("cannot read symbolic link `{shown}`"))?;
                let target = blob.content();
                if target.is_empty() || target.contains(&0) {
                    bail!("symbolic link `{shown}` has an invalid target");
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
                    .with_context(|| format!("cannot create symbolic link `{}`", path.display()))?;
            }
            MODE_GITLINK => {
                let in_repo = format!("{rel}{name}");
                export_submodule(level, &in_repo, &shown, entry.id(), &path, submodules)?;
            }
            mode => bail!("`{shown}` has unsupported git mode {mode:o}"),
        }
    }
    Ok(())
}

/// Exports the commit a gitlink records from the submodule's own repository.
fn export_submodule(
    parent: &Level<'_>,
    in_repo: &str,
    shown: &str,
    commit_id: git2::Oid,
    path: &Path,
    submodules: &mut BTreeMap<String, String>,
) -> anyhow::Result<()> {
    // Without a `.gitmodules` entry git names a submodule after its path.
    let name = parent
        .names
        .get(in_repo)
        .map(String::as_str)
        .unwrap_or(in_repo);
    let sub_repo = open_submodule(parent.repo, name, in_repo, shown, commit_id)?;
    let commit = sub_repo.find_commit(commit_id)?;
    let tree = commit.tree().with_context(|| {
        format!("cannot read the tree of commit `{commit_id}` of submodule `{shown}`")
    })?;
    make_dir(path)?;
    submodules.insert(shown.to_owned(), commit_id.to_string());
    let mut level = Level {
        repo: &sub_repo,
        names: submodule_names(&sub_repo, &tree, &format!("{shown}/"))?,
        out_prefix: format!("{shown}/"),
    };
    export_tree(&mut level, &tree, "", path, submodules)
        .with_context(|| format!("in submodule `{shown}` at commit `{commit_id}`"))
}

/// Finds a local repository of submodule `name` that holds `commit_id`: git keeps it under
/// `modules/<name>` of the parent's git directory (nested submodules nest there too); older
/// checkouts keep a `.git` directory in the submodule's work dir instead.
fn open_submodule(
    parent: &Repository,
    name: &str,
    in_repo: &str,
    shown: &str,
    commit_id: git2::Oid,
) -> anyhow::Result<Repository> {
    // The name comes from the tag's `.gitmodules` and becomes a path: the same rule git applies
    // since CVE-2018-11235, so a hostile name cannot point outside `modules/`.
    if name.is_empty()
        || name.starts_with('/')
        || name
            .split(['/', '\\'])
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!(
            "submodule `{shown}` has an unsafe name `{}` in `.gitmodules`",
            name.escape_debug()
        );
    }
    let mut candidates: Vec<PathBuf> = vec![parent.commondir().join("modules").join(name)];
    if let Some(workdir) = parent.workdir() {
        candidates.push(workdir.join(in_repo));
    }
    let mut found_without_commit = None;
    for candidate in &candidates {
        // `Repository::open` does not search upwards, so an uninitialised (empty) submodule
        // directory cannot resolve to the superproject.
        let Ok(repo) = Repository::open(candidate) else {
            continue;
        };
        if repo.find_commit(commit_id).is_ok() {
            return Ok(repo);
        }
        found_without_commit.get_or_insert_with(|| candidate.clone());
    }
    let advice = "run `git submodule update --init --recursive` (or fetch that commit into the submodule) and try again";
    Err(match found_without_commit {
        Some(repo) => BadInput(format!(
            "submodule `{shown}` records commit `{commit_id}`, which is not in its local repository `{}`: {advice}",
            repo.display()
        )),
        None => {
            let looked: Vec<String> = candidates
                .iter()
                .map(|c| format!("`{}`", c.display()))
                .collect();
            BadInput(format!(
                "submodule `{shown}` (commit `{commit_id}`) has no local repository (looked in {}): {advice}",
                looked.join(", ")
            ))
        }
    }
    .into())
}

/// Maps submodule paths to names from the `.gitmodules` of `tree` (the exported commit's,
/// never the work tree's, which may describe other submodules or none).
fn submodule_names(
    repo: &Repository,
    tree: &Tree<'_>,
    shown_prefix: &str,
) -> anyhow::Result<HashMap<String, String>> {
    let mut names = HashMap::new();
    let Some(entry) = tree.get_name(".gitmodules") else {
        return Ok(names);
    };
    if entry.kind() != Some(ObjectType::Blob) {
        return Ok(names);
    }
    let shown = format!("{shown_prefix}.gitmodules");
    let blob = repo
        .find_blob(entry.id())
        .with_context(|| format!("cannot read `{shown}`"))?;
    // libgit2 parses configuration only from files; parsing it with git's own parser beats
    // reimplementing git-config quoting rules.
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let file = tmp.path().join("gitmodules");
    fs::write(&file, blob.content())
        .with_context(|| format!("cannot write `{}`", file.display()))?;
    let config = git2::Config::open(&file).with_context(|| format!("cannot parse `{shown}`"))?;
    let mut entries = config
        .entries(Some(r"^submodule\..*\.path$"))
        .with_context(|| format!("cannot parse `{shown}`"))?;
    while let Some(entry) = entries.next() {
        let entry = entry.with_context(|| format!("cannot parse `{shown}`"))?;
        let (Ok(key), Ok(value)) = (entry.name(), entry.value()) else {
            continue;
        };
        let Some(name) = key
            .strip_prefix("submodule.")
            .and_then(|k| k.strip_suffix(".path"))
        else {
            continue;
        };
        names.insert(value.trim_end_matches('/').to_owned(), name.to_owned());
    }
    Ok(names)
}

fn make_dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir(path).with_context(|| format!("cannot create `{}`", path.display()))?;
    set_mode(path, 0o755)
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    // `create_new` refuses to follow or replace anything already there, symlinks included.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    file.write_all(content)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    file.set_permissions(Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of `{}`", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::build::CheckoutBuilder;
    use git2::{Oid, Signature, StatusOptions, Time};
    use std::os::unix::fs::MetadataExt;
    use std::time::SystemTime;
    use tempfile::TempDir;

    const AUTHOR_TIME: i64 = 1_600_000_000;
    const COMMIT_TIME: i64 = 1_700_000_123;

    fn author() -> Signature<'static> {
        Signature::new("Author", "author@example.com", &Time::new(AUTHOR_TIME, 60)).unwrap()
    }

    fn committer() -> Signature<'static> {
        Signature::new("Committer", "c@example.com", &Time::new(COMMIT_TIME, -300)).unwrap()
    }

    fn write(path: &Path, content: &[u8], mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
    }

    /// Stages `paths` and commits the index on HEAD.
    fn commit_paths(repo: &Repository, paths: &[&str], message: &str) -> Oid {
        let mut index = repo.index().unwrap();
        for p in paths {
            index.add_path(Path::new(p)).unwrap();
        }
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(
            Some("HEAD"),
            &author(),
            &committer(),
            message,
            &tree,
            &parents,
        )
        .unwrap()
    }

    fn checkout_detached(repo: &Repository, commit: Oid) {
        repo.set_head_detached(commit).unwrap();
        repo.checkout_head(Some(CheckoutBuilder::new().force()))
            .unwrap();
    }

    struct Fixture {
        _tmp: TempDir,
        root: PathBuf,
        sup: PathBuf,
        tagged: Oid,
        sub_first: Oid,
        sub_second: Oid,
    }

    /// A superproject whose tag `Build000002` records the submodule's first commit, after which
    /// the submodule checkout is moved to its second commit and the work tree and index are
    /// dirtied: only the tag may show through.
    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();

        let src = root.join("libsrc");
        let src_repo = Repository::init(&src).unwrap();
        write(&src.join("lib.py"), b"VERSION = 1\n", 0o644);
        let sub_first = commit_paths(&src_repo, &["lib.py"], "first");
        write(&src.join("lib.py"), b"VERSION = 2\n", 0o644);
        write(&src.join("new.py"), b"new\n", 0o644);
        let sub_second = commit_paths(&src_repo, &["lib.py", "new.py"], "second");

        let sup = root.join("app");
        let repo = Repository::init(&sup).unwrap();
        write(&sup.join("README.md"), b"hello\r\nworld\r\n", 0o644);
        write(&sup.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
        write(&sup.join("a/b/c.txt"), b"deep\n", 0o664);
        write(&sup.join("deploy.toml"), b"app = \"tagged\"\n", 0o644);
        std::os::unix::fs::symlink("README.md", sup.join("link")).unwrap();

        let url = src.to_str().unwrap();
        let mut sm = repo.submodule(url, Path::new("libs/sub"), true).unwrap();
        {
            let sm_repo = sm.open().unwrap();
            sm_repo
                .remote_anonymous(url)
                .unwrap()
                .fetch(&["+refs/heads/*:refs/remotes/origin/*"], None, None)
                .unwrap();
            checkout_detached(&sm_repo, sub_first);
        }
        sm.add_finalize().unwrap();
        let tagged = commit_paths(
            &repo,
            &["README.md", "run.sh", "a/b/c.txt", "deploy.toml", "link"],
            "release",
        );
        let target = repo.find_object(tagged, None).unwrap();
        repo.tag("Build000002", &target, &committer(), "Build 2", false)
            .unwrap();
        repo.tag_lightweight("Build000007", &target, false).unwrap();
        repo.tag_lightweight("Build000010", &target, false).unwrap();
        repo.tag_lightweight("v1.0", &target, false).unwrap();

        // Move the submodule checkout on and dirty everything the export must ignore.
        checkout_detached(&Repository::open(sup.join("libs/sub")).unwrap(), sub_second);
        write(&sup.join("deploy.toml"), b"app = \"work tree\"\n", 0o644);
        write(&sup.join("README.md"), b"staged change\n", 0o644);
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("README.md")).unwrap();
        index.write().unwrap();
        write(&sup.join("scratch.txt"), b"untracked\n", 0o644);
        fs::remove_file(sup.join("run.sh")).unwrap();

        Fixture {
            _tmp: tmp,
            root,
            sup,
            tagged,
            sub_first,
            sub_second,
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Node {
        Dir(u32),
        File(u32, Vec<u8>),
        Link(PathBuf),
    }

    /// Every entry under `root` with its kind, permission bits and content.
    fn snapshot(root: &Path) -> BTreeMap<String, Node> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                let meta = fs::symlink_metadata(&path).unwrap();
                let mode = meta.mode() & 0o7777;
                if meta.file_type().is_symlink() {
                    out.insert(rel, Node::Link(fs::read_link(&path).unwrap()));
                } else if meta.is_dir() {
                    out.insert(rel, Node::Dir(mode));
                    walk(root, &path, out);
                } else {
                    out.insert(rel, Node::File(mode, fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    /// Everything about a repository an export could disturb: every file under it (its `.git`
    /// and the submodule's git directory included) with mtimes, and git's own status view.
    type RepoState = (BTreeMap<String, (Node, Option<SystemTime>)>, Vec<String>);

    fn repo_state(sup: &Path) -> RepoState {
        let files = snapshot(sup)
            .into_iter()
            .map(|(rel, node)| {
                let mtime = fs::symlink_metadata(sup.join(&rel))
                    .unwrap()
                    .modified()
                    .ok();
                (rel, (node, mtime))
            })
            .collect();
        let repo = Repository::open(sup).unwrap();
        let mut opts = StatusOptions::new();
        opts.include_untracked(true).include_ignored(true);
        let status = repo
            .statuses(Some(&mut opts))
            .unwrap()
            .iter()
            .map(|s| format!("{:?} {:?}", s.path(), s.status()))
            .collect();
        (files, status)
    }

    fn file(mode: u32, content: &[u8]) -> Node {
        Node::File(mode, content.to_vec())
    }

    #[test]
    fn exports_the_tag_and_recorded_submodule_commit_without_touching_the_repository() {
        let fx = fixture();
        let before = repo_state(&fx.sup);
        assert!(
            before.1.iter().any(|s| s.contains("deploy.toml")),
            "the fixture's work tree should be dirty: {:?}",
            before.1
        );
        let dest = fx.root.join("staging/tree");

        let exported = export_tag(&fx.sup, "Build000002", &dest).unwrap();

        assert_eq!(repo_state(&fx.sup), before, "the repository changed");
        let sm = Repository::open(fx.sup.join("libs/sub")).unwrap();
        assert_eq!(sm.head().unwrap().target(), Some(fx.sub_second));

        let gitmodules = read_file_at_tag(&fx.sup, "Build000002", ".gitmodules")
            .unwrap()
            .expect("the tag has .gitmodules");
        assert!(String::from_utf8_lossy(&gitmodules).contains("libs/sub"));
        let expected: BTreeMap<String, Node> = [
            (".gitmodules", file(0o644, &gitmodules)),
            ("README.md", file(0o644, b"hello\r\nworld\r\n")),
            ("a", Node::Dir(0o755)),
            ("a/b", Node::Dir(0o755)),
            ("a/b/c.txt", file(0o644, b"deep\n")),
            ("deploy.toml", file(0o644, b"app = \"tagged\"\n")),
            ("libs", Node::Dir(0o755)),
            ("libs/sub", Node::Dir(0o755)),
            ("libs/sub/lib.py", file(0o644, b"VERSION = 1\n")),
            ("link", Node::Link(PathBuf::from("README.md"))),
            ("run.sh", file(0o755, b"#!/bin/sh\necho hi\n")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(snapshot(&dest), expected);

        assert_eq!(
            exported,
            Exported {
                tag: "Build000002".into(),
                build: BuildNumber::parse("Build000002").unwrap(),
                commit: fx.tagged.to_string(),
                commit_time: COMMIT_TIME,
                submodules: [("libs/sub".to_owned(), fx.sub_first.to_string())].into(),
            }
        );
    }

    #[test]
    fn lightweight_tags_and_an_existing_empty_destination_work() {
        let fx = fixture();
        let dest = fx.root.join("empty");
        fs::create_dir(&dest).unwrap();
        let exported = export_tag(&fx.sup, "Build000007", &dest).unwrap();
        assert_eq!(exported.commit, fx.tagged.to_string());
        assert_eq!(
            fs::read(dest.join("libs/sub/lib.py")).unwrap(),
            b"VERSION = 1\n"
        );
    }

    #[test]
    fn read_file_at_tag_reads_the_tag_not_the_work_tree() {
        let fx = fixture();
        let read = |path: &str| read_file_at_tag(&fx.sup, "Build000002", path);
        assert_eq!(read("deploy.toml").unwrap().unwrap(), b"app = \"tagged\"\n");
        assert_eq!(read("a/b/c.txt").unwrap().unwrap(), b"deep\n");
        assert_eq!(read("scratch.txt").unwrap(), None);
        assert_eq!(read("nope/deploy.toml").unwrap(), None);
        assert!(read("a/b").unwrap_err().to_string().contains("directory"));
        assert!(read("libs/sub")
            .unwrap_err()
            .to_string()
            .contains("submodule"));
        assert!(read("../x").is_err());
        assert!(read("/etc/passwd").is_err());
    }

    #[test]
    fn bad_and_missing_tags_are_refused() {
        let fx = fixture();
        let dest = fx.root.join("out");
        for bad in [
            "Build00002",
            "v1.0",
            "000002",
            "Build000000",
            "build000002",
            "",
        ] {
            let err = export_tag(&fx.sup, bad, &dest).unwrap_err();
            assert_eq!(
                common::error::exit_code_for(err.as_ref()),
                common::report::ExitCode::BadInput,
                "{bad}: {err:#}"
            );
            assert!(read_file_at_tag(&fx.sup, bad, "deploy.toml").is_err());
        }
        let err = format!(
            "{:#}",
            export_tag(&fx.sup, "Build000009", &dest).unwrap_err()
        );
        assert!(err.contains("`Build000009`"), "{err}");
        assert!(
            err.contains("`Build000007`, `Build000010`") && err.contains("`Build000002`"),
            "{err}"
        );
        assert!(!dest.exists(), "nothing is created for a refused tag");
    }

    #[test]
    fn a_non_empty_destination_is_refused_and_left_alone() {
        let fx = fixture();
        let dest = fx.root.join("used");
        write(&dest.join("keep.txt"), b"mine\n", 0o600);
        let err = format!(
            "{:#}",
            export_tag(&fx.sup, "Build000002", &dest).unwrap_err()
        );
        assert!(err.contains("not empty"), "{err}");
        assert_eq!(
            snapshot(&dest),
            [("keep.txt".to_owned(), file(0o600, b"mine\n"))].into()
        );
    }

    fn blob(repo: &Repository, content: &[u8]) -> Oid {
        repo.blob(content).unwrap()
    }

    fn tree(repo: &Repository, entries: &[(&str, Oid, i32)]) -> Oid {
        let mut builder = repo.treebuilder(None).unwrap();
        for (name, id, mode) in entries {
            builder.insert(*name, *id, *mode).unwrap();
        }
        builder.write().unwrap()
    }

    fn commit_tree(repo: &Repository, tree: Oid) -> Oid {
        let tree = repo.find_tree(tree).unwrap();
        repo.commit(None, &author(), &committer(), "c", &tree, &[])
            .unwrap()
    }

    fn tag_tree(repo: &Repository, name: &str, tree: Oid) -> Oid {
        let id = commit_tree(repo, tree);
        let obj = repo.find_object(id, None).unwrap();
        repo.tag_lightweight(name, &obj, false).unwrap();
        id
    }

    /// Submodules that exist only as git directories under `.git/modules` (no checkout at
    /// all), named differently from their paths, one nested inside the other.
    #[test]
    fn nested_submodules_are_found_by_name_in_the_modules_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = tmp.path().join("app");
        let repo = Repository::init(&sup).unwrap();

        let inner =
            Repository::init_bare(sup.join(".git/modules/outer-name/modules/deep.name")).unwrap();
        let x = blob(&inner, b"x = 1\n");
        let inner_commit = commit_tree(&inner, tree(&inner, &[("x.py", x, MODE_FILE)]));

        let outer = Repository::init_bare(sup.join(".git/modules/outer-name")).unwrap();
        let gm = blob(
            &outer,
            b"[submodule \"deep.name\"]\n\tpath = inner\n\turl = ../deep\n",
        );
        let o = blob(&outer, b"outer\n");
        let outer_tree = tree(
            &outer,
            &[
                (".gitmodules", gm, MODE_FILE),
                ("inner", inner_commit, MODE_GITLINK),
                ("o.txt", o, MODE_EXECUTABLE),
            ],
        );
        let outer_commit = commit_tree(&outer, outer_tree);

        let gm = blob(
            &repo,
            b"[submodule \"outer-name\"]\n\tpath = vendor/outer\n\turl = ../outer\n",
        );
        let vendor = tree(&repo, &[("outer", outer_commit, MODE_GITLINK)]);
        let top = tree(
            &repo,
            &[
                (".gitmodules", gm, MODE_FILE),
                ("vendor", vendor, MODE_TREE),
            ],
        );
        tag_tree(&repo, "Build000003", top);

        let dest = tmp.path().join("out");
        let exported = export_tag(&sup, "Build000003", &dest).unwrap();
        assert_eq!(
            exported.submodules,
            [
                ("vendor/outer".to_owned(), outer_commit.to_string()),
                ("vendor/outer/inner".to_owned(), inner_commit.to_string()),
            ]
            .into()
        );
        let tree = snapshot(&dest);
        assert_eq!(tree["vendor/outer/o.txt"], file(0o755, b"outer\n"));
        assert_eq!(tree["vendor/outer/inner/x.py"], file(0o644, b"x = 1\n"));
        assert!(tree.contains_key("vendor/outer/.gitmodules"));
        assert_eq!(tree.len(), 7, "{:?}", tree.keys());
    }

    #[test]
    fn a_missing_submodule_commit_names_the_path_and_commit() {
        let fx = fixture();
        let repo = Repository::open(&fx.sup).unwrap();
        let head_tree = repo.find_commit(fx.tagged).unwrap().tree().unwrap();
        let absent = Oid::from_str("1234567890abcdef1234567890abcdef12345678").unwrap();
        let mut libs = repo
            .treebuilder(Some(
                &repo
                    .find_tree(head_tree.get_name("libs").unwrap().id())
                    .unwrap(),
            ))
            .unwrap();
        libs.insert("sub", absent, MODE_GITLINK).unwrap();
        libs.insert("ghost", absent, MODE_GITLINK).unwrap();
        let libs = libs.write().unwrap();
        let mut top = repo.treebuilder(Some(&head_tree)).unwrap();
        top.insert("libs", libs, MODE_TREE).unwrap();
        tag_tree(&repo, "Build000004", top.write().unwrap());

        let dest = fx.root.join("out");
        let err = export_tag(&fx.sup, "Build000004", &dest).unwrap_err();
        let msg = format!("{err:#}");
        // `ghost` sorts first and has no repository at all; `sub` has one without the commit.
        assert!(msg.contains("`libs/ghost`"), "{msg}");
        assert!(msg.contains(&format!("`{absent}`")), "{msg}");
        assert!(msg.contains("git submodule update --init"), "{msg}");
        assert!(!dest.exists(), "a failed export leaves nothing behind");
        assert_eq!(
            common::error::exit_code_for(err.as_ref()),
            common::report::ExitCode::BadInput
        );

        let mut libs = repo
            .treebuilder(Some(
                &repo
                    .find_tree(head_tree.get_name("libs").unwrap().id())
                    .unwrap(),
            ))
            .unwrap();
        libs.insert("sub", absent, MODE_GITLINK).unwrap();
        let libs = libs.write().unwrap();
        let mut top = repo.treebuilder(Some(&head_tree)).unwrap();
        top.insert("libs", libs, MODE_TREE).unwrap();
        tag_tree(&repo, "Build000005", top.write().unwrap());
        fs::create_dir(&dest).unwrap();
        let msg = format!(
            "{:#}",
            export_tag(&fx.sup, "Build000005", &dest).unwrap_err()
        );
        assert!(msg.contains("`libs/sub` records commit"), "{msg}");
        assert!(msg.contains(&format!("`{absent}`")), "{msg}");
        assert!(msg.contains("not in its local repository"), "{msg}");
        assert!(msg.contains("git submodule update --init"), "{msg}");
        assert_eq!(
            snapshot(&dest),
            BTreeMap::new(),
            "emptied again after the failure"
        );
    }
}
