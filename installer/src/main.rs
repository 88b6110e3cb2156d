//! `installer`: runs on each server and installs verified releases.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = installer::cli::Cli::parse();
    match installer::run(cli) {
        Ok(code) => code.into(),
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            common::error::exit_code_for(err.as_ref()).into()
        }
    }
}
