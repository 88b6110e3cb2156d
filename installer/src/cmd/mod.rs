//! One module per `installer` subcommand (the read-only ones share `inspect`).

pub mod activate;
pub mod adopt;
pub mod inspect;
pub mod os_update;
pub mod prune;
pub mod rollback;
pub mod unpack;
