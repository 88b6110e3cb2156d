//! `builder status`: `installer status` on every target, showing which build is live where
//! (see [`crate::fleet`]).

use common::report::ExitCode;

use crate::cli::FleetStatusArgs;
use crate::fleet::{self, Action};
use crate::store::app_config;

pub fn run(args: &FleetStatusArgs) -> anyhow::Result<ExitCode> {
    let targets = fleet::run::targets(&args.fleet.reach)?;
    let config = app_config(args.repo.repo.as_deref())?;
    let plan = fleet::run::plan(
        &args.fleet,
        targets,
        Action::Status {
            verify: args.verify,
        },
        &config,
        None,
    )?;
    fleet::run::execute(plan)
}
