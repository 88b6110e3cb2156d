//! From checked arguments to a finished fleet command: the plan (targets, command line, the SSM
//! request), then send, watch and report over whichever transport was chosen.

use std::time::Duration;

use common::error::BadInput;
use common::report::ExitCode;

use super::local::LocalTransport;
use super::ssm::SsmTransport;
use super::summary::FleetSummary;
use super::watch::{watch, WatchOptions, Watched};
use super::{
    check_word, comment, render_line, shell_quote, Action, InstallerInvocation, OutputS3,
    SendRequest, Targets, Transport, TransportKind,
};
use crate::cli::{FleetArgs, ReachArgs};
use crate::config::DeployConfig;

/// Everything needed to run one fleet command, all of it checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub action: Action,
    /// How the installer is invoked, for the further commands a rollout sends.
    pub invocation: InstallerInvocation,
    pub transport: TransportKind,
    pub request: SendRequest,
    pub ssm_endpoint: Option<String>,
    pub verbose: bool,
    pub json: bool,
}

/// The targets for the chosen transport: required with SSM, refused with the local one.
pub fn targets(args: &ReachArgs) -> Result<Option<Targets>, BadInput> {
    match args.transport {
        TransportKind::Ssm => Targets::parse(&args.targets).map(Some),
        TransportKind::Local if args.targets.is_empty() => Ok(None),
        TransportKind::Local => Err(BadInput(
            "`--transport local` runs the installer on this machine only: drop `--targets`".into(),
        )),
    }
}

/// `--max-concurrency` when not given (`os-update` goes one at a time instead).
pub const DEFAULT_MAX_CONCURRENCY: super::Rate = super::Rate::Count(50);

/// The variable the installer records as who ran it (its journal's `user`).
pub const INVOKED_BY_ENV: &str = "BINARYCRATE_INVOKED_BY";

/// `user@host` of whoever runs the builder, printable characters only.
fn invoker() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "someone".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect()
}

/// The shell line that runs the installer for `action`. Who asked rides in front of it as an
/// environment variable, for the servers' journals (`installer status` shows it).
pub fn installer_line(
    invocation: &InstallerInvocation,
    action: &Action,
) -> Result<String, BadInput> {
    let by = format!("{} (builder {})", invoker(), action.name());
    Ok(format!(
        "{INVOKED_BY_ENV}={} {}",
        shell_quote(&by),
        render_line(&invocation.argv(action)?)
    ))
}

/// Checks the options that are not targets and builds the plan; `config` is the app's
/// `deploy.toml` (its name, and the fleet defaults).
pub fn plan(
    args: &FleetArgs,
    targets: Option<Targets>,
    action: Action,
    config: &DeployConfig,
    lock_timeout: Option<u64>,
) -> Result<Plan, BadInput> {
    let app = config.app.as_str();
    let invocation = InstallerInvocation {
        program: args.installer.clone(),
        config: args.installer_config.clone(),
        lock_timeout,
    };
    let line = installer_line(&invocation, &action)?;
    let reach = &args.reach;
    Ok(Plan {
        request: request(
            reach,
            config.fleet.output_s3.as_deref(),
            targets,
            line,
            comment(app, &action),
        )?,
        invocation,
        action,
        transport: reach.transport,
        ssm_endpoint: reach.ssm_endpoint.clone(),
        verbose: reach.verbose,
        json: reach.json,
    })
}

/// The request that sends `line` to `targets`, with the rate, timeout and output options
/// checked; `configured_output` is deploy.toml's `fleet.output_s3`, which `--output-s3`
/// overrides.
pub fn request(
    reach: &ReachArgs,
    configured_output: Option<&str>,
    targets: Option<Targets>,
    line: String,
    comment: String,
) -> Result<SendRequest, BadInput> {
    let output_s3 = output_location(reach, configured_output)?;
    if let Some(e) = &reach.ssm_endpoint {
        check_word("the SSM endpoint", e)?;
    }
    let timeout = Duration::from_secs(reach.timeout);
    Ok(SendRequest {
        line,
        comment,
        targets,
        max_concurrency: reach.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY),
        max_errors: reach.max_errors,
        execution_timeout: timeout,
        delivery_timeout: reach
            .delivery_timeout
            .map(Duration::from_secs)
            .unwrap_or(timeout),
        output_s3,
    })
}

/// Where SSM is to keep the whole output: `--output-s3`, else deploy.toml's `fleet.output_s3`
/// (for SSM only).
pub fn output_location(
    reach: &ReachArgs,
    configured_output: Option<&str>,
) -> Result<Option<OutputS3>, BadInput> {
    Ok(match (&reach.output_s3, reach.transport) {
        (Some(_), TransportKind::Local) => {
            return Err(BadInput(
                "`--output-s3` is for SSM; the local transport keeps the whole output".into(),
            ))
        }
        (Some(url), TransportKind::Ssm) => {
            Some(OutputS3::parse(url).map_err(|e| BadInput(format!("`--output-s3`: {e}")))?)
        }
        // deploy.toml's location is the SSM one; a local run has no use for it.
        (None, TransportKind::Ssm) => configured_output
            .map(|url| {
                OutputS3::parse(url)
                    .map_err(|e| BadInput(format!("`fleet.output_s3` in deploy.toml: {e}")))
            })
            .transpose()?,
        (None, TransportKind::Local) => None,
    })
}

