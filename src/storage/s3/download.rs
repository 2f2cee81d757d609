//! Resuming downloads from S3.
//!
//! [`open`] issues one GetObject (ranged when asked) and returns an
//! `AsyncRead` over its body. When the body errors, stalls for half the
//! stall timeout, or ends before the expected length, the reader issues a
//! new ranged GET from the current offset, pinned to the first answer's ETag
//! with `If-Match`, so bytes from two versions of an object are never mixed.
//! Resumes are bounded twice: at most `max_attempts` interruptions in a row,
//! and never more than `stall_timeout` since the last byte arrived, so a
//! stalled store fails the read within that bound. Errors come out
//! as `io::Error::other(pgkeep Error)` so [`crate::storage::read_error`]
//! recovers them.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::Stream;

use super::S3Inner;
use super::errors::{self, Class, Target};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::ObjectReader;

/// Open `key` (relative) for reading, optionally only `range`.
pub(super) async fn open(store: Arc<S3Inner>, key: &str, range: Option<Range<u64>>) -> Result<ObjectReader> {
    if let Some(r) = &range
        && r.start >= r.end
    {
        return Ok(Box::pin(tokio::io::empty()));
    }
    let start = range.as_ref().map(|r| r.start).unwrap_or(0);
    let mut download = Download {
        object_key: store.object_key(key),
        store,
        key: key.to_string(),
        etag: None,
        offset: start,
        end: range.as_ref().map(|r| r.end).unwrap_or(u64::MAX),
        body: None,
        failures: 0,
        last_progress: Instant::now(),
        length_known: true,
        finished: false,
    };
    let first = match download.get(range.is_some()).await {
        Ok(out) => out,
        // A range starting at or past the end reads as empty, as a file would.
        Err((_, Class::BadRange)) => return Ok(Box::pin(tokio::io::empty())),
        Err((e, _)) => return Err(e),
    };
    download.accept(first)?;
    let stream = futures::stream::unfold(download, |mut d| async move {
        let item = d.next_chunk().await?;
        Some((item, d))
    });
    let stream: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> = Box::pin(stream);
    Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
}

/// The state of one download.
struct Download {
    store: Arc<S3Inner>,
    key: String,
    object_key: String,
    /// ETag of the first answer; later requests must match it.
    etag: Option<String>,
    /// Absolute offset of the next byte to hand out.
    offset: u64,
    /// Absolute end (exclusive) of what is to be read.
    end: u64,
    body: Option<ByteStream>,
    /// Consecutive interruptions without progress.
    failures: u32,
    /// When the last byte arrived (or the download started).
    last_progress: Instant,
    /// Whether the store told the length; if not, the first body's end is the end.
    length_known: bool,
    /// Set after the end or a final error.
    finished: bool,
}

/// A failed GET: the error, and its class when the store answered.
type GetError = (Error, Class);

impl Download {
    /// GET from the current offset. `ranged` asks for a `Range` header even
    /// at offset 0 (the caller asked for a range).
    async fn get(&self, ranged: bool) -> std::result::Result<GetObjectOutput, GetError> {
        let mut req = self.store.client.get_object().bucket(&self.store.bucket).key(&self.object_key);
        if ranged || self.offset > 0 {
            let range = if self.end == u64::MAX { format!("bytes={}-", self.offset) } else { format!("bytes={}-{}", self.offset, self.end - 1) };
            req = req.range(range);
        }
        if let Some(etag) = &self.etag {
            req = req.if_match(etag);
        }
        req.send().await.map_err(|e| {
            let target = Target::Object(&self.key);
            let class = errors::class_of(&e, target);
            (self.store.error(e, "read", target), class)
        })
    }

