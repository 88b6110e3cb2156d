//! AWS as a person reads it: the region in use, said once when nobody chose it, and SDK errors
//! as one line that names the cause and what to do about it.
//!
//! The SDK's own rendering of a failure is the whole chain of causes plus a `Debug` dump, over
//! several lines; a missing credential looks like a network error ("dispatch failure"). The
//! common causes of a first day — no credentials, refused or expired ones, a missing
//! permission, a mistyped bucket, the wrong region, no network — are recognised here.

use std::sync::Once;

use aws_config::meta::region::RegionProviderChain;
use aws_config::Region;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// The region used when none is configured anywhere.
pub const FALLBACK_REGION: &str = "us-east-1";

/// Where the region comes from when it is not in the environment.
fn region_note(found: Option<&Region>) -> Option<String> {
    let explicit = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
    match found {
        Some(_) if explicit => None,
        Some(r) => Some(format!(
            "AWS region {r} (from the AWS profile or this instance; `AWS_REGION` chooses another)"
        )),
        None => Some(format!(
            "AWS region {FALLBACK_REGION}: none is configured (set `AWS_REGION`, or `region` in `~/.aws/config`)"
        )),
    }
}

/// The region the SDK is to use: the standard chain's (environment, profile, instance), else
/// [`FALLBACK_REGION`]. When it was not set in the environment, it is said on standard error,
/// once per process.
pub async fn region() -> Region {
    static SAID: Once = Once::new();
    let found = RegionProviderChain::default_provider().region().await;
    if let Some(note) = region_note(found.as_ref()) {
        SAID.call_once(|| eprintln!("{note}"));
    }
    found.unwrap_or_else(|| Region::from_static(FALLBACK_REGION))
}

/// What the request was about, for the advice.
#[derive(Debug, Clone, Copy)]
pub enum Service<'a> {
    /// An S3 bucket, in a region.
    S3 {
        bucket: &'a str,
        region: &'a str,
    },
    Ssm,
}

/// The causes a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    NoCredentials,
    CredentialsRefused,
    Expired,
    AccessDenied,
    NoSuchBucket,
    /// The bucket lives in another region (named when S3 said which).
    WrongRegion(Option<String>),
    Unreachable,
    TimedOut,
    Other,
}

/// One line: the error chain's messages joined, without the SDK's `Debug` dump.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string().replace('\n', "; ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    crate::untrusted::shown(&parts.join(": "))
}

fn has_credentials_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return matches!(
                c,
                CredentialsError::CredentialsNotLoaded(_) | CredentialsError::ProviderTimedOut(_)
            );
        }
        next = e.source();
    }
    false
}

/// Sorts an SDK error into a [`Cause`].
pub fn cause<E>(err: &SdkError<E>) -> Cause
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let region = se
                .raw()
                .headers()
                .get("x-amz-bucket-region")
                .map(str::to_owned);
            match se.err().code() {
                Some("NoSuchBucket") => Cause::NoSuchBucket,
                Some(
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "UnrecognizedClientException"
                    | "InvalidClientTokenId"
                    | "InvalidSignatureException",
                ) => Cause::CredentialsRefused,
                Some("ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired") => {
                    Cause::Expired
                }
                Some("AccessDenied" | "AccessDeniedException" | "AllAccessDisabled") => {
                    Cause::AccessDenied
                }
                Some(
                    "PermanentRedirect"
                    | "AuthorizationHeaderMalformed"
                    | "IllegalLocationConstraintException",
                ) => Cause::WrongRegion(
                    region.or_else(|| expecting_region(se.err().message().unwrap_or_default())),
                ),
                _ if status == 301 => Cause::WrongRegion(region),
                None if status == 403 => Cause::AccessDenied,
                _ => Cause::Other,
            }
        }
        SdkError::TimeoutError(_) => Cause::TimedOut,
        SdkError::DispatchFailure(d) => {
            if has_credentials_error(err) {
                Cause::NoCredentials
            } else if d.is_timeout() {
                Cause::TimedOut
            } else if d.is_io() {
                Cause::Unreachable
            } else {
                Cause::Other
            }
        }
        _ if has_credentials_error(err) => Cause::NoCredentials,
        _ => Cause::Other,
    }
}

