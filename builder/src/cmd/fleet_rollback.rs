//! `builder rollback`: `installer rollback` on every target (see [`crate::fleet`]).

use common::report::ExitCode;

use crate::cli::FleetRollbackArgs;
use crate::fleet::{self, Action};
use crate::store::app_name;

pub fn run(args: &FleetRollbackArgs) -> anyhow::Result<ExitCode> {
    let targets = fleet::run::targets(&args.fleet.reach)?;
    let app = app_name(args.repo.repo.as_deref())?;
    let action = Action::Rollback { to: args.to };
    let plan = fleet::run::plan(&args.fleet, targets, action, &app, args.lock_timeout)?;
    fleet::run::execute(plan)
}
