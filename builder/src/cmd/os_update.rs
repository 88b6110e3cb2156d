//! `builder os-update`: `installer os-update` on every target, one at a time, a rebooted server
//! back online before the next (see [`crate::fleet::rolling`]).

use std::time::Duration;

use common::error::BadInput;
use common::report::ExitCode;

use crate::cli::FleetOsUpdateArgs;
use crate::fleet::rolling::{self, OsUpdate, Round};
use crate::fleet::summary::Summary;
use crate::fleet::{self, Action, Rate, TransportKind};
use crate::store::app_config;

pub fn run(args: &FleetOsUpdateArgs) -> anyhow::Result<ExitCode> {
    let reach = &args.fleet.reach;
    let targets = fleet::run::targets(reach)?;
    let config = app_config(args.repo.repo.as_deref())?;
    let concurrency = reach.max_concurrency.unwrap_or(Rate::Count(1));
    if args.reboot && concurrency != Rate::Count(1) {
        return Err(BadInput(format!(
            "`--reboot` goes one server at a time, each back online before the next: drop `--max-concurrency {concurrency}`"
        ))
        .into());
    }
    let action = Action::OsUpdate {
        reboot: args.reboot,
        // Under SSM the agent reboots (exit 194) and runs the command again once the server is
        // back; on this machine the installer runs its configured reboot command itself.
        via_ssm: args.reboot && reach.transport == TransportKind::Ssm,
    };
    let mut plan = fleet::run::plan(&args.fleet, targets, action, &config, args.lock_timeout)?;
    plan.request.max_concurrency = concurrency;
    if concurrency != Rate::Count(1) {
        // Several at a time: one command to every target, SSM pacing it as for a deploy.
        let sent = fleet::run::dispatch(
            plan.transport,
            plan.ssm_endpoint.as_deref(),
            &plan.request,
            &plan.request.line,
        )?;
        let summary = Summary::new(
            OsUpdate { reboot: false },
            sent.transport,
            sent.command_id,
            sent.targets,
            sent.watched,
        );
        return summary.show(plan.verbose, plan.json, |_| {});
    }
    let summary = rolling::execute(&Round {
        request: plan.request,
        transport: plan.transport,
        ssm_endpoint: plan.ssm_endpoint,
        reboot: args.reboot,
        reboot_timeout: Duration::from_secs(args.reboot_timeout),
        online_poll: rolling::ONLINE_POLL,
    })?;
    summary.show(plan.verbose, plan.json, |_| {})
}
