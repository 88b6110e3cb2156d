//! One module per `installer` subcommand.

pub mod unpack;
