//! The writer refuses trees a release must not contain, and leaves nothing in the output
//! directory when it does.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::archive::reader::{unpack, UnpackOptions};
use common::archive::writer::{pack, PackOptions};
use common::error::{ManifestError, PackError};

use crate::support::*;

type Check = fn(&PackError, &Path) -> bool;

/// Builds a staged tree with a valid part plus whatever `setup` adds, packs it into an output
/// directory that already holds an unrelated file, and checks the error and the directory.
fn refused(what: &str, setup: impl FnOnce(&Path), check: Check, mention: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let staged = tmp.path().join("staged");
    fs::create_dir_all(staged.join("sub")).unwrap();
    fs::write(staged.join("sub/ok.txt"), b"fine\n").unwrap();
    fs::write(staged.join("big.bin"), gen_content(900_000, 3)).unwrap();
    setup(&staged);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("unrelated"), b"keep me").unwrap();
    let before = snapshot(tmp.path());

    let err = match pack(
        &staged,
        base_manifest(),
        &out,
        &PackOptions {
            threads: 2,
            ..PackOptions::default()
        },
    ) {
        Ok(p) => panic!("{what}: packed {}", p.artifact_path.display()),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(check(&err, &staged), "{what}: wrong error {err:?} ({msg})");
    for m in mention {
        assert!(msg.contains(m), "{what}: `{msg}` does not mention `{m}`");
    }
    assert_eq!(
        snapshot(tmp.path()),
        before,
        "{what}: the output directory or tree changed"
    );
}

fn unsupported(e: &PackError, staged: &Path, rel: &str, reason: &str) -> bool {
    matches!(e, PackError::Unsupported { path, reason: r } if path == &staged.join(rel) && r.contains(reason))
}

#[test]
fn fifo_is_refused() {
    refused(
        "FIFO",
        |s| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                s.join("sub/pipe"),
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap()
        },
        |e, s| unsupported(e, s, "sub/pipe", "FIFO"),
        &["sub/pipe", "FIFO"],
    );
}

#[test]
fn socket_is_refused() {
    refused(
        "socket",
        |s| {
            let l = std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
            drop(l); // the socket file stays
        },
        |e, s| unsupported(e, s, "sock", "socket"),
        &["sock"],
    );
}

#[test]
fn absolute_symlink_is_refused() {
    refused(
        "absolute symlink",
        |s| std::os::unix::fs::symlink("/etc/passwd", s.join("sub/passwd")).unwrap(),
        |e, s| unsupported(e, s, "sub/passwd", "absolute"),
        &["sub/passwd", "/etc/passwd"],
    );
}

#[test]
fn escaping_symlink_is_refused() {
    refused(
        "escaping symlink",
        |s| std::os::unix::fs::symlink("../../etc", s.join("sub/etc")).unwrap(),
        |e, s| unsupported(e, s, "sub/etc", "leaves the release tree"),
        &["sub/etc", "../../etc"],
    );
}

#[test]
fn symlink_escaping_through_another_symlink_is_refused() {
    // Lexically `sub/esc` -> `up/../outside` is `sub/outside`; but `sub/up` is the root, so the
    // link really points beside the release.
    refused(
        "chained symlink escape",
        |s| {
            std::os::unix::fs::symlink("..", s.join("sub/up")).unwrap();
            std::os::unix::fs::symlink("up/../outside", s.join("sub/esc")).unwrap();
        },
        |e, s| unsupported(e, s, "sub/esc", "leaves the release tree"),
        &["sub/esc", "up/../outside"],
    );
}

#[test]
fn release_json_at_the_root_is_refused() {
    refused(
        "release.json at the root",
        |s| fs::write(s.join("release.json"), b"{}").unwrap(),
        |e, _| matches!(e, PackError::ReservedName),
        &["release.json"],
    );
}

