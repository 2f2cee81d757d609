//! Progress-based deadlines for S3 transfers (part uploads, large puts,
//! completing a multipart upload).
//!
//! A transfer must not be cut for taking long, only for making no progress.
//! [`ProgressInterceptor`] wraps a request body right before it is sent
//! (after signing, so the payload hash stays as computed) in a body that
//! hands it to the HTTP client in small slices and stamps a shared
//! [`Progress`] each time one is taken. [`watch`] then fails the request once
//! no slice was taken and no answer came for the stall timeout. Bytes sent
//! again by an SDK retry count as progress: a stalled attempt is never
//! retried by the SDK (the transfer client has no attempt timeout and no
//! stalled-stream protection), so only `watch` ends it, and the bound holds
//! across attempts.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::primitives::SdkBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Largest slice handed to the HTTP client at once: progress is seen at
/// least every this many bytes.
const SLICE: usize = 64 << 10;

/// When a transfer last moved, shared between its body and its watchdog.
#[derive(Debug)]
pub(super) struct Progress {
    start: Instant,
    /// Milliseconds after `start` of the last sign of progress.
    last_ms: AtomicU64,
}

impl Progress {
    /// A transfer starting now.
    pub(super) fn new() -> Arc<Progress> {
        Arc::new(Progress { start: Instant::now(), last_ms: AtomicU64::new(0) })
    }

    fn mark(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Time since the last sign of progress.
    fn idle(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Run `send` until it completes; `Err(idle)` once it made no progress for `stall`.
pub(super) async fn watch<F: Future>(progress: &Progress, stall: Duration, send: F) -> Result<F::Output, Duration> {
    tokio::pin!(send);
    loop {
        let idle = progress.idle();
        if idle >= stall {
            return Err(idle);
        }
        tokio::select! {
            out = &mut send => return Ok(out),
            _ = tokio::time::sleep(stall - idle) => {}
        }
    }
}

/// Wraps the body of every attempt of one request so that it stamps `Progress`.
#[derive(Debug)]
pub(super) struct ProgressInterceptor(pub(super) Arc<Progress>);

impl Intercept for ProgressInterceptor {
    fn name(&self) -> &'static str {
        "pgkeep::ProgressInterceptor"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let request = context.request_mut();
        let body = request.take_body();
        let progress = self.0.clone();
        *request.body_mut() = body.map(move |inner| SdkBody::from_body_1_x(ProgressBody { inner, pending: Bytes::new(), progress: progress.clone() }));
        self.0.mark();
        Ok(())
    }
}

/// A body that passes `inner` on in slices of at most [`SLICE`] bytes,
/// stamping `progress` for each.
struct ProgressBody {
    inner: SdkBody,
    pending: Bytes,
    progress: Arc<Progress>,
}

impl Body for ProgressBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
            }
        }
        let n = this.pending.len().min(SLICE);
        let slice = this.pending.split_to(n);
        this.progress.mark();
        Poll::Ready(Some(Ok(Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let extra = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + extra);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watch_cuts_only_a_transfer_without_progress() {
        let p = Progress::new();
        let bound = Duration::from_millis(300);
        // Keeps moving for 1.2 s, four times the bound: never cut.
        let moving = async {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                p.mark();
            }
            7
        };
        assert_eq!(watch(&p, bound, moving).await, Ok(7));
        // Then silent: cut after the bound.
        let started = Instant::now();
        let silent = tokio::time::sleep(Duration::from_secs(3600));
        let idle = watch(&p, bound, silent).await.unwrap_err();
        assert!(idle >= bound);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn the_body_is_passed_on_in_slices_that_stamp_progress() {
        let p = Progress::new();
        let data = Bytes::from(vec![7u8; 3 * SLICE + 5]);
        let mut body = ProgressBody { inner: SdkBody::from(data.clone()), pending: Bytes::new(), progress: p.clone() };
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let mut out = Vec::new();
        let mut frames = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let chunk = frame.unwrap().into_data().unwrap();
            assert!(chunk.len() <= SLICE);
            out.extend_from_slice(&chunk);
            frames += 1;
        }
        assert_eq!(out, data);
        assert_eq!(frames, 4);
        assert!(body.is_end_stream());
    }
}
