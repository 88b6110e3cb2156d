//! `builder deploy`: check the build is published, then have the installer activate it on every
//! target (see [`crate::fleet`]).

use common::error::{BadInput, StoreError};
use common::report::ExitCode;

use crate::cli::DeployArgs;
use crate::fleet::rollout::{self, Rollout};
use crate::fleet::{self, Action};
use crate::store::{app_config, open_store_for_servers};

pub fn run(args: &DeployArgs) -> anyhow::Result<ExitCode> {
    let targets = fleet::run::targets(&args.fleet.reach)?;
    if !args.order.is_empty() && targets.is_none() {
        return Err(BadInput(
            "`--order` is for SSM targets; the local transport has one instance".into(),
        )
        .into());
    }
    for id in &args.order {
        fleet::Targets::parse(std::slice::from_ref(id))
            .ok()
            .filter(|t| matches!(t, fleet::Targets::Instances(_)))
            .ok_or_else(|| {
                BadInput(format!(
                    "`--order` takes instance ids (`i-0123456789abcdef0,i-…`), not `{}`",
                    id.escape_debug()
                ))
            })?;
    }
    let config = app_config(args.repo.repo.as_deref())?;
    let app = config.app.clone();
    let build = args.build;

    // The store the installer will read: checked here, passed to it as an absolute URL.
    let store = open_store_for_servers(
        &args.store,
        args.repo.repo.as_deref(),
        args.fleet.reach.transport,
    )?;
    let location = store.location();
    let target = match store.fetch_sidecar(&app, build) {
        Ok((sidecar, _)) => sidecar.manifest,
        Err(StoreError::NotFound { .. }) => {
            return Err(BadInput(format!(
                "{build:#} of {app} is not published in `{location}`: package and publish it first \
                 (`builder package --tag {build:#}`, then `builder publish`), or name the store it is in with `--store`"
            ))
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!("{build:#} of {app} is published in {location}");

    let action = Action::Deploy {
        build,
        store: Some(location),
        s3_endpoint: args.store.s3_endpoint.clone(),
        template_reviewed: args.template_reviewed,
    };
    let plan = fleet::run::plan(&args.fleet, targets, action, &config, args.lock_timeout)?;
    if args.plan {
        let repo = crate::repo::root(args.repo.repo.as_deref()).ok();
        return fleet::plan::execute(&fleet::plan::PlanRequest {
            app: &app,
            target: &target,
            store: &store,
            repo: repo.as_deref(),
            invocation: &plan.invocation,
            request: &plan.request,
            transport: plan.transport,
            ssm_endpoint: plan.ssm_endpoint.as_deref(),
            canary: args.canary,
            order: &args.order,
            json: plan.json,
        });
    }
    let rollout = Rollout {
        app,
        action: plan.action,
        invocation: plan.invocation,
        request: plan.request,
        transport: plan.transport,
        ssm_endpoint: plan.ssm_endpoint,
        canary: args.canary,
        bake: args.bake,
        bake_every: rollout::bake_interval(args.bake),
        order: args.order.clone(),
        rollback_on_failure: !args.no_rollback_on_failure,
        ask_on_interrupt: true,
        verbose: plan.verbose,
        json: plan.json,
    };
    rollout::execute(&rollout)
}
