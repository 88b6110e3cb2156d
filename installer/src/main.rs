//! `installer`: runs on each server and installs verified releases.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = installer::cli::Cli::parse();
    match installer::run(cli) {
        Ok(code) => code.into(),
        Err(err) => common::error::report_failure(err.as_ref()).into(),
    }
}
