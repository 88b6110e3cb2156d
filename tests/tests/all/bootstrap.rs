//! `builder bootstrap` end to end: the real installer binary put on two SSM stand-in instances
//! (`tests::ssm`) from moto's S3 through a presigned URL, by the script's own `curl`/`wget`,
//! `sha256sum` and `mv`; then the same binary again (unchanged), a newer installer refused, and
//! replaced with `--force`. Also the `--version` line of both binaries.
//!
//! Every instance must get the file at its own place, yet `--path` is one absolute path for
//! all of them. The instances are directories on this machine, each command running with its
//! instance's directory as working directory, so the path goes through `/proc/self/cwd`: the
//! same absolute path, resolved by each process to its own instance's directory. (`bin/` is made
//! beforehand: `mkdir -p` cannot walk through that magic link; the script's creating a missing
//! directory is covered by the builder's unit test of the script.)

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::hash::Sha256Hash;
use tests::bins;
use tests::ssm::{Instance, SsmServer};

const BUCKET: &str = "bootstrap-store";
const STORE: &str = "s3://bootstrap-store/ops";
/// Inside each instance's own directory (see the module documentation).
const PATH: &str = "/proc/self/cwd/bin/installer";
const IDS: [&str; 2] = ["i-00000001", "i-00000002"];

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

/// The instance's entry in the `--json` summary.
fn instance<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == id)
        .unwrap_or_else(|| panic!("{id} is not in {v:#}"))
}

/// `(previous, new, outcome)` of an instance in the `--json` summary.
fn versions(v: &serde_json::Value, id: &str) -> (String, String, String) {
    let i = instance(v, id);
    let s = |k: &str| i[k].as_str().unwrap_or("-").to_owned();
    (s("previous_version"), s("new_version"), s("outcome"))
}

