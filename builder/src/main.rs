//! `builder`: turns a staged tree or git tag into a published, immutable release.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = builder::cli::Cli::parse();
    match builder::run(cli) {
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
