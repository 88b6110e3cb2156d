//! Reproducibility: the same content gives the same bytes whatever the host did to the tree
//! (mtimes, umask, creation order, location, time zone), and standard tools read the result.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::archive::writer::{pack, PackOptions, Packed};
use common::manifest::RELEASE_JSON;

use crate::roundtrip::check_round_trip;
use crate::support::*;

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>, bool),
    Link(String),
}

/// A small release-shaped tree with every feature: nested and unicode directories, an empty
/// and an executable file, a file over one compression chunk, names that sort differently by
/// component than by full path (`a/`, `a-b`, `a.txt`), paths over 100 and 255 bytes, and
/// relative links (one with a target over 100 bytes, some spelled non-canonically).
fn fixed_tree() -> Vec<(String, Kind)> {
    let long1 = "L".repeat(110);
    let long2 = format!("{long1}/{}", "M".repeat(150));
    let deep_file = format!("{long2}/{}", "N".repeat(120));
    let file = |s: &str| Kind::File(s.as_bytes().to_vec(), false);
    vec![
        ("a".into(), Kind::Dir),
        ("a/z".into(), file("z\n")),
        ("a-b".into(), file("dash\n")),
        ("a.txt".into(), file("dot\n")),
        (
            "big.bin".into(),
            Kind::File(gen_content(1_200_000, 7), false),
        ),
        ("binarycrate".into(), Kind::Dir),
        (
            "binarycrate/manage.py".into(),
            Kind::File(b"#!/usr/bin/env python\n".to_vec(), true),
        ),
        ("binarycrate/settings".into(), Kind::Dir),
        ("binarycrate/settings/__init__.py".into(), file("")),
        (
            "binarycrate/settings/build_number.py".into(),
            file("BUILD_NUMBER = '000034'\n"),
        ),
        ("front-end".into(), Kind::Dir),
        ("front-end/binarycrate".into(), Kind::Dir),
        (
            "front-end/binarycrate/build_number.py".into(),
            Kind::Link("../../binarycrate/settings/build_number.py".into()),
        ),
        ("static".into(), Kind::Dir),
        ("static/css".into(), Kind::Dir),
        ("static/css/site.css".into(), file("body { color: #333 }\n")),
        ("static/css/up".into(), Kind::Link("../..".into())),
        ("current".into(), Kind::Link("binarycrate".into())),
        ("trailing".into(), Kind::Link("static/".into())),
        ("dotted".into(), Kind::Link("./a/./z".into())),
        ("ünïcödé".into(), Kind::Dir),
        ("ünïcödé/日本語".into(), Kind::Dir),
        ("ünïcödé/日本語/ファイル.txt".into(), file("こんにちは\n")),
        (long1.clone(), Kind::Dir),
        (long2.clone(), Kind::Dir),
        (deep_file.clone(), Kind::File(b"deep\n".to_vec(), true)),
        ("deep-link".into(), Kind::Link(deep_file)),
    ]
}

#[derive(Debug, Clone, Default)]
struct Variant {
    /// Create entries in reverse order (parents made on demand).
    reverse: bool,
    /// Explicit (plain file, executable, directory) modes; otherwise the umask decides.
    modes: Option<(u32, u32, u32)>,
    /// Give every file and directory a different mtime starting here.
    mtime: Option<SystemTime>,
}

fn create_tree(root: &Path, v: &Variant) {
    let mut entries = fixed_tree();
    if v.reverse {
        entries.reverse();
    }
    fs::create_dir_all(root).unwrap();
    let mkdirs = |p: &Path| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o777)
            .create(p)
            .unwrap()
    };
    for (name, kind) in &entries {
        let path = root.join(name);
        if let Some(parent) = path.parent() {
            mkdirs(parent);
        }
        match kind {
            Kind::Dir => mkdirs(&path),
            Kind::File(data, exec) => {
                use std::io::Write;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if *exec { 0o777 } else { 0o666 })
                    .open(&path)
                    .unwrap();
                f.write_all(data).unwrap();
            }
            Kind::Link(target) => std::os::unix::fs::symlink(target, &path).unwrap(),
        }
    }
    if let Some((plain, exec, dir)) = v.modes {
        for (name, kind) in &entries {
            match kind {
                Kind::Dir => set_mode(&root.join(name), dir),
                Kind::File(_, true) => set_mode(&root.join(name), exec),
                Kind::File(_, false) => set_mode(&root.join(name), plain),
                Kind::Link(_) => {}
            }
        }
    }
    if let Some(start) = v.mtime {
        // Deepest first, so setting a file's time does not matter to its directory afterwards.
        let mut names: Vec<_> = entries.iter().collect();
        names.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
        for (i, (name, kind)) in names.into_iter().enumerate() {
            if matches!(kind, Kind::Link(_)) {
                continue;
            }
            let t = start + Duration::from_secs(3_607 * i as u64 + 1);
            File::open(root.join(name))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }
}

