//! A corpus of malicious and corrupt archives, each refused by `unpack` with its specific error
//! and with nothing left on disk.
//!
//! Each archive is crafted header by header and paired with a sidecar that describes it
//! exactly (BLAKE3, size, file name) and whose manifest lists the malicious entries, so the
//! check under test — not the archive hash or a missing manifest entry — is what refuses it.

use std::fs;
use std::path::Path;

use common::archive::reader::{unpack, UnpackOptions};
use common::error::{ManifestError, UnpackError};
use common::manifest::{ArchiveInfo, ArtifactRef, FileEntry, Mode, RELEASE_JSON};
use common::{Blake3Hash, Sidecar};
use tar::EntryType;

use crate::support::*;

type Check = fn(&UnpackError) -> bool;

struct Case {
    name: &'static str,
    archive: Vec<u8>,
    sidecar: Sidecar,
    /// When set, the sidecar is read from these bytes (as an installer would) before unpacking.
    sidecar_bytes: Option<Vec<u8>>,
    options: UnpackOptions,
    /// Create the destination (with a marker file) before unpacking.
    dest_exists: bool,
    /// Make the destination a dangling symlink before unpacking.
    dest_dangling_link: bool,
    check: Check,
    /// Substrings the error message must contain (the entry's name, when there is one).
    mention: Vec<String>,
}

fn case(
    name: &'static str,
    (archive, sidecar): (Vec<u8>, Sidecar),
    check: Check,
    mention: &[&str],
) -> Case {
    Case {
        name,
        archive,
        sidecar,
        sidecar_bytes: None,
        options: UnpackOptions::default(),
        dest_exists: false,
        dest_dangling_link: false,
        check,
        mention: mention.iter().map(|s| s.to_string()).collect(),
    }
}

fn crafted(f: impl FnOnce(&mut Crafted)) -> Crafted {
    let mut c = Crafted::new();
    f(&mut c);
    c
}

