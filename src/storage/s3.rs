//! S3 backend (AWS S3 and S3-compatible stores such as Garage, MinIO, R2).
//!
//! TODO(helper): implement. See `S3Settings` for the knobs.

use crate::config::Secret;

/// Everything needed to reach a bucket. Built by `config` from flags, env and file.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// Custom endpoint URL (`S3_ENDPOINT`), for S3-compatible stores.
    pub endpoint: Option<String>,
    /// Region (`S3_REGION` / `AWS_REGION`); `us-east-1` when unset and an endpoint is given.
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
    /// Timeout of one request attempt (stalls are cut off and retried).
    pub attempt_timeout: std::time::Duration,
    /// Connect timeout.
    pub connect_timeout: std::time::Duration,
}

/// A bucket (and prefix) on S3 or an S3-compatible store.
#[derive(Debug)]
pub struct S3Storage {}

impl S3Storage {
    /// Build a client for `settings`. Does not contact the store.
    pub async fn connect(settings: S3Settings) -> crate::error::Result<Self> {
        let _ = settings;
        todo!()
    }
}
