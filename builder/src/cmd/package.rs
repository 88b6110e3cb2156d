//! `builder package`.

use common::report::ExitCode;

use crate::cli::PackageArgs;

pub fn run(_args: &PackageArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
