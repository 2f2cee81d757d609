//! A scripted in-memory S3 server for what Garage cannot show: it records
//! every request's headers (server-side encryption, object lock) and
//! enforces object-lock retention the way S3 does, answering `403
//! AccessDenied` to a DELETE of an object whose retain-until date has not
//! passed. It speaks just enough of the S3 REST API, path style, for
//! pgkeep's backend: PutObject, multipart uploads (create, part, complete,
//! abort, list), GetObject with ranges, HeadObject, HeadBucket,
//! ListObjectsV2 (one page) and DeleteObject. Signatures are not checked;
//! `aws-chunked` request bodies are decoded. [`FakeS3::stall_parts_after`]
//! makes every part upload stop reading its body after some bytes and never
//! answer: a store that stalls mid-part.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `PUT`, `POST`, …
    pub method: String,
    /// Object key (without the bucket), empty for bucket requests.
    pub key: String,
    /// The query string.
    pub query: String,
    /// Lower-case header names and their values.
    pub headers: BTreeMap<String, String>,
}

impl Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Clone)]
struct Object {
    data: Bytes,
    modified: DateTime<Utc>,
    retain_until: Option<DateTime<Utc>>,
}

/// A multipart upload in progress: key, headers of the create request, parts.
type Upload = (String, BTreeMap<String, String>, BTreeMap<i32, Bytes>);

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Object>,
    uploads: BTreeMap<String, Upload>,
    log: Vec<Recorded>,
    next_upload: u64,
    /// Part uploads read this many body bytes, then hang.
    stall_parts_after: Option<usize>,
    /// Part uploads stalled so far, and when the first one stalled.
    stalls: usize,
    first_stall: Option<std::time::Instant>,
}

/// The running fake; stops when dropped.
pub struct FakeS3 {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeS3 {
    /// Listen on a free loopback port.
    pub async fn start() -> FakeS3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        FakeS3 { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().log.clone()
    }

    /// Keys stored now.
    pub fn keys(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }

    /// From now on, every part upload reads `bytes` of its body and then
    /// stalls: it reads no more and never answers.
    pub fn stall_parts_after(&self, bytes: usize) {
        self.state.lock().unwrap().stall_parts_after = Some(bytes);
    }

    /// Part uploads stalled so far, and when the first one stalled.
    pub fn stalls(&self) -> (usize, Option<std::time::Instant>) {
        let st = self.state.lock().unwrap();
        (st.stalls, st.first_stall)
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.state.lock().unwrap().uploads.len()
    }

    /// The retain-until date of a stored object, if locked.
    pub fn retain_until(&self, key: &str) -> Option<DateTime<Utc>> {
        self.state.lock().unwrap().objects.get(key).and_then(|o| o.retain_until)
    }
}

fn xml(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", "application/xml").body(Full::new(Bytes::from(body))).unwrap()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    xml(status, format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message><RequestId>fake</RequestId></Error>"))
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("etag", "\"fake\"").body(Full::new(Bytes::new())).unwrap()
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn unescape(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

/// Decode an `aws-chunked` body: `<hex size>[;ext]\r\n<data>\r\n` … `0\r\n[trailers]\r\n`.
fn dechunk(body: &[u8]) -> Bytes {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(nl) = body[at..].windows(2).position(|w| w == b"\r\n") {
        let line = std::str::from_utf8(&body[at..at + nl]).unwrap_or("0");
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        at += nl + 2;
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[at..at + size]);
        at += size + 2;
    }
    Bytes::from(out)
}

fn lock_of(headers: &BTreeMap<String, String>) -> Option<DateTime<Utc>> {
    headers.get("x-amz-object-lock-retain-until-date").and_then(|d| DateTime::parse_from_rfc3339(d).ok()).map(|d| d.with_timezone(&Utc))
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: BTreeMap<String, String> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string())).collect();
    let is_part = method == "PUT" && query_param(&query, "partNumber").is_some();
    let stall_after = if is_part { state.lock().unwrap().stall_parts_after } else { None };
    if let Some(limit) = stall_after {
        let mut body = req.into_body();
        let mut read = 0;
        while read < limit {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        {
            let mut st = state.lock().unwrap();
            st.stalls += 1;
            st.first_stall.get_or_insert_with(std::time::Instant::now);
        }
        let never: Infallible = std::future::pending().await;
        match never {}
    }
    let raw = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let chunked = headers.get("content-encoding").is_some_and(|e| e.contains("aws-chunked"))
        || headers.get("x-amz-content-sha256").is_some_and(|v| v.starts_with("STREAMING"));
    let body = if chunked { dechunk(&raw) } else { raw };
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let bucket = parts.next().unwrap_or("").to_string();
    let key = unescape(parts.next().unwrap_or(""));
    let mut st = state.lock().unwrap();
    st.log.push(Recorded { method: method.clone(), key: key.clone(), query: query.clone(), headers: headers.clone() });
    Ok(answer(&mut st, FakeRequest { method, bucket, key, query, headers, body }))
}

/// One request as the fake answers it: the bucket and key from the path, the body de-chunked.
struct FakeRequest {
    method: String,
    bucket: String,
    key: String,
    query: String,
    headers: BTreeMap<String, String>,
    body: Bytes,
}

