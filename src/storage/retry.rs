//! Retry wrapper: repeats idempotent storage operations that failed with a
//! retryable error ([`ErrorKind::StorageTransient`]), with exponential backoff
//! and jitter. Streaming writers are passed through: backends retry their own
//! parts (each S3 part is held in memory until it is acknowledged).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, ObjectReader, ObjectWriter, PutIfAbsent, PutOptions, Storage, StorageKind};
use crate::error::Result;

/// Backoff policy for [`RetryStorage`].
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Total attempts, including the first.
    pub attempts: u32,
    /// Delay before the first retry; doubled each time.
    pub base_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `n` (1-based), with up to 50% jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << n.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        let jitter: f64 = rand::random::<f64>() * 0.5;
        capped.mul_f64(1.0 - jitter / 2.0)
    }

    /// Run `op` until it succeeds, fails for good, or attempts run out.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.attempts => {
                    let delay = self.delay(attempt);
                    tracing::warn!(operation = what, attempt, error = %e.user_line(), ?delay, "retrying storage operation");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A storage that retries the operations of another.
#[derive(Debug, Clone)]
pub struct RetryStorage {
    inner: Arc<dyn Storage>,
    policy: RetryPolicy,
}

impl RetryStorage {
    /// Wrap `inner` with `policy`.
    pub fn new(inner: Arc<dyn Storage>, policy: RetryPolicy) -> Self {
        RetryStorage { inner, policy }
    }
}

#[async_trait]
impl Storage for RetryStorage {
    fn kind(&self) -> StorageKind {
        self.inner.kind()
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    async fn writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        self.policy
            .run("start upload", || self.inner.writer(key, opts.clone()))
            .await
    }

    async fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<ObjectReader> {
        self.policy
            .run("open", || self.inner.reader(key, range.clone()))
            .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.policy.run("head", || self.inner.head(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.policy.run("list", || self.inner.list(prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.policy.run("delete", || self.inner.delete(key)).await
    }

    async fn clean_incomplete(&self, prefix: &str, older_than: Duration) -> Result<usize> {
        self.policy
            .run("clean", || self.inner.clean_incomplete(prefix, older_than))
            .await
    }

    async fn check_writable(&self) -> Result<()> {
        self.policy.run("check", || self.inner.check_writable()).await
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        self.policy
            .run("put", || self.inner.put(key, data.clone(), opts.clone()))
            .await
    }

    /// Retried like a put: a retry after a lost answer may find our own
    /// object and say `Exists`, which costs the caller an id, never safety.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutIfAbsent> {
        self.policy
            .run("conditional put", || self.inner.put_if_absent(key, data.clone()))
            .await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        self.policy
            .run("get", || self.inner.get(key, range.clone()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retries_transient_then_succeeds_and_stops_on_permanent() {
        let policy = RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        };
        let calls = AtomicU32::new(0);
        let v = policy
            .run("t", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Error::new(ErrorKind::StorageTransient, "503"))
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(v, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let e = policy
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::new(ErrorKind::NotFound, "nope"))
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
