//! `installer`: runs on each server and installs verified releases.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    if let Some(code) = common::clidocs::intercept(
        installer::cli::Cli::command,
        common::clidocs::ConfigReference {
            section: installer::config::DOC_SECTION,
            table: installer::config::reference,
        },
    ) {
        return code.into();
    }
    let cli = installer::cli::Cli::parse();
    match installer::run(cli) {
        Ok(code) => code.into(),
        Err(err) => common::error::report_failure(err.as_ref()).into(),
    }
}
