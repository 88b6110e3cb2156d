//! The SSM transport: AWS Systems Manager Run Command with the `AWS-RunShellScript` document.
//!
//! One `SendCommand` carries the line in the `commands` parameter, the execution timeout in
//! `executionTimeout`, SSM's own rate control (`MaxConcurrency`, `MaxErrors`), the delivery
//! timeout (`TimeoutSeconds`) and the optional S3 output location. Polls use
//! `ListCommandInvocations` with details (through the SDK's paginator) and `ListCommands` for the
//! command's own status and target count; each finished instance's output comes from
//! `GetCommandInvocation`, which keeps only the first 24,000 characters of standard output and
//! 8,000 of standard error: when a stream was cut there and the command has an S3 output
//! location, the whole stream is read from the object the agent wrote. Ctrl-C sends
//! `CancelCommand`.
//!
//! The client uses the standard AWS configuration chain (environment, profile, instance role);
//! `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_SSM` or `--ssm-endpoint` point it at a stand-in, and the
//! region is `us-east-1` when nothing names one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context};
use aws_config::BehaviorVersion;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::primitives::DateTime;
use aws_sdk_ssm::types::{InstanceInformationStringFilter, Target};
use aws_sdk_ssm::Client;
use common::error::BadInput;

use super::{
    CommandHandle, InvocationOutput, InvocationState, OutputS3, PollResult, SendRequest, Status,
    TagFilter, Targets, Transport,
};

/// The document every command uses.
pub const DOCUMENT: &str = "AWS-RunShellScript";
/// Its one plugin, whose output `GetCommandInvocation` returns.
pub const PLUGIN: &str = "aws:runShellScript";
/// `GetCommandInvocation` returns at most this many characters of standard output…
pub const MAX_INLINE_OUTPUT: usize = 24_000;
/// …and this many of standard error.
pub const MAX_INLINE_ERROR: usize = 8_000;
/// The most of one stream read back from S3: a report is kilobytes, a runaway log is not read
/// whole.
const MAX_S3_OUTPUT: u64 = 64 << 20;
/// Attempts to read a stream's object: the agent uploads it as the invocation ends, so it may
/// appear a moment after SSM says the invocation finished.
const S3_OUTPUT_ATTEMPTS: u32 = 4;
/// Page size of `DescribeInstanceInformation` (its maximum).
const INSTANCE_PAGE_SIZE: i32 = 50;
/// Page size of `ListCommandInvocations`.
const PAGE_SIZE: i32 = 50;

/// SSM errors that mean the request itself was wrong (nothing ran): exit code 2.
const BAD_REQUEST_CODES: &[&str] = &[
    "InvalidInstanceId",
    "InvalidDocument",
    "InvalidParameters",
    "InvalidOutputFolder",
    "InvalidRole",
    "InvalidNotificationConfig",
    "ValidationException",
    "DuplicateInstanceId",
    "UnsupportedPlatformType",
];

pub struct SsmTransport {
    client: Client,
    s3: aws_sdk_s3::Client,
    /// The S3 output location of each command this transport sent, by command id.
    outputs: Mutex<HashMap<String, OutputS3>>,
}

impl std::fmt::Debug for SsmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SsmTransport")
    }
}

fn describe<E>(err: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    common::aws::explain(err, common::aws::Service::Ssm)
}

