//! The `tests` crate's one integration-test binary: end-to-end checks across both binaries.

mod adopt;
mod bad_input;
mod bootstrap;
mod cli;
mod concurrency;
mod crash;
mod deps;
mod dist;
mod fleet;
mod installer;
mod installer_input;
mod package;
mod prepare;
mod signing;
mod ssm;
mod store_file;
mod store_s3;
mod uwsgi;
mod zero_downtime;
