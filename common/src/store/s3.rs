//! The S3 backend (aws-sdk-s3): conditional writes with `If-None-Match: *`, multipart above a
//! threshold, streamed downloads.
//!
//! The [`ObjectStore`] trait is synchronous, so the store blocks on each request in the
//! process's one runtime ([`crate::runtime`]). Nothing is ever held whole in memory: uploads
//! stream from the file (part by part for multipart uploads) and downloads are written to the
//! caller's writer chunk by chunk.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;

use super::{DownloadSource, ObjectStore, PutOutcome, StoreOptions};
use crate::error::{FsError, StoreError};
use crate::manifest::validate_relative_path;
use crate::progress;

/// Uploads larger than this use multipart upload unless [`StoreOptions`] says otherwise.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Multipart part size unless [`StoreOptions`] says otherwise.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// S3's smallest part (every part but the last must be at least this big).
const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest number of parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// The region used when neither the environment nor a profile names one.
/// How often a conditional write that S3 reports as racing another one is tried again.
const CONFLICT_RETRIES: u32 = 4;

/// Objects live under `s3://bucket/prefix/`.
pub struct S3Store {
    bucket: String,
    prefix: String,
    /// The region requests go to (for the advice when the bucket is elsewhere).
    region: String,
    client: Client,
    runtime: &'static tokio::runtime::Runtime,
    multipart_threshold: u64,
    part_size: u64,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

/// Checks an S3 bucket name: 3–63 characters of lowercase letters, digits, dots and hyphens,
/// starting and ending with a letter or digit. Returns the reason when it is not one.
pub fn validate_bucket_name(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket name is missing: use `s3://bucket/prefix`".into());
    }
    if !(3..=63).contains(&bucket.len()) {
        return Err(format!(
            "bucket name `{}` is {} characters long; S3 bucket names have 3 to 63",
            bucket.escape_debug(),
            bucket.chars().count()
        ));
    }
    if let Some(c) = bucket
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return Err(format!(
            "bucket name `{}` contains `{}`; S3 bucket names use only lowercase letters, digits, dots and hyphens",
            bucket.escape_debug(),
            c.escape_debug()
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !alnum(bucket.chars().next()) || !alnum(bucket.chars().last()) {
        return Err(format!(
            "bucket name `{bucket}` must start and end with a letter or digit"
        ));
    }
    if bucket.contains("..") {
        return Err(format!("bucket name `{bucket}` has two dots in a row"));
    }
    Ok(())
}

fn env_is_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

impl S3Store {
    /// Opens `s3://bucket/prefix` with the standard AWS credential and region chain.
    ///
    /// `options.s3_endpoint` (or `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`) points it at an S3
    /// stand-in; any such override turns on path-style addressing. Without a configured region
    /// it uses `us-east-1`, and says so. No request is made here: a wrong bucket shows on first
    /// use.
    pub fn connect(bucket: &str, prefix: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let bad = |reason: String| StoreError::BadUrl {
            url: url.clone(),
            reason,
        };
        validate_bucket_name(bucket).map_err(bad)?;
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            validate_relative_path(prefix).map_err(|r| bad(format!("prefix `{prefix}`: {r}")))?;
        }
        if let Some(endpoint) = &options.s3_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(bad(format!(
                    "S3 endpoint `{endpoint}` must be an `http://` or `https://` URL"
                )));
            }
        }

        let runtime = crate::runtime::shared().map_err(|e| StoreError::Backend {
            store: url.clone(),
            op: "connect",
            key: String::new(),
            message: format!("cannot start the I/O runtime: {e}"),
        })?;
        let sdk_config = runtime.block_on(async {
            let region = crate::aws::region().await;
            let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
            if let Some(endpoint) = &options.s3_endpoint {
                loader = loader.endpoint_url(endpoint);
            }
            loader.load().await
        });
        let endpoint_override = options.s3_endpoint.is_some()
            || sdk_config.endpoint_url().is_some()
            || env_is_set("AWS_ENDPOINT_URL")
            || env_is_set("AWS_ENDPOINT_URL_S3");
        let config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(options.s3_path_style || endpoint_override)
            .build();