fn pack_tree(src: &Path, out: &Path) -> Packed {
    pack(src, base_manifest(), out, &PackOptions::default()).unwrap()
}

/// (artifact file name, artifact bytes, sidecar bytes) in `out`.
fn outputs(out: &Path) -> (String, Vec<u8>, Vec<u8>) {
    let mut artifact = None;
    for e in fs::read_dir(out).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".tar.gz") {
            assert!(artifact.is_none(), "two artifacts in {}", out.display());
            artifact = Some(name);
        } else {
            assert_eq!(name, RELEASE_JSON, "unexpected file in {}", out.display());
        }
    }
    let artifact = artifact.expect("an artifact");
    (
        artifact.clone(),
        fs::read(out.join(&artifact)).unwrap(),
        fs::read(out.join(RELEASE_JSON)).unwrap(),
    )
}

#[test]
fn same_tree_twice_gives_identical_bytes_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    create_tree(&src, &Variant::default());
    pack_tree(&src, &tmp.path().join("one"));
    pack_tree(&src, &tmp.path().join("two"));
    let one = outputs(&tmp.path().join("one"));
    let two = outputs(&tmp.path().join("two"));
    assert_eq!(one.0, two.0);
    assert!(one.1 == two.1, "artifacts differ");
    assert!(one.2 == two.2, "sidecars differ");
    check_round_trip(&src, &tmp.path().join("rt")).unwrap();
}

#[test]
fn host_differences_do_not_change_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let base_src = tmp.path().join("base");
    create_tree(&base_src, &Variant::default());
    pack_tree(&base_src, &tmp.path().join("base-out"));
    let base = outputs(&tmp.path().join("base-out"));

    let elsewhere = tempfile::tempdir().unwrap();
    let variants: Vec<(&str, Variant, PathBuf)> = vec![
        (
            "different mtimes",
            Variant {
                mtime: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800)),
                ..Variant::default()
            },
            tmp.path().join("v-mtime"),
        ),
        (
            "umask 002 (0664/0775)",
            Variant {
                modes: Some((0o664, 0o775, 0o775)),
                ..Variant::default()
            },
            tmp.path().join("v-002"),
        ),
        (
            "umask 077 (0600/0700)",
            Variant {
                modes: Some((0o600, 0o700, 0o700)),
                ..Variant::default()
            },
            tmp.path().join("v-077"),
        ),
        (
            "owner-only exec (0640/0744/0750)",
            Variant {
                modes: Some((0o640, 0o744, 0o750)),
                ..Variant::default()
            },
            tmp.path().join("v-0744"),
        ),
        (
            "reverse creation order",
            Variant {
                reverse: true,
                ..Variant::default()
            },
            tmp.path().join("v-reverse"),
        ),
        (
            "everything at once, in another temporary directory",
            Variant {
                reverse: true,
                modes: Some((0o664, 0o775, 0o775)),
                mtime: Some(SystemTime::now() + Duration::from_secs(86_400 * 400)),
            },
            elsewhere.path().join("x/y/z/src"),
        ),
    ];
    for (what, variant, src) in variants {
        create_tree(&src, &variant);
        let out = src.with_file_name(format!(
            "{}-out",
            src.file_name().unwrap().to_str().unwrap()
        ));
        pack_tree(&src, &out);
        let got = outputs(&out);
        assert_eq!(got.0, base.0, "{what}: artifact name differs");
        assert!(got.1 == base.1, "{what}: artifact bytes differ");
        assert!(got.2 == base.2, "{what}: sidecar bytes differ");
    }

    // Relative source and output paths (the current directory is not changed: tests share it).
    let rel_src = relative_from_cwd(&base_src);
    let rel_out = relative_from_cwd(&tmp.path().join("rel-out"));
    assert!(rel_src.is_relative());
    pack_tree(&rel_src, &rel_out);
    let got = outputs(&tmp.path().join("rel-out"));
    assert!(got == base, "relative paths changed the output");
}

