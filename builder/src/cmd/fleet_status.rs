//! `builder status`: `installer status` on every target, showing which build is live where
//! (see [`crate::fleet`]).

use common::report::ExitCode;

use crate::cli::FleetStatusArgs;
use crate::fleet::{self, Action};
use crate::store::app_name;

pub fn run(args: &FleetStatusArgs) -> anyhow::Result<ExitCode> {
    let targets = fleet::run::targets(&args.fleet.reach)?;
    let app = app_name(args.repo.repo.as_deref())?;
    let plan = fleet::run::plan(&args.fleet, targets, Action::Status, &app, None)?;
    fleet::run::execute(plan)
}
