//! Sets the commit and glibc floor `--version` prints (shared with the other binary).
include!("../common/build/version.rs");