/// A command sent and watched to the end: what ran where, and each instance's run.
#[derive(Debug)]
pub struct Dispatched {
    /// `ssm` or `local`.
    pub transport: &'static str,
    pub command_id: String,
    /// What was targeted, for messages.
    pub targets: String,
    pub watched: Watched,
}

/// Sends `request` over `transport`, shows each instance's progress and waits for all of them
/// (Ctrl-C cancels). `shown` is what the announcement says runs: the command line itself, or a
/// description of a longer script.
pub fn dispatch(
    transport: TransportKind,
    ssm_endpoint: Option<&str>,
    request: &SendRequest,
    shown: &str,
) -> anyhow::Result<Dispatched> {
    common::runtime::shared()?.block_on(async {
        match transport {
            TransportKind::Ssm => {
                let t = SsmTransport::connect(ssm_endpoint).await?;
                drive(&t, transport, request, shown).await
            }
            TransportKind::Local => drive(&LocalTransport::new(), transport, request, shown).await,
        }
    })
}

/// Sends the plan's command, waits for every instance, prints the results; the exit code.
pub fn execute(plan: Plan) -> anyhow::Result<ExitCode> {
    let sent = dispatch(
        plan.transport,
        plan.ssm_endpoint.as_deref(),
        &plan.request,
        &plan.request.line,
    )?;
    let summary = FleetSummary::new(
        plan.action.clone(),
        sent.transport,
        sent.command_id,
        sent.targets,
        sent.watched,
    );
    if matches!(plan.action, Action::Status { .. }) {
        summary.show_as(
            plan.verbose,
            plan.json,
            |_| {},
            "",
            &summary.status_closing(),
        )?;
        return Ok(summary.exit_code());
    }
    summary.show(plan.verbose, plan.json, |_| {})
}

/// What `request` targets, for messages: the targets, or the local pseudo-instance.
pub(super) fn described(request: &SendRequest) -> String {
    request
        .targets
        .as_ref()
        .map(Targets::to_string)
        .unwrap_or_else(|| super::LOCAL_INSTANCE.to_owned())
}

/// Sends `request` over `transport` and watches it to the end (what [`dispatch`] runs inside
/// the runtime; a caller that sends several commands in turn calls it directly).
pub(super) async fn drive<T: Transport>(
    transport: &T,
    kind: TransportKind,
    request: &SendRequest,
    shown: &str,
) -> anyhow::Result<Dispatched> {
    let targets = described(request);
    match kind {
        TransportKind::Ssm => eprintln!(
            "{}: running on {targets} through SSM (max concurrency {}, max errors {}, timeout {}s):\n  {shown}",
            request.comment,
            request.max_concurrency,
            request.max_errors,
            request.execution_timeout.as_secs(),
        ),
        TransportKind::Local => eprintln!(
            "{}: running on this machine (timeout {}s):\n  {shown}",
            request.comment,
            request.execution_timeout.as_secs(),
        ),
    }
    let (ctrl_c, mut rx) = interrupts();
    let sent = drive_with(transport, kind, request, &mut rx, true).await;
    ctrl_c.abort();
    sent
}

/// Ctrl-C as messages on the returned channel, for as long as the task runs (abort it when
/// done): a command, or a whole rollout, turns them into cancels.
pub(super) fn interrupts() -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    (listener, rx)
}

/// [`drive`] without the announcement and with the caller's interrupts (a rollout listens for
/// Ctrl-C across all of its commands); `live` prints each instance's state as it changes.
pub(super) async fn drive_with<T: Transport>(
    transport: &T,
    kind: TransportKind,
    request: &SendRequest,
    interrupts: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    live: bool,
) -> anyhow::Result<Dispatched> {
    let targets = described(request);
    let handle = transport.send(request).await?;
    if live {
        eprintln!("command `{}` sent; Ctrl-C cancels it", handle.id);
    }
    // Long enough for SSM to deliver to every instance and run it, with a margin.
    let deadline = request.delivery_timeout + request.execution_timeout + Duration::from_secs(120);
    let mut options = match kind {
        TransportKind::Ssm => WatchOptions::ssm(
            request.targets.as_ref().and_then(Targets::expected),
            deadline,
        ),
        TransportKind::Local => WatchOptions::local(deadline),
    };
    options.live = live;
    let watched = watch(transport, &handle, &options, interrupts).await;
    Ok(Dispatched {
        transport: transport.name(),
        command_id: handle.id,
        targets,
        watched: watched?,
    })
}
