//! Mapping of S3 SDK failures to pgkeep [`Error`]s.
//!
//! Every error is one line naming the bucket (and key when there is one) and
//! the endpoint host, never credentials or an endpoint URL with userinfo. The
//! [`ErrorKind`] says whether a retry can help: unreachable endpoints, 5xx,
//! throttling and timeouts are [`ErrorKind::StorageTransient`].
//!
//! Classification is split in two: [`classify`] is pure (error code, HTTP
//! status, what was addressed) and unit-tested; [`sdk_error`] pulls those
//! facts out of an SDK error and builds the message.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::error::{Error, ErrorKind};

/// Where a request went, for messages.
#[derive(Debug, Clone)]
pub(super) struct Place {
    /// Bucket name.
    pub bucket: String,
    /// `s3://bucket/prefix`.
    pub location: String,
    /// `host[:port]` of the endpoint, without scheme or userinfo.
    pub endpoint_host: String,
}

/// What a failed request addressed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target<'a> {
    /// The bucket itself (HeadBucket, listings).
    Bucket,
    /// One object, by key relative to the repository root.
    Object(&'a str),
}

/// The class of an S3 failure, which decides kind and wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// The bucket does not exist.
    NoBucket,
    /// The object does not exist.
    NoKey,
    /// Credentials refused or missing permissions.
    Denied,
    /// No credentials could be found or loaded.
    NoCredentials { transient: bool },
    /// The endpoint could not be reached (DNS, refused, reset).
    Unreachable,
    /// A request or connection attempt timed out.
    TimedOut,
    /// 5xx, throttling, or a garbled response: a retry may help.
    Transient,
    /// A conditional request failed: the object changed.
    Changed,
    /// The requested range starts at or beyond the end of the object.
    BadRange,
    /// The bucket lives in another region than the one configured.
    WrongRegion,
    /// Anything else.
    Other,
}

/// Classify a service answer from its error code and HTTP status.
pub(super) fn classify(code: Option<&str>, status: Option<u16>, target_is_bucket: bool) -> Class {
    match code {
        Some("NoSuchBucket") => return Class::NoBucket,
        Some("NoSuchKey") => return Class::NoKey,
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AccountProblem"
            | "AllAccessDisabled"
            | "InvalidToken"
            | "ExpiredToken"
            | "Forbidden",
        ) => return Class::Denied,
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequests"
            | "RequestTimeout"
            | "InternalError"
            | "ServiceUnavailable",
        ) => return Class::Transient,
        Some("PreconditionFailed") => return Class::Changed,
        Some("InvalidRange") => return Class::BadRange,
        Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException") => {
            return Class::WrongRegion;
        }
        _ => {}
    }
    match status {
        Some(404) if target_is_bucket => Class::NoBucket,
        Some(404) => Class::NoKey,
        Some(401 | 403) => Class::Denied,
        Some(412) => Class::Changed,
        Some(301) => Class::WrongRegion,
        Some(416) => Class::BadRange,
        Some(408 | 429) => Class::Transient,
        Some(s) if s >= 500 => Class::Transient,
        _ => Class::Other,
    }
}

/// The class of an SDK error from a request that addressed `target`.
pub(super) fn class_of<E>(err: &SdkError<E, HttpResponse>, target: Target<'_>) -> Class
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::TimeoutError(_) => Class::TimedOut,
        SdkError::ResponseError(_) => Class::Transient,
        SdkError::DispatchFailure(d) => match credentials_error(err) {
            Some(transient) => Class::NoCredentials { transient },
            None if d.is_timeout() => Class::TimedOut,
            None if d.is_user() => Class::Other,
            None => Class::Unreachable,
        },
        SdkError::ConstructionFailure(_) => match credentials_error(err) {
            Some(transient) => Class::NoCredentials { transient },
            None => Class::Other,
        },
        _ => classify(err.code(), err.raw_response().map(|r| r.status().as_u16()), matches!(target, Target::Bucket)),
    }
}

/// Turn an SDK error from operation `op` (a verb such as "read" or "upload
/// part 3 of") into a pgkeep error.
pub(super) fn sdk_error<E>(err: SdkError<E, HttpResponse>, place: &Place, op: &str, target: Target<'_>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let class = class_of(&err, target);
    build(class, place, op, target).with_source(S3Cause(cause_text(&err)))
}

