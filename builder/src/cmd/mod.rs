//! One module per `builder` subcommand.

pub mod archive;
pub mod config;
pub mod package;
pub mod prepare;
pub mod publish;
pub mod releases;
