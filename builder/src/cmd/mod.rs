//! One module per `builder` subcommand.

pub mod archive;
pub mod bootstrap;
pub mod check;
pub mod config;
pub mod deploy;
pub mod fleet_rollback;
pub mod fleet_status;
pub mod init;
pub mod keygen;
pub mod os_update;
pub mod package;
pub mod prepare;
pub mod publish;
pub mod releases;
pub mod sign;
