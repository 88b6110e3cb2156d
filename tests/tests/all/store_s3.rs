//! S3 store tests against a real moto server.
//!
//! Each test starts its own server (see `tests::moto`) and publishes realistic releases: a file
//! of random bytes standing in for the archive, and a sidecar whose archive section has that
//! file's real name, size and BLAKE3.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::error::StoreError;
use common::manifest::{ArchiveInfo, ArtifactRef, FileEntry, Mode, ReleaseManifest, Sidecar};
use common::store::{ArtifactStore, PublishOutcome, PutOutcome, StoreOptions};
use common::{Blake3Hash, BuildNumber};
use tests::moto::MotoServer;

pub(crate) const APP: &str = "binarycrate";
const BUCKET: &str = "releases-test";
const PREFIX: &str = "pipeline/prod";
const MIB: u64 = 1 << 20;

/// A running server with a bucket, or `None` (test skipped) when there is no test virtualenv.
fn moto() -> Option<MotoServer> {
    let server = MotoServer::start_or_skip()?;
    server.create_bucket(BUCKET).unwrap();
    Some(server)
}

fn store_url() -> String {
    format!("s3://{BUCKET}/{PREFIX}")
}

fn open(server: &MotoServer) -> ArtifactStore {
    ArtifactStore::open(&store_url(), &server.store_options()).unwrap()
}

pub(crate) fn build(n: u32) -> BuildNumber {
    BuildNumber::new(n).unwrap()
}

/// A local artifact and its sidecar.
pub(crate) struct Release {
    pub(crate) artifact: PathBuf,
    pub(crate) sidecar: Sidecar,
}

impl Release {
    pub(crate) fn hash(&self) -> String {
        self.sidecar.archive.as_ref().unwrap().blake3.to_hex()
    }
}

/// Writes `size` pseudo-random (incompressible, reproducible from `seed`) bytes into `dir` as
/// the artifact of `build`, and builds the sidecar describing it.
pub(crate) fn make_release(dir: &Path, build: BuildNumber, size: u64, seed: &str) -> Release {
    let tmp = dir.join(format!(".{seed}.partial"));
    {
        let mut reader = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
        let mut out = BufWriter::new(File::create(&tmp).unwrap());
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            reader.fill(&mut buf[..n]);
            out.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        out.flush().unwrap();
    }
    let (blake3, written) = Blake3Hash::of_file(&tmp).unwrap();
    assert_eq!(written, size);
    let file_name = ArtifactRef::new(APP, build, blake3).file_name();
    let artifact = dir.join(&file_name);
    std::fs::rename(&tmp, &artifact).unwrap();

    let mut manifest = ReleaseManifest::new(APP, build, 1_700_000_000);
    manifest.commit = "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into();
    manifest
        .files
        .insert("binarycrate".into(), FileEntry::Dir { mode: Mode::DIR });
    manifest.files.insert(
        "binarycrate/manage.py".into(),
        FileEntry::File {
            size: 4,
            mode: Mode::EXECUTABLE,
            blake3: Blake3Hash::of(seed.as_bytes()),
        },
    );
    let sidecar = Sidecar::new(
        manifest,
        Some(ArchiveInfo {
            file_name,
            blake3,
            size,
        }),
    );
    // What the real writer would produce must also be what the reader accepts.
    Sidecar::from_bytes(&sidecar.to_bytes(), "test").unwrap();
    Release { artifact, sidecar }
}

pub(crate) fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn publish_then_fetch_round_trips_under_the_prefix() {
    let Some(server) = moto() else { return };
    let store = open(&server);
    assert_eq!(store.location(), store_url());
    let src = tempfile::tempdir().unwrap();
    let rel = make_release(src.path(), build(34), 300_000, "round-trip");

    let outcome = store.publish(&rel.artifact, &rel.sidecar).unwrap();
    let artifact_name = rel.sidecar.archive.as_ref().unwrap().file_name.clone();
    assert_eq!(
        outcome,
        PublishOutcome::Published {
            sidecar_key: "binarycrate/Build000034/release.json".into(),
            artifact_key: format!("binarycrate/Build000034/{artifact_name}"),
        }
    );
    store
        .put_build_log(APP, build(34), b"{\"first\": true}\n")
        .unwrap();
    // The build log is informational and may be replaced.
    store
        .put_build_log(APP, build(34), b"{\"second\": true}\n")
        .unwrap();

    let mut expected = vec![
        format!("{PREFIX}/binarycrate/Build000034/build-log.json"),
        format!("{PREFIX}/binarycrate/Build000034/{artifact_name}"),
        format!("{PREFIX}/binarycrate/Build000034/release.json"),
    ];
    expected.sort();
    assert_eq!(server.list_keys(BUCKET, "").unwrap(), expected);
    let mut log = Vec::new();
    store
        .backend()
        .get("binarycrate/Build000034/build-log.json", &mut log, u64::MAX)
        .unwrap();
    assert_eq!(log, b"{\"second\": true}\n");

    let dest = tempfile::tempdir().unwrap();
    let fetched = store.fetch(APP, build(34), dest.path()).unwrap();
    assert_eq!(fetched.sidecar, rel.sidecar);
    assert_eq!(fetched.sidecar_bytes, rel.sidecar.to_bytes());
    assert_eq!(fetched.artifact_path, dest.path().join(&artifact_name));
    assert_eq!(
        std::fs::read(&fetched.artifact_path).unwrap(),
        std::fs::read(&rel.artifact).unwrap()
    );
    assert_eq!(dir_entries(dest.path()), vec![artifact_name]);
    assert_eq!(store.list_builds(APP).unwrap(), vec![build(34)]);
}