/// The region in S3's "the region 'us-east-1' is wrong; expecting 'eu-west-1'".
fn expecting_region(message: &str) -> Option<String> {
    let rest = message.split("expecting '").nth(1)?;
    let region = rest.split('\'').next()?;
    (!region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-'))
    .then(|| region.to_owned())
}

/// The error as one line: the cause and what to do, then AWS's own code and message.
pub fn explain<E>(err: &SdkError<E>, service: Service<'_>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let aws_said = match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            match (se.err().code(), se.err().message()) {
                (Some(code), Some(message)) => {
                    format!(
                        "{code}: {} (HTTP {status})",
                        crate::untrusted::shown(message)
                    )
                }
                (Some(code), None) => format!("{code} (HTTP {status})"),
                _ => format!("HTTP {status}"),
            }
        }
        _ => one_line(err),
    };
    let advice = match (cause(err), service) {
        // The SDK's own text lists every provider it tried, over many lines: the advice says it.
        (Cause::NoCredentials, _) => return "no AWS credentials: none in the environment (`AWS_ACCESS_KEY_ID`), a profile (`AWS_PROFILE`, `~/.aws`), web identity, ECS or an instance role; set one (a server needs an instance profile)".to_owned(),
        (Cause::CredentialsRefused, _) => "AWS refused the credentials: check `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` or `AWS_PROFILE`".to_owned(),
        (Cause::Expired, _) => "the AWS credentials have expired: renew them (e.g. `aws sso login`) and run again".to_owned(),
        (Cause::AccessDenied, Service::S3 { bucket, .. }) => format!("access denied to the bucket `{bucket}`: the identity in use lacks an S3 permission on it (servers need s3:GetObject and s3:ListBucket, the builder also s3:PutObject; see \"AWS permissions\" in docs/operations.md)"),
        (Cause::AccessDenied, Service::Ssm) => "access denied by SSM: the identity in use needs ssm:SendCommand, ssm:ListCommandInvocations, ssm:GetCommandInvocation and ssm:CancelCommand (see \"AWS permissions\" in docs/operations.md)".to_owned(),
        (Cause::NoSuchBucket, Service::S3 { bucket, region }) => format!("the bucket `{bucket}` does not exist (region {region}): check the store URL"),
        (Cause::WrongRegion(Some(right)), Service::S3 { bucket, region }) => format!("the bucket `{bucket}` is in region {right}, not {region}: set `AWS_REGION={right}`"),
        (Cause::WrongRegion(_), Service::S3 { bucket, region }) => format!("the bucket `{bucket}` is not in region {region}: set `AWS_REGION` to its region"),
        (Cause::Unreachable, _) => "cannot reach AWS: check the network, a proxy, or the endpoint given".to_owned(),
        (Cause::TimedOut, _) => "AWS did not answer in time: check the network and run again".to_owned(),
        _ => return aws_said,
    };
    format!("{advice} ({aws_said})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_region_is_read_from_s3s_message() {
        assert_eq!(
            expecting_region("the region 'us-east-1' is wrong; expecting 'eu-west-1'").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(expecting_region("nothing"), None);
        assert_eq!(expecting_region("expecting 'a b'"), None);
    }

    #[test]
    fn the_region_is_said_unless_the_environment_set_it() {
        // Only the decision is tested here: the environment is the process's own.
        let r = Region::from_static("eu-west-1");
        let note = region_note(None).unwrap();
        assert!(
            note.contains(FALLBACK_REGION) && note.contains("AWS_REGION"),
            "{note}"
        );
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            assert!(region_note(Some(&r)).unwrap().contains("eu-west-1"));
        } else {
            assert_eq!(region_note(Some(&r)), None);
        }
    }
}
