//! `builder`: turns a staged tree or git tag into a published, immutable release.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    if let Some(code) = common::clidocs::intercept(
        builder::cli::Cli::command,
        common::clidocs::ConfigReference {
            section: builder::config::DOC_SECTION,
            table: builder::config::reference,
        },
    ) {
        return code.into();
    }
    let cli = builder::cli::Cli::parse();
    match builder::run(cli) {
        Ok(code) => code.into(),
        Err(err) => common::error::report_failure(err.as_ref()).into(),
    }
}