        let multipart_threshold = if options.multipart_threshold == 0 {
            DEFAULT_MULTIPART_THRESHOLD
        } else {
            options.multipart_threshold
        };
        let part_size = if options.part_size == 0 {
            DEFAULT_PART_SIZE
        } else {
            options.part_size.max(MIN_PART_SIZE)
        };
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            region: sdk_config
                .region()
                .map(|r| r.to_string())
                .unwrap_or_default(),
            client: Client::from_conf(config),
            runtime,
            multipart_threshold,
            part_size,
        })
    }

    /// The bucket's key for a store key.
    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        validate_relative_path(key).map_err(|reason| StoreError::Backend {
            store: self.location(),
            op: "resolve",
            key: key.to_owned(),
            message: reason,
        })?;
        Ok(if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    fn backend_error<E>(&self, op: &'static str, key: &str, err: &SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        StoreError::Backend {
            store: self.location(),
            op,
            key: key.to_owned(),
            message: self.explain(err),
        }
    }

    /// An SDK error as one line with what to do ([`crate::aws::explain`]).
    fn explain<E>(&self, err: &SdkError<E>) -> String
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        crate::aws::explain(
            err,
            crate::aws::Service::S3 {
                bucket: &self.bucket,
                region: &self.region,
            },
        )
    }

    fn put_object_new(
        &self,
        key: &str,
        body: ByteStreamSource<'_>,
    ) -> Result<PutOutcome, StoreError> {
        let full = self.full_key(key)?;
        self.runtime.block_on(async {
            let mut attempt = 0;
            loop {
                let stream = body.open().await?;
                let sent = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .if_none_match("*")
                    .body(stream)
                    .send()
                    .await;
                match sent {
                    Ok(_) => return Ok(PutOutcome::Created),
                    Err(e) if is_precondition_failed(&e) => return Ok(PutOutcome::AlreadyExists),
                    Err(e) if is_conditional_conflict(&e) && attempt < CONFLICT_RETRIES => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    }
                    Err(e) => return Err(self.backend_error("put", key, &e)),
                }
            }
        })
    }

    /// Multipart upload of `src` (`size` bytes), completed only if the key is still absent.
    fn put_multipart(&self, key: &str, src: &Path, size: u64) -> Result<PutOutcome, StoreError> {
        let full = self.full_key(key)?;
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS));
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| key.to_owned());
        self.runtime.block_on(async {
            // Uploading hundreds of megabytes only to be refused at the end is wasteful: look
            // first. The conditional completion below is what actually guarantees the outcome.
            if self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .is_ok()
            {
                return Ok(PutOutcome::AlreadyExists);
            }
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .send()
                .await
                .map_err(|e| self.backend_error("start multipart upload of", key, &e))?;
            let upload_id = created.upload_id().unwrap_or_default().to_owned();
            if upload_id.is_empty() {
                return Err(StoreError::Backend {
                    store: self.location(),
                    op: "start multipart upload of",
                    key: key.to_owned(),
                    message: "S3 returned no upload id".into(),
                });
            }
            let bar = progress::bytes_bar(size, &format!("upload {name}"));
            let result = self
                .upload_parts(key, &full, &upload_id, src, size, part_size, &bar)
                .await;
            bar.finish_and_clear();
            if !matches!(result, Ok(PutOutcome::Created)) {
                let aborted = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                if let (
                    Err(StoreError::Backend {
                        store,
                        op,
                        key,
                        message,
                    }),
                    Err(abort),
                ) = (&result, aborted)
                {
                    return Err(StoreError::Backend {
                        store: store.clone(),
                        op,
                        key: key.clone(),
                        message: format!(
                            "{message}; aborting the multipart upload `{upload_id}` failed too: {}",
                            self.explain(&abort)
                        ),
                    });
                }
            }
            result
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_parts(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        src: &Path,
        size: u64,
        part_size: u64,
        bar: &indicatif::ProgressBar,
    ) -> Result<PutOutcome, StoreError> {
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 1i32;
        while offset < size || number == 1 {
            let len = part_size.min(size - offset);
            let body = ByteStream::read_from()
                .path(src)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| byte_stream_error(src, e))?;
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .send()
                .await
                .map_err(|e| self.backend_error("upload part of", key, &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag().map(str::to_owned))
                    .set_checksum_crc32(uploaded.checksum_crc32().map(str::to_owned))
                    .build(),
            );
            bar.inc(len);
            offset += len;
            number += 1;
        }
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        let mut attempt = 0;
        loop {
            let sent = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(upload_id)
                .multipart_upload(completed.clone())
                .if_none_match("*")
                .send()
                .await;
            match sent {
                Ok(_) => return Ok(PutOutcome::Created),
                Err(e) if is_precondition_failed(&e) => return Ok(PutOutcome::AlreadyExists),
                Err(e) if is_conditional_conflict(&e) && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(self.backend_error("complete multipart upload of", key, &e)),
            }
        }
    }
}

