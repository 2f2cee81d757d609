//! `pgkeep stream --metrics-addr HOST:PORT`: the daemon's state as a
//! Prometheus text endpoint (`GET /metrics`; anything else is 404).
//!
//! [`StreamMetrics`] is shared by the stream (positions, segments per
//! repository, reconnects and the errors behind them), the publication check (the slot's retained
//! WAL) and the automatic backups (table images, the newest full backup);
//! [`StreamMetrics::render`] is pure. [`serve`] answers one request per
//! connection on its own task; it never blocks the stream. README
//! ("Metrics") documents every series and `docs/alerts.yml` holds sample
//! alert rules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::error::{Error, ErrorKind, Result};
use crate::repo::layout::Lsn;

/// What the stream exposes. All counters start at zero; times are Unix
/// seconds (0: not yet).
#[derive(Debug, Default)]
pub struct StreamMetrics {
    /// Whether [`serve`] answers for them (else nothing reads them, and
    /// what only they need is not queried).
    served: std::sync::atomic::AtomicBool,
    /// End of the last segment stored in every repository (the slot's confirmed position).
    durable_lsn: AtomicU64,
    /// When the durable end last advanced.
    durable_time: AtomicI64,
    /// The server's WAL end as the stream last heard it.
    server_lsn: AtomicU64,
    /// Since when the server has had WAL past the durable end (0: caught up).
    behind_since: AtomicI64,
    /// Per repository: segments and bytes stored.
    stored: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Sessions that failed or ended and were retried.
    reconnects: AtomicU64,
    /// Why they failed, per [`ERROR_CLASSES`] (same order).
    errors: [AtomicU64; ERROR_CLASSES.len()],
    /// WAL the slot holds back on the server (bytes), at the last check.
    slot_retained: AtomicU64,
    /// Tables the stream cannot archive (not in its publications), at the last check.
    unarchived: AtomicU64,
    /// Table images and full backups taken by the stream, and those that failed.
    images: AtomicU64,
    full_backups: AtomicU64,
    backup_failures: AtomicU64,
    /// When the newest full backup of the database finished.
    last_full_backup: AtomicI64,
}

/// The `kind` label of `pgkeep_stream_errors_total`: where a session's
/// failure came from.
pub const ERROR_CLASSES: [&str; 5] = ["connection", "server", "server_ended", "repository", "other"];