/// The fake's answer to one S3 request.
fn answer(st: &mut State, req: FakeRequest) -> Response<Full<Bytes>> {
    let FakeRequest { method, bucket, key, query, headers, body } = req;
    let now = Utc::now();
    match (method.as_str(), key.is_empty()) {
        ("HEAD", true) => empty(StatusCode::OK),
        ("GET", true) if query_param(&query, "uploads").is_some() => list_uploads(st, &bucket, now),
        ("GET", true) => list_objects(st, &bucket, &query),
        ("POST", false) if query_param(&query, "uploads").is_some() => {
            st.next_upload += 1;
            let id = format!("upload-{}", st.next_upload);
            st.uploads.insert(id.clone(), (key.clone(), headers.clone(), BTreeMap::new()));
            xml(
                StatusCode::OK,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
                ),
            )
        }
        ("PUT", false) if query_param(&query, "uploadId").is_some() => {
            let id = query_param(&query, "uploadId").unwrap_or("").to_string();
            let n: i32 = query_param(&query, "partNumber").and_then(|n| n.parse().ok()).unwrap_or(0);
            match st.uploads.get_mut(&id) {
                Some(u) => {
                    u.2.insert(n, body);
                    empty(StatusCode::OK)
                }
                None => error(StatusCode::NOT_FOUND, "NoSuchUpload", "no such upload"),
            }
        }
        ("POST", false) if query_param(&query, "uploadId").is_some() => {
            let id = query_param(&query, "uploadId").unwrap_or("").to_string();
            match st.uploads.remove(&id) {
                Some((k, h, parts)) => {
                    let data: Vec<u8> = parts.values().flat_map(|p| p.iter().copied()).collect();
                    st.objects.insert(k.clone(), Object { data: Bytes::from(data), modified: now, retain_until: lock_of(&h) });
                    xml(
                        StatusCode::OK,
                        format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CompleteMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{k}</Key><ETag>\"fake\"</ETag></CompleteMultipartUploadResult>"
                        ),
                    )
                }
                None => error(StatusCode::NOT_FOUND, "NoSuchUpload", "no such upload"),
            }
        }
        ("DELETE", false) if query_param(&query, "uploadId").is_some() => {
            st.uploads.remove(query_param(&query, "uploadId").unwrap_or(""));
            empty(StatusCode::NO_CONTENT)
        }
        ("PUT", false) => {
            if st.objects.get(&key).is_some_and(|o| o.retain_until.is_some_and(|u| u > now)) {
                error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied because object protected by object lock")
            } else {
                st.objects.insert(key, Object { data: body, modified: now, retain_until: lock_of(&headers) });
                empty(StatusCode::OK)
            }
        }
        ("DELETE", false) => match st.objects.get(&key) {
            Some(o) if o.retain_until.is_some_and(|u| u > now) => {
                error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied because object protected by object lock")
            }
            _ => {
                st.objects.remove(&key);
                empty(StatusCode::NO_CONTENT)
            }
        },
        ("GET" | "HEAD", false) => get_object(st, &method, &key, headers.get("range").map(String::as_str)),
        _ => error(StatusCode::NOT_IMPLEMENTED, "NotImplemented", "not in the fake"),
    }
}

/// `GET /bucket?uploads`: the multipart uploads in progress.
fn list_uploads(st: &State, bucket: &str, now: DateTime<Utc>) -> Response<Full<Bytes>> {
    let uploads: String = st
        .uploads
        .iter()
        .map(|(id, (k, _, _))| format!("<Upload><Key>{k}</Key><UploadId>{id}</UploadId><Initiated>{}</Initiated></Upload>", now.to_rfc3339()))
        .collect();
    xml(
        StatusCode::OK,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListMultipartUploadsResult><Bucket>{bucket}</Bucket><IsTruncated>false</IsTruncated>{uploads}</ListMultipartUploadsResult>"
        ),
    )
}

/// `GET /bucket?prefix=…`: the objects under the prefix, in one page.
fn list_objects(st: &State, bucket: &str, query: &str) -> Response<Full<Bytes>> {
    let prefix = unescape(query_param(query, "prefix").unwrap_or(""));
    let items: Vec<String> = st
        .objects
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, o)| {
            format!(
                "<Contents><Key>{k}</Key><LastModified>{}</LastModified><ETag>\"fake\"</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                o.modified.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                o.data.len()
            )
        })
        .collect();
    xml(
        StatusCode::OK,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{}</ListBucketResult>",
            items.len(),
            items.concat()
        ),
    )
}

/// `GET` or `HEAD` of an object, with a `Range` header's bytes when given.
fn get_object(st: &State, method: &str, key: &str, range: Option<&str>) -> Response<Full<Bytes>> {
    match st.objects.get(key) {
        None => error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist."),
        Some(o) => {
            let len = o.data.len();
            let (status, slice) = match range.and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-')) {
                Some((a, b)) => {
                    let a: usize = a.parse().unwrap_or(0);
                    let b: usize = b.parse().map(|b: usize| b + 1).unwrap_or(len).min(len);
                    (StatusCode::PARTIAL_CONTENT, o.data.slice(a.min(b)..b))
                }
                None => (StatusCode::OK, o.data.clone()),
            };
            let body = if method == "HEAD" { Bytes::new() } else { slice.clone() };
            Response::builder()
                .status(status)
                .header("content-length", slice.len())
                .header("etag", "\"fake\"")
                .header("last-modified", o.modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
                .body(Full::new(body))
                .unwrap()
        }
    }
}
