//! `builder rollback`: `installer rollback` on every target (see [`crate::fleet`]).

use common::report::ExitCode;

use crate::cli::FleetRollbackArgs;
use crate::fleet::{self, Action, SchemaPolicy};
use crate::store::app_config;

pub fn run(args: &FleetRollbackArgs) -> anyhow::Result<ExitCode> {
    let targets = fleet::run::targets(&args.fleet.reach)?;
    let config = app_config(args.repo.repo.as_deref())?;
    let schema = match (args.migrate_down, args.force) {
        (true, _) => SchemaPolicy::MigrateDown,
        (false, true) => SchemaPolicy::Force,
        (false, false) => SchemaPolicy::Warn,
    };
    let action = Action::Rollback {
        to: args.to,
        schema,
    };
    let plan = fleet::run::plan(&args.fleet, targets, action, &config, args.lock_timeout)?;
    fleet::run::execute(plan)
}