/// Incompressible filler, so truncation and bombs behave predictably.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn cases() -> Vec<Case> {
    use UnpackError as E;
    let mut v = Vec::new();

    // --- paths -----------------------------------------------------------------------------
    v.push(case(
        "absolute path",
        crafted(|c| {
            c.file("/etc/evil", b"x");
        })
        .seal(),
        |e| matches!(e, E::AbsolutePath { entry } if entry == "/etc/evil"),
        &["/etc/evil"],
    ));
    v.push(case(
        "absolute directory path",
        crafted(|c| {
            c.tar.dir("/tmp/evil/");
            c.list_dir("/tmp/evil");
        })
        .seal(),
        |e| matches!(e, E::AbsolutePath { entry } if entry == "/tmp/evil/"),
        &["/tmp/evil/"],
    ));
    v.push(case(
        "`..` component",
        crafted(|c| {
            c.file("../evil", b"x");
        })
        .seal(),
        |e| matches!(e, E::ParentComponent { entry } if entry == "../evil"),
        &["../evil"],
    ));
    v.push(case(
        "`a/../../x`",
        crafted(|c| {
            c.dir("a").file("a/../../x", b"x");
        })
        .seal(),
        |e| matches!(e, E::ParentComponent { entry } if entry == "a/../../x"),
        &["a/../../x"],
    ));
    v.push(case(
        "directory named `a/..`",
        crafted(|c| {
            c.dir("a");
            c.tar.dir("a/../");
            c.list_dir("a/..");
        })
        .seal(),
        |e| matches!(e, E::ParentComponent { entry } if entry == "a/../"),
        &["a/../"],
    ));
    let long_escape = format!("a/{}/../../../evil", "b".repeat(120));
    v.push(case(
        "`..` hidden in a GNU long name",
        crafted(|c| {
            c.dir("a").file(&long_escape, b"x");
        })
        .seal(),
        |e| matches!(e, E::ParentComponent { entry } if entry.ends_with("/../../../evil")),
        &["../../../evil"],
    ));
    v.push(case(
        "absolute path in a PAX `path` record",
        crafted(|c| {
            c.tar
                .pax(&[("path", b"/etc/cron.d/evil")])
                .file("innocent", b"x");
            c.list_file("/etc/cron.d/evil", b"x", 0o644);
        })
        .seal(),
        |e| matches!(e, E::AbsolutePath { entry } if entry == "/etc/cron.d/evil"),
        &["/etc/cron.d/evil"],
    ));
    v.push(case(
        "non-UTF-8 name",
        crafted(|c| {
            c.tar
                .entry(b"bad\xff", EntryType::Regular, 0o644, b"x", b"");
        })
        .seal(),
        |e| matches!(e, E::BadPath { entry } if entry.starts_with("bad")),
        &["bad"],
    ));
    v.push(case(
        "`./` component",
        crafted(|c| {
            c.file("./x", b"x");
        })
        .seal(),
        |e| matches!(e, E::BadPath { entry } if entry == "./x"),
        &["./x"],
    ));
    v.push(case(
        "empty component `a//x`",
        crafted(|c| {
            c.dir("a").file("a//x", b"x");
        })
        .seal(),
        |e| matches!(e, E::BadPath { entry } if entry == "a//x"),
        &["a//x"],
    ));

    // --- symlinks --------------------------------------------------------------------------
    v.push(case(
        "symlink with an absolute target",
        crafted(|c| {
            c.symlink("etc", "/etc");
        })
        .seal(),
        |e| matches!(e, E::AbsoluteLink { entry, target } if entry == "etc" && target == "/etc"),
        &["etc", "/etc"],
    ));
    v.push(case(
        "symlink escaping with `..`",
        crafted(|c| {
            c.dir("a").symlink("a/up", "../../outside");
        })
        .seal(),
        |e| matches!(e, E::LinkEscapes { entry, target } if entry == "a/up" && target == "../../outside"),
        &["a/up", "../../outside"],
    ));
    v.push(case(
        "symlink `..` at the root",
        crafted(|c| {
            c.symlink("parent", "..");
        })
        .seal(),
        |e| matches!(e, E::LinkEscapes { entry, .. } if entry == "parent"),
        &["parent"],
    ));
    v.push(case(
        "absolute target in a PAX `linkpath` record",
        crafted(|c| {
            c.tar
                .pax(&[("linkpath", b"/etc")])
                .symlink("conf", "harmless");
            c.list_symlink("conf", "/etc");
        })
        .seal(),
        |e| matches!(e, E::AbsoluteLink { entry, target } if entry == "conf" && target == "/etc"),
        &["conf", "/etc"],
    ));
    let long_target = format!("{}{}outside", "x/".repeat(40), "../".repeat(42));
    v.push(case(
        "escaping target in a GNU long link",
        crafted(|c| {
            c.symlink("far", &long_target);
        })
        .seal(),
        |e| matches!(e, E::LinkEscapes { entry, .. } if entry == "far"),
        &["far"],
    ));
    v.push(case(
        "file written through a symlinked directory",
        crafted(|c| {
            c.dir("sub").symlink("d", "sub").file("d/x", b"x");
        })
        .seal(),
        |e| matches!(e, E::ThroughSymlink { entry, link } if entry == "d/x" && link == "d"),
        &["d/x"],
    ));
    v.push(case(
        "directory created through a symlinked directory",
        crafted(|c| {
            c.dir("sub").symlink("d", "sub").dir("d/new");
        })
        .seal(),
        |e| matches!(e, E::ThroughSymlink { entry, link } if entry == "d/new" && link == "d"),
        &["d/new"],
    ));
    v.push(case(
        "symlink to a directory outside, then a file under it",
        crafted(|c| {
            c.symlink("out", "../outside").file("out/pwned", b"x");
        })
        .seal(),
        |e| matches!(e, E::LinkEscapes { entry, target } if entry == "out" && target == "../outside"),
        &["out", "../outside"],
    ));
    v.push(case(
        "symlink escaping through another symlink",
        // `sub/esc` -> `up/../outside` stays inside lexically (`sub/outside`), but `sub/up` is
        // the tree's root, so it resolves to the directory beside the release.
        crafted(|c| {
            c.dir("sub")
                .symlink("sub/esc", "up/../outside")
                .symlink("sub/up", "..");
        })
        .seal(),
        |e| matches!(e, E::LinkEscapes { entry, target } if entry == "sub/esc" && target == "up/../outside"),
        &["sub/esc", "up/../outside"],
    ));
    v.push(case(
        "symlink target differs from the manifest",
        crafted(|c| {
            c.dir("a").dir("b");
            c.tar.symlink("l", "a");
            c.list_symlink("l", "b");
        })
        .seal(),
        |e| matches!(e, E::ManifestMismatch { entry, what } if entry == "l" && what.contains("links to")),
        &["`l`"],
    ));

    // --- entry types and modes -------------------------------------------------------------
    v.push(case(
        "hard link to an earlier file with other content",
        crafted(|c| {
            c.file("a", b"x");
            c.tar.entry(b"b", EntryType::Link, 0o644, b"", b"a");
            c.list_file("b", b"y", 0o644);
        })
        .seal(),
        |e| matches!(e, E::HardLink { entry } if entry == "b"),
        &["`b`"],
    ));
    v.push(case(
        "hard link to an earlier file with another mode",
        crafted(|c| {
            c.file("a", b"x");
            c.tar.entry(b"b", EntryType::Link, 0o755, b"", b"a");
            c.list_file("b", b"x", 0o755);
        })
        .seal(),
        |e| matches!(e, E::HardLink { entry } if entry == "b"),
        &["`b`"],
    ));
    v.push(case(
        "hard link to a later file",
        crafted(|c| {
            c.tar.entry(b"a", EntryType::Link, 0o644, b"", b"b");
            c.file("b", b"x");
            c.list_file("a", b"x", 0o644);
        })
        .seal(),
        |e| matches!(e, E::HardLink { entry } if entry == "a"),
        &["`a`"],
    ));
    v.push(case(
        "hard link to a directory",
        crafted(|c| {
            c.dir("d");
            c.tar.entry(b"b", EntryType::Link, 0o644, b"", b"d");
            c.list_file("b", b"", 0o644);
        })
        .seal(),
        |e| matches!(e, E::HardLink { entry } if entry == "b"),
        &["`b`"],
    ));
    v.push(case(
        "hard link with content of its own",
        crafted(|c| {
            c.file("a", b"x");
            c.tar.entry(b"b", EntryType::Link, 0o644, b"x", b"a");
            c.list_file("b", b"x", 0o644);
        })
        .seal(),
        |e| matches!(e, E::HardLink { entry } if entry == "b"),
        &["`b`"],
    ));
    v.push(case(
        "hard link to /etc/shadow",
        crafted(|c| {
            c.tar
                .entry(b"shadow", EntryType::Link, 0o644, b"", b"/etc/shadow");
            c.list_file("shadow", b"", 0o644);
        })
        .seal(),
        |e| matches!(e, E::HardLink { entry } if entry == "shadow"),
        &["shadow"],
    ));
    v.push(case(
        "character device",
        crafted(|c| {
            c.tar.entry(b"null", EntryType::Char, 0o644, b"", b"");
            c.list_file("null", b"", 0o644);
        })
        .seal(),
        |e| matches!(e, E::SpecialFile { entry, kind } if entry == "null" && kind.contains("character")),
        &["null", "character device"],
    ));
    v.push(case(
        "block device",
        crafted(|c| {
            c.tar.entry(b"sda", EntryType::Block, 0o644, b"", b"");
            c.list_file("sda", b"", 0o644);
        })
        .seal(),
        |e| matches!(e, E::SpecialFile { entry, kind } if entry == "sda" && kind.contains("block")),
        &["sda", "block device"],
    ));
    v.push(case(
        "FIFO",
        crafted(|c| {
            c.tar.entry(b"pipe", EntryType::Fifo, 0o644, b"", b"");
            c.list_file("pipe", b"", 0o644);
        })
        .seal(),
        |e| matches!(e, E::SpecialFile { entry, kind } if entry == "pipe" && *kind == "FIFO"),
        &["pipe", "FIFO"],
    ));
    v.push(case(
        "GNU sparse file",
        crafted(|c| {
            let mut h = RawTar::header(b"sparse", EntryType::GNUSparse, 0o644, 0, b"");
            h.as_gnu_mut().unwrap().set_real_size(0);
            h.set_cksum();
            c.tar.push(&h, b"");
            c.list_file("sparse", b"", 0o644);
        })
        .seal(),
        |e| matches!(e, E::Sparse(what) if what.contains("`sparse`")),
        &["GNU sparse entry", "`sparse`"],
    ));
    v.push(case(
        "setuid file",
        crafted(|c| {
            c.tar.entry(b"su", EntryType::Regular, 0o4755, b"x", b"");
            c.list_file("su", b"x", 0o4755);
        })
        .seal(),
        |e| matches!(e, E::PrivilegedMode { entry, mode: 0o4755 } if entry == "su"),
        &["su", "4755"],
    ));
    v.push(case(
        "setgid directory",
        crafted(|c| {
            c.tar
                .entry(b"shared", EntryType::Directory, 0o2755, b"", b"");
            c.m.files
                .insert("shared".into(), FileEntry::Dir { mode: Mode(0o2755) });
        })
        .seal(),
        |e| matches!(e, E::PrivilegedMode { entry, mode: 0o2755 } if entry == "shared"),
        &["shared", "2755"],
    ));
    v.push(case(
        "sticky directory",
        crafted(|c| {
            c.tar.entry(b"tmp", EntryType::Directory, 0o1777, b"", b"");
            c.m.files
                .insert("tmp".into(), FileEntry::Dir { mode: Mode(0o1777) });
        })
        .seal(),
        |e| matches!(e, E::PrivilegedMode { entry, mode: 0o1777 } if entry == "tmp"),
        &["tmp", "1777"],
    ));
    v.push(case(
        "file mode 0755 where the manifest says 0644",
        crafted(|c| {
            c.tar.entry(b"run.sh", EntryType::Regular, 0o755, b"#!/bin/sh\n", b"");
            c.list_file("run.sh", b"#!/bin/sh\n", 0o644);
        })
        .seal(),
        |e| matches!(e, E::ManifestMismatch { entry, what } if entry == "run.sh" && what.contains("0755")),
        &["run.sh", "0755", "0644"],
    ));
    v.push(case(
        "odd file mode 0600",
        crafted(|c| {
            c.tar.entry(b"secret", EntryType::Regular, 0o600, b"x", b"");
            c.list_file("secret", b"x", 0o600);
        })
        .seal(),
        |e| matches!(e, E::UnexpectedMode { entry, mode: 0o600 } if entry == "secret"),
        &["secret", "0600"],
    ));
    v.push(case(
        "group-writable file mode 0664",
        crafted(|c| {
            c.tar.entry(b"gw", EntryType::Regular, 0o664, b"x", b"");
            c.list_file("gw", b"x", 0o664);
        })
        .seal(),
        |e| matches!(e, E::UnexpectedMode { entry, mode: 0o664 } if entry == "gw"),
        &["gw", "0664"],
    ));
    v.push(case(
        "private directory mode 0700",
        crafted(|c| {
            c.tar.entry(b"priv", EntryType::Directory, 0o700, b"", b"");
            c.m.files
                .insert("priv".into(), FileEntry::Dir { mode: Mode(0o700) });
        })
        .seal(),
        |e| matches!(e, E::UnexpectedMode { entry, mode: 0o700 } if entry == "priv"),
        &["priv", "0700"],
    ));
    v.push(case(
        "directory in the archive, file in the manifest",
        crafted(|c| {
            c.tar.dir("thing");
            c.list_file("thing", b"", 0o644);
        })
        .seal(),
        |e| matches!(e, E::ManifestMismatch { entry, what } if entry == "thing" && what.contains("directory in the archive")),
        &["thing"],
    ));

    // --- entries versus the manifest -------------------------------------------------------
    v.push(case(
        "duplicate file",
        crafted(|c| {
            c.file("a", b"x");
            c.tar.file("a", b"x");
        })
        .seal(),
        |e| matches!(e, E::Duplicate { entry } if entry == "a"),
        &["`a`"],
    ));
    v.push(case(
        "duplicate directory (`d/` after `d`)",
        crafted(|c| {
            c.dir("d");
            c.tar.dir("d/");
        })
        .seal(),
        |e| matches!(e, E::Duplicate { entry } if entry == "d"),
        &["`d`"],
    ));
    v.push(case(
        "symlink replacing a directory of the same name",
        crafted(|c| {
            c.dir("d");
            c.tar.symlink("d", "..");
        })
        .seal(),
        |e| matches!(e, E::Duplicate { entry } if entry == "d"),
        &["`d`"],
    ));
    v.push(case(
        "entry not in the manifest",
        crafted(|c| {
            c.file("listed", b"x");
            c.tar.file("extra.txt", b"x");
        })
        .seal(),
        |e| matches!(e, E::NotInManifest { entry } if entry == "extra.txt"),
        &["extra.txt"],
    ));
    v.push(case(
        "manifest entry missing from the archive",
        crafted(|c| {
            c.file("present", b"x")
                .list_file("missing.txt", b"y", 0o644);
        })
        .seal(),
        |e| matches!(e, E::MissingEntries { first, count: 1 } if first == "missing.txt"),
        &["missing.txt"],
    ));
    v.push(case(
        "content differs from the manifest's hash",
        crafted(|c| {
            c.tar.file("app.py", b"print('evil')\n");
            c.list_file("app.py", b"print('good')\n", 0o644);
        })
        .seal(),
        |e| matches!(e, E::ManifestMismatch { entry, what } if entry == "app.py" && what.contains("BLAKE3")),
        &["app.py", "BLAKE3"],
    ));
    v.push(case(
        "size differs from the manifest",
        crafted(|c| {
            c.tar.file("app.py", b"print('good')\n# more\n");
            c.list_file("app.py", b"print('good')\n", 0o644);
        })
        .seal(),
        |e| matches!(e, E::ManifestMismatch { entry, what } if entry == "app.py" && what.contains("bytes")),
        &["app.py", "21 bytes", "says 14"],
    ));
    v.push(case(
        "PAX `size` record overriding the header's size",
        // The header (and the manifest) say 0 bytes; the PAX record makes the entry 600 bytes.
        crafted(|c| {
            let data = noise(600);
            let mut h = RawTar::header(b"grow", EntryType::Regular, 0o644, 0, b"");
            h.set_size(0);
            h.set_cksum();
            c.tar.pax(&[("size", b"600")]);
            c.tar.bytes.extend_from_slice(h.as_bytes());
            c.tar.bytes.extend_from_slice(&data);
            c.tar.bytes.extend(std::iter::repeat_n(0u8, 1024 - 600));
            c.list_file("grow", b"", 0o644);
        })
        .seal(),
        |e| matches!(e, E::ManifestMismatch { entry, what } if entry == "grow" && what.contains("600 bytes")),
        &["grow", "600 bytes"],
    ));
    v.push(case(
        "directory does not come before its entry",
        crafted(|c| {
            c.file("a/x", b"x").dir("a");
        })
        .seal(),
        |e| matches!(e, E::ManifestMismatch { entry, what } if entry == "a/x" && what.contains("does not come before")),
        &["a/x", "`a`"],
    ));
    v.push(case(
        "entry below a regular file",
        crafted(|c| {
            c.file("f", b"x").file("f/x", b"y");
        })
        .seal(),
        |e| matches!(e, E::ManifestMismatch { entry, what } if entry == "f/x" && what.contains("does not come before")),
        &["f/x"],
    ));

    // --- the embedded release.json ---------------------------------------------------------
    v.push(case(
        "embedded release.json differs from the sidecar",
        crafted(|c| {
            c.file("a", b"x");
            let mut other = c.m.clone();
            other.commit = "0".repeat(40);
            c.tar.file(RELEASE_JSON, &embedded_for(&other)).end();
        })
        .seal_as_is(),
        |e| matches!(e, E::EmbeddedSidecarMismatch),
        &["release.json"],
    ));
    v.push(case(
        "embedded release.json is the full sidecar (with an archive section)",
        crafted(|c| {
            c.file("a", b"x");
            let mut with_archive = Sidecar::new(c.m.clone(), None);
            with_archive.archive = Some(ArchiveInfo {
                file_name: ArtifactRef::new("binarycrate", build(), Blake3Hash::of(b""))
                    .file_name(),
                blake3: Blake3Hash::of(b""),
                size: 1,
            });
            c.tar.file(RELEASE_JSON, &with_archive.to_bytes()).end();
        })
        .seal_as_is(),
        |e| matches!(e, E::EmbeddedSidecarMismatch),
        &["release.json"],
    ));
    v.push(case(
        "release.json is a directory",
        crafted(|c| {
            c.file("a", b"x");
            c.tar.dir(RELEASE_JSON).end();
        })
        .seal_as_is(),
        |e| matches!(e, E::EmbeddedSidecarMismatch),
        &["release.json"],
    ));
    v.push(case(
        "release.json is a symlink",
        crafted(|c| {
            c.file("a", b"x");
            c.tar.symlink(RELEASE_JSON, "a").end();
        })
        .seal_as_is(),
        |e| matches!(e, E::EmbeddedSidecarMismatch),
        &["release.json"],
    ));
    v.push(case(
        "release.json twice",
        crafted(|c| {
            c.file("a", b"x");
            let embedded = embedded_for(&c.m);
            c.tar.file(RELEASE_JSON, &embedded);
        })
        .seal(),
        |e| matches!(e, E::Duplicate { entry } if entry == RELEASE_JSON),
        &["release.json"],
    ));
    v.push(case(
        "no embedded release.json",
        crafted(|c| {
            c.file("a", b"x");
            c.tar.end();
        })
        .seal_as_is(),
        |e| matches!(e, E::EmbeddedSidecarMissing),
        &["release.json"],
    ));

    // --- the compressed stream -------------------------------------------------------------
    let (full, _) = crafted(|c| {
        c.dir("static").file("static/blob", &noise(96 * 1024));
    })
    .seal();
    {
        let c = crafted(|c| {
            c.dir("static").file("static/blob", &noise(96 * 1024));
        });
        let cut = full[..full.len() / 2].to_vec();
        let sidecar = sidecar_for(&c.m, &cut);
        v.push(case(
            "truncated gzip (first half)",
            (cut, sidecar),
            |e| matches!(e, E::Corrupt(_)),
            &["corrupt or truncated"],
        ));
    }
    {
        let c = crafted(|c| {
            c.dir("static").file("static/blob", &noise(96 * 1024));
        });
        let cut = full[..full.len() - 4].to_vec();
        v.push(case(
            "gzip missing its ISIZE trailer",
            (cut.clone(), sidecar_for(&c.m, &cut)),
            |e| matches!(e, E::Corrupt(_)),
            &["corrupt or truncated"],
        ));
    }
    {
        let c = crafted(|c| {
            c.dir("static").file("static/blob", &noise(96 * 1024));
        });
        let mut bad = full.clone();
        let at = bad.len() - 8; // first byte of the CRC32
        bad[at] ^= 0x55;
        v.push(case(
            "corrupted gzip CRC",
            (bad.clone(), sidecar_for(&c.m, &bad)),
            |e| matches!(e, E::Corrupt(m) if m.contains("checksum")),
            &["corrupt or truncated"],
        ));
    }
    {
        let mut c = crafted(|c| {
            c.file("a", b"x");
        });
        let embedded = embedded_for(&c.m);
        c.tar.file(RELEASE_JSON, &embedded).end();
        let mut bad = gzip(&c.tar.bytes);
        let at = bad.len() - 4; // ISIZE
        bad[at] ^= 1;
        v.push(case(
            "wrong gzip ISIZE",
            (bad.clone(), sidecar_for(&c.m, &bad)),
            |e| matches!(e, E::Corrupt(_)),
            &["corrupt or truncated"],
        ));
    }
    {
        let mut c = crafted(|c| {
            c.file("a", b"x");
        });
        let embedded = embedded_for(&c.m);
        c.tar.file(RELEASE_JSON, &embedded).end();
        c.tar.bytes[148] ^= 1; // the first header's checksum field
        v.push(case(
            "tar header checksum mismatch",
            c.seal_as_is(),
            |e| matches!(e, E::Corrupt(m) if m.contains("checksum")),
            &["checksum"],
        ));
    }
    for (name, garbage) in [
        (
            "trailing garbage after the gzip member (16 bytes)",
            b"GARBAGE-GARBAGE!".to_vec(),
        ),
        (
            "trailing garbage after the gzip member (100 KiB)",
            noise(100 * 1024),
        ),
        ("a second gzip member after the first", gzip(b"more data")),
    ] {
        let mut c = crafted(|c| {
            c.file("a", b"x");
        });
        let embedded = embedded_for(&c.m);
        c.tar.file(RELEASE_JSON, &embedded).end();
        let mut gz = gzip(&c.tar.bytes);
        gz.extend_from_slice(&garbage);
        v.push(case(
            name,
            (gz.clone(), sidecar_for(&c.m, &gz)),
            |e| matches!(e, E::TrailingData),
            &["after its end"],
        ));
    }
    v.push(case(
        "data after the tar end marker",
        crafted(|c| {
            c.file("a", b"x");
            let embedded = embedded_for(&c.m);
            c.tar.file(RELEASE_JSON, &embedded).end();
            c.tar.bytes.extend_from_slice(&[0u8; 512]);
            c.tar.bytes.extend_from_slice(b"hidden payload");
            c.tar.bytes.extend(std::iter::repeat_n(0u8, 512 - 14));
        })
        .seal_as_is(),
        |e| matches!(e, E::TrailingData),
        &["after its end"],
    ));
    v.push(case(
        "not gzip at all (a plain tar)",
        {
            let mut c = crafted(|c| {
                c.file("a", b"x");
            });
            let embedded = embedded_for(&c.m);
            c.tar.file(RELEASE_JSON, &embedded).end();
            let plain = c.tar.bytes.clone();
            (plain.clone(), sidecar_for(&c.m, &plain))
        },
        |e| matches!(e, E::Corrupt(_)),
        &["corrupt or truncated"],
    ));
    v.push(case(
        "empty archive file",
        {
            let m = base_manifest();
            (Vec::new(), sidecar_for(&m, b""))
        },
        |e| matches!(e, E::Corrupt(_)),
        &["corrupt or truncated"],
    ));
    {
        let (gz, mut sidecar) = crafted(|c| {
            c.file("a", b"x");
        })
        .seal();
        let other = Blake3Hash::of(b"some other archive");
        let info = sidecar.archive.as_mut().unwrap();
        info.blake3 = other;
        info.file_name = ArtifactRef::new("binarycrate", build(), other).file_name();
        v.push(case(
            "archive hash differs from the sidecar",
            (gz, sidecar),
            |e| matches!(e, E::ArchiveHash { expected, .. } if *expected == Blake3Hash::of(b"some other archive").to_hex()),
            &["hash mismatch"],
        ));
    }
    {
        let (gz, mut sidecar) = crafted(|c| {
            c.file("a", b"x");
        })
        .seal();
        let real = gz.len() as u64;
        sidecar.archive.as_mut().unwrap().size = real + 1;
        v.push(case(
            "archive size differs from the sidecar",
            (gz, sidecar),
            |e| matches!(e, E::ArchiveSize { expected, actual } if *expected == *actual + 1),
            &["size mismatch"],
        ));
    }
    {
        let (gz, mut sidecar) = crafted(|c| {
            c.file("a", b"x");
        })
        .seal();
        sidecar.archive = None;
        v.push(case(
            "sidecar without an archive section",
            (gz, sidecar),
            |e| matches!(e, E::Manifest(ManifestError::Invalid { .. })),
            &["no archive section"],
        ));
    }

    // --- decompression bombs ---------------------------------------------------------------
    let zeros = vec![0u8; 4 << 20];
    let mut bomb = case(
        "gzip bomb by size (TooLarge)",
        crafted(|c| {
            c.file("small", b"ok").file("zeros.bin", &zeros);
        })
        .seal(),
        |e| matches!(e, E::TooLarge { entry, limit: 1_048_576 } if entry == "zeros.bin"),
        &["zeros.bin", "1048576"],
    );
    bomb.options = UnpackOptions {
        max_unpacked_bytes: 1 << 20,
        max_ratio: 1_000_000,
        ..UnpackOptions::default()
    };
    v.push(bomb);
    let zeros = vec![0u8; 8 << 20];
    let mut bomb = case(
        "gzip bomb by ratio (RatioTooHigh)",
        crafted(|c| {
            c.file("zeros.bin", &zeros);
        })
        .seal(),
        |e| matches!(e, E::RatioTooHigh { limit: 10 }),
        &["10:1"],
    );
    bomb.options = UnpackOptions {
        max_unpacked_bytes: 8 << 30,
        max_ratio: 10,
        ..UnpackOptions::default()
    };
    v.push(bomb);
    let mut bomb = case(
        "gzip bomb hidden in the end-of-archive padding",
        crafted(|c| {
            c.file("a", b"x");
            let embedded = embedded_for(&c.m);
            c.tar.file(RELEASE_JSON, &embedded).end();
            c.tar.bytes.extend(std::iter::repeat_n(0u8, 8 << 20));
        })
        .seal_as_is(),
        |e| matches!(e, E::RatioTooHigh { limit: 50 }),
        &["50:1"],
    );
    bomb.options = UnpackOptions {
        max_unpacked_bytes: 8 << 30,
        max_ratio: 50,
        ..UnpackOptions::default()
    };
    v.push(bomb);
    // A manifest that declares more than the archive may expand to is refused before a byte is
    // inflated: the "archive" here is not even gzip, so any attempt to read it would fail as
    // corrupt instead.
    {
        let not_gzip = noise(64 << 10);
        let mut m = base_manifest();
        m.files.insert(
            "huge.bin".into(),
            FileEntry::File {
                size: 1 << 30,
                mode: Mode::FILE,
                blake3: Blake3Hash::of(b""),
            },
        );
        v.push(case(
            "bomb declared in the manifest, refused before inflating",
            (not_gzip.clone(), sidecar_for(&m, &not_gzip)),
            |e| matches!(e, E::RatioTooHigh { limit: 200 }),
            &["200:1"],
        ));
        m.files.insert(
            "huger.bin".into(),
            FileEntry::File {
                size: 8 << 30,
                mode: Mode::FILE,
                blake3: Blake3Hash::of(b""),
            },
        );
        v.push(case(
            "manifest declaring more than the size limit, refused before inflating",
            (not_gzip.clone(), sidecar_for(&m, &not_gzip)),
            |e| matches!(e, E::TooLarge { entry, .. } if entry == "huger.bin"),
            &["huger.bin", "8589934592"],
        ));
    }

    // --- the sidecar and the destination ---------------------------------------------------
    {
        let (gz, sidecar) = crafted(|c| {
            c.file("a", b"x");
        })
        .seal();
        let mut json: serde_json::Value = serde_json::from_slice(&sidecar.to_bytes()).unwrap();
        json["schema_version"] = 3.into();
        json["manifest"]["schema_version"] = 3.into();
        let mut c = case(
            "sidecar from a future schema version",
            (gz, sidecar),
            |e| {
                matches!(
                    e,
                    E::Manifest(ManifestError::UnsupportedSchema {
                        found: 3,
                        supported: 2,
                        ..
                    })
                )
            },
            &["schema version 3", "upgrade"],
        );
        c.sidecar_bytes = Some(serde_json::to_vec_pretty(&json).unwrap());
        v.push(c);
    }
    {
        let mut c = case(
            "destination already exists",
            crafted(|c| {
                c.file("a", b"x");
            })
            .seal(),
            |e| matches!(e, E::DestinationExists(p) if p.ends_with("Build000034")),
            &["Build000034", "already exists"],
        );
        c.dest_exists = true;
        v.push(c);
    }
    {
        let mut c = case(
            "destination is a dangling symlink",
            crafted(|c| {
                c.file("a", b"x");
            })
            .seal(),
            |e| matches!(e, E::DestinationExists(p) if p.ends_with("Build000034")),
            &["Build000034", "already exists"],
        );
        c.dest_dangling_link = true;
        v.push(c);
    }
    v
}

