//! S3 backend (AWS S3 and S3-compatible stores such as Garage, MinIO, R2).
//!
//! [`S3Storage`] maps repository keys to `prefix/key` in one bucket. This
//! file owns the client setup and the simple operations (head, list, delete,
//! cleanup, the writability probe); streaming uploads live in `upload.rs`,
//! resuming downloads in `download.rs`, and the mapping of SDK failures to
//! pgkeep errors in `errors.rs`.
//!
//! Deadlines (README "Reliability"): the SDK is the one layer that retries
//! (standard mode, `max_attempts`). Two clients share the configuration:
//! - `client`, for small requests (head, list pages, delete, lock records,
//!   starting and aborting uploads, opening a download): the whole request,
//!   every attempt and backoff included, must finish within
//!   `request_timeout`; each attempt gets a third of it, so a stalled
//!   connection is retried inside the deadline.
//! - `bulk`, for transfers (part uploads, puts over [`SMALL_BODY`], completing
//!   a multipart upload): no SDK timeout at all; `progress.rs` fails the
//!   request once nothing moved for `stall_timeout`, however long a healthy
//!   transfer takes. Downloads apply the same bound to the body (`download.rs`).
//!
//! The SDK's stalled-stream protection is off in both: stalls are detected in
//! one place, with one bound.

mod download;
mod errors;
mod progress;
pub mod protection;
mod upload;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime as AwsDateTime};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use self::errors::{Place, Target};
use super::{ObjectMeta, ObjectReader, ObjectWriter, PutIfAbsent, PutOptions, Storage, StorageKind, validate_key};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
pub use protection::{LockMode, ObjectLock, S3Security, Sse};

/// Smallest part size S3 accepts for all but the last part of a multipart upload.
pub const MIN_PART_SIZE: usize = 5 << 20;

/// Bodies up to this size are sent as small requests (with the request
/// deadline); larger ones as transfers (with the no-progress bound).
pub const SMALL_BODY: usize = 1 << 20;

/// Default of `s3.timeout`: how long a transfer may make no progress.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of `s3.request_timeout` (capped at `s3.timeout`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Region used when none is configured.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Everything needed to reach a bucket. Built by `config` from flags, env and file.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// Custom endpoint URL (`S3_ENDPOINT`), for S3-compatible stores.
    pub endpoint: Option<String>,
    /// Region (`S3_REGION` / `AWS_REGION`); `us-east-1` when unset.
    pub region: Option<String>,
    /// Path-style addressing (`S3_FORCE_PATH_STYLE`), needed by most S3-compatible stores.
    pub force_path_style: bool,
    /// Static credentials; when `None`, the standard AWS credential chain is used.
    pub access_key_id: Option<String>,
    /// Secret access key for static credentials.
    pub secret_access_key: Option<Secret>,
    /// Multipart part size in bytes (at least 5 MiB).
    pub part_size: usize,
    /// Parts uploaded in parallel per object; memory use is about `part_size * (upload_concurrency + 1)`.
    pub upload_concurrency: usize,
    /// Attempts per request, including the first (SDK retry with backoff).
    pub max_attempts: u32,
    /// Deadline of one small request (head, list page, delete, lock record,
    /// starting or aborting an upload), every attempt and backoff included.
    pub request_timeout: std::time::Duration,
    /// How long a transfer (part upload, large put, download body) may make
    /// no progress before it fails. A transfer that keeps moving is never cut.
    pub stall_timeout: std::time::Duration,
    /// Connect timeout.
    pub connect_timeout: std::time::Duration,
    /// Server-side encryption, object lock and the HTTPS rule.
    pub security: S3Security,
}

/// A bucket (and prefix) on S3 or an S3-compatible store.
#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<S3Inner>,
}

/// What uploads, downloads and listings share.
struct S3Inner {
    /// Small requests: the request deadline applies.
    client: Client,
    /// Transfers: no SDK timeout; watched for progress instead.
    bulk: Client,
    bucket: String,
    /// Key prefix without slashes at either end; may be empty.
    prefix: String,
    settings: S3Settings,
    place: Place,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage").field("location", &self.inner.location()).field("endpoint", &self.inner.place.endpoint_host).finish()
    }
}