/// Where a PutObject body comes from; opened anew for each attempt.
#[derive(Clone, Copy)]
enum ByteStreamSource<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

impl ByteStreamSource<'_> {
    async fn open(&self) -> Result<ByteStream, StoreError> {
        match self {
            ByteStreamSource::Bytes(data) => Ok(ByteStream::from(data.to_vec())),
            ByteStreamSource::File(path) => ByteStream::from_path(path)
                .await
                .map_err(|e| byte_stream_error(path, e)),
        }
    }
}

fn byte_stream_error(path: &Path, e: aws_sdk_s3::primitives::ByteStreamError) -> StoreError {
    FsError::new("cannot read", path, std::io::Error::other(e)).into()
}

fn service_status<E>(err: &SdkError<E>) -> Option<u16> {
    match err {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        _ => None,
    }
}

fn error_code<E: ProvideErrorMetadata>(err: &SdkError<E>) -> Option<&str> {
    match err {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}

/// `If-None-Match: *` refused the write: the key already exists.
fn is_precondition_failed<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    error_code(err) == Some("PreconditionFailed") || service_status(err) == Some(412)
}

/// S3 refuses a conditional write that races another one on the same key with a 409; the
/// request may be sent again (and then gets its real answer).
fn is_conditional_conflict<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    error_code(err) == Some("ConditionalRequestConflict")
}

fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    match error_code(err) {
        Some("NoSuchKey" | "NotFound") => true,
        Some("NoSuchBucket") => false,
        _ => service_status(err) == Some(404),
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

    fn put_new_file(&self, key: &str, src: &Path) -> Result<PutOutcome, StoreError> {
        let size = std::fs::metadata(src)
            .map_err(|e| FsError::new("cannot read", src, e))?
            .len();
        if size > self.multipart_threshold {
            return self.put_multipart(key, src, size);
        }
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| key.to_owned());
        let bar = progress::bytes_bar(size, &format!("upload {name}"));
        let outcome = self.put_object_new(key, ByteStreamSource::File(src));
        bar.finish_and_clear();
        outcome
    }

    fn put_new_bytes(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.put_object_new(key, ByteStreamSource::Bytes(data))
    }

    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        self.runtime
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .body(ByteStream::from(data.to_vec()))
                    .send(),
            )
            .map_err(|e| self.backend_error("put", key, &e))?;
        Ok(())
    }

    fn download_source(
        &self,
        key: &str,
        valid_for: Duration,
    ) -> Result<DownloadSource, StoreError> {
        let full = self.full_key(key)?;
        let fail = |message: String| StoreError::Backend {
            store: self.location(),
            op: "presign",
            key: key.to_owned(),
            message,
        };
        // SigV4 presigned URLs last at most a week.
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(
            valid_for.min(Duration::from_secs(7 * 24 * 3600)),
        )
        .map_err(|e| fail(e.to_string()))?;
        self.runtime.block_on(async {
            // A presigned URL for a missing object would only fail on the server: look first.
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {
                    return Err(StoreError::NotFound {
                        store: self.location(),
                        key: key.to_owned(),
                    })
                }
                Err(e) => return Err(self.backend_error("head", key, &e)),
            }
            let presigned = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .presigned(config)
                .await
                .map_err(|e| fail(self.explain(&e)))?;
            Ok(DownloadSource::Url(presigned.uri().to_owned()))
        })
    }

    fn get(&self, key: &str, out: &mut dyn Write, limit: u64) -> Result<u64, StoreError> {
        let full = self.full_key(key)?;
        self.runtime.block_on(async {
            let response = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) if is_not_found(&e) => {
                    return Err(StoreError::NotFound {
                        store: self.location(),
                        key: key.to_owned(),
                    })
                }
                Err(e) => return Err(self.backend_error("get", key, &e)),
            };
            let expected = response
                .content_length()
                .and_then(|n| u64::try_from(n).ok());
            let too_large = |actual| StoreError::TooLarge {
                store: self.location(),
                key: key.to_owned(),
                what: "allowed".into(),
                limit,
                actual,
            };
            // Refused before the body is read; dropping the response closes the connection.
            if let Some(n) = expected.filter(|&n| n > limit) {
                return Err(too_large(Some(n)));
            }
            let mut body = response.body;
            let mut written = 0u64;
            loop {
                match body.try_next().await {
                    Ok(Some(chunk)) => {
                        if written.saturating_add(chunk.len() as u64) > limit {
                            return Err(too_large(expected));
                        }
                        out.write_all(&chunk).map_err(|e| StoreError::Backend {
                            store: self.location(),
                            op: "get",
                            key: key.to_owned(),
                            message: format!("cannot write what was downloaded: {e}"),
                        })?;
                        written += chunk.len() as u64;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(StoreError::Corrupt {
                            store: self.location(),
                            key: key.to_owned(),
                            reason: format!(
                                "the download broke off after {written}{} bytes: {}",
                                expected.map(|n| format!(" of {n}")).unwrap_or_default(),
                                crate::aws::one_line(&e)
                            ),
                        })
                    }
                }
            }
            if let Some(expected) = expected.filter(|&n| n != written) {
                return Err(StoreError::Corrupt {
                    store: self.location(),
                    key: key.to_owned(),
                    reason: format!("the download ended after {written} of {expected} bytes"),
                });
            }
            Ok(written)
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_owned()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        self.runtime.block_on(async {
            let mut keys = Vec::new();
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| self.backend_error("list", prefix, &e))?;
                keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key())
                        .filter_map(|k| k.strip_prefix(&strip))
                        .map(str::to_owned),
                );
            }
            Ok(keys)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_bucket_names_are_accepted() {
        for ok in [
            "abc",
            "my-bucket",
            "releases.example.com",
            "b1",
            "0-0",
            &"a".repeat(63),
        ] {
            if ok.len() < 3 {
                continue;
            }
            assert_eq!(validate_bucket_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn invalid_bucket_names_say_why() {
        let cases: &[(&str, &str)] = &[
            ("", "missing"),
            ("ab", "2 characters long"),
            (&"a".repeat(64), "64 characters long"),
            ("My-Bucket", "contains `M`"),
            ("my_bucket", "contains `_`"),
            ("my bucket", "contains ` `"),
            ("-bucket", "start and end"),
            ("bucket.", "start and end"),
            ("my..bucket", "two dots"),
        ];
        for (name, why) in cases {
            let err = validate_bucket_name(name).unwrap_err();
            assert!(err.contains(why), "{name}: {err}");
        }
    }

    /// `connect` resolves a region; keep it from asking the EC2 metadata service.
    fn offline_env() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
            if std::env::var_os("AWS_REGION").is_none() {
                std::env::set_var("AWS_REGION", "us-east-1");
            }
        });
    }

    #[test]
    fn connect_refuses_bad_urls_before_any_request() {
        let opts = StoreOptions::default();
        for (bucket, prefix) in [
            ("Bad_Bucket", ""),
            ("ok-bucket", "a/../b"),
            ("ok-bucket", "a//b"),
        ] {
            let err = S3Store::connect(bucket, prefix, &opts).unwrap_err();
            assert!(
                matches!(err, StoreError::BadUrl { .. }),
                "{bucket}/{prefix}: {err}"
            );
        }
        let opts = StoreOptions {
            s3_endpoint: Some("127.0.0.1:9000".into()),
            ..StoreOptions::default()
        };
        let err = S3Store::connect("ok-bucket", "", &opts).unwrap_err();
        assert!(
            err.to_string()
                .contains("must be an `http://` or `https://` URL"),
            "{err}"
        );
    }

    #[test]
    fn open_names_the_url_in_bad_bucket_errors() {
        let err =
            super::super::ArtifactStore::open("s3://UPPER/releases", &StoreOptions::default())
                .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("s3://UPPER/releases") && msg.contains("contains `U`"),
            "{msg}"
        );
    }

    #[test]
    fn keys_are_joined_under_the_prefix_and_defaults_apply() {
        offline_env();
        let opts = StoreOptions {
            s3_endpoint: Some("http://127.0.0.1:9".into()),
            ..StoreOptions::default()
        };
        let store = S3Store::connect("bucket", "/releases/prod/", &opts).unwrap();
        assert_eq!(store.location(), "s3://bucket/releases/prod");
        assert_eq!(
            store.full_key("app/Build000001/release.json").unwrap(),
            "releases/prod/app/Build000001/release.json"
        );
        assert!(store.full_key("../x").is_err());
        assert_eq!(store.multipart_threshold, DEFAULT_MULTIPART_THRESHOLD);
        assert_eq!(store.part_size, DEFAULT_PART_SIZE);
        let bare = S3Store::connect("bucket", "", &opts).unwrap();
        assert_eq!(bare.location(), "s3://bucket");
        assert_eq!(bare.full_key("a/b").unwrap(), "a/b");
    }
}
