//! The SSM Run Command stand-in (`tests::ssm`), driven by the real aws-sdk-ssm client over the
//! real AWS protocol: what the builder's `deploy` will rely on.
//!
//! Each test starts its own server with instances `i-0000000N`, each a directory of its own
//! under a temporary root, and most commands print or exit with something from the instance's
//! environment so that every instance's result is its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::operation::describe_instance_information::builders::DescribeInstanceInformationFluentBuilder;
use aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput;
use aws_sdk_ssm::operation::send_command::builders::SendCommandFluentBuilder;
use aws_sdk_ssm::primitives::DateTime;
use aws_sdk_ssm::types::{
    Command, CommandInvocation, CommandInvocationStatus, CommandPlugin, CommandPluginStatus,
    CommandStatus, InstanceInformationFilter, InstanceInformationStringFilter, PingStatus,
    PlatformType, ResourceType, Target,
};
use tests::ssm::{Instance, SsmServer};

const DOCUMENT: &str = "AWS-RunShellScript";
/// Long enough for any command here on a loaded machine.
const WAIT: Duration = Duration::from_secs(90);

/// Instances with their own directories under one temporary root.
struct Fleet {
    root: tempfile::TempDir,
    instances: BTreeMap<String, Instance>,
}

impl Fleet {
    fn new() -> Self {
        Self {
            root: tempfile::tempdir().unwrap(),
            instances: BTreeMap::new(),
        }
    }

    fn add(mut self, id: &str, configure: impl FnOnce(Instance) -> Instance) -> Self {
        let dir = self.root.path().join(id);
        std::fs::create_dir(&dir).unwrap();
        // `pwd` prints the physical path.
        let dir = dir.canonicalize().unwrap();
        self.instances
            .insert(id.to_owned(), configure(Instance::new(dir)));
        self
    }

    fn cwd(&self, id: &str) -> PathBuf {
        self.instances[id].cwd.clone()
    }

    fn start(&self) -> Option<SsmServer> {
        SsmServer::start_or_skip(&self.instances)
    }
}

/// A `SendCommand` of `AWS-RunShellScript` with these lines.
fn send_command(server: &SsmServer, commands: &[&str]) -> SendCommandFluentBuilder {
    server
        .client()
        .send_command()
        .document_name(DOCUMENT)
        .parameters("commands", commands.iter().map(|c| c.to_string()).collect())
}

fn with_instances(mut request: SendCommandFluentBuilder, ids: &[&str]) -> SendCommandFluentBuilder {
    for id in ids {
        request = request.instance_ids(*id);
    }
    request
}

/// Sends the command; returns its id.
fn send(server: &SsmServer, request: SendCommandFluentBuilder) -> String {
    let sent = server.block_on(request.send()).unwrap_or_else(|e| {
        panic!(
            "SendCommand: {}",
            aws_sdk_ssm::error::DisplayErrorContext(e)
        )
    });
    let command = sent.command().expect("SendCommand returns the command");
    // As AWS answers: the command as requested, nothing counted yet.
    assert_eq!(command.status(), Some(&CommandStatus::Pending));
    assert_eq!(command.completed_count(), 0);
    command.command_id().unwrap().to_owned()
}

fn invocation(server: &SsmServer, command_id: &str, instance: &str) -> GetCommandInvocationOutput {
    server
        .block_on(
            server
                .client()
                .get_command_invocation()
                .command_id(command_id)
                .instance_id(instance)
                .send(),
        )
        .unwrap()
}

fn command(server: &SsmServer, command_id: &str) -> Command {
    server
        .block_on(
            server
                .client()
                .list_commands()
                .command_id(command_id)
                .send(),
        )
        .unwrap()
        .commands()[0]
        .clone()
}

fn by_instance(invocations: Vec<CommandInvocation>) -> BTreeMap<String, CommandInvocation> {
    invocations
        .into_iter()
        .map(|i| (i.instance_id().unwrap().to_owned(), i))
        .collect()
}

fn plugin(invocation: &CommandInvocation) -> &CommandPlugin {
    let plugins = invocation.command_plugins();
    assert_eq!(plugins.len(), 1, "{invocation:#?}");
    assert_eq!(plugins[0].name(), Some("aws:runShellScript"));
    &plugins[0]
}

/// (start, finish) of an invocation that ran, from its plugin.
fn ran(invocation: &CommandInvocation) -> (DateTime, DateTime) {
    let plugin = plugin(invocation);
    (
        *plugin.response_start_date_time().expect("started"),
        *plugin.response_finish_date_time().expect("finished"),
    )
}

fn error_code<E: ProvideErrorMetadata>(error: E) -> String {
    error.code().unwrap_or("<no code>").to_owned()
}