    /// Take the body of an answer, learning the length and ETag from the
    /// first. A later answer with another ETag means the object changed (for
    /// stores that ignore `If-Match`); an answer that does not start at the
    /// offset asked for (a store ignoring `Range`) is refused.
    fn accept(&mut self, out: GetObjectOutput) -> Result<()> {
        match (&self.etag, &out.e_tag) {
            (None, _) => self.etag = out.e_tag.clone(),
            (Some(first), Some(now)) if first != now => {
                return Err(errors::build(Class::Changed, &self.store.place, "read", Target::Object(&self.key)));
            }
            _ => {}
        }
        let range = out.content_range.as_deref().and_then(parse_content_range);
        if self.offset > 0 && range.as_ref().map(|r| r.start) != Some(self.offset) {
            return Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "S3 answered a read of object {} in {} from byte {} with other bytes (Content-Range {:?})",
                    self.key,
                    self.store.location(),
                    self.offset,
                    out.content_range.as_deref().unwrap_or("missing")
                ),
            ));
        }
        // The store may return less than asked when the range runs past the end.
        match (out.content_length, range) {
            (Some(len), _) => self.end = self.end.min(self.offset + len.max(0) as u64),
            (None, Some(r)) => self.end = self.end.min(r.end),
            // Length unknown: the object ends where the body does.
            (None, None) => self.length_known = false,
        }
        self.body = Some(out.body);
        Ok(())
    }

    /// The next chunk of the object, resuming as needed; `None` at the end.
    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.finished {
            return None;
        }
        let stall = self.store.settings.stall_timeout;
        loop {
            if self.offset >= self.end {
                self.finished = true;
                return None;
            }
            let Some(remaining) = stall.checked_sub(self.last_progress.elapsed()).filter(|r| !r.is_zero()) else {
                let e = errors::stalled(&self.store.place, "read", Target::Object(&self.key), self.last_progress.elapsed());
                return Some(Err(self.fail(e.context(format!("at byte {}", self.offset)))));
            };
            let Some(body) = self.body.as_mut() else {
                let resumed = match tokio::time::timeout(remaining, self.get(false)).await {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                match resumed {
                    Ok(out) => {
                        if let Err(e) = self.accept(out) {
                            return Some(Err(self.fail(e)));
                        }
                        continue;
                    }
                    Err((e, _)) if e.is_retryable() => {
                        if let Err(e) = self.interrupted(e.user_line()).await {
                            return Some(Err(self.fail(e)));
                        }
                        continue;
                    }
                    Err((e, _)) => return Some(Err(self.fail(e))),
                }
            };
            // Give up on a silent body at half the bound, so one resume fits in the rest.
            let idle = (stall / 2).min(remaining).max(Duration::from_millis(1));
            let why = match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    let take = (chunk.len() as u64).min(self.end - self.offset) as usize;
                    self.offset += take as u64;
                    self.failures = 0;
                    self.last_progress = Instant::now();
                    return Some(Ok(chunk.slice(..take)));
                }
                Ok(Some(Err(e))) => format!("body error: {e}"),
                Ok(None) if !self.length_known => {
                    self.finished = true;
                    return None;
                }
                Ok(None) => format!("body ended early at byte {}", self.offset),
                Err(_) => format!("no data for {idle:?}"),
            };
            self.body = None;
            if let Err(e) = self.interrupted(why).await {
                return Some(Err(self.fail(e)));
            }
        }
    }

    /// Count an interruption and wait before resuming; an error once the
    /// attempts are used up.
    async fn interrupted(&mut self, why: String) -> Result<()> {
        self.failures += 1;
        let limit = self.store.settings.max_attempts.max(1);
        if self.failures >= limit {
            return Err(Error::new(
                ErrorKind::StorageTransient,
                format!(
                    "reading object {} from {} failed {} times at byte {}: {why} (endpoint {})",
                    self.key,
                    self.store.location(),
                    self.failures,
                    self.offset,
                    self.store.place.endpoint_host
                ),
            ));
        }
        let delay = resume_delay(self.failures);
        tracing::debug!(key = %self.object_key, offset = self.offset, attempt = self.failures, reason = %why, "resuming S3 read");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn fail(&mut self, e: Error) -> std::io::Error {
        self.finished = true;
        self.body = None;
        std::io::Error::other(e)
    }
}

/// The byte range of a `Content-Range: bytes a-b/total` header, as `a..b+1`.
pub(super) fn parse_content_range(header: &str) -> Option<Range<u64>> {
    let spec = header.trim().strip_prefix("bytes")?.trim_start();
    let (range, _total) = spec.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    (first <= last).then(|| first..last + 1)
}

/// Backoff before resume attempt `n` (1-based): 100 ms doubling, at most 5 s.
pub(super) fn resume_delay(n: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << n.saturating_sub(1).min(6))).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_parsed_strictly() {
        assert_eq!(parse_content_range("bytes 1000-3999/4000"), Some(1000..4000));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some(0..1));
        assert_eq!(parse_content_range("bytes */4000"), None);
        assert_eq!(parse_content_range("bytes 9-3/10"), None);
        assert_eq!(parse_content_range("items 0-3/10"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn resume_backoff_grows_and_is_capped() {
        assert_eq!(resume_delay(1), Duration::from_millis(100));
        assert_eq!(resume_delay(2), Duration::from_millis(200));
        assert_eq!(resume_delay(4), Duration::from_millis(800));
        assert_eq!(resume_delay(30), Duration::from_secs(5));
    }
}
