//! Property tests: random trees survive pack → unpack exactly, and the archive does not depend
//! on the number of compression threads.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use common::archive::reader::{unpack, verify_tree, SharedTree, SharedUse, UnpackOptions};
use common::archive::writer::{pack, PackOptions, Packed};
use common::manifest::{FileEntry, RELEASE_JSON};
use common::{Blake3Hash, Sidecar};
use proptest::prelude::*;
use proptest::sample::Index;

use crate::support::*;

#[derive(Debug, Clone)]
enum Content {
    Empty,
    Bytes(Vec<u8>),
    /// Generated: (length, seed).
    Gen(usize, u64),
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Content::Empty => Vec::new(),
            Content::Bytes(b) => b.clone(),
            Content::Gen(len, seed) => gen_content(*len, *seed),
        }
    }
}

#[derive(Debug, Clone)]
struct TreeSpec {
    /// (parent among the directories so far, name)
    dirs: Vec<(Index, String)>,
    /// (directory, name, content, executable)
    files: Vec<(Index, String, Content, bool)>,
    /// (directory, name, target among the entries so far, target spelling)
    links: Vec<(Index, String, Index, u8)>,
    /// A file over one compression chunk (512 KiB): (length, seed).
    big: Option<(usize, u64)>,
    /// Add a chain of long directory names: paths over 255 bytes, link targets over 100.
    deep: bool,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9][a-z0-9_.-]{0,10}",
        2 => "[a-zäöüßéñ日本語字😀Ωж][a-z0-9äöüßé日本語😀Ωж ._-]{0,8}",
        1 => "[a-z]{95,180}",
        1 => "[日本語字]{35,80}",
    ]
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        2 => Just(Content::Empty),
        5 => prop::collection::vec(any::<u8>(), 1..3000).prop_map(Content::Bytes),
        2 => (1usize..64 * 1024, any::<u64>()).prop_map(|(len, seed)| Content::Gen(len, seed)),
    ]
}

fn tree_spec() -> impl Strategy<Value = TreeSpec> {
    (
        prop::collection::vec((any::<Index>(), name()), 0..8),
        prop::collection::vec((any::<Index>(), name(), content(), any::<bool>()), 0..14),
        prop::collection::vec((any::<Index>(), name(), any::<Index>(), 0u8..6), 0..6),
        proptest::option::weighted(0.5, (512 * 1024 + 1..1_300_000usize, any::<u64>())),
        any::<bool>(),
    )
        .prop_map(|(dirs, files, links, big, deep)| TreeSpec {
            dirs,
            files,
            links,
            big,
            deep,
        })
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// The relative path from directory `from` to entry `to` (both relative to the root; "" is it).
pub fn relative(from: &str, to: &str) -> String {
    let split = |s: &str| -> Vec<String> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('/').map(str::to_owned).collect()
        }
    };
    let (f, t) = (split(from), split(to));
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts = vec!["..".to_owned(); f.len() - common];
    parts.extend(t[common..].iter().cloned());
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// Creates the tree a spec describes under `root`, with assorted permission bits.
fn materialise(root: &Path, spec: &TreeSpec) {
    let mut dirs: Vec<String> = vec![String::new()];
    let mut targets: Vec<String> = vec![String::new()];
    let mut taken: HashSet<String> = HashSet::from([RELEASE_JSON.to_owned()]);
    let exec_modes = [0o755, 0o700, 0o775, 0o744];
    let plain_modes = [0o644, 0o600, 0o664, 0o640];
    if spec.deep {
        let a = "d".repeat(120);
        let b = format!("{a}/{}", "e".repeat(130));
        for d in [&a, &b] {
            fs::create_dir(root.join(d)).unwrap();
            taken.insert(d.clone());
            dirs.push(d.clone());
            targets.push(d.clone());
        }
        let f = format!("{b}/{}", "f".repeat(100));
        fs::write(root.join(&f), b"at the bottom\n").unwrap();
        taken.insert(f.clone());
        targets.push(f);
    }
    for (i, (at, name)) in spec.dirs.iter().enumerate() {
        let p = join(&dirs[at.index(dirs.len())], name);
        if !taken.insert(p.clone()) {
            continue;
        }
        fs::create_dir(root.join(&p)).unwrap();
        if i % 3 == 1 {
            set_mode(&root.join(&p), 0o775);
        }
        dirs.push(p.clone());
        targets.push(p);
    }
    for (at, name, content, exec) in &spec.files {
        let p = join(&dirs[at.index(dirs.len())], name);
        if !taken.insert(p.clone()) {
            continue;
        }
        fs::write(root.join(&p), content.bytes()).unwrap();
        let modes = if *exec { exec_modes } else { plain_modes };
        set_mode(&root.join(&p), modes[name.len() % 4]);
        targets.push(p);
    }
    if let Some((len, seed)) = spec.big {
        if taken.insert("big.bin".into()) {
            fs::write(root.join("big.bin"), gen_content(len, seed)).unwrap();
            targets.push("big.bin".into());
        }
    }
    for (at, name, to, style) in &spec.links {
        let dir = dirs[at.index(dirs.len())].clone();
        let p = join(&dir, name);
        if !taken.insert(p.clone()) {
            continue;
        }
        let to = targets[to.index(targets.len())].clone();
        let t = relative(&dir, &to);
        let target = match style {
            0 => t,
            1 => format!("./{t}"),
            2 => format!("{t}/"),
            3 if t.contains('/') => t.replacen('/', "//", 1),
            3 => format!(".//{t}"),
            4 => format!("{t}/."),
            // (A dangling link is refused by the writer: `refusals.rs`.)
            _ => format!("{t}/./"),
        };
        std::os::unix::fs::symlink(&target, root.join(&p)).unwrap();
        targets.push(p);
    }
}