/// Runs one case in a fresh directory; `Err` says what went wrong.
fn run(case: &Case) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let incoming = tmp.path().join("incoming");
    let releases = tmp.path().join("releases");
    let outside = releases.join("outside");
    fs::create_dir_all(&incoming).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"must stay untouched").unwrap();
    let file_name = case
        .sidecar
        .archive
        .as_ref()
        .map_or("archive.tar.gz".to_owned(), |a| a.file_name.clone());
    let archive = incoming.join(file_name);
    fs::write(&archive, &case.archive).unwrap();
    let dest = releases.join("Build000034");
    if case.dest_exists {
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("marker"), b"the release already here").unwrap();
    }
    if case.dest_dangling_link {
        std::os::unix::fs::symlink("nowhere", &dest).unwrap();
    }
    let before = snapshot(tmp.path());

    let result = match &case.sidecar_bytes {
        Some(bytes) => Sidecar::from_bytes(bytes, RELEASE_JSON)
            .map_err(UnpackError::Manifest)
            .and_then(|s| unpack(&archive, &s, &dest, &case.options)),
        None => unpack(&archive, &case.sidecar, &dest, &case.options),
    };
    let mut problems = Vec::new();
    match &result {
        Ok(summary) => problems.push(format!("was ACCEPTED: {summary:?}")),
        Err(e) => {
            let msg = e.to_string();
            if !(case.check)(e) {
                problems.push(format!("wrong error: {e:?} ({msg})"));
            }
            for m in &case.mention {
                if !msg.contains(m.as_str()) {
                    problems.push(format!("message `{msg}` does not mention `{m}`"));
                }
            }
            if !e.is_bad_input() {
                problems.push(format!("not classified as bad input: {msg}"));
            }
        }
    }
    let after = snapshot(tmp.path());
    if before != after {
        let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
        problems.push(format!(
            "left changes on disk: {}; new entries: {added:?}",
            tree_diff(&before, &after)
        ));
    }
    if !case.dest_exists && !case.dest_dangling_link && fs::symlink_metadata(&dest).is_ok() {
        problems.push("the destination exists".into());
    }
    // Said separately from the snapshot: no temporary tree (`.Build000034.unpack-*`) is left.
    let temps: Vec<_> = fs::read_dir(&releases)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".Build000034."))
        .collect();
    if !temps.is_empty() {
        problems.push(format!("temporary trees left on disk: {temps:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[test]
fn malicious_and_corrupt_archives_are_refused_and_leave_nothing() {
    let cases = cases();
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {}", c.name);
    }
    let mut rejected = 0;
    let mut clean = 0;
    let mut failures = Vec::new();
    for c in &cases {
        match run(c) {
            Ok(()) => {
                rejected += 1;
                clean += 1;
            }
            Err(why) => {
                // Count the two properties separately for the summary line.
                if !why.contains("ACCEPTED")
                    && !why.contains("wrong error")
                    && !why.contains("does not mention")
                {
                    rejected += 1;
                }
                if !why.contains("on disk") && !why.contains("destination exists") {
                    clean += 1;
                }
                failures.push(format!("  {}: {why}", c.name));
            }
        }
    }
    println!(
        "corpus: cases={} rejected={rejected} clean={clean}",
        cases.len()
    );
    assert!(cases.len() >= 22);
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The control for the corpus: the same crafting helpers produce an archive `unpack` accepts,
/// so every refusal above is due to the one thing each case breaks.
#[test]
fn crafted_control_archive_is_accepted() {
    let c = crafted(|c| {
        c.dir("a")
            .file("a/x", b"hello")
            .symlink("a/l", "x")
            .symlink("up", "a/../a/x")
            .file(&format!("{}/y", "a"), b"")
            .dir(&format!("a/{}", "n".repeat(150)))
            .file(&format!("a/{}/deep", "n".repeat(150)), b"deep")
            .symlink("long", &format!("a/{}/deep", "n".repeat(150)));
        c.tar
            .entry(b"a/run", EntryType::Regular, 0o755, b"#!/bin/sh\n", b"");
        c.list_file("a/run", b"#!/bin/sh\n", 0o755);
    });
    let (gz, sidecar) = c.seal();
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp
        .path()
        .join(&sidecar.archive.as_ref().unwrap().file_name);
    fs::write(&archive, &gz).unwrap();
    let dest = tmp.path().join("out");
    let summary = unpack(&archive, &sidecar, &dest, &UnpackOptions::default()).unwrap();
    assert_eq!((summary.files, summary.dirs, summary.symlinks), (4, 2, 3));
    common::archive::reader::verify_tree(&dest, &sidecar, |_| false).unwrap();
    assert_eq!(
        fs::read_link(dest.join("up")).unwrap(),
        Path::new("a/../a/x")
    );
    // Same crafted archive under another sidecar without the file: refused, proving the
    // sidecar is what the entries are checked against.
    let mut other = sidecar.clone();
    other.manifest.files.remove("a/y");
    let dest2 = tmp.path().join("out2");
    let err = unpack(&archive, &other, &dest2, &UnpackOptions::default()).unwrap_err();
    assert!(
        matches!(err, UnpackError::NotInManifest { ref entry } if entry == "a/y"),
        "{err}"
    );
    assert!(!dest2.exists());
}