#[test]
fn identical_republish_is_a_no_op() {
    let Some(server) = moto() else { return };
    let store = open(&server);
    let src = tempfile::tempdir().unwrap();
    let rel = make_release(src.path(), build(7), 10_000, "republish");
    assert!(matches!(
        store.publish(&rel.artifact, &rel.sidecar).unwrap(),
        PublishOutcome::Published { .. }
    ));
    let before = server.list_keys(BUCKET, "").unwrap();
    assert_eq!(
        store.publish(&rel.artifact, &rel.sidecar).unwrap(),
        PublishOutcome::AlreadyPublished {
            sidecar_key: "binarycrate/Build000007/release.json".into()
        }
    );
    assert_eq!(server.list_keys(BUCKET, "").unwrap(), before);
}

#[test]
fn a_different_sidecar_for_a_published_build_is_refused_naming_both_hashes() {
    let Some(server) = moto() else { return };
    let store = open(&server);
    let src = tempfile::tempdir().unwrap();
    let first = make_release(src.path(), build(12), 20_000, "first");
    let second = make_release(src.path(), build(12), 20_000, "second");
    store.publish(&first.artifact, &first.sidecar).unwrap();

    let err = store
        .publish(&second.artifact, &second.sidecar)
        .unwrap_err();
    match &err {
        StoreError::Conflict {
            build: b,
            existing,
            new,
            ..
        } => {
            assert_eq!(*b, build(12));
            assert_eq!(existing, &first.hash());
            assert_eq!(new, &second.hash());
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&first.hash()) && message.contains(&second.hash()),
        "{message}"
    );
    // The published release is untouched, and the refused artifact was never uploaded.
    let dest = tempfile::tempdir().unwrap();
    assert_eq!(
        store.fetch(APP, build(12), dest.path()).unwrap().sidecar,
        first.sidecar
    );
    let keys = server.list_keys(BUCKET, "").unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
}

#[test]
fn conditional_writes_refuse_existing_keys() {
    let Some(server) = moto() else { return };
    let store = open(&server);
    let backend = store.backend();
    assert_eq!(
        backend.put_new_bytes("a/b.json", b"one").unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        backend.put_new_bytes("a/b.json", b"two").unwrap(),
        PutOutcome::AlreadyExists
    );
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f");
    std::fs::write(&file, b"three").unwrap();
    assert_eq!(
        backend.put_new_file("a/b.json", &file).unwrap(),
        PutOutcome::AlreadyExists
    );
    let mut got = Vec::new();
    assert_eq!(backend.get("a/b.json", &mut got, u64::MAX).unwrap(), 3);
    assert_eq!(got, b"one");
    backend.put_bytes("a/b.json", b"four").unwrap();
    got.clear();
    backend.get("a/b.json", &mut got, u64::MAX).unwrap();
    assert_eq!(got, b"four");
    let mut keys = backend.list("a/").unwrap();
    keys.sort();
    assert_eq!(keys, vec!["a/b.json"]);
}