impl S3Storage {
    /// Build a client for `settings`. Does not contact the store.
    pub async fn connect(settings: S3Settings) -> Result<Self> {
        check_settings(&settings)?;
        let endpoint_host = match &settings.endpoint {
            Some(ep) => errors::endpoint_host(ep).ok_or_else(|| {
                Error::config("the S3 endpoint is not a valid URL").with_hint("set S3_ENDPOINT / s3.endpoint to a URL such as https://s3.example.com")
            })?,
            None => format!("s3.{}.amazonaws.com", settings.region.as_deref().unwrap_or(DEFAULT_REGION)),
        };
        let region = Region::new(settings.region.clone().unwrap_or_else(|| DEFAULT_REGION.to_string()));
        let retries = RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1));
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region).retry_config(retries.clone());
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(id, secret.expose(), None, None, "pgkeep-config"));
        }
        let sdk_config = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(settings.force_path_style)
            // Non-AWS stores reject or mishandle the newer default checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(retries)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        if let Some(ep) = &settings.endpoint {
            conf = conf.endpoint_url(ep);
        }
        let bulk = conf
            .clone()
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .disable_read_timeout()
                    .disable_operation_timeout()
                    .disable_operation_attempt_timeout()
                    .build(),
            )
            .build();
        let conf = conf.timeout_config(request_timeouts(&settings));
        let prefix = settings.prefix.trim_matches('/').to_string();
        let location = if prefix.is_empty() { format!("s3://{}", settings.bucket) } else { format!("s3://{}/{prefix}", settings.bucket) };
        Ok(S3Storage {
            inner: Arc::new(S3Inner {
                client: Client::from_conf(conf.build()),
                bulk: Client::from_conf(bulk),
                bucket: settings.bucket.clone(),
                place: Place { bucket: settings.bucket.clone(), location, endpoint_host },
                prefix,
                settings,
            }),
        })
    }

    /// The settings this storage was built from.
    pub fn settings(&self) -> &S3Settings {
        &self.inner.settings
    }

    /// `host[:port]` of the endpoint, for messages (no scheme, no userinfo).
    pub fn endpoint_host(&self) -> &str {
        &self.inner.place.endpoint_host
    }
}

/// The SDK timeouts of small requests: the whole operation within
/// `request_timeout`, each attempt within a third of it (at least 1 s).
fn request_timeouts(s: &S3Settings) -> TimeoutConfig {
    let attempt = if s.max_attempts > 1 { (s.request_timeout / 3).max(Duration::from_secs(1)).min(s.request_timeout) } else { s.request_timeout };
    TimeoutConfig::builder()
        .connect_timeout(s.connect_timeout.min(attempt))
        .disable_read_timeout()
        .operation_timeout(s.request_timeout)
        .operation_attempt_timeout(attempt)
        .build()
}

/// Reject settings the store would refuse later, with a config error now.
fn check_settings(s: &S3Settings) -> Result<()> {
    if let Some(ep) = &s.endpoint {
        protection::check_endpoint(ep, s.security.allow_http)?;
    }
    if s.bucket.is_empty() || s.bucket.contains('/') {
        return Err(Error::config(format!("invalid S3 bucket name `{}`", s.bucket)));
    }
    if s.access_key_id.is_some() != s.secret_access_key.is_some() {
        return Err(
            Error::config("only one of s3.access_key_id and s3.secret_access_key is set").with_hint("set both, or neither to use the AWS credential chain")
        );
    }
    if s.part_size < MIN_PART_SIZE {
        return Err(Error::config(format!("S3 part size {} is below the 5 MiB minimum S3 accepts", s.part_size)));
    }
    if s.upload_concurrency == 0 {
        return Err(Error::config("S3 upload concurrency must be at least 1"));
    }
    Ok(())
}

impl S3Inner {
    /// The bucket key of a repository key.
    fn object_key(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) }
    }

    /// The repository key of a bucket key, if it lies under the prefix.
    fn relative<'a>(&self, object_key: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() { Some(object_key) } else { object_key.strip_prefix(&self.prefix)?.strip_prefix('/') }
    }

    fn location(&self) -> String {
        self.place.location.clone()
    }

    fn error<E>(&self, e: SdkError<E, HttpResponse>, op: &str, target: Target<'_>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        errors::sdk_error(e, &self.place, op, target)
    }

    /// Check that the bucket exists and the credentials may use it.
    async fn head_bucket(&self) -> Result<()> {
        self.client.head_bucket().bucket(&self.bucket).send().await.map(|_| ()).map_err(|e| self.error(e, "use", Target::Bucket))
    }
}

