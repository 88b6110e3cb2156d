//! `builder prepare` on the example application, then package and publish: the manual procedure's whole
//! "Preparing the code" and build, from `develop` to a published Build000002.

use std::fs;
use std::path::Path;
use std::process::Command;

use tests::bins;
use tests::example;

fn builder(dir: &Path) -> Command {
    bins::builder_offline(dir)
}

#[test]
fn prepare_package_publish_makes_a_reproducible_build000002() {
    if !bins::have_wheelhouse() {
        return;
    }
    let (tmp, repo) = example::create_temp().unwrap();
    let old_master = repo.commit("master").unwrap();
    let develop = repo.commit("develop").unwrap();

    // A dry run says what it would do and changes nothing.
    let before = (example::state(&repo.work), example::state(&repo.remote));
    let out = builder(&repo.work)
        .args(["prepare", "--dry-run", "--push"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Build000002"));
    assert_eq!(
        (example::state(&repo.work), example::state(&repo.remote)),
        before
    );

    // A dirty tree is refused and left exactly as it was.
    let css = repo.work.join(example::DEVELOP_CHANGE);
    let original = fs::read(&css).unwrap();
    fs::write(&css, b"dirty").unwrap();
    let dirty = example::state(&repo.work);
    let out = builder(&repo.work).args(["prepare"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(example::state(&repo.work), dirty);
    fs::write(&css, original).unwrap();

    let out = builder(&repo.work)
        .args(["prepare", "--push"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().last(),
        Some("Build000002")
    );

    // master: merge of develop, then the build commit; the tag is annotated; develop caught up.
    let tagged = repo.commit("Build000002").unwrap();
    assert_eq!(repo.commit("master").unwrap(), tagged);
    assert_eq!(repo.commit("develop").unwrap(), tagged);
    let merge = example::git(&repo.work, &["rev-parse", "Build000002^"]).unwrap();
    let parents = example::git(&repo.work, &["show", "-s", "--format=%P", merge.trim()]).unwrap();
    assert_eq!(
        parents.split_whitespace().collect::<Vec<_>>(),
        vec![old_master.as_str(), develop.as_str()]
    );
    assert_eq!(
        example::git(&repo.work, &["cat-file", "-t", "Build000002"])
            .unwrap()
            .trim(),
        "tag"
    );
    let bn = example::git(
        &repo.work,
        &[
            "show",
            &format!("Build000002:{}", example::BUILD_NUMBER_FILE),
        ],
    )
    .unwrap();
    let fixture =
        fs::read_to_string(example::fixture_dir().join(example::BUILD_NUMBER_FILE)).unwrap();
    assert_eq!(
        bn,
        fixture.replace("BUILD_NUMBER = '000001'", "BUILD_NUMBER = '000002'"),
        "only the number line changes"
    );
    for r in [
        "refs/heads/master",
        "refs/heads/develop",
        "refs/tags/Build000002",
    ] {
        let remote = example::git(&repo.remote, &["rev-parse", r]).unwrap();
        let local = example::git(&repo.work, &["rev-parse", r]).unwrap();
        assert_eq!(remote, local, "{r} pushed");
    }

    // Package twice (different output directories): the same bytes; then publish.
    let mut artifacts = Vec::new();
    for n in 1..=2 {
        let out_dir = tmp.path().join(format!("out{n}"));
        let out = builder(&repo.work)
            .args(["package", "--out"])
            .arg(&out_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_owned();
        assert!(
            path.contains("binarycrate-Build000002-"),
            "the newest tag is the default: {path}"
        );
        artifacts.push(path);
    }
    assert_eq!(
        fs::read(&artifacts[0]).unwrap(),
        fs::read(&artifacts[1]).unwrap()
    );
    let out = builder(&repo.work)
        .arg("publish")
        .arg(&artifacts[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(repo
        .work
        .join("artifacts/binarycrate/Build000002/release.json")
        .is_file());
}