/// Entry point for the child processes of the next test: creates the fixed tree under the
/// umask in `ARCHIVE_REPRO_UMASK` at the relative path `src` and packs it into `out`, in the
/// current directory and time zone the parent chose. Does nothing in a normal test run.
#[test]
fn child_process_entry() {
    let Ok(umask) = std::env::var("ARCHIVE_REPRO_UMASK") else {
        return;
    };
    let umask = u32::from_str_radix(&umask, 8).unwrap();
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
    create_tree(Path::new("src"), &Variant::default());
    pack_tree(Path::new("src"), Path::new("out"));
}

#[test]
fn umask_time_zone_and_working_directory_of_another_process_do_not_matter() {
    let tmp = tempfile::tempdir().unwrap();
    let base_src = tmp.path().join("base");
    create_tree(&base_src, &Variant::default());
    pack_tree(&base_src, &tmp.path().join("base-out"));
    let base = outputs(&tmp.path().join("base-out"));
    let exe = std::env::current_exe().unwrap();
    for (umask, tz, lang) in [
        ("002", "Pacific/Chatham", "C"),
        ("077", "America/St_Johns", "C.UTF-8"),
        ("022", "UTC+14", "POSIX"),
    ] {
        let cwd = tmp.path().join(format!("child-{umask}"));
        fs::create_dir(&cwd).unwrap();
        let output = Command::new(&exe)
            .args([
                "--exact",
                "repro::child_process_entry",
                "--test-threads=1",
                "--nocapture",
            ])
            .current_dir(&cwd)
            .env("ARCHIVE_REPRO_UMASK", umask)
            .env("TZ", tz)
            .env("LC_ALL", lang)
            .env("LANG", lang)
            .output()
            .unwrap();
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
            "child failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // The child really created its tree under its umask.
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(cwd.join("src/a.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            mode,
            0o666 & !u32::from_str_radix(umask, 8).unwrap(),
            "umask {umask}"
        );
        let got = outputs(&cwd.join("out"));
        assert_eq!(
            got.0, base.0,
            "umask {umask}, TZ {tz}: artifact name differs"
        );
        assert!(
            got.1 == base.1,
            "umask {umask}, TZ {tz}: artifact bytes differ"
        );
        assert!(
            got.2 == base.2,
            "umask {umask}, TZ {tz}: sidecar bytes differ"
        );
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn system_gzip_and_tar_read_the_artifact() {
    if !have("gzip") || !have("tar") {
        println!("skipped: system gzip or tar is missing");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    create_tree(&src, &Variant::default());
    let packed = pack_tree(&src, &tmp.path().join("out"));

    let t = Command::new("gzip")
        .arg("-t")
        .arg(&packed.artifact_path)
        .output()
        .unwrap();
    assert!(
        t.status.success(),
        "gzip -t: {}",
        String::from_utf8_lossy(&t.stderr)
    );

    let list = Command::new("tar")
        .args(["--quoting-style=literal", "-tzf"])
        .arg(&packed.artifact_path)
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "tar tzf: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listed: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    let mut expected = walk_order(&src);
    expected.push(RELEASE_JSON.into());
    assert_eq!(listed, expected);
    assert_eq!(listed.last().map(String::as_str), Some(RELEASE_JSON));

    let x = tmp.path().join("x");
    fs::create_dir(&x).unwrap();
    let extract = Command::new("tar")
        .arg("-xzf")
        .arg(&packed.artifact_path)
        .arg("-C")
        .arg(&x)
        .output()
        .unwrap();
    assert!(
        extract.status.success(),
        "tar xzf: {}",
        String::from_utf8_lossy(&extract.stderr)
    );
    let mut got = normalised(&snapshot(&x));
    let embedded = got.remove(RELEASE_JSON);
    let want = normalised(&snapshot(&src));
    assert!(
        got == want,
        "tar xzf gave another tree: {}",
        tree_diff(&want, &got)
    );
    assert_eq!(
        fs::read(x.join(RELEASE_JSON)).unwrap(),
        packed.sidecar.embedded().to_bytes()
    );
    assert!(embedded.is_some());
}

/// A staged tree with dependencies: several chunks of them (one file equal to an app file),
/// and app files around them.
fn tree_with_deps(root: &Path, app_css: &[u8]) {
    fs::create_dir_all(root.join("deps/pkg/sub")).unwrap();
    fs::create_dir_all(root.join("static")).unwrap();
    fs::write(root.join("deps/pkg/big.py"), gen_content(1_300_000, 3)).unwrap();
    for i in 0..200 {
        fs::write(
            root.join(format!("deps/pkg/sub/m{i}.py")),
            gen_content(3_000 + i, i as u64 + 10),
        )
        .unwrap();
    }
    fs::write(root.join("deps/pkg/__init__.py"), b"").unwrap();
    fs::write(root.join("app.py"), b"").unwrap();
    fs::write(root.join("static/app.css"), app_css).unwrap();
}

fn pack_deps(staged: &Path, out: &Path, source_date: i64, pieces: Option<&Path>) -> Vec<u8> {
    let mut manifest = base_manifest();
    manifest.source_date = source_date;
    manifest.python_tag = Some("cp311".into());
    manifest.deps = Some(common::manifest::Dependencies {
        dir: "deps".into(),
        bytecode: true,
    });
    let options = PackOptions {
        pieces: pieces.map(Path::to_owned),
        ..PackOptions::default()
    };
    let packed = pack(staged, manifest, out, &options).unwrap();
    fs::read(packed.artifact_path).unwrap()
}

#[test]
fn the_dependencies_section_is_kept_compressed_and_the_output_is_the_same_with_or_without() {
    let tmp = tempfile::tempdir().unwrap();
    let pieces = tmp.path().join("pieces");
    let one = tmp.path().join("one");
    tree_with_deps(&one, b"body { color: red }\n");
    let plain = pack_deps(&one, &tmp.path().join("o1"), 1_600_000_000, None);
    let kept = pack_deps(&one, &tmp.path().join("o2"), 1_600_000_000, Some(&pieces));
    assert!(plain == kept, "the piece store changed the archive");
    let count = fs::read_dir(&pieces).unwrap().count();
    assert!(count >= 3, "{count} pieces kept");

    // The next build: another commit time, another app file, the same dependencies. Its
    // section's bytes depend on nothing else, so the kept pieces serve it.
    let two = tmp.path().join("two");
    tree_with_deps(&two, b"body { color: blue }\n");
    let plain = pack_deps(&two, &tmp.path().join("o3"), 1_700_000_000, None);
    let kept = pack_deps(&two, &tmp.path().join("o4"), 1_700_000_000, Some(&pieces));
    assert!(plain == kept, "kept pieces changed the archive");
    assert_eq!(
        fs::read_dir(&pieces).unwrap().count(),
        count,
        "no new piece was needed"
    );
    let listed = list_archive(&kept);
    for e in &listed {
        let in_deps = e.path.trim_end_matches('/') == "deps" || e.path.starts_with("deps/");
        let want = if in_deps {
            common::archive::writer::SECTION_MTIME as u64
        } else {
            1_700_000_000
        };
        assert_eq!(e.mtime, want, "{}", e.path);
        // Equal to `app.py`, yet stored again: the section links only within itself.
        if e.path == "deps/pkg/__init__.py" {
            assert_eq!(e.kind, tar::EntryType::Regular);
        }
    }

    // A damaged piece is not used: compressed again, same archive.
    let damaged = fs::read_dir(&pieces)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&damaged).unwrap();
    *bytes.last_mut().unwrap() ^= 0x55;
    fs::write(&damaged, &bytes).unwrap();
    let again = pack_deps(&two, &tmp.path().join("o5"), 1_700_000_000, Some(&pieces));
    assert!(plain == again, "a damaged piece reached the archive");
    assert_ne!(
        fs::read(&damaged).unwrap(),
        bytes,
        "the damaged piece was not replaced"
    );

    // And the pieces are what the section is made of: one replaced by other bytes that carry
    // their own hash is copied as it is (the archive would then fail every server's check).
    let mut forged = fs::read(&damaged).unwrap();
    forged.truncate(20);
    let other = b"not the compressed piece";
    forged.extend_from_slice(blake3::hash(other).as_bytes());
    forged.extend_from_slice(other);
    fs::write(&damaged, &forged).unwrap();
    let from_pieces = pack_deps(&two, &tmp.path().join("o6"), 1_700_000_000, Some(&pieces));
    assert!(plain != from_pieces, "the kept pieces were not used");
}
