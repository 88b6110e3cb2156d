//! The `tests` crate's one integration-test binary: end-to-end checks across both binaries.

mod store_s3;
