//! Streaming uploads to S3 ([`S3Writer`]).
//!
//! Written bytes are cut into parts of `part_size` ([`PartSplitter`]). An
//! object smaller than one part is sent with one PutObject on `finish`; a
//! larger one becomes a multipart upload whose parts upload in spawned tasks,
//! at most `upload_concurrency` at once. `write` waits for a free slot, so
//! memory stays near `part_size * (upload_concurrency + 1)` whatever the
//! object size. On any failure, on `abort`, and when the writer is dropped
//! unfinished, the multipart upload is aborted: nothing is ever visible under
//! the key unless `finish` succeeded.
//!
//! Every write carries the repository's server-side encryption and, for
//! backup objects, its object-lock retention (`protection.rs`).
//!
//! Parts, puts over [`SMALL_BODY`] and the completion are transfers: they
//! fail only after `stall_timeout` without progress (`progress.rs`); smaller
//! puts are small requests with the request deadline.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime as AwsDateTime};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode};
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::errors::{self, Target};
use super::progress::{Progress, ProgressInterceptor, watch};
use super::{S3Inner, SMALL_BODY};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{ObjectMeta, ObjectWriter};

/// How long a failed upload waits for its abort before returning the error.
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// S3 allows at most this many parts per multipart upload.
pub(super) const MAX_PARTS: u64 = 10_000;

/// The largest object a multipart upload with `part_size` parts can hold.
pub(super) fn max_object_size(part_size: usize) -> u64 {
    part_size as u64 * MAX_PARTS
}

/// Cuts a stream of writes into parts of exactly `part_size` bytes (the last
/// part of an object may be shorter). Input that already spans a whole part
/// is sliced without copying.
#[derive(Debug)]
pub(super) struct PartSplitter {
    part_size: usize,
    buf: BytesMut,
}

impl PartSplitter {
    pub(super) fn new(part_size: usize) -> Self {
        assert!(part_size > 0, "part size must be positive");
        PartSplitter { part_size, buf: BytesMut::new() }
    }

    /// The next complete part made of buffered bytes and the front of `data`,
    /// consuming what it uses from `data`. `None` once `data` is used up
    /// without completing a part (the rest stays buffered).
    pub(super) fn next_part(&mut self, data: &mut Bytes) -> Option<Bytes> {
        if self.buf.is_empty() && data.len() >= self.part_size {
            return Some(data.split_to(self.part_size));
        }
        let take = (self.part_size - self.buf.len()).min(data.len());
        if self.buf.capacity() == 0 && take > 0 {
            self.buf.reserve(self.part_size);
        }
        self.buf.extend_from_slice(&data.split_to(take));
        if self.buf.len() == self.part_size { Some(self.buf.split().freeze()) } else { None }
    }

    /// Bytes buffered towards the next part.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Everything buffered, as the final (short) part.
    pub(super) fn take_rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }
}

/// A multipart upload in progress.
struct Multipart {
    upload_id: String,
    /// Number of the next part to send (1-based).
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart>>,
    slots: Arc<Semaphore>,
    done: Vec<CompletedPart>,
}

/// A streaming upload to one key. See the module docs.
pub(super) struct S3Writer {
    store: Arc<S3Inner>,
    /// Key relative to the repository root.
    key: String,
    /// Key in the bucket.
    object_key: String,
    metadata: Option<HashMap<String, String>>,
    splitter: PartSplitter,
    written: u64,
    multipart: Option<Multipart>,
    /// Object lock mode and retain-until, fixed when the writer starts.
    lock: Option<(ObjectLockMode, AwsDateTime)>,
    /// Set once finished, aborted or failed: no more writes.
    closed: bool,
    span: tracing::Span,
}

impl S3Writer {
    pub(super) fn new(store: Arc<S3Inner>, key: &str, metadata: Vec<(String, String)>) -> Self {
        let object_key = store.object_key(key);
        let span = tracing::debug_span!(
            "s3_upload",
            key = %object_key,
            bytes = tracing::field::Empty,
            parts = tracing::field::Empty
        );
        S3Writer {
            lock: store.settings.security.lock_for(key),
            splitter: PartSplitter::new(store.settings.part_size),
            metadata: (!metadata.is_empty()).then(|| metadata.into_iter().collect()),
            store,
            key: key.to_string(),
            object_key,
            written: 0,
            multipart: None,
            closed: false,
            span,
        }
    }

