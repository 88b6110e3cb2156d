//! `builder config`.

use common::report::ExitCode;

use crate::cli::ConfigArgs;

pub fn run(_args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
