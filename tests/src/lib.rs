//! Test support.
//!
//! Code shared by the end-to-end tests in `tests/tests/`: real servers started on loopback for
//! the duration of a test, and fixtures.
//!
//! - [`bins`]: paths of the `builder` and `installer` binaries, built on first use.
//! - [`example`]: the example app (a small BinaryCrate) as git repositories; safe git; snapshots.
//! - [`moto`]: a moto server (S3/SSM/EC2 stand-in) from the test virtualenv that
//!   `scripts/python-env` creates, with dummy credentials and a loopback endpoint.
//! - [`nginx`]: a real nginx (Debian's package) on loopback in front of that uWSGI, from the
//!   recommended site configuration (`fixtures/server/nginx-site.conf`).
//! - [`published`]: builds 000001–000004 of the example, published once to one file store, and
//!   server roots (config, ports, copies) that install them under a real uWSGI.
//! - [`ssm`]: the SSM Run Command stand-in (moto with `AWS-RunShellScript` really run on
//!   "instances" that are directories and environments here; `fixtures/ssm/launcher.py`).
//! - [`uwsgi`]: a real uWSGI (pyuwsgi) serving `<root>/current` from the recommended
//!   configuration (`fixtures/server/`), and releases laid out by hand without the installer.

pub mod bins;
pub mod example;
pub mod moto;
pub mod nginx;
pub mod published;
pub mod ssm;
pub mod uwsgi;

/// Prints a measured figure straight to stderr, past the test harness's output capture, so the
/// summary lines (`crash-matrix: …`, `bad-input: …`) show in `scripts/test`'s log too.
pub fn show(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Whether a test can run here; `missing` names the first prerequisite that is not installed.
/// Outside CI a missing one skips the test with a printed reason; under CI it is a failure.
pub fn ready(missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(why) => {
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("skipping: {why}");
            false
        }
    }
}