    /// Object lock needs a payload checksum on every write (Content-MD5 or
    /// a flexible checksum); CRC32 then, and only then.
    fn checksum(&self) -> Option<ChecksumAlgorithm> {
        self.lock.is_some().then_some(ChecksumAlgorithm::Crc32)
    }

    fn err<E>(&self, e: SdkError<E, HttpResponse>, op: &str) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.store.error(e, op, Target::Object(&self.key))
    }

    /// Start the multipart upload if it has not started yet.
    async fn ensure_multipart(&mut self) -> Result<()> {
        if self.multipart.is_some() {
            return Ok(());
        }
        let out = self
            .store
            .client
            .create_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.object_key)
            .set_metadata(self.metadata.clone())
            .set_server_side_encryption(self.store.settings.security.sse_header())
            .set_ssekms_key_id(self.store.settings.security.kms_key_id())
            .set_object_lock_mode(self.lock.as_ref().map(|l| l.0.clone()))
            .set_object_lock_retain_until_date(self.lock.as_ref().map(|l| l.1))
            .set_checksum_algorithm(self.checksum())
            .send()
            .instrument(self.span.clone())
            .await
            .map_err(|e| self.err(e, "start a multipart upload of"))?;
        let upload_id = out
            .upload_id
            .ok_or_else(|| Error::new(ErrorKind::Storage, format!("S3 returned no upload id for object {} in {}", self.key, self.store.location())))?;
        tracing::debug!(parent: &self.span, "multipart upload started");
        self.multipart = Some(Multipart {
            upload_id,
            next_part: 1,
            in_flight: JoinSet::new(),
            slots: Arc::new(Semaphore::new(self.store.settings.upload_concurrency.max(1))),
            done: Vec::new(),
        });
        Ok(())
    }

    /// Queue one part for upload, waiting for a free slot first.
    async fn send_part(&mut self, part: Bytes) -> Result<()> {
        self.ensure_multipart().await?;
        let mp = self.multipart.as_mut().expect("started above");
        if mp.next_part as u64 > MAX_PARTS {
            return Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "object {} in {} is larger than S3 allows with {}-byte parts ({} bytes)",
                    self.key,
                    self.store.location(),
                    self.store.settings.part_size,
                    max_object_size(self.store.settings.part_size)
                ),
            )
            .with_hint("raise s3.part_size"));
        }
        let permit = mp.slots.clone().acquire_owned().await.map_err(|_| Error::internal("upload slots closed"))?;
        // A slot frees when a part finishes; surface failures of earlier parts now.
        while let Some(joined) = mp.in_flight.try_join_next() {
            mp.done.push(joined_part(joined)?);
        }
        let number = mp.next_part;
        mp.next_part += 1;
        let store = self.store.clone();
        let key = self.key.clone();
        let object_key = self.object_key.clone();
        let upload_id = mp.upload_id.clone();
        let len = part.len();
        let checksum = self.lock.is_some().then_some(ChecksumAlgorithm::Crc32);
        mp.in_flight.spawn(
            async move {
                let _permit = permit;
                let op = format!("upload part {number} of");
                // A transfer: no deadline on its length, only on a lack of progress.
                let progress = Progress::new();
                let send = store
                    .bulk
                    .upload_part()
                    .bucket(&store.bucket)
                    .key(&object_key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .set_checksum_algorithm(checksum.clone())
                    .content_length(len as i64)
                    .body(ByteStream::from(part))
                    .customize()
                    .interceptor(ProgressInterceptor(progress.clone()))
                    .send();
                let out = watch(&progress, store.settings.stall_timeout, send)
                    .await
                    .map_err(|idle| errors::stalled(&store.place, &op, Target::Object(&key), idle))?
                    .map_err(|e| store.error(e, &op, Target::Object(&key)))?;
                tracing::trace!(part = number, bytes = len, "part uploaded");
                Ok(CompletedPart::builder().part_number(number).set_checksum_crc32(out.checksum_crc32).set_e_tag(out.e_tag).build())
            }
            .instrument(self.span.clone()),
        );
        Ok(())
    }

    /// Cut and queue every full part in `data`.
    async fn push(&mut self, mut data: Bytes) -> Result<()> {
        while let Some(part) = self.splitter.next_part(&mut data) {
            self.send_part(part).await?;
        }
        Ok(())
    }

    /// Send the rest and complete the upload.
    async fn complete(&mut self) -> Result<ObjectMeta> {
        if self.multipart.is_none() {
            let body = self.splitter.take_rest();
            // Small objects (locks, manifests) are small requests with the
            // request deadline; larger ones are transfers watched for progress.
            let small = body.len() <= SMALL_BODY;
            let progress = Progress::new();
            let send = if small { &self.store.client } else { &self.store.bulk }
                .put_object()
                .bucket(&self.store.bucket)
                .key(&self.object_key)
                .set_metadata(self.metadata.take())
                .set_server_side_encryption(self.store.settings.security.sse_header())
                .set_ssekms_key_id(self.store.settings.security.kms_key_id())
                .set_object_lock_mode(self.lock.as_ref().map(|l| l.0.clone()))
                .set_object_lock_retain_until_date(self.lock.as_ref().map(|l| l.1))
                .set_checksum_algorithm(self.checksum())
                .content_length(body.len() as i64)
                .body(ByteStream::from(body))
                .customize()
                .interceptor(ProgressInterceptor(progress.clone()))
                .send()
                .instrument(self.span.clone());
            let stall = if small { self.store.settings.request_timeout.saturating_mul(2) } else { self.store.settings.stall_timeout };
            watch(&progress, stall, send)
                .await
                .map_err(|idle| errors::stalled(&self.store.place, "write", Target::Object(&self.key), idle))?
                .map_err(|e| self.err(e, "write"))?;
            self.record(1);
            return Ok(self.meta());
        }
        if self.splitter.buffered() > 0 {
            let rest = self.splitter.take_rest();
            self.send_part(rest).await?;
        }
        let mp = self.multipart.as_mut().expect("checked above");
        while let Some(joined) = mp.in_flight.join_next().await {
            mp.done.push(joined_part(joined)?);
        }
        let mut parts = std::mem::take(&mut mp.done);
        parts.sort_by_key(|p| p.part_number);
        let count = parts.len();
        let upload_id = mp.upload_id.clone();
        // The store may take a while to assemble a large object: a transfer,
        // bounded by the no-progress timeout rather than the request deadline.
        let progress = Progress::new();
        let send = self
            .store
            .bulk
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.object_key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .customize()
            .interceptor(ProgressInterceptor(progress.clone()))
            .send()
            .instrument(self.span.clone());
        let op = "complete the multipart upload of";
        watch(&progress, self.store.settings.stall_timeout, send)
            .await
            .map_err(|idle| errors::stalled(&self.store.place, op, Target::Object(&self.key), idle))?
            .map_err(|e| self.err(e, op))?;
        // Completed: there is nothing left to abort.
        self.multipart = None;
        self.record(count);
        Ok(self.meta())
    }

    fn record(&self, parts: usize) {
        self.span.record("bytes", self.written);
        self.span.record("parts", parts);
        tracing::debug!(parent: &self.span, "upload complete");
    }

    fn meta(&self) -> ObjectMeta {
        ObjectMeta { key: self.key.clone(), size: self.written, modified: Some(Utc::now()) }
    }

    /// Abort the multipart upload, if any, and return `err`. The abort waits
    /// at most [`ABORT_WAIT`] and then goes on in the background: a store that
    /// stalled must not hold the error back (cleanup aborts leftovers later).
    async fn fail(&mut self, err: Error) -> Error {
        self.closed = true;
        if let Some(mp) = self.multipart.take() {
            let (store, key, object_key) = (self.store.clone(), self.key.clone(), self.object_key.clone());
            let abort = tokio::spawn(async move { abort_multipart(&store, &key, &object_key, mp).await });
            let _ = tokio::time::timeout(ABORT_WAIT, abort).await;
        }
        err
    }
}