#[test]
fn each_instance_runs_the_commands_in_its_own_directory_and_environment() {
    let fleet = Fleet::new()
        .add("i-00000001", |i| i.env("MARKER", "alpha"))
        .add("i-00000002", |i| i.env("MARKER", "beta"));
    let Some(server) = fleet.start() else { return };

    let request = send_command(
        &server,
        &["echo hi", "pwd", "echo $MARKER", "echo to-stderr >&2"],
    )
    .comment("hello from the test");
    let id = send(
        &server,
        with_instances(request, &["i-00000001", "i-00000002"]),
    );
    let invocations = by_instance(server.wait_for_command(&id, WAIT).unwrap());
    assert_eq!(invocations.len(), 2);

    for (instance, marker) in [("i-00000001", "alpha"), ("i-00000002", "beta")] {
        let got = invocation(&server, &id, instance);
        assert_eq!(got.status(), Some(&CommandInvocationStatus::Success));
        assert_eq!(got.status_details(), Some("Success"));
        assert_eq!(got.response_code(), 0);
        assert_eq!(
            got.standard_output_content(),
            Some(format!("hi\n{}\n{marker}\n", fleet.cwd(instance).display()).as_str())
        );
        assert_eq!(got.standard_error_content(), Some("to-stderr\n"));
        assert_eq!(got.plugin_name(), Some("aws:runShellScript"));
        assert_eq!(got.comment(), Some("hello from the test"));
        assert!(!got.execution_start_date_time().unwrap().is_empty());
        assert!(!got.execution_end_date_time().unwrap().is_empty());

        let listed = &invocations[instance];
        assert_eq!(listed.status(), Some(&CommandInvocationStatus::Success));
        let plugin = plugin(listed);
        assert_eq!(plugin.status(), Some(&CommandPluginStatus::Success));
        assert_eq!(plugin.response_code(), 0);
        assert_eq!(
            plugin.output(),
            Some(
                format!(
                    "hi\n{}\n{marker}\n\n----------ERROR-------\nto-stderr\n",
                    fleet.cwd(instance).display()
                )
                .as_str()
            )
        );
    }

    let command = command(&server, &id);
    assert_eq!(command.status(), Some(&CommandStatus::Success));
    assert_eq!(command.status_details(), Some("Success"));
    assert_eq!(command.target_count(), 2);
    assert_eq!(command.completed_count(), 2);
    assert_eq!(command.error_count(), 0);
}