/// What `installer --version` prints after the name.
fn version_of(program: &Path) -> String {
    let out = Command::new(program).arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn write_fake_installer(path: &Path, version: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(
        path,
        format!("#!/bin/sh\necho 'installer {version} (commit fake, glibc >= 2.23)'\n"),
    )
    .unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Files other than `installer` in an instance's `bin/`: temporaries the script left behind.
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir.join("bin"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "installer")
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bootstrap_puts_the_installer_on_two_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = IDS
        .iter()
        .map(|id| {
            let d = tmp.path().join(id);
            fs::create_dir_all(d.join("bin")).unwrap();
            d.canonicalize().unwrap()
        })
        .collect();
    // No AWS credentials or client on the instances: the URL is all they get.
    let instances: BTreeMap<String, Instance> = IDS
        .iter()
        .zip(&dirs)
        .map(|(id, d)| (id.to_string(), Instance::new(d).tag("Role", "web")))
        .collect();
    let Some(ssm) = SsmServer::start_or_skip(&instances) else {
        return;
    };
    ssm.moto().create_bucket(BUCKET).unwrap();
    let installer = bins::installer();
    let (sha256, _) = Sha256Hash::of_file(&installer).unwrap();
    let local_version = version_of(&installer);

    let bootstrap = |extra: &[&str]| -> Output {
        let out = Command::new(bins::builder())
            .current_dir(tmp.path())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .envs(ssm.env())
            .args(["bootstrap", "--targets", IDS[0], IDS[1]])
            .arg("--installer-binary")
            .arg(&installer)
            .args(["--path", PATH, "--store", STORE, "--s3-endpoint"])
            .arg(ssm.endpoint())
            .args(extra)
            .output()
            .unwrap();
        eprintln!("{}", text(&out));
        out
    };
    let installed_sha = |dir: &Path| Sha256Hash::of_file(&dir.join("bin/installer")).unwrap().0;

    // 1. Nothing on either instance: installed on both.
    let out = bootstrap(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json(&out);
    let new = local_version.strip_prefix("installer ").unwrap();
    let new_semver = new.split_whitespace().next().unwrap();
    for (id, dir) in IDS.iter().zip(&dirs) {
        assert_eq!(
            versions(&v, id),
            ("none".into(), new_semver.into(), "installed".into()),
            "{v:#}"
        );
        assert_eq!(installed_sha(dir), sha256, "{id}");
        assert_eq!(version_of(&dir.join("bin/installer")), local_version);
        assert!(leftovers(dir).is_empty(), "{id}: {:?}", leftovers(dir));
    }
    assert_eq!(v["installer"]["uploaded"], true);
    assert_eq!(v["installer"]["sha256"], sha256.to_hex());
    let key = format!("ops/tools/installer/{sha256}/installer");
    assert_eq!(v["installer"]["key"], key.trim_start_matches("ops/"));
    assert_eq!(ssm.moto().list_keys(BUCKET, "ops/tools/").unwrap(), [key]);
    // The command SSM ran: one script with the presigned URL in it.
    let command_id = v["command_id"].as_str().unwrap();
    let sent = ssm
        .block_on(ssm.client().list_commands().command_id(command_id).send())
        .unwrap();
    let command = &sent.commands()[0];
    assert_eq!(command.document_name(), Some("AWS-RunShellScript"));
    assert_eq!(
        command.comment(),
        Some(format!("builder bootstrap installer {}", &sha256.to_hex()[..16]).as_str())
    );
    let script = &command.parameters().unwrap()["commands"][0];
    assert!(script.starts_with("set -eu\n"), "{script}");
    assert!(script.contains("X-Amz-Signature="), "{script}");
    assert!(
        !script.contains("aws "),
        "no AWS CLI on the instances: {script}"
    );

    // 2. The same binary again: nothing uploaded, nothing replaced.
    let out = bootstrap(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json(&out);
    assert_eq!(v["installer"]["uploaded"], false);
    for id in IDS {
        assert_eq!(
            versions(&v, id),
            (new_semver.into(), new_semver.into(), "unchanged".into())
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already in"), "{stderr}");
    assert!(
        stderr.contains("unchanged: already this installer"),
        "{stderr}"
    );

    // 3. A newer installer on the second instance: refused there and kept, with the table saying
    //    why; the first is unchanged.
    let newer = dirs[1].join("bin/installer");
    write_fake_installer(&newer, "99.0.0");
    let fake = fs::read(&newer).unwrap();
    let out = bootstrap(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |id: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id}: {table}"))
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert!(table.starts_with("INSTANCE"), "{table}");
    let refused = row(IDS[1]);
    assert_eq!(&refused[1..4], ["Failed", "99.0.0", new_semver], "{table}");
    assert!(
        refused[5].starts_with("refused: ") && refused[5].contains("newer than"),
        "{table}"
    );
    assert_eq!(
        row(IDS[0])[5],
        "unchanged: already this installer",
        "{table}"
    );
    assert_eq!(fs::read(&newer).unwrap(), fake);
    let closing = String::from_utf8_lossy(&out.stderr);
    assert!(
        closing.contains(&format!("1 of 2 instances did not get it ({})", IDS[1])),
        "{closing}"
    );

    // 4. With --force it is replaced.
    let out = bootstrap(&["--force", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json(&out);
    assert_eq!(
        versions(&v, IDS[1]),
        ("99.0.0".into(), new_semver.into(), "replaced".into())
    );
    assert_eq!(installed_sha(&dirs[1]), sha256);
    assert!(leftovers(&dirs[1]).is_empty());

    let _ = writeln!(
        std::io::stderr(),
        "bootstrap: instances=2 installed=2 unchanged=2 refused=1 forced=1 sha256={} size={}",
        &sha256.to_hex()[..16],
        fs::metadata(&installer).unwrap().len()
    );
}

/// `--version` of both binaries: the version, the commit this checkout is at and a glibc floor.
#[test]
fn version_names_the_commit_and_the_glibc_floor() {
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned());
    for (name, program) in [
        ("installer", bins::installer()),
        ("builder", bins::builder()),
    ] {
        let line = version_of(&program);
        let rest = line
            .strip_prefix(&format!("{name} {} (commit ", env!("CARGO_PKG_VERSION")))
            .unwrap_or_else(|| panic!("{line}"));
        let (commit, floor) = rest
            .strip_suffix(')')
            .and_then(|r| r.split_once(", "))
            .unwrap_or_else(|| panic!("{line}"));
        match &head {
            Some(head) => assert_eq!(commit.trim_end_matches("-dirty"), head, "{line}"),
            None => assert_eq!(commit, "unknown", "{line}"),
        }
        let version = floor
            .strip_prefix("glibc >= ")
            .unwrap_or_else(|| panic!("{line}"));
        let parts: Vec<&str> = version.split('.').collect();
        assert!(
            parts.len() == 2 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
            "{line}"
        );
        eprintln!("{line}");
    }
}

/// Bad input is refused before anything is uploaded or sent (exit 2), naming what was wrong.
#[test]
fn bootstrap_refuses_bad_input_before_uploading() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let not_elf = tmp.path().join("installer.sh");
    write_fake_installer(&not_elf, "0.1.0");
    let installer = bins::installer();
    let cases: [(&[&str], &Path, &str); 4] = [
        (&["--path", "bin/installer"], &installer, "absolute path"),
        (&["--path", "/usr/local/bin/"], &installer, "name a file"),
        (
            &["--path", "/usr/local/bin/installer"],
            &not_elf,
            "not an ELF",
        ),
        (
            &["--path", "/usr/local/bin/installer"],
            &tmp.path().join("missing"),
            "does not exist",
        ),
    ];
    for (args, binary, expected) in cases {
        let out = Command::new(bins::builder())
            .current_dir(tmp.path())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .args(["bootstrap", "--targets", "i-00000001", "--store"])
            .arg(format!("file://{}", store.display()))
            .arg("--installer-binary")
            .arg(binary)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!store.exists(), "{args:?}: the store was written");
    }
}
