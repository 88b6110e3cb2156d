//! The S3 backend (aws-sdk-s3): conditional writes with `If-None-Match: *`, multipart above a
//! threshold, streamed downloads.

use std::io::Write;
use std::path::Path;

use super::{ObjectStore, PutOutcome, StoreOptions};
use crate::error::StoreError;

/// Objects live under `s3://bucket/prefix/`.
pub struct S3Store {
    bucket: String,
    prefix: String,
}

impl S3Store {
    pub fn connect(bucket: &str, prefix: &str, _options: &StoreOptions) -> Result<Self, StoreError> {
        Ok(Self { bucket: bucket.to_owned(), prefix: prefix.trim_matches('/').to_owned() })
    }
}

impl ObjectStore for S3Store {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
    fn put_new_file(&self, key: &str, _src: &Path) -> Result<PutOutcome, StoreError> {
        Err(StoreError::Backend { store: self.location(), op: "put", key: key.into(), message: "not yet implemented".into() })
    }
    fn put_new_bytes(&self, key: &str, _data: &[u8]) -> Result<PutOutcome, StoreError> {
        Err(StoreError::Backend { store: self.location(), op: "put", key: key.into(), message: "not yet implemented".into() })
    }
    fn put_bytes(&self, key: &str, _data: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Backend { store: self.location(), op: "put", key: key.into(), message: "not yet implemented".into() })
    }
    fn get(&self, key: &str, _out: &mut dyn Write) -> Result<u64, StoreError> {
        Err(StoreError::Backend { store: self.location(), op: "get", key: key.into(), message: "not yet implemented".into() })
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Backend { store: self.location(), op: "list", key: prefix.into(), message: "not yet implemented".into() })
    }
}