#[test]
fn exit_codes_and_standard_error_propagate() {
    let fleet = Fleet::new()
        .add("i-00000001", |i| i.env("CODE", "0"))
        .add("i-00000002", |i| i.env("CODE", "3"));
    let Some(server) = fleet.start() else { return };

    let request =
        send_command(&server, &["echo out", "echo err >&2", "exit $CODE"]).max_errors("1");
    let id = send(
        &server,
        with_instances(request, &["i-00000001", "i-00000002"]),
    );
    let invocations = by_instance(server.wait_for_command(&id, WAIT).unwrap());

    let ok = invocation(&server, &id, "i-00000001");
    assert_eq!(ok.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(ok.response_code(), 0);
    assert_eq!(ok.standard_error_content(), Some("err\n"));

    // The agent appends its own line to standard error when the script fails.
    let failed = invocation(&server, &id, "i-00000002");
    assert_eq!(failed.status(), Some(&CommandInvocationStatus::Failed));
    assert_eq!(failed.status_details(), Some("Failed"));
    assert_eq!(failed.response_code(), 3);
    assert_eq!(failed.standard_output_content(), Some("out\n"));
    assert_eq!(
        failed.standard_error_content(),
        Some("err\n\nfailed to run commands: exit status 3")
    );
    let plugin = plugin(&invocations["i-00000002"]);
    assert_eq!(plugin.status(), Some(&CommandPluginStatus::Failed));
    assert_eq!(plugin.response_code(), 3);
    assert_eq!(
        plugin.output(),
        Some("out\n\n----------ERROR-------\nerr\n\nfailed to run commands: exit status 3")
    );

    // One error is within MaxErrors 1: not every invocation succeeded, none was held back.
    let command = command(&server, &id);
    assert_eq!(command.status(), Some(&CommandStatus::Failed));
    assert_eq!(command.status_details(), Some("Incomplete"));
    assert_eq!(command.error_count(), 1);
    assert_eq!(command.completed_count(), 2);
}

/// The object's content, read back through the server's S3.
fn s3_object(server: &SsmServer, bucket: &str, key: &str) -> Vec<u8> {
    let client = server.moto().client();
    server.moto().block_on(async {
        let object = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "GetObject {key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
        object.body.collect().await.unwrap().to_vec()
    })
}

#[test]
fn output_s3_bucket_gets_the_complete_outputs_and_a_missing_one_fails_nothing() {
    let fleet = Fleet::new().add("i-00000001", |i| i);
    let Some(server) = fleet.start() else { return };
    let bucket = "ssm-output";
    server.moto().create_bucket(bucket).unwrap();

    // 800 lines of 37 characters: more than StandardOutputContent's 24,000.
    let line = "0123456789abcdefghijklmnopqrstuvwxyz";
    let full = format!("{line}\n").repeat(800);
    let long = send_command(
        &server,
        &[&format!("yes {line} | head -n 800"), "echo to-stderr >&2"],
    )
    .output_s3_bucket_name(bucket)
    // The agent drops a trailing slash.
    .output_s3_key_prefix("runs/");
    let long = send(&server, with_instances(long, &["i-00000001"]));
    // No prefix, and nothing on standard error (so nothing uploaded for it).
    let short = send_command(&server, &["echo only-out"]).output_s3_bucket_name(bucket);
    let short = send(&server, with_instances(short, &["i-00000001"]));
    // The agent logs a failed upload; the invocation does not fail for it.
    let missing = send_command(&server, &["echo hi", "echo err >&2"])
        .output_s3_bucket_name("no-such-bucket")
        .output_s3_key_prefix("runs");
    let missing = send(&server, with_instances(missing, &["i-00000001"]));

    let dir = |id: &str| format!("{id}/i-00000001/awsrunShellScript/0.awsrunShellScript");
    let url = |key: &str| {
        format!(
            "https://s3.{}.amazonaws.com/{bucket}/{key}",
            tests::moto::REGION
        )
    };

    let listed = by_instance(server.wait_for_command(&long, WAIT).unwrap());
    let got = invocation(&server, &long, "i-00000001");
    assert_eq!(got.status(), Some(&CommandInvocationStatus::Success));
    let content = got.standard_output_content().unwrap();
    assert_eq!(content.len(), 24_000);
    assert!(content.ends_with("--output truncated--"));
    assert!(full.starts_with(&content[..24_000 - 20]));
    let stdout_key = format!("runs/{}/stdout", dir(&long));
    let stderr_key = format!("runs/{}/stderr", dir(&long));
    assert_eq!(
        server.moto().list_keys(bucket, "runs/").unwrap(),
        [stderr_key.clone(), stdout_key.clone()]
    );
    assert_eq!(
        String::from_utf8(s3_object(&server, bucket, &stdout_key)).unwrap(),
        full
    );
    assert_eq!(s3_object(&server, bucket, &stderr_key), b"to-stderr\n");
    assert!(got.standard_output_url().unwrap().ends_with(&stdout_key));
    assert_eq!(got.standard_output_url(), Some(url(&stdout_key).as_str()));
    assert_eq!(got.standard_error_url(), Some(url(&stderr_key).as_str()));
    let listed = &listed["i-00000001"];
    assert_eq!(
        listed.standard_output_url(),
        Some(url(&stdout_key).as_str())
    );
    let uploaded = plugin(listed);
    assert_eq!(
        uploaded.standard_output_url(),
        Some(url(&stdout_key).as_str())
    );
    assert_eq!(
        uploaded.standard_error_url(),
        Some(url(&stderr_key).as_str())
    );
    assert_eq!(uploaded.output_s3_key_prefix(), Some("runs/"));

    server.wait_for_command(&short, WAIT).unwrap();
    let got = invocation(&server, &short, "i-00000001");
    assert_eq!(got.status(), Some(&CommandInvocationStatus::Success));
    let stdout_key = format!("{}/stdout", dir(&short));
    assert_eq!(
        server.moto().list_keys(bucket, &short).unwrap(),
        [stdout_key.as_str()]
    );
    assert_eq!(s3_object(&server, bucket, &stdout_key), b"only-out\n");
    assert_eq!(got.standard_output_url(), Some(url(&stdout_key).as_str()));
    assert_eq!(got.standard_error_url(), Some(""));

    let listed = by_instance(server.wait_for_command(&missing, WAIT).unwrap());
    let got = invocation(&server, &missing, "i-00000001");
    assert_eq!(got.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(got.standard_output_content(), Some("hi\n"));
    assert_eq!(got.standard_output_url(), Some(""));
    assert_eq!(got.standard_error_url(), Some(""));
    let plugin = plugin(&listed["i-00000001"]);
    assert_eq!(plugin.standard_output_url(), Some(""));
    assert_eq!(plugin.standard_error_url(), Some(""));
    assert_eq!(
        command(&server, &missing).status(),
        Some(&CommandStatus::Success)
    );
}

#[test]
fn max_concurrency_one_runs_the_instances_one_after_another() {
    let ids = ["i-00000001", "i-00000002", "i-00000003"];
    let fleet = ids.iter().fold(Fleet::new(), |f, id| f.add(id, |i| i));
    let Some(server) = fleet.start() else { return };

    let request = send_command(&server, &["sleep 0.3"]).max_concurrency("1");
    let id = send(&server, with_instances(request, &ids));
    let invocations = by_instance(server.wait_for_command(&id, WAIT).unwrap());

    // In the order of InstanceIds, each starting after the previous one finished.
    let spans: Vec<_> = ids.iter().map(|id| ran(&invocations[*id])).collect();
    for pair in spans.windows(2) {
        let ((_, first_end), (second_start, _)) = (pair[0], pair[1]);
        assert!(
            first_end.as_nanos() <= second_start.as_nanos(),
            "overlapping runs: {spans:?}"
        );
    }
    for (start, end) in &spans {
        assert!(
            end.as_nanos() - start.as_nanos() >= 250_000_000,
            "{spans:?}"
        );
    }
    assert_eq!(
        command(&server, &id).status(),
        Some(&CommandStatus::Success)
    );
}

#[test]
fn without_a_limit_the_instances_run_at_the_same_time() {
    let ids = ["i-00000001", "i-00000002"];
    let fleet = ids.iter().fold(Fleet::new(), |f, id| f.add(id, |i| i));
    let Some(server) = fleet.start() else { return };

    let id = send(
        &server,
        with_instances(send_command(&server, &["sleep 1"]), &ids),
    );
    let invocations = by_instance(server.wait_for_command(&id, WAIT).unwrap());
    let (first, second) = (ran(&invocations[ids[0]]), ran(&invocations[ids[1]]));
    assert!(
        second.0.as_nanos() < first.1.as_nanos() && first.0.as_nanos() < second.1.as_nanos(),
        "not concurrent: {first:?} {second:?}"
    );
}

#[test]
fn max_errors_zero_stops_at_the_first_failure_and_terminates_the_rest() {
    let ids = ["i-00000001", "i-00000002", "i-00000003"];
    let fleet = Fleet::new()
        .add(ids[0], |i| i.env("CODE", "1"))
        .add(ids[1], |i| i.env("CODE", "0"))
        .add(ids[2], |i| i.env("CODE", "0"));
    let Some(server) = fleet.start() else { return };

    let request = send_command(&server, &["touch ran", "exit $CODE"])
        .max_concurrency("1")
        .max_errors("0");
    let id = send(&server, with_instances(request, &ids));
    let invocations = by_instance(server.wait_for_command(&id, WAIT).unwrap());

    let first = invocation(&server, &id, ids[0]);
    assert_eq!(first.status(), Some(&CommandInvocationStatus::Failed));
    assert_eq!(first.response_code(), 1);
    assert!(fleet.cwd(ids[0]).join("ran").exists());
    for rest in &ids[1..] {
        let got = invocation(&server, &id, rest);
        assert_eq!(
            got.status(),
            Some(&CommandInvocationStatus::Cancelled),
            "{got:#?}"
        );
        assert_eq!(got.status_details(), Some("Terminated"));
        assert_eq!(got.response_code(), -1);
        assert_eq!(got.execution_start_date_time(), Some(""));
        assert!(!fleet.cwd(rest).join("ran").exists(), "{rest} ran");
        let plugin = plugin(&invocations[*rest]);
        assert_eq!(plugin.status(), Some(&CommandPluginStatus::Cancelled));
        assert!(plugin.response_start_date_time().is_none());
    }
    let command = command(&server, &id);
    assert_eq!(command.status(), Some(&CommandStatus::Failed));
    assert_eq!(command.status_details(), Some("Failed"));
    assert_eq!(command.error_count(), 1);
    assert_eq!(command.completed_count(), 3);
}

#[test]
fn the_execution_timeout_kills_the_whole_process_group() {
    let fleet = Fleet::new().add("i-00000001", |i| i);
    let Some(server) = fleet.start() else { return };

    // `executionTimeout` is the document's execution timeout; TimeoutSeconds is the delivery one.
    let request = send_command(
        &server,
        &["echo started", "sleep 30 & echo $! > child.pid", "wait"],
    )
    .parameters("executionTimeout", vec!["2".to_owned()]);
    let sent_at = Instant::now();
    let id = send(&server, with_instances(request, &["i-00000001"]));
    server.wait_for_command(&id, WAIT).unwrap();
    let took = sent_at.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(took >= Duration::from_secs(2), "took {took:?}");

    let got = invocation(&server, &id, "i-00000001");
    assert_eq!(got.status(), Some(&CommandInvocationStatus::TimedOut));
    assert_eq!(got.status_details(), Some("ExecutionTimedOut"));
    assert_eq!(got.response_code(), 137);
    assert_eq!(got.standard_output_content(), Some("started\n"));
    let command = command(&server, &id);
    assert_eq!(command.status(), Some(&CommandStatus::TimedOut));
    assert_eq!(command.status_details(), Some("ExecutionTimedOut"));
    assert_eq!(command.error_count(), 1);

    // The background `sleep` went with its shell.
    let pid = std::fs::read_to_string(fleet.cwd("i-00000001").join("child.pid")).unwrap();
    assert!(
        gone(pid.trim()),
        "the command's child {} survived",
        pid.trim()
    );
}

/// Whether the process has exited (or is a zombie waiting to be reaped), waiting a little.
fn gone(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) => {
                let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
                if state == Some("Z") {
                    return true;
                }
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn timeout_seconds_is_a_delivery_timeout_for_invocations_still_waiting() {
    // AWS accepts TimeoutSeconds from 30: this test takes about that long.
    let ids = ["i-00000001", "i-00000002"];
    let fleet = Fleet::new()
        .add(ids[0], |i| i.env("SLOW", "1"))
        .add(ids[1], |i| i);
    let Some(server) = fleet.start() else { return };

    let request = send_command(
        &server,
        &["touch ran", "if [ -n \"$SLOW\" ]; then sleep 31; fi"],
    )
    .max_concurrency("1")
    .timeout_seconds(30);
    let id = send(&server, with_instances(request, &ids));
    server.wait_for_command(&id, WAIT).unwrap();

    // The first one ran longer than the delivery timeout: that does not stop a running command.
    let first = invocation(&server, &id, ids[0]);
    assert_eq!(first.status(), Some(&CommandInvocationStatus::Success));
    let second = invocation(&server, &id, ids[1]);
    assert_eq!(second.status(), Some(&CommandInvocationStatus::TimedOut));
    assert_eq!(second.status_details(), Some("DeliveryTimedOut"));
    assert_eq!(second.response_code(), -1);
    assert!(!fleet.cwd(ids[1]).join("ran").exists());
    let command = command(&server, &id);
    assert_eq!(command.status(), Some(&CommandStatus::TimedOut));
    assert_eq!(command.status_details(), Some("DeliveryTimedOut"));
    assert_eq!(command.delivery_timed_out_count(), 1);
    assert_eq!(command.error_count(), 0);
}

#[test]
fn cancel_command_kills_the_running_invocation_and_cancels_the_pending_one() {
    let ids = ["i-00000001", "i-00000002"];
    let fleet = ids.iter().fold(Fleet::new(), |f, id| f.add(id, |i| i));
    let Some(server) = fleet.start() else { return };

    let request = send_command(&server, &["sleep 30"]).max_concurrency("1");
    let id = send(&server, with_instances(request, &ids));
    let deadline = Instant::now() + WAIT;
    while invocation(&server, &id, ids[0]).status() != Some(&CommandInvocationStatus::InProgress) {
        assert!(
            Instant::now() < deadline,
            "the first invocation never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        command(&server, &id).status(),
        Some(&CommandStatus::InProgress)
    );
    let in_progress = invocation(&server, &id, ids[0]);
    assert_eq!(in_progress.response_code(), -1);
    assert_eq!(in_progress.standard_output_content(), Some(""));
    assert_eq!(
        invocation(&server, &id, ids[1]).status(),
        Some(&CommandInvocationStatus::Pending)
    );

    let cancelled_at = Instant::now();
    server
        .block_on(server.client().cancel_command().command_id(&id).send())
        .unwrap();
    server
        .wait_for_command(&id, Duration::from_secs(10))
        .unwrap();
    assert!(cancelled_at.elapsed() < Duration::from_secs(10));

    let running = invocation(&server, &id, ids[0]);
    assert_eq!(running.status(), Some(&CommandInvocationStatus::Cancelled));
    assert_eq!(running.status_details(), Some("Cancelled"));
    assert_eq!(running.response_code(), 137);
    let pending = invocation(&server, &id, ids[1]);
    assert_eq!(pending.status(), Some(&CommandInvocationStatus::Cancelled));
    assert_eq!(pending.response_code(), -1);
    assert_eq!(
        command(&server, &id).status(),
        Some(&CommandStatus::Cancelled)
    );
}

#[test]
fn list_command_invocations_pages_with_max_results() {
    let ids = ["i-00000001", "i-00000002", "i-00000003"];
    let fleet = ids.iter().fold(Fleet::new(), |f, id| {
        f.add(id, |i| i.env("MARKER", format!("marker of {id}")))
    });
    let Some(server) = fleet.start() else { return };

    let id = send(
        &server,
        with_instances(send_command(&server, &["echo $MARKER"]), &ids),
    );
    server.wait_for_command(&id, WAIT).unwrap();

    let mut pages = server
        .client()
        .list_command_invocations()
        .command_id(&id)
        .details(true)
        .max_results(1)
        .into_paginator()
        .send();
    let mut seen = Vec::new();
    let mut page_count = 0;
    while let Some(page) = server.block_on(pages.next()) {
        let page = page.unwrap();
        page_count += 1;
        assert_eq!(page.command_invocations().len(), 1, "{page:#?}");
        for invocation in page.command_invocations() {
            let instance = invocation.instance_id().unwrap().to_owned();
            assert_eq!(
                plugin(invocation).output(),
                Some(format!("marker of {instance}\n").as_str())
            );
            seen.push(instance);
        }
    }
    assert_eq!(page_count, 3);
    seen.sort();
    assert_eq!(seen, ids);

    // Without details no plugins; by instance, across commands.
    let page = server
        .block_on(
            server
                .client()
                .list_command_invocations()
                .instance_id(ids[1])
                .send(),
        )
        .unwrap();
    assert_eq!(page.command_invocations().len(), 1);
    assert!(page.command_invocations()[0].command_plugins().is_empty());
    assert!(page.next_token().is_none());

    let bad = server.block_on(
        server
            .client()
            .list_command_invocations()
            .command_id(&id)
            .next_token("not a token")
            .send(),
    );
    assert_eq!(error_code(bad.unwrap_err()), "InvalidNextToken");
}

#[test]
fn targets_select_instances_by_tag_and_by_id() {
    let fleet = Fleet::new()
        .add("i-00000001", |i| i.tag("Role", "web"))
        .add("i-00000002", |i| i.tag("Role", "web").tag("Env", "prod"))
        .add("i-00000003", |i| i.tag("Role", "db").tag("Env", "prod"))
        .add("i-00000004", |i| i);
    let Some(server) = fleet.start() else { return };

    let run = |targets: &[(&str, &[&str])]| -> Vec<String> {
        let mut request = send_command(&server, &["touch ran"]);
        for (key, values) in targets {
            let mut target = Target::builder().key(*key);
            for value in *values {
                target = target.values(*value);
            }
            request = request.targets(target.build());
        }
        let id = send(&server, request);
        let mut instances: Vec<_> = server
            .wait_for_command(&id, WAIT)
            .unwrap()
            .iter()
            .map(|i| {
                assert_eq!(i.status(), Some(&CommandInvocationStatus::Success));
                i.instance_id().unwrap().to_owned()
            })
            .collect();
        instances.sort();
        let command = command(&server, &id);
        assert_eq!(command.target_count() as usize, instances.len());
        assert_eq!(command.status(), Some(&CommandStatus::Success));
        instances
    };

    assert_eq!(run(&[("tag:Role", &["web"])]), ["i-00000001", "i-00000002"]);
    assert_eq!(
        run(&[("tag:Role", &["web", "db"]), ("tag:Env", &["prod"])]),
        ["i-00000002", "i-00000003"]
    );
    assert_eq!(run(&[("tag-key", &["Env"])]), ["i-00000002", "i-00000003"]);
    // Instances unknown to SSM match nothing, like tags nobody has.
    assert_eq!(
        run(&[("InstanceIds", &["i-00000004", "i-00000099"])]),
        ["i-00000004"]
    );
    assert!(run(&[("tag:Role", &["mail"])]).is_empty());
    assert!(fleet.cwd("i-00000004").join("ran").exists());
}

#[test]
fn requests_aws_would_refuse_are_refused() {
    let fleet = Fleet::new().add("i-00000001", |i| i);
    let Some(server) = fleet.start() else { return };
    let refused = |request: SendCommandFluentBuilder| -> String {
        error_code(server.block_on(request.send()).unwrap_err())
    };
    let ok = |server: &SsmServer| with_instances(send_command(server, &["true"]), &["i-00000001"]);

    // Unlike plain moto, an instance SSM does not manage is an error, not a silent match.
    assert_eq!(
        refused(with_instances(
            send_command(&server, &["true"]),
            &["i-00000002"]
        )),
        "InvalidInstanceId"
    );
    assert_eq!(
        refused(with_instances(
            send_command(&server, &["true"]),
            &["not-an-id"]
        )),
        "ValidationException"
    );
    assert_eq!(
        refused(ok(&server).document_name("AWS-RunPowerShellScript")),
        "InvalidDocument"
    );
    assert_eq!(
        refused(ok(&server).timeout_seconds(10)),
        "ValidationException"
    );
    assert_eq!(
        refused(ok(&server).max_concurrency("0")),
        "ValidationException"
    );
    assert_eq!(refused(ok(&server).max_errors("x")), "ValidationException");
    assert_eq!(
        refused(ok(&server).parameters("executionTimeout", vec!["0".to_owned()])),
        "InvalidParameters"
    );
    assert_eq!(
        refused(with_instances(
            server.client().send_command().document_name(DOCUMENT),
            &["i-00000001"]
        )),
        "InvalidParameters"
    );

    let unknown = "8d2a6a0c-3c51-4c52-9f59-5b5f4f3b9d2e";
    let missing = server.block_on(
        server
            .client()
            .get_command_invocation()
            .command_id(unknown)
            .instance_id("i-00000001")
            .send(),
    );
    assert_eq!(error_code(missing.unwrap_err()), "InvocationDoesNotExist");
    let cancel = server.block_on(server.client().cancel_command().command_id(unknown).send());
    assert_eq!(error_code(cancel.unwrap_err()), "InvalidCommandId");
}

#[test]
fn dropping_the_server_kills_the_commands_still_running() {
    let fleet = Fleet::new().add("i-00000001", |i| i);
    let Some(server) = fleet.start() else { return };

    let request = send_command(&server, &["sleep 30 & echo $! > child.pid", "wait"]);
    let id = send(&server, with_instances(request, &["i-00000001"]));
    let pid_file = fleet.cwd("i-00000001").join("child.pid");
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(&pid_file).map_or(true, |s| !s.ends_with('\n')) {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        invocation(&server, &id, "i-00000001").status(),
        Some(&CommandInvocationStatus::InProgress)
    );
    drop(server);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(
        gone(pid.trim()),
        "the command's child {} survived",
        pid.trim()
    );
}

/// `DescribeInstanceInformation` with these `Filters` (all pages): the instance ids, in order.
fn described(server: &SsmServer, filters: &[(&str, &[&str])]) -> Vec<String> {
    let mut request = server.client().describe_instance_information();
    for (key, values) in filters {
        request = request.filters(string_filter(key, values));
    }
    let mut pages = request.into_paginator().send();
    let mut ids = Vec::new();
    while let Some(page) = server.block_on(pages.next()) {
        for info in page.unwrap().instance_information_list() {
            ids.push(info.instance_id().unwrap().to_owned());
        }
    }
    ids
}

fn string_filter(key: &str, values: &[&str]) -> InstanceInformationStringFilter {
    let mut filter = InstanceInformationStringFilter::builder().key(key);
    for value in values {
        filter = filter.values(*value);
    }
    filter.build().unwrap()
}

fn ping_status(server: &SsmServer, instance: &str) -> PingStatus {
    let infos = server
        .block_on(
            server
                .client()
                .describe_instance_information()
                .filters(string_filter("InstanceIds", &[instance]))
                .send(),
        )
        .unwrap();
    let infos = infos.instance_information_list();
    assert_eq!(infos.len(), 1, "{infos:#?}");
    infos[0].ping_status().unwrap().clone()
}

fn lines(path: PathBuf) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[test]
fn exit_194_reboots_the_instance_and_runs_the_script_again() {
    // As Debian's /var/run/reboot-required: there until the reboot, which clears it.
    let fleet = Fleet::new()
        .add("i-00000001", |i| {
            let mark = i.cwd.join("reboot-required");
            i.env("MARK", mark.to_str().unwrap())
                .reboot_clears(mark)
                .reboot_seconds(1.0)
        })
        .add("i-00000002", |i| i.reboot_seconds(0.05));
    let Some(server) = fleet.start() else { return };
    let mark = fleet.cwd("i-00000001").join("reboot-required");
    std::fs::write(&mark, "").unwrap();

    let once = send_command(
        &server,
        &[
            "echo run >> runs",
            "if [ -e \"$MARK\" ]; then echo before; exit 194; fi",
            "echo after",
        ],
    );
    let sent_at = Instant::now();
    let once = send(&server, with_instances(once, &["i-00000001"]));
    // Asks for a reboot every time: the stand-in stops after 10.
    let always = send_command(
        &server,
        &["echo run >> runs", "echo before; echo err >&2", "exit 194"],
    );
    let always = send(&server, with_instances(always, &["i-00000002"]));

    // While it reboots, the invocation is still InProgress and the instance ConnectionLost.
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = invocation(&server, &once, "i-00000001").status().cloned();
        if matches!(status, Some(ref s) if s != &CommandInvocationStatus::Pending && s != &CommandInvocationStatus::InProgress)
        {
            break;
        }
        seen.push((status, ping_status(&server, "i-00000001")));
        assert!(Instant::now() < deadline, "never finished: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        seen.contains(&(
            Some(CommandInvocationStatus::InProgress),
            PingStatus::ConnectionLost
        )),
        "never seen rebooting: {seen:?}"
    );
    assert!(sent_at.elapsed() >= Duration::from_secs(1));
    assert_eq!(ping_status(&server, "i-00000001"), PingStatus::Online);

    // The result is the last run's; the reboot took the mark along.
    server.wait_for_command(&once, WAIT).unwrap();
    let got = invocation(&server, &once, "i-00000001");
    assert_eq!(got.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(got.response_code(), 0);
    assert_eq!(got.standard_output_content(), Some("after\n"));
    assert_eq!(got.standard_error_content(), Some(""));
    assert!(!mark.exists());
    assert_eq!(lines(fleet.cwd("i-00000001").join("runs")), 2);
    assert_eq!(
        command(&server, &once).status(),
        Some(&CommandStatus::Success)
    );

    // The first run and 10 more after as many reboots; then Failed, with the 11th run's output.
    server.wait_for_command(&always, WAIT).unwrap();
    let got = invocation(&server, &always, "i-00000002");
    assert_eq!(got.status(), Some(&CommandInvocationStatus::Failed));
    assert_eq!(got.response_code(), 194);
    assert_eq!(got.standard_output_content(), Some("before\n"));
    let stderr = got.standard_error_content().unwrap();
    assert!(
        stderr.starts_with("err\n\nfailed to run commands: exit status 194")
            && stderr.contains("at most 10 times"),
        "{stderr}"
    );
    assert_eq!(lines(fleet.cwd("i-00000002").join("runs")), 11);
    assert_eq!(
        command(&server, &always).status(),
        Some(&CommandStatus::Failed)
    );
}

#[test]
fn a_reboot_can_be_cancelled_and_counts_toward_the_execution_timeout() {
    let fleet = Fleet::new()
        .add("i-00000001", |i| i.reboot_seconds(60.0))
        .add("i-00000002", |i| i.reboot_seconds(0.2));
    let Some(server) = fleet.start() else { return };

    let long = send_command(&server, &["echo run >> runs", "echo out", "exit 194"]);
    let long = send(&server, with_instances(long, &["i-00000001"]));
    // Each run is well within 2 seconds, not all of them together.
    let timed = send_command(&server, &["echo run >> runs", "sleep 0.5", "exit 194"])
        .parameters("executionTimeout", vec!["2".to_owned()]);
    let timed = send(&server, with_instances(timed, &["i-00000002"]));

    let deadline = Instant::now() + WAIT;
    while ping_status(&server, "i-00000001") != PingStatus::ConnectionLost {
        assert!(Instant::now() < deadline, "the instance never rebooted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cancelled_at = Instant::now();
    server
        .block_on(server.client().cancel_command().command_id(&long).send())
        .unwrap();
    server
        .wait_for_command(&long, Duration::from_secs(10))
        .unwrap();
    assert!(cancelled_at.elapsed() < Duration::from_secs(10));
    let got = invocation(&server, &long, "i-00000001");
    assert_eq!(got.status(), Some(&CommandInvocationStatus::Cancelled));
    assert_eq!(got.response_code(), 137);
    assert_eq!(got.standard_output_content(), Some("out\n"));
    assert_eq!(lines(fleet.cwd("i-00000001").join("runs")), 1);
    // A cancel does not bring the instance back sooner.
    assert_eq!(
        ping_status(&server, "i-00000001"),
        PingStatus::ConnectionLost
    );

    server.wait_for_command(&timed, WAIT).unwrap();
    let got = invocation(&server, &timed, "i-00000002");
    assert_eq!(got.status(), Some(&CommandInvocationStatus::TimedOut));
    assert_eq!(got.status_details(), Some("ExecutionTimedOut"));
    assert_eq!(got.response_code(), 137);
    let runs = lines(fleet.cwd("i-00000002").join("runs"));
    assert!((2..11).contains(&runs), "{runs} runs");
}

#[test]
fn describe_instance_information_lists_the_instances_with_filters_and_pages() {
    let managed = "mi-0123456789abcdef0";
    let fleet = Fleet::new()
        .add("i-00000001", |i| i.tag("Role", "web"))
        .add("i-00000002", |i| i.tag("Role", "web").tag("Env", "prod"))
        .add("i-00000003", |i| {
            i.tag("Role", "db").tag("Env", "prod").reboot_seconds(60.0)
        })
        .add("i-00000004", |i| i)
        .add("i-00000005", |i| i)
        .add("i-00000006", |i| i)
        .add(managed, |i| i.tag("Role", "web"));
    let Some(server) = fleet.start() else { return };
    let all: Vec<_> = fleet.instances.keys().cloned().collect();

    let infos = server
        .block_on(server.client().describe_instance_information().send())
        .unwrap();
    let infos = infos.instance_information_list();
    assert_eq!(infos.len(), 7);
    for info in infos {
        let id = info.instance_id().unwrap();
        assert_eq!(info.ping_status(), Some(&PingStatus::Online));
        assert!(info.last_ping_date_time().is_some());
        assert_eq!(info.agent_version(), Some("3.3.0.0"));
        assert_eq!(info.is_latest_version(), Some(true));
        assert_eq!(info.platform_type(), Some(&PlatformType::Linux));
        assert_eq!(info.platform_name(), Some("Ubuntu"));
        assert_eq!(info.platform_version(), Some("16.04"));
        assert_eq!(info.computer_name(), Some(id));
        let expected = if id == managed {
            ResourceType::ManagedInstance
        } else {
            ResourceType::Ec2Instance
        };
        assert_eq!(info.resource_type(), Some(&expected));
    }

    // Values OR-ed within a filter, filters AND-ed, tags as for SendCommand's Targets.
    assert_eq!(
        described(&server, &[("tag:Role", &["web"])]),
        ["i-00000001", "i-00000002", managed]
    );
    assert_eq!(
        described(
            &server,
            &[("tag:Role", &["web", "db"]), ("tag:Env", &["prod"])]
        ),
        ["i-00000002", "i-00000003"]
    );
    assert_eq!(
        described(&server, &[("tag-key", &["Env"])]),
        ["i-00000002", "i-00000003"]
    );
    assert_eq!(
        described(&server, &[("InstanceIds", &["i-00000004", "i-00000099"])]),
        ["i-00000004"]
    );
    assert_eq!(
        described(
            &server,
            &[
                ("InstanceIds", &["i-00000001", "i-00000002"]),
                ("tag-key", &["Env"])
            ]
        ),
        ["i-00000002"]
    );
    // The older InstanceInformationFilterList.
    let legacy = |key: &str, values: &[&str]| -> Vec<String> {
        let mut filter = InstanceInformationFilter::builder().key(key.into());
        for value in values {
            filter = filter.value_set(*value);
        }
        let page = server
            .block_on(
                server
                    .client()
                    .describe_instance_information()
                    .instance_information_filter_list(filter.build().unwrap())
                    .send(),
            )
            .unwrap();
        page.instance_information_list()
            .iter()
            .map(|i| i.instance_id().unwrap().to_owned())
            .collect()
    };
    assert_eq!(legacy("InstanceIds", &[managed]), [managed]);

    // PingStatus: a rebooting instance (60 s: it stays down for the rest of the test).
    let request = send_command(&server, &["exit 194"]);
    let id = send(&server, with_instances(request, &["i-00000003"]));
    let deadline = Instant::now() + WAIT;
    while described(&server, &[("PingStatus", &["ConnectionLost"])]).is_empty() {
        assert!(Instant::now() < deadline, "the instance never rebooted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        described(&server, &[("PingStatus", &["ConnectionLost"])]),
        ["i-00000003"]
    );
    let online: Vec<_> = all.iter().filter(|i| *i != "i-00000003").cloned().collect();
    assert_eq!(described(&server, &[("PingStatus", &["Online"])]), online);
    assert_eq!(
        described(&server, &[("PingStatus", &["Online", "ConnectionLost"])]),
        all
    );
    assert_eq!(legacy("PingStatus", &["ConnectionLost"]), ["i-00000003"]);
    server
        .block_on(server.client().cancel_command().command_id(&id).send())
        .unwrap();

    // MaxResults 5..50, pages with NextToken.
    let mut pages = server
        .client()
        .describe_instance_information()
        .max_results(5)
        .into_paginator()
        .send();
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    while let Some(page) = server.block_on(pages.next()) {
        let page = page.unwrap();
        sizes.push(page.instance_information_list().len());
        seen.extend(
            page.instance_information_list()
                .iter()
                .map(|i| i.instance_id().unwrap().to_owned()),
        );
    }
    assert_eq!(sizes, [5, 2]);
    assert_eq!(seen, all);

    let refused = |request: DescribeInstanceInformationFluentBuilder| -> String {
        error_code(server.block_on(request.send()).unwrap_err())
    };
    let request = || server.client().describe_instance_information();
    assert_eq!(refused(request().max_results(4)), "ValidationException");
    assert_eq!(refused(request().max_results(51)), "ValidationException");
    assert_eq!(
        refused(request().filters(string_filter("Color", &["blue"]))),
        "InvalidFilterKey"
    );
    // Tags are no key of the older list.
    assert_eq!(
        refused(
            request().instance_information_filter_list(
                InstanceInformationFilter::builder()
                    .key("tag:Role".into())
                    .value_set("web")
                    .build()
                    .unwrap()
            )
        ),
        "InvalidFilterKey"
    );
    assert_eq!(
        refused(request().next_token("not a token")),
        "InvalidNextToken"
    );
}