/// The cause of an SDK error in a few words: `HTTP 403 AccessDenied:
/// Forbidden` for an answer from the store, the innermost error otherwise
/// (`Connection refused (os error 111)`).
fn cause_text<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(status) = err.raw_response().map(|r| r.status().as_u16()) {
        let mut text = format!("HTTP {status}");
        if let Some(code) = err.code() {
            text.push(' ');
            text.push_str(code);
        }
        if let Some(message) = err.message().filter(|m| !m.trim().is_empty()) {
            text.push_str(": ");
            text.push_str(message.trim());
        }
        return text;
    }
    crate::error::root_cause_text(err)
}

/// The readable cause attached to S3 errors. It ends the source chain, so
/// the one-line message shows it instead of the SDK's internal wrappers.
#[derive(Debug)]
struct S3Cause(String);

impl std::fmt::Display for S3Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for S3Cause {}

/// Whether the error chain holds a credentials failure, and if so whether it
/// may be transient (provider timeout or error rather than no credentials).
fn credentials_error(err: &(dyn std::error::Error + 'static)) -> Option<bool> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(matches!(c, CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_)));
        }
        cur = e.source();
    }
    None
}

/// The pgkeep error for a classified failure.
pub(super) fn build(class: Class, place: &Place, op: &str, target: Target<'_>) -> Error {
    let Place { bucket, location, endpoint_host } = place;
    let what = match target {
        Target::Bucket => format!("bucket `{bucket}`"),
        Target::Object(key) => format!("object {key} in {location}"),
    };
    match class {
        Class::NoBucket => Error::new(ErrorKind::NotFound, format!("S3 bucket `{bucket}` does not exist (endpoint {endpoint_host})"))
            .with_hint("create the bucket, or fix S3_BUCKET / --repo"),
        Class::NoKey => match target {
            Target::Object(key) => Error::new(ErrorKind::NotFound, format!("object {key} not found in {location}")),
            Target::Bucket => Error::new(ErrorKind::NotFound, format!("{location} not found (endpoint {endpoint_host})")),
        },
        Class::Denied => Error::new(ErrorKind::AccessDenied, format!("access denied to {op} {what} (endpoint {endpoint_host})")).with_hint(format!(
            "check the S3 credentials (s3.access_key_id and s3.secret_access_key, or the AWS \
             credential chain) and that they may read and write bucket `{bucket}`"
        )),
        Class::NoCredentials { transient } => {
            Error::new(if transient { ErrorKind::StorageTransient } else { ErrorKind::Config }, format!("cannot load S3 credentials to {op} {what}")).with_hint(
                "set s3.access_key_id and s3.secret_access_key, or AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, or an AWS profile or instance role",
            )
        }
        Class::Unreachable => Error::new(ErrorKind::StorageTransient, format!("cannot reach S3 endpoint {endpoint_host} to {op} {what}"))
            .with_hint("check S3_ENDPOINT / s3.endpoint and the network"),
        Class::TimedOut => Error::new(ErrorKind::StorageTransient, format!("S3 request to {op} {what} timed out (endpoint {endpoint_host})")),
        Class::Transient => Error::new(ErrorKind::StorageTransient, format!("S3 failed to {op} {what} with a temporary error")),
        Class::Changed => Error::new(ErrorKind::Storage, format!("{what} changed while it was being read")),
        Class::BadRange => Error::new(ErrorKind::Storage, format!("S3 rejected the byte range asked to {op} {what}")),
        Class::WrongRegion => Error::new(ErrorKind::Config, format!("S3 bucket `{bucket}` is not in the configured region (endpoint {endpoint_host})"))
            .with_hint("set S3_REGION / s3.region to the bucket's region"),
        Class::Other => Error::new(ErrorKind::Storage, format!("S3 failed to {op} {what}")),
    }
}

/// A transfer that made no progress for `idle` (see `progress.rs`).
pub(super) fn stalled(place: &Place, op: &str, target: Target<'_>, idle: std::time::Duration) -> Error {
    let what = match target {
        Target::Bucket => format!("bucket `{}`", place.bucket),
        Target::Object(key) => format!("object {key} in {}", place.location),
    };
    Error::new(ErrorKind::StorageTransient, format!("S3 stalled: {op} {what} made no progress for {}s (endpoint {})", idle.as_secs(), place.endpoint_host))
        .with_hint("the store stopped answering; if it is only slow, raise s3.timeout (PGKEEP_S3_TIMEOUT)")
}