/// "list `p` in" for a prefix, plain "list" for the whole repository.
fn list_op(verb: &str, prefix: &str) -> String {
    if prefix.is_empty() { verb.to_string() } else { format!("{verb} under `{prefix}` in") }
}

fn to_utc(t: &AwsDateTime) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())
}

#[async_trait]
impl Storage for S3Storage {
    fn kind(&self) -> StorageKind {
        StorageKind::S3
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    async fn writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        validate_key(key)?;
        Ok(Box::new(upload::S3Writer::new(self.inner.clone(), key, opts.metadata)))
    }

    async fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<ObjectReader> {
        validate_key(key)?;
        download::open(self.inner.clone(), key, range).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        validate_key(key)?;
        let s = &self.inner;
        match s.client.head_object().bucket(&s.bucket).key(s.object_key(key)).send().await {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length.unwrap_or(0).max(0) as u64,
                modified: out.last_modified.as_ref().and_then(to_utc),
            })),
            Err(e) if errors::class_of(&e, Target::Object(key)) == errors::Class::NoKey => Ok(None),
            Err(e) => Err(s.error(e, "look up", Target::Object(key))),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let s = &self.inner;
        let full_prefix = if s.prefix.is_empty() { prefix.to_string() } else { format!("{}/{prefix}", s.prefix) };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = s
                .client
                .list_objects_v2()
                .bucket(&s.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s.error(e, &list_op("list", prefix), Target::Bucket))?;
            for obj in page.contents.unwrap_or_default() {
                let Some(key) = obj.key.as_deref().and_then(|k| s.relative(k)) else {
                    continue;
                };
                out.push(ObjectMeta { key: key.to_string(), size: obj.size.unwrap_or(0).max(0) as u64, modified: obj.last_modified.as_ref().and_then(to_utc) });
            }
            match (page.is_truncated.unwrap_or(false), page.next_continuation_token) {
                (true, Some(next)) => token = Some(next),
                (true, None) => {
                    return Err(Error::new(
                        ErrorKind::Storage,
                        format!("S3 listing of `{prefix}` in {} is truncated without a continuation token", s.location()),
                    ));
                }
                (false, _) => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let s = &self.inner;
        match s.client.delete_object().bucket(&s.bucket).key(s.object_key(key)).send().await {
            Ok(_) => Ok(()),
            Err(e) if errors::class_of(&e, Target::Object(key)) == errors::Class::NoKey => Ok(()),
            Err(e) => Err(s.error(e, "delete", Target::Object(key))),
        }
    }

    async fn clean_incomplete(&self, prefix: &str, older_than: Duration) -> Result<usize> {
        let s = &self.inner;
        let full_prefix = if s.prefix.is_empty() { prefix.to_string() } else { format!("{}/{prefix}", s.prefix) };
        let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let mut stale = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = s
                .client
                .list_multipart_uploads()
                .bucket(&s.bucket)
                .prefix(&full_prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| s.error(e, &list_op("list incomplete uploads", prefix), Target::Bucket))?;
            for up in page.uploads.unwrap_or_default() {
                let old = up.initiated.as_ref().and_then(to_utc).map(|t| t < cutoff).unwrap_or(true);
                if let (true, Some(key), Some(id)) = (old, up.key, up.upload_id) {
                    stale.push((key, id));
                }
            }
            if !page.is_truncated.unwrap_or(false) {
                break;
            }
            if page.next_key_marker.is_none() && page.next_upload_id_marker.is_none() {
                break;
            }
            key_marker = page.next_key_marker;
            id_marker = page.next_upload_id_marker;
        }
        let mut removed = 0;
        for (key, id) in stale {
            let res = s.client.abort_multipart_upload().bucket(&s.bucket).key(&key).upload_id(&id).send().await;
            match res {
                Ok(_) => removed += 1,
                Err(e) if e.code() == Some("NoSuchUpload") => {}
                Err(e) => {
                    let rel = s.relative(&key).unwrap_or(&key).to_string();
                    return Err(s.error(e, "abort an incomplete upload of", Target::Object(&rel)));
                }
            }
        }
        if removed > 0 {
            tracing::info!(location = %s.location(), prefix, removed, "aborted incomplete multipart uploads");
        }
        Ok(removed)
    }

    /// `PutObject` with `If-None-Match: *`: 412 (and AWS's 409 for a
    /// concurrent conditional write) mean the key is taken; 501 or a
    /// refused header mean the store cannot do it. A store that ignores the
    /// header answers 200 even when the object exists (see `repo::claim`).
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutIfAbsent> {
        validate_key(key)?;
        let s = &self.inner;
        let res = s
            .client
            .put_object()
            .bucket(&s.bucket)
            .key(s.object_key(key))
            .if_none_match("*")
            .set_server_side_encryption(s.settings.security.sse_header())
            .set_ssekms_key_id(s.settings.security.kms_key_id())
            .set_checksum_algorithm(s.settings.security.object_lock.is_some().then_some(aws_sdk_s3::types::ChecksumAlgorithm::Crc32))
            .content_length(data.len() as i64)
            .body(ByteStream::from(data))
            .send()
            .await;
        match res {
            Ok(_) => Ok(PutIfAbsent::Created),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                match (e.code(), status) {
                    (Some("PreconditionFailed" | "ConditionalRequestConflict"), _) | (_, Some(412 | 409)) => Ok(PutIfAbsent::Exists),
                    (Some("NotImplemented"), _) | (_, Some(501)) => Ok(PutIfAbsent::Unsupported),
                    _ => Err(s.error(e, "create", Target::Object(key))),
                }
            }
        }
    }

    async fn check_writable(&self) -> Result<()> {
        let s = &self.inner;
        s.head_bucket().await?;
        let probe = format!(".pgkeep-probe.{}.{:016x}", std::process::id(), rand::random::<u64>());
        let put = s.client.put_object().bucket(&s.bucket).key(s.object_key(&probe)).body(ByteStream::from(Bytes::from_static(b"pgkeep"))).send().await;
        if let Err(e) = put {
            return Err(s.error(e, "write", Target::Object(&probe)).context(format!("S3 repository {} is not writable", s.location())));
        }
        self.delete(&probe).await.map_err(|e| e.context(format!("S3 repository {} is not writable", s.location())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            bucket: "bk".into(),
            prefix: "pre/fix".into(),
            endpoint: Some("http://user:pw@127.0.0.1:3900".into()),
            region: None,
            force_path_style: true,
            access_key_id: Some("GK1".into()),
            secret_access_key: Some(Secret::new("hunter2")),
            part_size: MIN_PART_SIZE,
            upload_concurrency: 2,
            max_attempts: 3,
            request_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            security: S3Security::default(),
        }
    }

    #[tokio::test]
    async fn keys_map_under_the_prefix() {
        let s = S3Storage::connect(settings()).await.unwrap();
        assert_eq!(s.location(), "s3://bk/pre/fix");
        assert_eq!(s.inner.object_key("a/b"), "pre/fix/a/b");
        assert_eq!(s.inner.relative("pre/fix/a/b"), Some("a/b"));
        assert_eq!(s.inner.relative("pre/fixture/a"), None);
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("pw@"), "{debug}");

        let s = S3Storage::connect(S3Settings { prefix: String::new(), ..settings() }).await.unwrap();
        assert_eq!(s.location(), "s3://bk");
        assert_eq!(s.inner.object_key("a/b"), "a/b");
        assert_eq!(s.inner.relative("a/b"), Some("a/b"));
    }

    #[tokio::test]
    async fn bad_settings_are_config_errors() {
        let cases = [
            S3Settings { part_size: 1 << 20, ..settings() },
            S3Settings { upload_concurrency: 0, ..settings() },
            S3Settings { secret_access_key: None, ..settings() },
            S3Settings { endpoint: Some("no url".into()), ..settings() },
            S3Settings { bucket: "a/b".into(), ..settings() },
            S3Settings { endpoint: Some("http://s3.internal.example:9000".into()), ..settings() },
        ];
        for case in cases {
            let e = S3Storage::connect(case).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{e:?}");
            assert!(!e.user_line().contains("hunter2"));
        }
    }
}
