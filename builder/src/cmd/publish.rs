//! `builder publish`.

use common::report::ExitCode;

use crate::cli::PublishArgs;

pub fn run(_args: &PublishArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
