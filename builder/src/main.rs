//! `builder`: turns a staged tree or git tag into a published, immutable release.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = builder::cli::Cli::parse();
    match builder::run(cli) {
        Ok(code) => code.into(),
        Err(err) => common::error::report_failure(err.as_ref()).into(),
    }
}