/// `host[:port]` of an endpoint URL, for messages; `None` if it is not a URL.
pub(super) fn endpoint_host(endpoint: &str) -> Option<String> {
    let url = url::Url::parse(endpoint).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place() -> Place {
        Place { bucket: "bk".into(), location: "s3://bk/pre".into(), endpoint_host: "s3.example.net:3900".into() }
    }

    #[test]
    fn codes_win_over_status() {
        assert_eq!(classify(Some("NoSuchBucket"), Some(404), false), Class::NoBucket);
        assert_eq!(classify(Some("NoSuchKey"), Some(404), false), Class::NoKey);
        assert_eq!(classify(Some("SignatureDoesNotMatch"), Some(403), false), Class::Denied);
        assert_eq!(classify(Some("InvalidAccessKeyId"), Some(403), true), Class::Denied);
        assert_eq!(classify(Some("SlowDown"), Some(503), false), Class::Transient);
        assert_eq!(classify(Some("PreconditionFailed"), Some(412), false), Class::Changed);
        assert_eq!(classify(Some("InvalidRange"), Some(416), false), Class::BadRange);
        assert_eq!(classify(Some("InvalidArgument"), Some(400), false), Class::Other);
    }

    #[test]
    fn bare_statuses_depend_on_target() {
        // HEAD answers carry no body, so no code: the status decides.
        assert_eq!(classify(None, Some(404), true), Class::NoBucket);
        assert_eq!(classify(None, Some(404), false), Class::NoKey);
        assert_eq!(classify(None, Some(403), false), Class::Denied);
        assert_eq!(classify(None, Some(500), false), Class::Transient);
        assert_eq!(classify(None, Some(503), true), Class::Transient);
        assert_eq!(classify(None, Some(429), false), Class::Transient);
        assert_eq!(classify(None, Some(301), true), Class::WrongRegion);
        assert_eq!(classify(Some("PermanentRedirect"), Some(301), false), Class::WrongRegion);
        assert_eq!(classify(None, Some(400), false), Class::Other);
        assert_eq!(classify(None, None, false), Class::Other);
    }

    #[test]
    fn messages_name_bucket_key_and_host() {
        let e = build(Class::NoBucket, &place(), "read", Target::Object("a/b"));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.message().contains("`bk`") && e.message().contains("s3.example.net:3900"));

        let e = build(Class::NoKey, &place(), "read", Target::Object("a/b"));
        assert_eq!(e.message(), "object a/b not found in s3://bk/pre");

        let e = build(Class::Denied, &place(), "write", Target::Object("a/b"));
        assert_eq!(e.kind(), ErrorKind::AccessDenied);
        assert_eq!(e.message(), "access denied to write object a/b in s3://bk/pre (endpoint s3.example.net:3900)");
        assert!(e.hint().unwrap().contains("credentials"));

        let e = build(Class::Unreachable, &place(), "use", Target::Bucket);
        assert_eq!(e.kind(), ErrorKind::StorageTransient);
        assert!(e.message().starts_with("cannot reach S3 endpoint s3.example.net:3900"));

        for class in [Class::TimedOut, Class::Transient] {
            assert!(build(class, &place(), "read", Target::Bucket).is_retryable());
        }
        assert!(!build(Class::Other, &place(), "read", Target::Bucket).is_retryable());
        assert_eq!(build(Class::NoCredentials { transient: false }, &place(), "read", Target::Bucket).kind(), ErrorKind::Config);
    }

    #[test]
    fn a_stall_names_object_and_endpoint() {
        let e = stalled(&place(), "upload part 3 of", Target::Object("a/b"), std::time::Duration::from_secs(60));
        assert_eq!(e.kind(), ErrorKind::StorageTransient);
        assert_eq!(e.message(), "S3 stalled: upload part 3 of object a/b in s3://bk/pre made no progress for 60s (endpoint s3.example.net:3900)");
    }

    #[test]
    fn endpoint_host_drops_scheme_and_userinfo() {
        assert_eq!(endpoint_host("http://127.0.0.1:3900").as_deref(), Some("127.0.0.1:3900"));
        assert_eq!(endpoint_host("https://user:pw@minio.example.com/").as_deref(), Some("minio.example.com"));
        assert_eq!(endpoint_host("not a url"), None);
    }
}
