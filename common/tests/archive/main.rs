//! Integration tests of the release archive: the deterministic writer
//! and the verifying safe reader, from outside the crate.
//!
//! - [`corpus`]: malicious and corrupt archives, each refused with its own error, nothing left.
//! - [`roundtrip`]: property tests — random trees round-trip exactly, for any thread count.
//! - [`repro`]: byte-identical output across mtimes, umask, creation order, location, time
//!   zone; system `gzip`/`tar` read the artifact.
//! - [`refusals`]: trees the writer must not pack.

mod corpus;
mod refusals;
mod repro;
mod roundtrip;
mod support;