/// The completed part of a joined upload task.
fn joined_part(joined: std::result::Result<Result<CompletedPart>, tokio::task::JoinError>) -> Result<CompletedPart> {
    joined.map_err(|e| Error::internal(format!("part upload task failed: {e}")))?
}

/// Stop the part uploads of `mp` and abort it on the store.
async fn abort_multipart(store: &S3Inner, key: &str, object_key: &str, mut mp: Multipart) -> Result<()> {
    mp.in_flight.shutdown().await;
    let res = store.client.abort_multipart_upload().bucket(&store.bucket).key(object_key).upload_id(&mp.upload_id).send().await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
        Err(e) => {
            let err = store.error(e, "abort the multipart upload of", Target::Object(key));
            tracing::warn!(
                key = object_key,
                error = %err.user_line(),
                "cannot abort multipart upload; `clean_incomplete` will remove it later"
            );
            Err(err)
        }
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        if self.closed {
            return Err(Error::internal(format!("write to object {} after it was closed", self.key)));
        }
        self.written += data.len() as u64;
        match self.push(data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta> {
        if self.closed {
            return Err(Error::internal(format!("finish of object {} after it was closed", self.key)));
        }
        let res = self.complete().await;
        match res {
            Ok(meta) => {
                self.closed = true;
                Ok(meta)
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.closed = true;
        match self.multipart.take() {
            Some(mp) => abort_multipart(&self.store, &self.key, &self.object_key, mp).await,
            None => Ok(()),
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        let Some(mp) = self.multipart.take() else {
            return;
        };
        // Dropped unfinished: abort in the background if a runtime is around.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let store = self.store.clone();
                let key = self.key.clone();
                let object_key = self.object_key.clone();
                handle.spawn(async move {
                    let _ = abort_multipart(&store, &key, &object_key, mp).await;
                });
            }
            Err(_) => tracing::warn!(
                key = %self.object_key,
                "upload dropped outside a runtime; `clean_incomplete` will remove its parts"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(part_size: usize, writes: &[usize]) -> (Vec<usize>, usize) {
        let mut s = PartSplitter::new(part_size);
        let mut parts = Vec::new();
        let mut counter = 0u8;
        let mut all = Vec::new();
        let mut out = Vec::new();
        for &n in writes {
            let chunk: Vec<u8> = (0..n)
                .map(|_| {
                    counter = counter.wrapping_add(1);
                    counter
                })
                .collect();
            all.extend_from_slice(&chunk);
            let mut data = Bytes::from(chunk);
            while let Some(p) = s.next_part(&mut data) {
                parts.push(p.len());
                out.extend_from_slice(&p);
            }
            assert!(data.is_empty(), "every write is consumed");
        }
        let rest = s.take_rest();
        out.extend_from_slice(&rest);
        assert_eq!(out, all, "parts concatenate to the input");
        (parts, rest.len())
    }

    #[test]
    fn parts_are_exact_whatever_the_write_sizes() {
        assert_eq!(split_all(10, &[3, 3, 3]), (vec![], 9));
        assert_eq!(split_all(10, &[3, 3, 3, 1]), (vec![10], 0));
        assert_eq!(split_all(10, &[25]), (vec![10, 10], 5));
        assert_eq!(split_all(10, &[7, 25, 1]), (vec![10, 10, 10], 3));
        assert_eq!(split_all(10, &[0, 10, 0, 10]), (vec![10, 10], 0));
        assert_eq!(split_all(4, &[1; 9]), (vec![4, 4], 1));
    }

    #[test]
    fn big_writes_are_sliced_without_copying() {
        let mut s = PartSplitter::new(4);
        let data = Bytes::from_static(b"abcdefghij");
        let mut rest = data.clone();
        let p = s.next_part(&mut rest).unwrap();
        assert_eq!(p.as_ptr(), data.as_ptr(), "first part shares the caller's buffer");
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn size_limit_follows_part_size() {
        assert_eq!(max_object_size(5 << 20), 5 * 1024 * 1024 * 10_000);
        assert_eq!(max_object_size(16 << 20), 16 * 1024 * 1024 * 10_000);
    }
}