fn pack_with(src: &Path, out: &Path, threads: usize) -> Packed {
    pack(
        src,
        base_manifest(),
        out,
        &PackOptions {
            threads,
            ..PackOptions::default()
        },
    )
    .unwrap()
}

/// Packs `src` with several thread counts, unpacks, and checks everything a release promises.
pub fn check_round_trip(src: &Path, work: &Path) -> Result<(), String> {
    let first = pack_with(src, &work.join("out-1"), 1);
    let artifact = fs::read(&first.artifact_path).unwrap();
    let sidecar_bytes = fs::read(&first.sidecar_path).unwrap();
    for threads in [2, 3, 7] {
        let other = pack_with(src, &work.join(format!("out-{threads}")), threads);
        if fs::read(&other.artifact_path).unwrap() != artifact {
            return Err(format!("threads={threads} gave a different archive"));
        }
        if fs::read(&other.sidecar_path).unwrap() != sidecar_bytes {
            return Err(format!("threads={threads} gave a different sidecar"));
        }
        if other.artifact_path.file_name() != first.artifact_path.file_name() {
            return Err(format!("threads={threads} gave a different name"));
        }
    }
    let sidecar = &first.sidecar;
    if sidecar_bytes != sidecar.to_bytes() {
        return Err("the sidecar on disk is not Sidecar::to_bytes".into());
    }
    let reread = Sidecar::from_bytes(&sidecar_bytes, "release.json").map_err(|e| e.to_string())?;
    if &reread != sidecar || reread.to_bytes() != sidecar_bytes {
        return Err("the sidecar does not round-trip".into());
    }
    let info = sidecar.archive.as_ref().unwrap();
    if info.blake3 != Blake3Hash::of(&artifact)
        || info.size != artifact.len() as u64
        || first.artifact_path.file_name().unwrap().to_str() != Some(info.file_name.as_str())
        || !info.file_name.starts_with("binarycrate-Build000034-")
    {
        return Err(format!(
            "archive section does not describe the artifact: {info:?}"
        ));
    }

    // The tar stream: walk order with release.json last, and no host metadata.
    let listed = list_archive(&artifact);
    let mut expected_order = walk_order(src);
    expected_order.push(RELEASE_JSON.into());
    let order: Vec<String> = listed.iter().map(|l| l.path.clone()).collect();
    if order != expected_order {
        return Err(format!(
            "entry order {order:?}, expected {expected_order:?}"
        ));
    }
    for l in &listed {
        let mode_ok = match l.kind {
            tar::EntryType::Directory => l.mode == 0o755,
            // A hard link entry (equal content stored once) has its file's mode.
            tar::EntryType::Regular | tar::EntryType::Link => l.mode == 0o644 || l.mode == 0o755,
            tar::EntryType::Symlink => l.mode == 0o777,
            _ => false,
        };
        if !mode_ok
            || l.uid != 0
            || l.gid != 0
            || l.mtime != SOURCE_DATE as u64
            || !l.username.is_empty()
            || !l.groupname.is_empty()
        {
            return Err(format!("entry header not normalised: {l:?}"));
        }
    }

    // Unpack and compare with the source.
    let releases = work.join("releases");
    fs::create_dir_all(&releases).unwrap();
    let dest = releases.join("Build000034");
    let summary = unpack(
        &first.artifact_path,
        sidecar,
        &dest,
        &UnpackOptions::default(),
    )
    .map_err(|e| format!("unpack refused the writer's own archive: {e}"))?;
    let leftovers: Vec<_> = fs::read_dir(&releases)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "Build000034")
        .collect();
    if !leftovers.is_empty() {
        return Err(format!("unpack left {leftovers:?} beside the release"));
    }
    let mut unpacked = snapshot(&dest);
    let embedded = unpacked.remove(RELEASE_JSON);
    let want = normalised(&snapshot(src));
    if unpacked != want {
        return Err(format!(
            "unpacked tree differs: {}",
            tree_diff(&want, &unpacked)
        ));
    }
    let embedded_bytes = fs::read(dest.join(RELEASE_JSON)).unwrap();
    if embedded_bytes != sidecar.embedded().to_bytes()
        || embedded
            != Some(Node::File {
                mode: 0o644,
                size: embedded_bytes.len() as u64,
                hash: Blake3Hash::of(&embedded_bytes),
            })
    {
        return Err("the unpacked release.json is not the embedded sidecar".into());
    }
    verify_tree(&dest, sidecar, |_| false).map_err(|e| format!("verify_tree: {e}"))?;
    let (mut files, mut dirs, mut links, mut bytes) = (0, 0, 0, 0);
    for entry in sidecar.manifest.files.values() {
        match entry {
            FileEntry::File { size, .. } => {
                files += 1;
                bytes += size;
            }
            FileEntry::Dir { .. } => dirs += 1,
            FileEntry::Symlink { .. } => links += 1,
        }
    }
    if (summary.files, summary.dirs, summary.symlinks, summary.bytes) != (files, dirs, links, bytes)
    {
        return Err(format!("summary {summary:?} does not match the manifest"));
    }
    for (name, entry) in &sidecar.manifest.files {
        if let FileEntry::File { .. } = entry {
            let mtime = fs::metadata(dest.join(name)).unwrap().modified().unwrap();
            let secs = mtime
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            if secs != SOURCE_DATE as u64 {
                return Err(format!("`{name}` has mtime {secs}"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Modest by default so the suite stays fast in debug; PROPTEST_CASES=500 for a soak.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_trees_round_trip_and_ignore_thread_count(spec in tree_spec()) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        materialise(&src, &spec);
        let result = check_round_trip(&src, tmp.path());
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// The generator itself reaches what the properties are about (so a quiet pass means something).
#[test]
fn generator_covers_long_names_links_and_big_files() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut long100, mut long255, mut big, mut links, mut unicode, mut empty) =
        (false, false, false, false, false, false);
    for _ in 0..48 {
        let spec = tree_spec().new_tree(&mut runner).unwrap().current();
        let tmp = tempfile::tempdir().unwrap();
        materialise(tmp.path(), &spec);
        for (path, node) in snapshot(tmp.path()) {
            long100 |= path.len() > 100;
            long255 |= path.len() > 255;
            unicode |= !path.is_ascii();
            match node {
                Node::File { size, .. } => {
                    big |= size > 512 * 1024;
                    empty |= size == 0;
                }
                Node::Symlink { .. } => links = true,
                _ => {}
            }
        }
    }
    assert!(long100 && long255 && big && links && unicode && empty);
}

/// Equal content is stored once on disk: a duplicate inside the archive becomes a hard link to
/// its first copy, and a file equal to one of `reuse` (another release) a hard link to it —
/// unless that file changed since, when a fresh copy is written instead.
#[test]
fn equal_content_is_linked_within_the_tree_and_to_files_on_disk() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let staged = tmp.path().join("staged");
    fs::create_dir_all(staged.join("app/static")).unwrap();
    fs::create_dir_all(staged.join("public")).unwrap();
    fs::write(staged.join("app/static/site.css"), b"body { color: red }\n").unwrap();
    fs::write(staged.join("public/site.css"), b"body { color: red }\n").unwrap();
    fs::write(staged.join("lib.py"), gen_content(200_000, 7)).unwrap();
    fs::write(staged.join("other.py"), b"print('other')\n").unwrap();
    let out = tmp.path().join("out");
    let packed: Packed = pack(&staged, base_manifest(), &out, &PackOptions::default()).unwrap();

    // The archive holds the duplicate once: the second copy is a hard link entry to the first.
    let listed = list_archive(&fs::read(&packed.artifact_path).unwrap());
    let links: Vec<_> = listed
        .iter()
        .filter(|e| e.kind == tar::EntryType::Link)
        .collect();
    assert_eq!(links.len(), 1, "{listed:?}");
    let first = tmp.path().join("first");
    let summary = unpack(
        &packed.artifact_path,
        &packed.sidecar,
        &first,
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!((summary.files, summary.linked), (4, 1));
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(&first.join("app/static/site.css")),
        ino(&first.join("public/site.css"))
    );

    // Another release on disk: its files are offered for reuse by content and mode.
    let mut reuse = std::collections::HashMap::new();
    for (path, entry) in &packed.sidecar.manifest.files {
        if let FileEntry::File { mode, blake3, .. } = entry {
            reuse.entry((*blake3, mode.0)).or_insert(first.join(path));
        }
    }
    // One of them changed on disk after it was verified: it must not be linked to.
    fs::write(first.join("other.py"), b"print('owned')\n").unwrap();
    let second = tmp.path().join("second");
    let options = UnpackOptions {
        reuse,
        ..UnpackOptions::default()
    };
    let summary = unpack(&packed.artifact_path, &packed.sidecar, &second, &options).unwrap();
    assert_eq!((summary.files, summary.linked), (4, 3), "{summary:?}");
    assert_eq!(ino(&second.join("lib.py")), ino(&first.join("lib.py")));
    assert_ne!(ino(&second.join("other.py")), ino(&first.join("other.py")));
    assert_eq!(
        fs::read(second.join("other.py")).unwrap(),
        b"print('other')\n"
    );
    verify_tree(&second, &packed.sidecar, |_| false).unwrap();
}

/// A directory kept once outside the trees (a release's dependencies): the first unpack moves
/// it to the store complete and links to it; the next checks the store and writes none of it;
/// a store that changed (a file planted in it) is not used, and the tree gets its own copy. A
/// duplicate outside the directory linked to a file inside it works in every case.
#[test]
fn a_shared_directory_is_stored_once_checked_before_reuse_and_refused_when_changed() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let staged = tmp.path().join("staged");
    fs::create_dir_all(staged.join("deps/pkg")).unwrap();
    fs::create_dir_all(staged.join("public")).unwrap();
    fs::write(staged.join("deps/pkg/__init__.py"), gen_content(50_000, 3)).unwrap();
    fs::write(staged.join("deps/pkg/same.css"), b"p { margin: 0 }\n").unwrap();
    std::os::unix::fs::symlink("pkg/__init__.py", staged.join("deps/entry.py")).unwrap();
    fs::write(staged.join("public/same.css"), b"p { margin: 0 }\n").unwrap();
    fs::write(staged.join("app.py"), b"print('app')\n").unwrap();
    let packed = pack(
        &staged,
        base_manifest(),
        &tmp.path().join("out"),
        &PackOptions::default(),
    )
    .unwrap();
    let store = tmp.path().join("srv/deps/key");
    let options = UnpackOptions {
        shared: Some(SharedTree {
            dir: "deps".into(),
            store: store.clone(),
            link: "../srv/deps/key".into(),
        }),
        ..UnpackOptions::default()
    };
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();

    let first = tmp.path().join("first");
    let summary = unpack(&packed.artifact_path, &packed.sidecar, &first, &options).unwrap();
    assert_eq!(summary.shared, Some(SharedUse::Created));
    assert_eq!(
        fs::read_link(first.join("deps")).unwrap(),
        Path::new("../srv/deps/key")
    );
    assert!(store.join("pkg/__init__.py").is_file());
    assert_eq!(
        ino(&first.join("public/same.css")),
        ino(&store.join("pkg/same.css"))
    );

    let second = tmp.path().join("second");
    let summary = unpack(&packed.artifact_path, &packed.sidecar, &second, &options).unwrap();
    assert_eq!(summary.shared, Some(SharedUse::Reused));
    assert_eq!(
        ino(&second.join("deps/pkg/__init__.py")),
        ino(&first.join("deps/pkg/__init__.py"))
    );
    assert_eq!(
        ino(&second.join("public/same.css")),
        ino(&store.join("pkg/same.css"))
    );
    // Through the link, the tree is what the manifest lists.
    let real = |p: &str| fs::read(second.join(p)).unwrap();
    assert_eq!(real("deps/entry.py"), real("deps/pkg/__init__.py"));

    for (planted, why) in [
        ("zz.pth", "`deps/zz.pth` is not in the manifest"),
        ("pkg/same.css", "`deps/pkg/same.css` changed"),
    ] {
        let path = store.join(planted);
        let before = fs::read(&path).ok();
        fs::write(&path, b"p { margin: 1 }\n").unwrap();
        let own = tmp
            .path()
            .join(format!("own-{}", planted.replace('/', "-")));
        let summary = unpack(&packed.artifact_path, &packed.sidecar, &own, &options).unwrap();
        assert_eq!(summary.shared, Some(SharedUse::Own(why.to_owned())));
        assert!(fs::symlink_metadata(own.join("deps")).unwrap().is_dir());
        verify_tree(&own, &packed.sidecar, |_| false).unwrap();
        match before {
            Some(bytes) => fs::write(&path, bytes).unwrap(),
            None => fs::remove_file(&path).unwrap(),
        }
    }
}

/// The installed dependencies go last in the archive (just before the embedded manifest), so a
/// server that holds an equal, checked copy of them stops inflating where they begin: the rest
/// is only hashed. What it unpacks is the same tree, embedded manifest included.
#[test]
fn a_reused_shared_directory_last_in_the_archive_is_not_inflated() {
    let tmp = tempfile::tempdir().unwrap();
    let staged = tmp.path().join("staged");
    fs::create_dir_all(staged.join("deps/pkg")).unwrap();
    fs::create_dir_all(staged.join("public")).unwrap();
    fs::write(staged.join("deps/pkg/__init__.py"), gen_content(300_000, 7)).unwrap();
    fs::write(staged.join("deps/pkg/same.css"), b"p { margin: 0 }\n").unwrap();
    fs::write(staged.join("public/same.css"), b"p { margin: 0 }\n").unwrap();
    fs::write(staged.join("app.py"), b"print('app')\n").unwrap();
    // Sorted by name, these would come after `deps`.
    fs::write(staged.join("manage.py"), b"print('manage')\n").unwrap();
    fs::create_dir_all(staged.join("static")).unwrap();
    fs::write(staged.join("static/app.css"), gen_content(40_000, 8)).unwrap();
    let mut manifest = base_manifest();
    manifest.python_tag = Some("cp311".into());
    manifest.deps = Some(common::manifest::Dependencies {
        dir: "deps".into(),
        bytecode: true,
    });
    let packed = pack(
        &staged,
        manifest,
        &tmp.path().join("out"),
        &PackOptions::default(),
    )
    .unwrap();
    let order: Vec<String> = list_archive(&fs::read(&packed.artifact_path).unwrap())
        .into_iter()
        .map(|e| e.path.trim_end_matches('/').to_owned())
        .collect();
    let first_dep = order.iter().position(|p| p == "deps").unwrap();
    assert!(
        order[..first_dep].iter().all(|p| !p.starts_with("deps")),
        "{order:?}"
    );
    assert!(
        order[first_dep..order.len() - 1]
            .iter()
            .all(|p| p == "deps" || p.starts_with("deps/")),
        "{order:?}"
    );
    assert_eq!(order.last().map(String::as_str), Some(RELEASE_JSON));

    let options = UnpackOptions {
        shared: Some(SharedTree {
            dir: "deps".into(),
            store: tmp.path().join("srv/deps/key"),
            link: "../srv/deps/key".into(),
        }),
        ..UnpackOptions::default()
    };
    let first = tmp.path().join("first");
    let created = unpack(&packed.artifact_path, &packed.sidecar, &first, &options).unwrap();
    assert_eq!(created.shared, Some(SharedUse::Created));
    assert!(!created.shared_not_inflated);
    let second = tmp.path().join("second");
    let summary = unpack(&packed.artifact_path, &packed.sidecar, &second, &options).unwrap();
    assert_eq!(summary.shared, Some(SharedUse::Reused));
    assert!(summary.shared_not_inflated, "{summary:?}");
    // Not read, still counted: the same files and bytes, the shared ones as linked.
    assert_eq!(
        (summary.files, summary.bytes),
        (created.files, created.bytes)
    );
    assert!(summary.linked > created.linked, "{summary:?} {created:?}");
    assert_eq!(
        fs::read(second.join(RELEASE_JSON)).unwrap(),
        fs::read(first.join(RELEASE_JSON)).unwrap()
    );
    assert_eq!(
        fs::read(second.join("deps/pkg/__init__.py")).unwrap(),
        gen_content(300_000, 7)
    );
    assert_eq!(
        fs::read(second.join("static/app.css")).unwrap(),
        gen_content(40_000, 8)
    );
    assert_eq!(
        fs::read(second.join("public/same.css")).unwrap(),
        b"p { margin: 0 }\n"
    );

    // The skipped bytes still count: a flipped byte where the dependencies are is refused by
    // the archive's hash, and nothing is left behind.
    let mut bytes = fs::read(&packed.artifact_path).unwrap();
    let at = bytes.len() - 200;
    bytes[at] ^= 0x55;
    let tampered = tmp.path().join("tampered.tar.gz");
    fs::write(&tampered, &bytes).unwrap();
    let third = tmp.path().join("third");
    let err = unpack(&tampered, &packed.sidecar, &third, &options)
        .unwrap_err()
        .to_string();
    // Which is found first depends on how far ahead the inflating thread had read.
    assert!(err.contains("BLAKE3") || err.contains("corrupt"), "{err}");
    assert!(!third.exists());
}

/// An archive from before the dependencies went last (they sort between other entries) is
/// still unpacked with its shared copy reused: inflated in full, the other entries all written.
#[test]
fn a_shared_directory_in_the_middle_of_an_older_archive_is_reused_after_a_full_read() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Crafted::new();
    c.m.python_tag = Some("cp311".into());
    c.m.deps = Some(common::manifest::Dependencies {
        dir: "deps".into(),
        bytecode: true,
    });
    c.dir("app")
        .file("app/views.py", b"views\n")
        .dir("deps")
        .file("deps/six.py", b"six\n")
        .dir("zeta")
        .file("zeta/late.py", b"late\n");
    let (gz, sidecar) = c.seal();
    let archive = tmp.path().join("old.tar.gz");
    fs::write(&archive, &gz).unwrap();
    let options = UnpackOptions {
        shared: Some(SharedTree {
            dir: "deps".into(),
            store: tmp.path().join("srv/deps/key"),
            link: "../srv/deps/key".into(),
        }),
        ..UnpackOptions::default()
    };
    let first = tmp.path().join("first");
    let summary = unpack(&archive, &sidecar, &first, &options).unwrap();
    assert_eq!(summary.shared, Some(SharedUse::Created));
    let second = tmp.path().join("second");
    let summary = unpack(&archive, &sidecar, &second, &options).unwrap();
    assert_eq!(summary.shared, Some(SharedUse::Reused));
    assert!(!summary.shared_not_inflated);
    assert_eq!(fs::read(second.join("zeta/late.py")).unwrap(), b"late\n");
    assert_eq!(fs::read(second.join("deps/six.py")).unwrap(), b"six\n");
    assert_eq!(fs::read(second.join("app/views.py")).unwrap(), b"views\n");
}
