//! Test support.
//!
//! Code shared by the end-to-end tests in `tests/tests/`: real servers started on loopback for
//! the duration of a test, and fixtures.
//!
//! - [`bins`]: paths of the `builder` and `installer` binaries, built on first use.
//! - [`moto`]: a moto server (S3/SSM/EC2 stand-in) from the test virtualenv that
//!   `scripts/python-env` creates, with dummy credentials and a loopback endpoint.

pub mod bins;
pub mod moto;
