//! One module per `builder` subcommand.

pub mod archive;
