//! `builder releases`.

use common::report::ExitCode;

use crate::cli::ReleasesArgs;

pub fn run(_args: &ReleasesArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