/// The class of an error the stream retried: the database connection
/// (refused, TLS, credentials), the server (an SQL or protocol error), a
/// repository (a put or list that failed), or anything else.
pub fn error_class(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Connect | ErrorKind::Auth | ErrorKind::Tls => "connection",
        ErrorKind::Database => "server",
        ErrorKind::NotFound | ErrorKind::AccessDenied | ErrorKind::StorageTransient | ErrorKind::Storage | ErrorKind::Locked => "repository",
        _ => "other",
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl StreamMetrics {
    /// A new, shared set.
    pub fn new() -> Arc<StreamMetrics> {
        Arc::new(StreamMetrics::default())
    }

    /// Whether an endpoint serves these metrics.
    pub fn is_served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// The durable end advanced to `lsn`.
    pub fn durable(&self, lsn: Lsn) {
        self.durable_lsn.store(lsn.0, Ordering::Relaxed);
        self.durable_time.store(now(), Ordering::Relaxed);
        self.track_lag();
    }

    /// The server's WAL reached `lsn` (keepalive or data).
    pub fn server_at(&self, lsn: Lsn) {
        self.server_lsn.fetch_max(lsn.0, Ordering::Relaxed);
        self.track_lag();
    }

    fn track_lag(&self) {
        let behind = self.server_lsn.load(Ordering::Relaxed) > self.durable_lsn.load(Ordering::Relaxed);
        if !behind {
            self.behind_since.store(0, Ordering::Relaxed);
        } else if self.behind_since.load(Ordering::Relaxed) == 0 {
            self.behind_since.store(now(), Ordering::Relaxed);
        }
    }

    /// A segment (or part) of `bytes` was stored in `repository`.
    pub fn stored(&self, repository: &str, bytes: u64) {
        if let Ok(mut s) = self.stored.lock() {
            let e = s.entry(repository.to_string()).or_default();
            e.0 += 1;
            e.1 += bytes;
        }
    }

    /// A session failed or ended and is retried.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// A session ended with an error of class `class` ([`ERROR_CLASSES`];
    /// `server_ended` when the server closed the stream).
    pub fn session_error(&self, class: &str) {
        let i = ERROR_CLASSES.iter().position(|c| *c == class).unwrap_or(ERROR_CLASSES.len() - 1);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The slot holds back `bytes` of WAL on the server.
    pub fn slot_retained(&self, bytes: u64) {
        self.slot_retained.store(bytes, Ordering::Relaxed);
    }

    /// How many tables the stream cannot archive now.
    pub fn set_unarchived(&self, tables: usize) {
        self.unarchived.store(tables as u64, Ordering::Relaxed);
    }

    /// A table image was taken.
    pub fn image_taken(&self) {
        self.images.fetch_add(1, Ordering::Relaxed);
    }

    /// A full backup finished at `finished` (Unix seconds): by the stream
    /// (`taken`), or found at start.
    pub fn full_backup(&self, finished: i64, taken: bool) {
        if taken {
            self.full_backups.fetch_add(1, Ordering::Relaxed);
        }
        self.last_full_backup.fetch_max(finished, Ordering::Relaxed);
    }

    /// An automatic backup or image failed.
    pub fn backup_failed(&self) {
        self.backup_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition at Unix time `at`.
    pub fn render(&self, at: i64) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        let g = |v: u64| vec![(String::new(), v as f64)];
        let durable = self.durable_lsn.load(Ordering::Relaxed);
        let server = self.server_lsn.load(Ordering::Relaxed);
        let behind = self.behind_since.load(Ordering::Relaxed);
        metric(
            "pgkeep_stream_durable_lsn",
            "gauge",
            "End of the last segment stored in every repository (the slot's confirmed position), as a byte position.",
            g(durable),
        );
        metric(
            "pgkeep_stream_durable_timestamp_seconds",
            "gauge",
            "When the durable end last advanced (Unix time; 0: not yet).",
            g(self.durable_time.load(Ordering::Relaxed).max(0) as u64),
        );
        metric("pgkeep_stream_server_lsn", "gauge", "The server's WAL end as the stream last heard it.", g(server));
        metric("pgkeep_stream_lag_bytes", "gauge", "WAL the server has and no repository holds yet.", g(server.saturating_sub(durable)));
        metric(
            "pgkeep_stream_lag_seconds",
            "gauge",
            "How long the server has had WAL past the durable end (0: caught up).",
            g(if behind > 0 { (at - behind).max(0) as u64 } else { 0 }),
        );
        let stored = self.stored.lock().map(|s| s.clone()).unwrap_or_default();
        let per_repo = |i: usize| stored.iter().map(|(r, v)| (format!("{{repository=\"{}\"}}", escape(r)), if i == 0 { v.0 } else { v.1 } as f64)).collect();
        metric("pgkeep_stream_segments_stored_total", "counter", "Segments and transaction parts stored, per repository.", per_repo(0));
        metric("pgkeep_stream_bytes_stored_total", "counter", "Bytes of segments and parts stored, per repository.", per_repo(1));
        metric("pgkeep_stream_reconnects_total", "counter", "Sessions that failed or ended and were retried.", g(self.reconnects.load(Ordering::Relaxed)));
        metric(
            "pgkeep_stream_errors_total",
            "counter",
            "Sessions that failed and were retried, by where the failure came from (connection, server, server_ended, repository, other).",
            ERROR_CLASSES.iter().zip(&self.errors).map(|(c, n)| (format!("{{kind=\"{c}\"}}"), n.load(Ordering::Relaxed) as f64)).collect(),
        );
        metric(
            "pgkeep_stream_slot_retained_bytes",
            "gauge",
            "WAL the slot holds back on the server (current WAL position minus the slot's restart_lsn) at the last check.",
            g(self.slot_retained.load(Ordering::Relaxed)),
        );
        metric(
            "pgkeep_stream_unarchived_tables",
            "gauge",
            "Tables the stream cannot put into its publications, so none of their changes are archived (a point-in-time restore past that point refuses them).",
            g(self.unarchived.load(Ordering::Relaxed)),
        );
        metric("pgkeep_stream_table_images_total", "counter", "Table images the stream took.", g(self.images.load(Ordering::Relaxed)));
        metric("pgkeep_stream_full_backups_total", "counter", "Full backups the stream took by itself.", g(self.full_backups.load(Ordering::Relaxed)));
        metric(
            "pgkeep_stream_backup_failures_total",
            "counter",
            "Automatic full backups and table images that failed.",
            g(self.backup_failures.load(Ordering::Relaxed)),
        );
        let last = self.last_full_backup.load(Ordering::Relaxed);
        metric(
            "pgkeep_last_full_backup_age_seconds",
            "gauge",
            "Age of the newest full backup of the database the stream knows of (-1: none).",
            vec![(String::new(), if last > 0 { (at - last).max(0) as f64 } else { -1.0 })],
        );
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Listen on `addr` (a clear error naming it when that fails); the
/// returned task answers `GET /metrics` until aborted.
pub async fn serve(addr: SocketAddr, metrics: Arc<StreamMetrics>) -> Result<tokio::task::JoinHandle<()>> {
    let listener =
        TcpListener::bind(addr).await.map_err(|e| Error::new(ErrorKind::Config, format!("cannot listen on {addr} for --metrics-addr")).with_source(e))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics at http://{addr}/metrics");
    metrics.served.store(true, Ordering::Relaxed);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request head (bounded; a slow client only holds its own task).
                while n < buf.len() {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf[n..])).await {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(k)) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if head.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
                    ("200 OK", metrics.render(now()))
                } else {
                    ("404 Not Found", "not found; the metrics are at /metrics\n".to_string())
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_lag_and_ages() {
        let m = StreamMetrics::new();
        assert!(m.render(100).contains("pgkeep_last_full_backup_age_seconds -1"), "no backup yet");
        m.server_at(Lsn(500));
        m.durable(Lsn(200));
        m.stored("/repo \"a\"", 1000);
        m.stored("/repo \"a\"", 24);
        m.full_backup(40, false);
        m.image_taken();
        m.session_error(error_class(ErrorKind::StorageTransient));
        m.session_error(error_class(ErrorKind::StorageTransient));
        m.session_error("server_ended");
        let text = m.render(now() + 7);
        for line in [
            "pgkeep_stream_durable_lsn 200",
            "pgkeep_stream_lag_bytes 300",
            "pgkeep_stream_segments_stored_total{repository=\"/repo \\\"a\\\"\"} 2",
            "pgkeep_stream_bytes_stored_total{repository=\"/repo \\\"a\\\"\"} 1024",
            "pgkeep_stream_table_images_total 1",
            "pgkeep_stream_full_backups_total 0",
            "pgkeep_stream_errors_total{kind=\"repository\"} 2",
            "pgkeep_stream_errors_total{kind=\"server_ended\"} 1",
            "pgkeep_stream_errors_total{kind=\"connection\"} 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.contains("pgkeep_stream_lag_seconds 7") || text.contains("pgkeep_stream_lag_seconds 8"), "{text}");
        m.durable(Lsn(500));
        assert!(m.render(now()).contains("pgkeep_stream_lag_seconds 0"));
        // Every sample line is `name{labels} value` after HELP and TYPE.
        assert!(text.lines().filter(|l| !l.starts_with('#')).all(|l| l.rsplit_once(' ').is_some_and(|(_, v)| v.parse::<f64>().is_ok())));
    }

    #[test]
    fn errors_are_classed_by_where_they_came_from() {
        assert_eq!(error_class(ErrorKind::Connect), "connection");
        assert_eq!(error_class(ErrorKind::Tls), "connection");
        assert_eq!(error_class(ErrorKind::Database), "server");
        assert_eq!(error_class(ErrorKind::StorageTransient), "repository");
        assert_eq!(error_class(ErrorKind::AccessDenied), "repository");
        assert_eq!(error_class(ErrorKind::Corrupt), "other");
        let m = StreamMetrics::new();
        m.session_error("no such class");
        assert!(m.render(0).contains("pgkeep_stream_errors_total{kind=\"other\"} 1"));
    }
}
