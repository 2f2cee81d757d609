//! A scripted fault-injecting HTTP proxy for S3 tests.
//!
//! [`FaultProxy::start`] listens on a free loopback port and forwards every
//! request unchanged to an upstream S3 endpoint (Garage). The `Host` header
//! is kept, so SigV4 signatures made for the proxy's address stay valid.
//! Tests script faults per request with [`FaultProxy::inject`]: answer with
//! an HTTP error status, stall (accept and never answer), cut the response
//! body after some bytes, or stall the body after some bytes, for the next
//! N requests that match a
//! method and/or a query substring (`partNumber`, `uploads`, `list-type`).
//! The proxy counts requests, fired faults and the most requests it had in
//! flight at once, and keeps a log of `METHOD path?query` lines.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// What to do to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Read the request, then answer with this status and an S3 error body.
    Status(u16),
    /// Accept the request and never answer (the client must time out).
    Stall,
    /// Forward, but cut the response body after this many bytes and drop
    /// the connection.
    Truncate(usize),
    /// Forward, but stop sending the response body after this many bytes
    /// and keep the connection open (the client must time out).
    StallBody(usize),
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    method: Option<String>,
    query: Option<String>,
    no_query: Option<String>,
}

impl Matcher {
    /// Every request.
    pub fn any() -> Self {
        Matcher::default()
    }

    /// Only requests with this method (`GET`, `PUT`, `POST`, ...).
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only requests whose query string contains `needle`.
    pub fn query(mut self, needle: &str) -> Self {
        self.query = Some(needle.to_string());
        self
    }

    /// Only requests whose query string does not contain `needle`.
    pub fn no_query(mut self, needle: &str) -> Self {
        self.no_query = Some(needle.to_string());
        self
    }

    fn matches(&self, method: &str, query: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self.query.as_deref().is_none_or(|q| query.contains(q))
            && self.no_query.as_deref().is_none_or(|q| !query.contains(q))
    }
}

/// How often an injected fault fired.
#[derive(Debug, Clone)]
pub struct Injected(Arc<AtomicUsize>);

impl Injected {
    /// Requests this fault was applied to so far.
    pub fn fired(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

struct Rule {
    fault: Fault,
    matcher: Matcher,
    remaining: usize,
    fired: Arc<AtomicUsize>,
}

struct Shared {
    upstream: SocketAddr,
    client: Client<HttpConnector, Incoming>,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<String>>,
    seen: AtomicUsize,
    faults: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Start a proxy in front of `upstream` on the current runtime.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            client: Client::builder(TokioExecutor::new()).build_http(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            seen: AtomicUsize::new(0),
            faults: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        FaultProxy { addr, shared, task }
    }

    /// The proxy's URL, to use as S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Apply `fault` to the next `times` requests that match `matcher`.
    /// Rules are tried in the order they were injected.
    pub fn inject(&self, fault: Fault, times: usize, matcher: Matcher) -> Injected {
        let fired = Arc::new(AtomicUsize::new(0));
        self.shared.rules.lock().unwrap().push(Rule { fault, matcher, remaining: times, fired: fired.clone() });
        Injected(fired)
    }

    /// Drop every rule that has not fired yet.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Requests seen so far, faulted or not.
    pub fn requests(&self) -> usize {
        self.shared.seen.load(Ordering::SeqCst)
    }

    /// Faults fired so far.
    pub fn faults(&self) -> usize {
        self.shared.faults.load(Ordering::SeqCst)
    }

    /// The most requests that were being handled at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// `METHOD path?query` of every request seen so far.
    pub fn log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Requests seen so far whose `METHOD path?query` line contains `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.shared.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    let _in_flight = InFlight::new(&shared);
    shared.seen.fetch_add(1, Ordering::SeqCst);
    let method = req.method().as_str().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let range = req.headers().get("range").map(|r| format!(" range={}", r.to_str().unwrap_or("?"))).unwrap_or_default();
    shared.log.lock().unwrap().push(format!("{method} {}{range}", req.uri()));

    let fault = {
        let mut rules = shared.rules.lock().unwrap();
        rules.iter_mut().find(|r| r.remaining > 0 && r.matcher.matches(&method, &query)).map(|r| {
            r.remaining -= 1;
            r.fired.fetch_add(1, Ordering::SeqCst);
            r.fault
        })
    };
    if fault.is_some() {
        shared.faults.fetch_add(1, Ordering::SeqCst);
    }
    match fault {
        Some(Fault::Status(code)) => {
            // Read the whole request first so the client is not cut off mid-body.
            let _ = req.into_body().collect().await;
            Ok(error_response(code))
        }
        Some(Fault::Stall) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(error_response(503))
        }
        Some(fault @ (Fault::Truncate(after) | Fault::StallBody(after))) => Ok(match forward(&shared, req).await {
            Ok(resp) => resp.map(|body| {
                let stall = matches!(fault, Fault::StallBody(_));
                Truncated { inner: body, remaining: after, stall, pause: None, cut: false }.boxed()
            }),
            Err(resp) => resp,
        }),
        None => Ok(match forward(&shared, req).await {
            Ok(resp) => resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()),
            Err(resp) => resp,
        }),
    }
}

/// Send `req` to the upstream with the same path, query, headers and body;
/// a 502 answer when the upstream cannot be reached.
async fn forward(shared: &Shared, req: Request<Incoming>) -> Result<Response<Incoming>, Response<ProxyBody>> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    parts.uri = format!("http://{}{path}", shared.upstream).parse().expect("upstream uri");
    match shared.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            eprintln!("fault proxy cannot reach upstream {}: {e}", shared.upstream);
            Err(error_response(502))
        }
    }
}

fn error_response(code: u16) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(code).expect("valid status");
    let s3_code = match code {
        500 => "InternalError",
        503 => "ServiceUnavailable",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        _ => "InjectedFault",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3_code}</Code>\
         <Message>injected by the fault proxy</Message></Error>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed())
        .unwrap()
}

/// A response body that ends with an error after `remaining` bytes, which
/// makes the server drop the connection mid-body; or, with `stall`, that
/// stops there for an hour. It pauses briefly before the error so the bytes
/// before the cut reach the client first.
struct Truncated {
    inner: Incoming,
    remaining: usize,
    stall: bool,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    cut: bool,
}

impl Body for Truncated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.cut {
            return Poll::Ready(None);
        }
        if self.remaining == 0 {
            let wait = if self.stall { Duration::from_secs(3600) } else { Duration::from_millis(200) };
            let pause = self.pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.cut = true;
            return Poll::Ready(Some(Err("body truncated by the fault proxy".into())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    if data.len() > self.remaining {
                        data.truncate(self.remaining);
                    }
                    self.remaining -= data.len();
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
        }
    }
}
