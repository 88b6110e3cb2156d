//! `builder prepare`.

use common::report::ExitCode;

use crate::cli::PrepareArgs;

pub fn run(_args: &PrepareArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