/// Two publishers of the same build at the same moment: the sidecar's conditional write lets
/// exactly one of them win, whether they publish the same release or different ones.
#[test]
fn racing_publishers_have_exactly_one_winner() {
    let Some(server) = moto() else { return };
    let src = tempfile::tempdir().unwrap();
    for round in 1..=4u32 {
        let same = round % 2 == 0;
        let a = make_release(src.path(), build(round), 50_000, &format!("race-{round}-a"));
        let b = if same {
            Release {
                artifact: a.artifact.clone(),
                sidecar: a.sidecar.clone(),
            }
        } else {
            make_release(src.path(), build(round), 50_000, &format!("race-{round}-b"))
        };
        let barrier = Arc::new(Barrier::new(2));
        let outcomes: Vec<Result<PublishOutcome, StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = [&a, &b]
                .into_iter()
                .map(|rel| {
                    let barrier = Arc::clone(&barrier);
                    let store = open(&server);
                    s.spawn(move || {
                        barrier.wait();
                        store.publish(&rel.artifact, &rel.sidecar)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<usize> = (0..2)
            .filter(|&i| matches!(outcomes[i], Ok(PublishOutcome::Published { .. })))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let winner = if winners[0] == 0 { &a } else { &b };
        let loser = &outcomes[1 - winners[0]];
        if same {
            assert!(
                matches!(loser, Ok(PublishOutcome::AlreadyPublished { .. })),
                "round {round}: {loser:?}"
            );
        } else {
            assert!(
                matches!(
                    loser,
                    Ok(PublishOutcome::AlreadyPublished { .. }) | Err(StoreError::Conflict { .. })
                ),
                "round {round}: {loser:?}"
            );
        }
        let dest = tempfile::tempdir().unwrap();
        let fetched = open(&server).fetch(APP, build(round), dest.path()).unwrap();
        assert_eq!(
            fetched.sidecar, winner.sidecar,
            "round {round}: the winner's release is the one published"
        );
    }
}

fn multipart_options(server: &MotoServer) -> StoreOptions {
    StoreOptions {
        multipart_threshold: 5 * MIB,
        part_size: 5 * MIB,
        ..server.store_options()
    }
}

#[test]
fn multipart_uploads_round_trip() {
    let Some(server) = moto() else { return };
    let store = ArtifactStore::open(&store_url(), &multipart_options(&server)).unwrap();
    let src = tempfile::tempdir().unwrap();
    let rel = make_release(src.path(), build(100), 12 * MIB + 12_345, "multipart");
    let PublishOutcome::Published { artifact_key, .. } =
        store.publish(&rel.artifact, &rel.sidecar).unwrap()
    else {
        panic!("not published");
    };
    // Three parts: 5 MiB, 5 MiB and the rest (S3 marks multipart ETags with the part count).
    let head = server
        .block_on(
            server
                .client()
                .head_object()
                .bucket(BUCKET)
                .key(format!("{PREFIX}/{artifact_key}"))
                .send(),
        )
        .unwrap();
    assert!(
        head.e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .ends_with("-3"),
        "{:?}",
        head.e_tag()
    );
    assert_eq!(head.content_length(), Some((12 * MIB + 12_345) as i64));

    let dest = tempfile::tempdir().unwrap();
    let fetched = store.fetch(APP, build(100), dest.path()).unwrap();
    assert_eq!(
        Blake3Hash::of_file(&fetched.artifact_path).unwrap().0,
        rel.sidecar.archive.as_ref().unwrap().blake3
    );
    assert_eq!(
        store.publish(&rel.artifact, &rel.sidecar).unwrap(),
        PublishOutcome::AlreadyPublished {
            sidecar_key: "binarycrate/Build000100/release.json".into()
        }
    );
}

/// Two multipart uploads of one key at once: both upload their parts, the conditional
/// completion lets only one create the object, and the other's upload is aborted.
#[test]
fn racing_multipart_uploads_create_the_object_once() {
    let Some(server) = moto() else { return };
    let src = tempfile::tempdir().unwrap();
    let file = make_release(src.path(), build(1), 11 * MIB, "multipart-race").artifact;
    let barrier = Barrier::new(2);
    let outcomes: Vec<PutOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let store = ArtifactStore::open(&store_url(), &multipart_options(&server)).unwrap();
                let (barrier, file) = (&barrier, &file);
                s.spawn(move || {
                    barrier.wait();
                    store
                        .backend()
                        .put_new_file("race/artifact.tar.gz", file)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = outcomes
        .iter()
        .filter(|o| **o == PutOutcome::Created)
        .count();
    assert_eq!(created, 1, "{outcomes:?}");
    let uploads = server
        .block_on(
            server
                .client()
                .list_multipart_uploads()
                .bucket(BUCKET)
                .send(),
        )
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "unfinished multipart uploads left behind: {:?}",
        uploads.uploads()
    );
    let mut got = Vec::new();
    let store = open(&server);
    assert_eq!(
        store
            .backend()
            .get("race/artifact.tar.gz", &mut got, u64::MAX)
            .unwrap(),
        11 * MIB
    );
    assert_eq!(got, std::fs::read(&file).unwrap());
}

#[test]
fn truncated_or_altered_downloads_are_refused_and_leave_nothing_behind() {
    let Some(server) = moto() else { return };
    let store = open(&server);
    let src = tempfile::tempdir().unwrap();
    let rel = make_release(src.path(), build(5), 200_000, "tamper");
    let PublishOutcome::Published { artifact_key, .. } =
        store.publish(&rel.artifact, &rel.sidecar).unwrap()
    else {
        panic!("not published");
    };
    let original = std::fs::read(&rel.artifact).unwrap();
    let mut altered = original.clone();
    altered[100_000] ^= 0x40;
    let cases = [
        (
            "truncated",
            original[..150_000].to_vec(),
            "truncated or replaced",
        ),
        ("altered", altered, "altered or replaced"),
        (
            "extended",
            [original.as_slice(), b"tail"].concat(),
            "larger than its sidecar says",
        ),
    ];
    for (what, bytes, reason) in cases {
        server
            .put_object(BUCKET, &format!("{PREFIX}/{artifact_key}"), bytes)
            .unwrap();
        let dest = tempfile::tempdir().unwrap();
        let err = store.fetch(APP, build(5), dest.path()).unwrap_err();
        match &err {
            StoreError::Corrupt { key, reason: r, .. } => {
                assert_eq!(key, &artifact_key, "{what}");
                assert!(r.contains(reason), "{what}: {err}");
            }
            // Longer than the sidecar says: refused before the body is read.
            StoreError::TooLarge {
                key, limit, actual, ..
            } if what == "extended" => {
                assert_eq!(key, &artifact_key, "{what}");
                assert_eq!(
                    (*limit, *actual),
                    (original.len() as u64, Some(original.len() as u64 + 4))
                );
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
        assert_eq!(
            dir_entries(dest.path()),
            Vec::<String>::new(),
            "{what}: the destination must stay empty"
        );
    }
}

#[test]
fn only_completely_published_builds_are_listed() {
    let Some(server) = moto() else { return };
    let store = open(&server);
    assert_eq!(store.list_builds(APP).unwrap(), vec![]);
    let src = tempfile::tempdir().unwrap();
    for n in [3, 1, 20] {
        let rel = make_release(src.path(), build(n), 1_000, &format!("list-{n}"));
        store.publish(&rel.artifact, &rel.sidecar).unwrap();
    }
    // A publish that stopped after the artifact: no sidecar, so not a release.
    let partial = make_release(src.path(), build(2), 1_000, "list-partial");
    let name = partial.sidecar.archive.as_ref().unwrap().file_name.clone();
    assert_eq!(
        store
            .backend()
            .put_new_file(
                &format!("binarycrate/Build000002/{name}"),
                &partial.artifact
            )
            .unwrap(),
        PutOutcome::Created
    );
    // Neither are sidecars in wrongly named directories, of other apps, or outside the prefix.
    store
        .backend()
        .put_bytes("binarycrate/Build2/release.json", b"{}")
        .unwrap();
    store
        .backend()
        .put_bytes("binarycrate/build000004/release.json", b"{}")
        .unwrap();
    store
        .backend()
        .put_bytes("otherapp/Build000009/release.json", b"{}")
        .unwrap();
    server
        .put_object(
            BUCKET,
            "binarycrate/Build000008/release.json",
            b"{}".to_vec(),
        )
        .unwrap();

    assert_eq!(
        store.list_builds(APP).unwrap(),
        vec![build(1), build(3), build(20)]
    );
    let dest = tempfile::tempdir().unwrap();
    assert!(matches!(
        store.fetch(APP, build(2), dest.path()),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn missing_builds_keys_and_buckets_say_so() {
    let Some(server) = moto() else { return };
    let store = open(&server);
    let dest = tempfile::tempdir().unwrap();
    let err = store.fetch(APP, build(404), dest.path()).unwrap_err();
    match &err {
        StoreError::NotFound { store: s, key } => {
            assert_eq!(s, &store_url());
            assert_eq!(key, "binarycrate/Build000404/release.json");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "`binarycrate/Build000404/release.json` is not in the store `{}`",
            store_url()
        )
    );
    assert_eq!(dir_entries(dest.path()), Vec::<String>::new());

    // A bucket that does not exist is a configuration error, not a missing release.
    let missing = ArtifactStore::open("s3://no-such-bucket/x", &server.store_options()).unwrap();
    let err = missing.fetch(APP, build(1), dest.path()).unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");
}

/// A body that stops before its `Content-Length` is a corrupt download, not a short object.
/// (S3 itself never does this on purpose, so a tiny loopback server plays the broken peer.)
#[test]
fn a_body_that_ends_early_is_reported_as_corrupt() {
    tests::moto::configure_env();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        // One request, one broken answer: headers promising 1000 bytes, then 10 and a close.
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("the store never connected: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        reader
            .into_inner()
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nonly ten b")
            .unwrap();
    });
    let options = StoreOptions {
        s3_endpoint: Some(endpoint),
        ..StoreOptions::default()
    };
    let store = ArtifactStore::open("s3://some-bucket", &options).unwrap();
    let mut out = Vec::new();
    let err = store
        .backend()
        .get("binarycrate/Build000001/release.json", &mut out, u64::MAX)
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("`binarycrate/Build000001/release.json`")
            && message.contains("after 10 of 1000"),
        "{message}"
    );
    server.join().unwrap();
}
