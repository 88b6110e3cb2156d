//! The release archive: a deterministic `.tar.gz` writer and a verifying safe reader.

pub mod links;
pub mod reader;
pub mod writer;