fn seconds_between(start: Option<&DateTime>, end: Option<&DateTime>) -> Option<Duration> {
    let (s, e) = (start?, end?);
    let secs = e.as_secs_f64() - s.as_secs_f64();
    (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

/// Parses SSM's `ExecutionElapsedTime` (`PT0.027S`, `PT1M2.5S`, `PT1H0M0S`).
pub fn parse_elapsed(text: &str) -> Option<Duration> {
    let rest = text.strip_prefix("PT")?;
    let mut secs = 0f64;
    let mut number = String::new();
    for c in rest.chars() {
        match c {
            '0'..='9' | '.' => number.push(c),
            'H' | 'M' | 'S' => {
                let n: f64 = number.parse().ok()?;
                number.clear();
                secs += n * match c {
                    'H' => 3600.0,
                    'M' => 60.0,
                    _ => 1.0,
                };
            }
            _ => return None,
        }
    }
    (number.is_empty() && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

impl SsmTransport {
    /// A client from the standard configuration chain, `endpoint` overriding the endpoint.
    pub async fn connect(endpoint: Option<&str>) -> anyhow::Result<Self> {
        if let Some(e) = endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(BadInput(format!(
                    "SSM endpoint `{}` must be an `http://` or `https://` URL",
                    e.escape_debug()
                ))
                .into());
            }
        }
        let region = common::aws::region().await;
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .load()
            .await;
        let mut ssm = aws_sdk_ssm::config::Builder::from(&config);
        if let Some(e) = endpoint {
            ssm = ssm.endpoint_url(e);
        }
        // S3 stand-ins answer path-style only, as the artifact store also assumes.
        let overridden = config.endpoint_url().is_some()
            || ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(overridden)
            .build();
        Ok(Self {
            client: Client::from_conf(ssm.build()),
            s3: aws_sdk_s3::Client::from_conf(s3),
            outputs: Mutex::new(HashMap::new()),
        })
    }

    /// The whole of one stream from the command's S3 output location.
    async fn full_stream(
        &self,
        location: &OutputS3,
        command_id: &str,
        instance: &str,
        stream: &str,
    ) -> anyhow::Result<String> {
        let key = location.stream_key(command_id, instance, stream);
        let url = format!("s3://{}/{key}", location.bucket);
        let mut attempt = 0;
        let out = loop {
            attempt += 1;
            match self
                .s3
                .get_object()
                .bucket(&location.bucket)
                .key(&key)
                .send()
                .await
            {
                Ok(out) => break out,
                Err(e) => {
                    let missing = e.as_service_error().is_some_and(|s| s.is_no_such_key());
                    if missing && attempt < S3_OUTPUT_ATTEMPTS {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    let region = self
                        .s3
                        .config()
                        .region()
                        .map(|r| r.to_string())
                        .unwrap_or_default();
                    let service = common::aws::Service::S3 {
                        bucket: &location.bucket,
                        region: &region,
                    };
                    return Err(anyhow!(
                        "cannot read `{url}`: {}",
                        common::aws::explain(&e, service)
                    ));
                }
            }
        };
        if out.content_length().unwrap_or(0) as u64 > MAX_S3_OUTPUT {
            anyhow::bail!("`{url}` holds more than {} MiB", MAX_S3_OUTPUT >> 20);
        }
        let bytes = out
            .body
            .collect()
            .await
            .with_context(|| format!("cannot read `{url}`"))?
            .into_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Transport for SsmTransport {
    fn name(&self) -> &'static str {
        "ssm"
    }

    async fn send(&self, r: &SendRequest) -> anyhow::Result<CommandHandle> {
        let clamp = |d: Duration, lo: u64, hi: u64| d.as_secs().clamp(lo, hi);
        let mut req = self
            .client
            .send_command()
            .document_name(DOCUMENT)
            .comment(&r.comment)
            .parameters("commands", vec![r.line.clone()])
            .parameters(
                "executionTimeout",
                vec![clamp(r.execution_timeout, 1, 172_800).to_string()],
            )
            .timeout_seconds(clamp(r.delivery_timeout, 30, 2_592_000) as i32)
            .max_concurrency(r.max_concurrency.to_string())
            .max_errors(r.max_errors.to_string());
        match &r.targets {
            Some(Targets::Instances(ids)) => {
                for id in ids {
                    req = req.instance_ids(id);
                }
            }
            Some(Targets::Tags(tags)) => {
                for t in tags {
                    req = req.targets(
                        Target::builder()
                            .key(format!("tag:{}", t.key))
                            .set_values(Some(t.values.clone()))
                            .build(),
                    );
                }
            }
            None => {
                return Err(BadInput("SSM needs `--targets`".into()).into());
            }
        }
        if let Some(location) = &r.output_s3 {
            req = req.output_s3_bucket_name(&location.bucket);
            if !location.prefix.is_empty() {
                req = req.output_s3_key_prefix(&location.prefix);
            }
        }
        let out = req.send().await.map_err(|e| {
            let text = format!("SSM SendCommand failed: {}", describe(&e));
            if e.code().is_some_and(|c| BAD_REQUEST_CODES.contains(&c)) {
                anyhow!(BadInput(format!("{text} (nothing was run)")))
            } else {
                anyhow!("{text} (nothing was run)")
            }
        })?;
        let id = out
            .command()
            .and_then(|c| c.command_id())
            .ok_or_else(|| anyhow!("SSM accepted the command but returned no CommandId"))?;
        if let Some(location) = &r.output_s3 {
            self.outputs
                .lock()
                .expect("no panics under the lock")
                .insert(id.to_owned(), location.clone());
        }
        Ok(CommandHandle { id: id.to_owned() })
    }

    async fn poll(&self, handle: &CommandHandle) -> anyhow::Result<PollResult> {
        let mut pages = self
            .client
            .list_command_invocations()
            .command_id(&handle.id)
            .details(true)
            .max_results(PAGE_SIZE)
            .into_paginator()
            .send();
        let mut invocations = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| anyhow!("SSM ListCommandInvocations failed: {}", describe(&e)))?;
            for inv in page.command_invocations() {
                let Some(instance) = inv.instance_id() else {
                    continue;
                };
                let status = inv
                    .status()
                    .map(|s| Status::from_ssm(s.as_str()))
                    .unwrap_or(Status::Pending);
                let plugin = inv.command_plugins().first();
                let exit_code = plugin
                    .filter(|_| status.is_terminal())
                    .map(|p| p.response_code())
                    .filter(|c| *c >= 0);
                let duration = plugin.and_then(|p| {
                    seconds_between(p.response_start_date_time(), p.response_finish_date_time())
                });
                invocations.push(InvocationState {
                    instance: instance.to_owned(),
                    status,
                    detail: inv.status_details().map(str::to_owned),
                    exit_code,
                    duration,
                });
            }
        }
        // The command's own view: finished, and how many instances its targets resolved to.
        // Not every SSM stand-in keeps it up to date, so it only ever adds information.
        let (command_done, target_count) = match self
            .client
            .list_commands()
            .command_id(&handle.id)
            .send()
            .await
        {
            Ok(out) => match out.commands().first() {
                Some(c) => {
                    let done = c.status().is_some_and(|s| {
                        matches!(s.as_str(), "Success" | "Failed" | "TimedOut" | "Cancelled")
                    });
                    let count = usize::try_from(c.target_count()).ok();
                    (done, count)
                }
                None => (false, None),
            },
            Err(_) => (false, None),
        };
        Ok(PollResult {
            invocations,
            command_done,
            target_count,
        })
    }

    async fn output(
        &self,
        handle: &CommandHandle,
        instance: &str,
    ) -> anyhow::Result<InvocationOutput> {
        let out = self
            .client
            .get_command_invocation()
            .command_id(&handle.id)
            .instance_id(instance)
            .plugin_name(PLUGIN)
            .send()
            .await
            .map_err(|e| anyhow!("SSM GetCommandInvocation failed: {}", describe(&e)))
            .with_context(|| format!("output of `{instance}`"))?;
        let mut stdout = out.standard_output_content().unwrap_or("").to_owned();
        let mut stderr = out.standard_error_content().unwrap_or("").to_owned();
        let cut_out = stdout.chars().count() >= MAX_INLINE_OUTPUT;
        let cut_err = stderr.chars().count() >= MAX_INLINE_ERROR;
        let code = out.response_code();
        let mut output = InvocationOutput {
            exit_code: (code >= 0).then_some(code),
            duration: out.execution_elapsed_time().and_then(parse_elapsed),
            truncated: cut_out || cut_err,
            ..InvocationOutput::default()
        };
        let location = self
            .outputs
            .lock()
            .expect("no panics under the lock")
            .get(&handle.id)
            .cloned();
        match (&location, output.truncated) {
            (Some(location), true) => {
                let mut problems = Vec::new();
                for (cut, name, text) in [
                    (cut_out, "stdout", &mut stdout),
                    (cut_err, "stderr", &mut stderr),
                ] {
                    if !cut {
                        continue;
                    }
                    match self.full_stream(location, &handle.id, instance, name).await {
                        Ok(full) => *text = full,
                        Err(e) => problems.push(format!("{e:#}")),
                    }
                }
                if problems.is_empty() {
                    output.truncated = false;
                    output.note = Some(format!("output read in full from {location}"));
                } else {
                    output.note = Some(format!(
                        "SSM cut the output and the copy in {location} could not be read: {}",
                        problems.join("; ")
                    ));
                }
            }
            (None, true) => {
                output.note = Some(
                    "SSM returns only the first 24,000 characters of standard output and 8,000 of standard error; pass `--output-s3 s3://bucket/prefix` (or set `fleet.output_s3` in deploy.toml) to keep and read all of it".into(),
                );
            }
            _ => {}
        }
        output.stdout = stdout;
        output.stderr = stderr;
        Ok(output)
    }

    async fn cancel(&self, handle: &CommandHandle) -> anyhow::Result<()> {
        self.client
            .cancel_command()
            .command_id(&handle.id)
            .send()
            .await
            .map_err(|e| anyhow!("SSM CancelCommand failed: {}", describe(&e)))?;
        Ok(())
    }

    async fn instances(&self, tags: &[TagFilter]) -> anyhow::Result<Vec<String>> {
        let mut request = self
            .client
            .describe_instance_information()
            .max_results(INSTANCE_PAGE_SIZE);
        for t in tags {
            request = request.filters(
                InstanceInformationStringFilter::builder()
                    .key(format!("tag:{}", t.key))
                    .set_values(Some(t.values.clone()))
                    .build()
                    .context("an instance filter")?,
            );
        }
        let mut pages = request.into_paginator().send();
        let mut ids = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| anyhow!("SSM DescribeInstanceInformation failed: {}", describe(&e)))?;
            ids.extend(
                page.instance_information_list()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_owned)),
            );
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn online(&self, instance: &str) -> anyhow::Result<bool> {
        let out = self
            .client
            .describe_instance_information()
            .filters(
                InstanceInformationStringFilter::builder()
                    .key("InstanceIds")
                    .values(instance)
                    .build()
                    .context("an instance filter")?,
            )
            .send()
            .await
            .map_err(|e| anyhow!("SSM DescribeInstanceInformation failed: {}", describe(&e)))?;
        Ok(out
            .instance_information_list()
            .iter()
            .any(|i| i.ping_status().is_some_and(|p| p.as_str() == "Online")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_elapsed_time() {
        assert_eq!(parse_elapsed("PT0.027S"), Some(Duration::from_millis(27)));
        assert_eq!(
            parse_elapsed("PT1M2.5S"),
            Some(Duration::from_millis(62_500))
        );
        assert_eq!(parse_elapsed("PT1H0M0S"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_elapsed("PT"), Some(Duration::ZERO));
        assert_eq!(parse_elapsed("12s"), None);
        assert_eq!(parse_elapsed("PT1.5"), None);
        assert_eq!(parse_elapsed("PT1X"), None);
    }
}
