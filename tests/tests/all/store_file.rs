//! The file store (`file:///…` or a plain path): the same publishing rules as S3, on disk.

use std::fs;
use std::sync::{Arc, Barrier};

use common::error::StoreError;
use common::store::{ArtifactStore, PublishOutcome, StoreOptions};

use crate::store_s3::{build, dir_entries, make_release, APP};

fn open(root: &std::path::Path) -> ArtifactStore {
    ArtifactStore::open(
        &format!("file://{}", root.display()),
        &StoreOptions::default(),
    )
    .unwrap()
}

#[test]
fn publish_is_immutable_and_fetch_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(&tmp.path().join("store"));
    let rel = make_release(tmp.path(), build(34), 300_000, "one");
    match store.publish(&rel.artifact, &rel.sidecar).unwrap() {
        PublishOutcome::Published {
            sidecar_key,
            artifact_key,
        } => {
            assert_eq!(sidecar_key, "binarycrate/Build000034/release.json");
            assert!(artifact_key.starts_with("binarycrate/Build000034/binarycrate-Build000034-"));
        }
        other => panic!("expected a first publish, got {other:?}"),
    }
    // Same sidecar again: a no-op that says so.
    assert!(matches!(
        store.publish(&rel.artifact, &rel.sidecar).unwrap(),
        PublishOutcome::AlreadyPublished { .. }
    ));
    // A different archive under the same build: refused, naming both hashes.
    let other_dir = tmp.path().join("other");
    fs::create_dir(&other_dir).unwrap();
    let other = make_release(&other_dir, build(34), 300_000, "two");
    let err = store.publish(&other.artifact, &other.sidecar).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Conflict { .. }), "{msg}");
    assert!(
        msg.contains(&rel.hash()) && msg.contains(&other.hash()),
        "{msg}"
    );

    let dest = tmp.path().join("dl");
    fs::create_dir(&dest).unwrap();
    let fetched = store.fetch(APP, build(34), &dest).unwrap();
    assert_eq!(fetched.sidecar, rel.sidecar);
    assert_eq!(
        fs::read(&fetched.artifact_path).unwrap(),
        fs::read(&rel.artifact).unwrap()
    );
    assert_eq!(store.list_builds(APP).unwrap(), vec![build(34)]);
}

#[test]
fn truncated_or_altered_objects_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = open(&root);
    let rel = make_release(tmp.path(), build(2), 200_000, "x");
    store.publish(&rel.artifact, &rel.sidecar).unwrap();
    let object = root
        .join("binarycrate/Build000002")
        .join(&rel.sidecar.archive.as_ref().unwrap().file_name);
    let good = fs::read(&object).unwrap();
    let dest = tmp.path().join("dl");
    fs::create_dir(&dest).unwrap();

    fs::write(&object, &good[..good.len() / 2]).unwrap();
    let err = store.fetch(APP, build(2), &dest).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { .. }) && err.to_string().contains("truncated"),
        "{err}"
    );
    assert!(dir_entries(&dest).is_empty());

    let mut altered = good.clone();
    altered[100] ^= 1;
    fs::write(&object, &altered).unwrap();
    let err = store.fetch(APP, build(2), &dest).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { .. }) && err.to_string().contains("altered"),
        "{err}"
    );
    assert!(dir_entries(&dest).is_empty());

    let err = store.fetch(APP, build(3), &dest).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

#[test]
fn racing_publishers_of_one_build_have_one_winner() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let releases: Vec<_> = (0..4)
        .map(|i| {
            let dir = tmp.path().join(format!("r{i}"));
            fs::create_dir(&dir).unwrap();
            make_release(&dir, build(9), 100_000, &format!("racer{i}"))
        })
        .collect();
    let barrier = Arc::new(Barrier::new(releases.len()));
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = releases
            .iter()
            .map(|rel| {
                let barrier = Arc::clone(&barrier);
                let root = root.clone();
                s.spawn(move || {
                    let store = open(&root);
                    barrier.wait();
                    store.publish(&rel.artifact, &rel.sidecar)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners = results
        .iter()
        .filter(|r| matches!(r, Ok(PublishOutcome::Published { .. })))
        .count();
    let losers = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
        .count();
    assert_eq!((winners, losers), (1, 3), "{results:?}");
    // The published sidecar is the winner's, whole.
    let (sidecar, _) = open(&root).fetch_sidecar(APP, build(9)).unwrap();
    assert!(releases.iter().any(|r| r.sidecar == sidecar));
}

#[test]
fn listing_shows_only_committed_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = open(&root);
    for n in [5, 3] {
        let rel = make_release(tmp.path(), build(n), 1000, &format!("b{n}"));
        store.publish(&rel.artifact, &rel.sidecar).unwrap();
    }
    // An artifact without its sidecar (a publish that stopped half way) and stray names.
    fs::create_dir_all(root.join("binarycrate/Build000007")).unwrap();
    fs::write(
        root.join("binarycrate/Build000007/binarycrate-Build000007-0000000000000000.tar.gz"),
        b"x",
    )
    .unwrap();
    fs::create_dir_all(root.join("binarycrate/notabuild")).unwrap();
    fs::write(root.join("binarycrate/notabuild/release.json"), b"{}").unwrap();
    assert_eq!(store.list_builds(APP).unwrap(), vec![build(3), build(5)]);
    assert!(store.list_builds("otherapp").unwrap().is_empty());
}
