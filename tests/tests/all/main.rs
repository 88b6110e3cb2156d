//! The `tests` crate's one integration-test binary: end-to-end checks across both binaries.

mod cli;
mod concurrency;
mod crash;
mod fleet;
mod installer;
mod installer_input;
mod package;
mod prepare;
mod ssm;
mod store_file;
mod store_s3;
mod uwsgi;
