//! `builder archive` and `installer unpack` through their real command lines.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use tests::bins;

fn run(mut cmd: Command) -> Output {
    cmd.env("NO_COLOR", "1").env_remove("RUST_LOG");
    cmd.output().expect("spawn binary")
}

/// Output with the run-varying parts (temp paths, hashes, durations) replaced, for snapshots.
fn filtered(text: &str, tmp: &Path) -> String {
    let text = text.replace(&tmp.display().to_string(), "[TMP]");
    let hex64 = regex_lite_replace(&text, 64, "[BLAKE3]");
    let hex16 = regex_lite_replace(&hex64, 16, "[HASH16]");
    let mut out = String::new();
    for line in hex16.lines() {
        // "in 0.05s" and "duration_ms": N vary from run to run.
        let line = match line.find(" in ") {
            Some(i)
                if line.ends_with('s') && line[i + 4..line.len() - 1].parse::<f64>().is_ok() =>
            {
                format!("{} in [SECS]s", &line[..i])
            }
            _ => line.to_owned(),
        };
        let line = match line.find("\"duration_ms\": ") {
            Some(i) => format!("{}\"duration_ms\": [MS],", &line[..i]),
            None => line,
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Replaces runs of exactly `len` lowercase hex digits (not part of a longer run).
fn regex_lite_replace(text: &str, len: usize, with: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let is_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if is_hex(bytes[i]) && (i == 0 || !is_hex(bytes[i - 1])) {
            let mut j = i;
            while j < bytes.len() && is_hex(bytes[j]) {
                j += 1;
            }
            if j - i == len {
                out.push_str(with);
                i = j;
                continue;
            }
            out.push_str(&text[i..j]);
            i = j;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("binarycrate/binarycrate/settings")).unwrap();
    fs::create_dir_all(root.join("binarycrate/public/static/js")).unwrap();
    fs::write(
        root.join("binarycrate/binarycrate/settings/build_number.py"),
        "BUILD_NUMBER = '000007'\n",
    )
    .unwrap();
    fs::write(
        root.join("binarycrate/public/static/js/app.js"),
        "console.log('Build number = 000007');\n".repeat(2000),
    )
    .unwrap();
    fs::write(
        root.join("binarycrate/manage.py"),
        "#!/usr/bin/env python\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        root.join("binarycrate/manage.py"),
        fs::Permissions::from_mode(0o775),
    )
    .unwrap();
    std::os::unix::fs::symlink("binarycrate/public/static", root.join("static")).unwrap();
}

fn archive(tree: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bins::builder());
    cmd.arg("archive")
        .arg(tree)
        .args([
            "--build",
            "Build000007",
            "--source-date",
            "1700000000",
            "--out",
        ])
        .arg(out)
        .args(extra);
    run(cmd)
}

#[test]
fn archive_then_unpack_round_trips_with_readable_output() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let out = archive(&tree, &tmp.path().join("out"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let artifact = stdout.lines().last().unwrap().to_owned();
    assert!(Path::new(&artifact).is_file());
    assert!(tmp.path().join("out/release.json").is_file());
    assert!(tmp.path().join("out/build-log.json").is_file());
    insta::assert_snapshot!(
        "archive_output",
        filtered(
            &format!("{stdout}---\n{}", String::from_utf8_lossy(&out.stderr)),
            tmp.path()
        )
    );

    let dest = tmp.path().join("dest");
    let mut cmd = Command::new(bins::installer());
    cmd.args(["unpack", &artifact]).arg(&dest).arg("--json");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!(
        "unpack_json",
        filtered(&String::from_utf8_lossy(&out.stdout), tmp.path())
    );
    assert_eq!(
        fs::read(dest.join("binarycrate/public/static/js/app.js")).unwrap(),
        fs::read(tree.join("binarycrate/public/static/js/app.js")).unwrap()
    );
    assert_eq!(
        fs::read_link(dest.join("static")).unwrap(),
        Path::new("binarycrate/public/static")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(dest.join("binarycrate/manage.py"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
}

#[test]
fn archive_is_identical_for_any_thread_count_and_json_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let a = archive(&tree, &tmp.path().join("a"), &["--threads", "1"]);
    let b = archive(&tree, &tmp.path().join("b"), &["--threads", "4", "--json"]);
    assert!(a.status.success() && b.status.success());
    let a_path = String::from_utf8(a.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let json: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    let b_path = json["artifact"].as_str().unwrap();
    assert_eq!(fs::read(&a_path).unwrap(), fs::read(b_path).unwrap());
    assert_eq!(
        fs::read(tmp.path().join("a/release.json")).unwrap(),
        fs::read(tmp.path().join("b/release.json")).unwrap()
    );
    assert_eq!(json["build"], "000007");
}

#[test]
fn bad_build_names_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    for bad in [
        "Build00007",
        "Build0000007",
        "000007;rm -rf /",
        "$(id)",
        "Build000000",
        "build000007",
    ] {
        let out_dir = tmp.path().join("out");
        let mut cmd = Command::new(bins::builder());
        cmd.arg("archive")
            .arg(&tree)
            .args(["--build", bad, "--source-date", "1700000000", "--out"])
            .arg(&out_dir);
        let out = run(cmd);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("BuildNNNNNN") || err.contains("000001"),
            "{bad}: {err}"
        );
        assert!(!out_dir.exists(), "{bad}: nothing may be written");
    }
    let mut cmd = Command::new(bins::builder());
    cmd.arg("archive").arg(&tree).args([
        "--build",
        "Build00007;id",
        "--source-date",
        "1",
        "--out",
        "x",
    ]);
    insta::assert_snapshot!("bad_build_name", String::from_utf8_lossy(&run(cmd).stderr));
}

#[test]
fn missing_staged_dir_is_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let out = archive(&tmp.path().join("nope"), &tmp.path().join("out"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn tampered_artifact_is_refused_with_exit_2_and_no_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let out = archive(&tree, &tmp.path().join("out"), &[]);
    let artifact = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let mut bytes = fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&artifact, &bytes).unwrap();
    let dest = tmp.path().join("dest");
    let mut cmd = Command::new(bins::installer());
    cmd.args(["unpack", &artifact]).arg(&dest);
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dest.exists());
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "only tree/ and out/ may remain: {leftovers:?}"
    );

    // A missing sidecar is named, with the path it looked for.
    fs::remove_file(tmp.path().join("out/release.json")).unwrap();
    let mut cmd = Command::new(bins::installer());
    cmd.args(["unpack", &artifact]).arg(&dest);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("release.json"));
}

#[test]
fn help_lists_only_working_subcommands() {
    let out = run({
        let mut c = Command::new(bins::builder());
        c.arg("--help");
        c
    });
    insta::assert_snapshot!("builder_help", String::from_utf8_lossy(&out.stdout));
    let out = run({
        let mut c = Command::new(bins::installer());
        c.arg("--help");
        c
    });
    insta::assert_snapshot!("installer_help", String::from_utf8_lossy(&out.stdout));
}

/// Every command of both binaries takes `--json`, no option goes without a description, and
/// every command's help shows examples.
#[test]
fn every_command_takes_json_and_explains_its_options() {
    use clap::CommandFactory;
    let mut problems = Vec::new();
    for (bin, mut cmd) in [
        ("installer", installer::cli::Cli::command()),
        ("builder", builder::cli::Cli::command()),
    ] {
        cmd.build();
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("{bin} {}", sub.get_name());
            if !sub.get_arguments().any(|a| a.get_long() == Some("json")) {
                problems.push(format!("{name}: no --json"));
            }
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    problems.push(format!("{name}: `{id}` has no description"));
                }
            }
            let long: String = [
                sub.get_long_about(),
                sub.get_after_help(),
                sub.get_after_long_help(),
            ]
            .into_iter()
            .flatten()
            .map(|a| a.to_string())
            .collect();
            if !long.contains("Examples:") {
                problems.push(format!("{name}: its --help shows no examples"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A loopback stand-in for AWS that gives every request the same canned answer.
fn canned_aws(answer: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let _ = s.write_all(answer.as_bytes());
        }
    });
    port
}

/// The first day's AWS failures — no credentials, refused ones, a missing permission, a
/// mistyped bucket, the wrong region — are each one line that says what to do, from both
/// binaries and from SSM; the region is said when nobody chose it.
#[test]
fn aws_errors_are_one_line_that_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    fs::create_dir_all(&repo).unwrap();
    tests::example::git(&repo, &["init", "-q"]).unwrap();
    let aws = |cmd: &mut Command, credentials: bool, region: bool| {
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", tmp.path())
            .env("AWS_EC2_METADATA_DISABLED", "true");
        if credentials {
            cmd.env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing");
        }
        if region {
            cmd.env("AWS_REGION", "us-east-1");
        }
    };
    let s3 = |answer: &'static str, credentials: bool, region: bool| -> (Option<i32>, String) {
        let port = canned_aws(answer);
        let mut cmd = Command::new(bins::builder());
        cmd.current_dir(&repo).args([
            "releases",
            "--store",
            "s3://shop-releases/app",
            "--s3-endpoint",
            &format!("http://127.0.0.1:{port}"),
        ]);
        aws(&mut cmd, credentials, region);
        let out = run(cmd);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let xml = |status: &str, code: &str, extra: &str| -> &'static str {
        let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{code} says AWS</Message></Error>");
        Box::leak(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    };
    for (answer, credentials, says) in [
        ("", false, "no AWS credentials"),
        (
            xml("403 Forbidden", "AccessDenied", ""),
            true,
            "access denied to the bucket `shop-releases`",
        ),
        (
            xml("403 Forbidden", "InvalidAccessKeyId", ""),
            true,
            "AWS refused the credentials",
        ),
        (
            xml("404 Not Found", "NoSuchBucket", ""),
            true,
            "the bucket `shop-releases` does not exist (region us-east-1)",
        ),
        (
            xml(
                "301 Moved Permanently",
                "PermanentRedirect",
                "x-amz-bucket-region: eu-west-1\r\n",
            ),
            true,
            "set `AWS_REGION=eu-west-1`",
        ),
    ] {
        let (code, err) = s3(answer, credentials, true);
        assert_eq!(code, Some(1), "{says}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].contains(says) && !err.contains("DispatchFailure"),
            "expected one line with `{says}`:\n{err}"
        );
    }
    // No region anywhere: the default is said, once.
    let (_, err) = s3(xml("403 Forbidden", "AccessDenied", ""), true, false);
    assert_eq!(
        err.matches("AWS region us-east-1: none is configured")
            .count(),
        1,
        "{err}"
    );

    // The installer says the same.
    let root = tmp.path().join("srv");
    fs::create_dir_all(&root).unwrap();
    let port = canned_aws(xml("403 Forbidden", "AccessDenied", ""));
    let config = tmp.path().join("installer.toml");
    fs::write(
        &config,
        format!(
            "root = {:?}\nstore = \"s3://shop-releases/app\"\n",
            root.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bins::installer());
    cmd.env("BINARYCRATE_INSTALLER_CONFIG", &config)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .args(["activate", "--build", "Build000001"]);
    aws(&mut cmd, true, true);
    cmd.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    let out = run(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("access denied to the bucket `shop-releases`"),
        "{err}"
    );

    // And SSM.
    let body = r#"{"__type":"AccessDeniedException","message":"User is not authorized to perform: ssm:SendCommand"}"#;
    let answer: &'static str = Box::leak(
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let port = canned_aws(answer);
    let mut cmd = Command::new(bins::builder());
    cmd.current_dir(&repo).args([
        "status",
        "--targets",
        "i-0123456789abcdef0",
        "--ssm-endpoint",
        &format!("http://127.0.0.1:{port}"),
    ]);
    aws(&mut cmd, true, true);
    let out = run(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("access denied by SSM") && err.contains("ssm:SendCommand"),
        "{err}"
    );
}
