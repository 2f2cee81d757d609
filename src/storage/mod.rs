//! Object storage: the small [`Storage`] trait every repository sits on, and
//! one backend per file (`local.rs`, `s3.rs`). Cross-cutting behaviour
//! (the end-to-end deadline) wraps a backend instead of living inside it
//! (`deadline.rs`).
//!
//! Keys are relative to the repository root, use `/` as separator, and never
//! contain `..`, empty segments or a leading `/` (see [`validate_key`]).
//! An object is either absent or complete under its final key: a writer that is
//! dropped or aborted leaves nothing visible.

pub mod deadline;
pub mod local;
pub mod location; // RepoSpec
pub mod s3;

use std::fmt;
use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, ErrorKind, Result};
pub use location::RepoSpec;

/// What is known of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the repository root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, when the store reports it.
    pub modified: Option<DateTime<Utc>>,
}

/// Options for a put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// User metadata stored with the object where the backend supports it
    /// (S3 `x-amz-meta-*`). Names are lower-case ASCII; values must not be secret.
    pub metadata: Vec<(String, String)>,
}

/// What [`Storage::put_if_absent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutIfAbsent {
    /// The object did not exist and now holds the data.
    Created,
    /// An object already existed under the key; nothing was written.
    Exists,
    /// The store cannot create conditionally (it refused the condition).
    /// A store that silently *ignores* the condition answers `Created`
    /// twice; `repo::claim` probes for that.
    Unsupported,
}

/// A streaming reader over an object's bytes.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// Which backend a storage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// Local filesystem.
    Local,
    /// S3 or an S3-compatible store.
    S3,
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageKind::Local => "local",
            StorageKind::S3 => "s3",
        })
    }
}

/// A streaming upload. Write bytes in order, then [`ObjectWriter::finish`].
/// Dropping the writer without finishing it, or calling
/// [`ObjectWriter::abort`], leaves no object under the key.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Append bytes. May wait (backpressure) while earlier parts upload.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Make the object durable and visible under its key.
    async fn finish(self: Box<Self>) -> Result<ObjectMeta>;
    /// Discard everything written; nothing becomes visible.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// The storage interface of a repository.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> StorageKind;

    /// Where the repository lives, for messages (`/var/backups/pgkeep`,
    /// `s3://bucket/prefix`). Never contains credentials.
    fn location(&self) -> String;

    /// Start a streaming upload to `key`.
    async fn writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>>;

    /// Open `key` for streaming reads, optionally only a byte range.
    async fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<ObjectReader>;

    /// Metadata of `key`, or `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Every object whose key starts with `prefix`, sorted by key. Pagination
    /// is handled inside the backend.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Delete `key`. Deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Remove leftovers of interrupted uploads under `prefix` that are older
    /// than `older_than` (temp files, incomplete multipart uploads). Returns
    /// how many were removed.
    async fn clean_incomplete(&self, prefix: &str, older_than: std::time::Duration) -> Result<usize>;

    /// Check that the repository location exists and is writable, with a
    /// clear error naming the directory or bucket when it is not.
    async fn check_writable(&self) -> Result<()>;

    /// Create `key` with `data` only if no object exists under it, atomically
    /// (local: create-exclusive; S3: `If-None-Match: *`). The default says
    /// [`PutIfAbsent::Unsupported`].
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutIfAbsent> {
        let _ = (key, data);
        Ok(PutIfAbsent::Unsupported)
    }

    /// Put a whole object from memory.
    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        let mut w = self.writer(key, opts).await?;
        if let Err(e) = w.write(data).await {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish().await
    }

    /// Read a whole object (or range) into memory.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let mut r = self.reader(key, range).await?;
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).await.map_err(|e| read_error(self.location(), key, e))?;
        Ok(Bytes::from(buf))
    }
}

/// Turn an I/O error met while reading an object into a storage error.
pub fn read_error(location: String, key: &str, e: std::io::Error) -> Error {
    // Backends wrap their own errors in io::Error for AsyncRead; recover them.
    if e.get_ref().map(|i| i.is::<Error>()).unwrap_or(false) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<Error>().expect("checked above");
    }
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::AccessDenied,
        std::io::ErrorKind::UnexpectedEof => ErrorKind::Corrupt,
        _ => ErrorKind::StorageTransient,
    };
    Error::new(kind, format!("cannot read object {key} in {location}")).with_source(e)
}

/// Reject keys that could escape the repository or are not portable.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.ends_with('/')
        || key.contains('\\')
        || key.contains('\0')
        || key.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        return Err(Error::internal(format!("invalid object key {key:?}")));
    }
    Ok(())
}

/// Open the storage for a repository location.
///
/// S3 requests are retried by the SDK only (`s3.max_attempts`, with
/// backoff), within `s3.request_timeout` per small request; transfers fail
/// after `s3.timeout` without progress (see `s3/mod.rs`). The deadline
/// wrapper bounds each small operation end to end on top, without retrying:
/// one layer owns attempts. Local operations are neither retried nor bounded:
/// local errors are not transient.
pub async fn open(spec: &RepoSpec) -> Result<std::sync::Arc<dyn Storage>> {
    use std::sync::Arc;
    match spec {
        RepoSpec::Local(path) => Ok(Arc::new(local::LocalStorage::new(path.clone()))),
        RepoSpec::S3(settings) => {
            let s3 = s3::S3Storage::connect(settings.clone()).await?;
            // A little past the SDK's own deadline, so its error (naming the operation) wins.
            let backstop = settings.request_timeout + std::time::Duration::from_secs(2);
            let endpoint = s3.endpoint_host().to_string();
            Ok(Arc::new(deadline::DeadlineStorage::new(Arc::new(s3), backstop, endpoint)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("backups/full_backup_20260101_000000/manifest.json").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "a/./b", "dir/", "a\\b", ".."] {
            assert!(validate_key(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