#[test]
fn non_utf8_name_is_refused() {
    refused(
        "non-UTF-8 name",
        |s| fs::write(s.join(OsStr::from_bytes(b"bad\xffname")), b"x").unwrap(),
        |e, _| matches!(e, PackError::Unsupported { reason, .. } if reason.contains("UTF-8")),
        &["UTF-8"],
    );
}

#[test]
fn backslash_and_control_characters_are_refused() {
    refused(
        "backslash",
        |s| fs::write(s.join("sub/a\\b"), b"x").unwrap(),
        |e, s| unsupported(e, s, "sub/a\\b", "backslash"),
        &["backslash"],
    );
    refused(
        "newline",
        |s| fs::write(s.join("line\nbreak"), b"x").unwrap(),
        |e, s| unsupported(e, s, "line\nbreak", "control"),
        &["control"],
    );
}

#[test]
fn staged_path_must_be_a_directory_and_manifest_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    let out = tmp.path().join("out");
    let err = pack(&file, base_manifest(), &out, &PackOptions::default()).unwrap_err();
    assert!(
        matches!(&err, PackError::NotADirectory(p) if p == &file),
        "{err:?}"
    );
    assert!(!out.exists() || fs::read_dir(&out).unwrap().next().is_none());

    let staged = tmp.path().join("staged");
    fs::create_dir(&staged).unwrap();
    let mut m = base_manifest();
    m.app = "Bad App".into();
    let err = pack(&staged, m, &out, &PackOptions::default()).unwrap_err();
    assert!(
        matches!(&err, PackError::Manifest(ManifestError::Invalid { .. })),
        "{err:?}"
    );
    assert!(!out.exists() || fs::read_dir(&out).unwrap().next().is_none());
}

/// Controls: what the refusals are near to is accepted — `release.json` below the root, a
/// symlink to the root itself, links to links — and unpacks.
#[test]
fn near_misses_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let staged = tmp.path().join("staged");
    fs::create_dir_all(staged.join("sub/deeper")).unwrap();
    fs::write(
        staged.join("sub/release.json"),
        b"{\"not\": \"the sidecar\"}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..", staged.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("../up/sub", staged.join("sub/deeper/again")).unwrap();
    std::os::unix::fs::symlink("sub/up/sub/release.json", staged.join("chain")).unwrap();
    std::os::unix::fs::symlink(".", staged.join("self")).unwrap();
    let packed = pack(
        &staged,
        base_manifest(),
        &tmp.path().join("out"),
        &PackOptions::default(),
    )
    .unwrap();
    let dest = tmp.path().join("dest");
    unpack(
        &packed.artifact_path,
        &packed.sidecar,
        &dest,
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!(
        fs::read(dest.join("chain")).unwrap(),
        b"{\"not\": \"the sidecar\"}\n"
    );
}

#[test]
fn dangling_symlink_is_refused() {
    // The installer refuses a link to nothing (it could be made to lead anywhere later, once
    // the installer puts its own files at that path): say so where it can still be fixed.
    refused(
        "dangling symlink",
        |s| std::os::unix::fs::symlink("gone.txt", s.join("sub/l")).unwrap(),
        |e, s| unsupported(e, s, "sub/l", "which the release does not have"),
        &["sub/l", "gone.txt", "`sub/gone.txt`"],
    );
}

#[test]
fn paths_the_installer_creates_are_refused() {
    refused(
        "a virtualenv at the root",
        |s| {
            fs::create_dir_all(s.join("venv/bin")).unwrap();
            fs::write(s.join("venv/bin/python"), b"#!/bin/sh\n").unwrap();
        },
        |e, s| unsupported(e, s, "venv", "created by the installer"),
        &["venv", "leave it out of the release"],
    );
    refused(
        "a link into the virtualenv's place",
        |s| std::os::unix::fs::symlink("../venv/bin/python", s.join("sub/py")).unwrap(),
        |e, s| unsupported(e, s, "sub/py", "creates on the server"),
        &["sub/py", "`venv`"],
    );
}
