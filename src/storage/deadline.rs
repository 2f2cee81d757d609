//! Deadline wrapper: an end-to-end bound on the small operations of another
//! storage (head, delete, opening a read, small puts, the writability probe),
//! whatever the backend does inside (the S3 SDK's attempts and backoff).
//!
//! It does not retry: the backend owns attempts (for S3, the SDK, within its
//! own request deadline). This wrapper is the outermost backstop, set a
//! little past the backend's deadline so the backend's own, more precise
//! error normally wins; when it does not, the operation still ends with a
//! one-line error naming the key, the repository and the endpoint.
//! Listings and transfers pass through: they are bounded per request and by
//! progress inside the backend, never by total length.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, ObjectReader, ObjectWriter, PutIfAbsent, PutOptions, Storage, StorageKind};
use crate::error::{Error, ErrorKind, Result};

/// Puts up to this size are small operations; larger ones are transfers.
const SMALL_PUT: usize = 1 << 20;

/// A storage whose small operations end within a deadline.
#[derive(Debug, Clone)]
pub struct DeadlineStorage {
    inner: Arc<dyn Storage>,
    deadline: Duration,
    /// Where requests go, for messages (`endpoint 127.0.0.1:3900`).
    endpoint: String,
}

impl DeadlineStorage {
    /// Bound the small operations of `inner` by `deadline`; `endpoint` names
    /// where its requests go, in errors.
    pub fn new(inner: Arc<dyn Storage>, deadline: Duration, endpoint: impl Into<String>) -> Self {
        DeadlineStorage { inner, deadline, endpoint: endpoint.into() }
    }

    async fn bounded<T>(&self, what: &str, key: &str, op: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.deadline, op).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::StorageTransient,
                format!("{what} {key} in {} did not finish within {}s (endpoint {})", self.inner.location(), self.deadline.as_secs(), self.endpoint),
            )),
        }
    }
}

#[async_trait]
impl Storage for DeadlineStorage {
    fn kind(&self) -> StorageKind {
        self.inner.kind()
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    async fn writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        self.bounded("starting an upload of", key, self.inner.writer(key, opts)).await
    }

    async fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<ObjectReader> {
        self.bounded("opening", key, self.inner.reader(key, range)).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.bounded("looking up", key, self.inner.head(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.bounded("deleting", key, self.inner.delete(key)).await
    }

    async fn clean_incomplete(&self, prefix: &str, older_than: Duration) -> Result<usize> {
        self.inner.clean_incomplete(prefix, older_than).await
    }

    async fn check_writable(&self) -> Result<()> {
        // A bucket check, a probe put and its delete: three small requests.
        let probe = self.deadline.saturating_mul(3);
        match tokio::time::timeout(probe, self.inner.check_writable()).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::StorageTransient,
                format!("repository {} did not answer within {}s (endpoint {})", self.inner.location(), probe.as_secs(), self.endpoint),
            )),
        }
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        if data.len() > SMALL_PUT {
            return self.inner.put(key, data, opts).await;
        }
        self.bounded("writing", key, self.inner.put(key, data, opts)).await
    }

    /// A backup-id claim: small, so bounded like a put. A lost answer may
    /// find our own object later and say `Exists`, which costs an id, never
    /// safety.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutIfAbsent> {
        self.bounded("claiming", key, self.inner.put_if_absent(key, data)).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        self.inner.get(key, range).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStorage;

    /// A storage whose small operations never answer.
    #[derive(Debug)]
    struct Silent(LocalStorage);

    #[async_trait]
    impl Storage for Silent {
        fn kind(&self) -> StorageKind {
            StorageKind::S3
        }
        fn location(&self) -> String {
            "s3://silent".into()
        }
        async fn writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
            self.0.writer(key, opts).await
        }
        async fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<ObjectReader> {
            self.0.reader(key, range).await
        }
        async fn head(&self, _key: &str) -> Result<Option<ObjectMeta>> {
            std::future::pending().await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
            self.0.list(prefix).await
        }
        async fn delete(&self, _key: &str) -> Result<()> {
            std::future::pending().await
        }
        async fn clean_incomplete(&self, prefix: &str, older_than: Duration) -> Result<usize> {
            self.0.clean_incomplete(prefix, older_than).await
        }
        async fn check_writable(&self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn small_operations_end_at_the_deadline_naming_key_and_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let s = DeadlineStorage::new(Arc::new(Silent(LocalStorage::new(dir.path()))), Duration::from_millis(200), "127.0.0.1:9");
        let started = std::time::Instant::now();
        let e = s.head("locks/a.json").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(e.kind(), ErrorKind::StorageTransient);
        assert!(e.message().contains("locks/a.json") && e.message().contains("s3://silent") && e.message().contains("127.0.0.1:9"), "{e:?}");
        assert!(s.delete("k").await.is_err());
        // Other operations pass through.
        s.put("k", Bytes::from_static(b"x"), PutOptions::default()).await.unwrap();
        assert_eq!(s.list("").await.unwrap().len(), 1);
    }
}
