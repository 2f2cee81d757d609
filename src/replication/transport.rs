//! The byte stream under a replication connection: plain TCP, a Unix socket,
//! or rustls TLS over TCP, negotiated with an SSLRequest per `sslmode`.
//!
//! [`Transport::open`] resolves and connects, sends the SSLRequest unless
//! `sslmode=disable` or the host is a Unix socket directory, and either runs
//! the TLS handshake (the server said `S`), stays plain (`N` with
//! `sslmode=prefer`), or fails with `ErrorKind::Tls` (`N` otherwise). The
//! rustls configuration and certificate checks are `crate::pg::tls`'s, shared
//! with regular connections.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::errors::io_error;
use crate::config::{DbSettings, SslMode};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::errors::{Phase, is_unix_socket, server_label};
use crate::pg::tls::{client_config, server_name, tls_server_end_point};

/// A connected socket, encrypted or not.
pub enum Transport {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A Unix-domain socket (never encrypted, as in libpq).
    Unix(UnixStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Connect to `db.host:db.port` (or `<dir>/.s.PGSQL.<port>`) and negotiate
    /// TLS per `db.sslmode`. Not bounded in time: callers wrap it in
    /// `connect_timeout`.
    pub async fn open(db: &DbSettings) -> Result<Transport> {
        if is_unix_socket(db) {
            let path = format!("{}/.s.PGSQL.{}", db.host.trim_end_matches('/'), db.port);
            let socket = UnixStream::connect(&path).await.map_err(|e| io_error(e, db, Phase::Connect))?;
            return Ok(Transport::Unix(socket));
        }
        let host = db.host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((host, db.port)).await.map_err(|e| io_error(e, db, Phase::Connect))?;
        // Small protocol messages: send each at once.
        let _ = tcp.set_nodelay(true);
        set_keepalive(&tcp);
        if db.sslmode == SslMode::Disable {
            return Ok(Transport::Tcp(tcp));
        }
        negotiate_tls(tcp, db).await
    }

    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// SCRAM `tls-server-end-point` channel-binding data from the server's
    /// certificate; `None` without TLS or for certificates that define none.
    pub fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        let Transport::Tls(tls) = self else {
            return None;
        };
        let leaf = tls.get_ref().1.peer_certificates()?.first()?;
        tls_server_end_point(leaf.as_ref())
    }
}

/// TCP keepalives after 60 s idle, as regular connections have them
/// (`pg::connect`): a server that vanishes without closing the socket is
/// noticed by the kernel instead of leaving a COPY or a stream waiting.
fn set_keepalive(tcp: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let on: libc::c_int = 1;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket owned by `tcp`, and each option value
    // is a live c_int of the length passed. Failures are ignored: keepalive
    // is a safeguard, not a requirement.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, (&on as *const libc::c_int).cast(), len);
        #[cfg(target_os = "linux")]
        {
            let idle: libc::c_int = 60;
            libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, (&idle as *const libc::c_int).cast(), len);
        }
    }
}

/// SSLRequest, then the TLS handshake if the server agrees.
async fn negotiate_tls(mut tcp: TcpStream, db: &DbSettings) -> Result<Transport> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(|e| io_error(e, db, Phase::Connect))?;
    // Read exactly one byte: anything after it must come through TLS.
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(|e| io_error(e, db, Phase::Connect))?;
    let server = server_label(db);
    match answer[0] {
        b'S' => handshake(tcp, db).await,
        b'N' if db.sslmode == SslMode::Prefer => Ok(Transport::Tcp(tcp)),
        b'N' => Err(Error::new(ErrorKind::Tls, format!("server {server} does not support TLS but sslmode={}", db.sslmode.as_str()))
            .with_hint("enable ssl on the server, or set sslmode=prefer or disable")),
        other => Err(Error::new(
            ErrorKind::Connect,
            format!("cannot connect to PostgreSQL at {server}: unexpected answer {:?} to the TLS request", char::from(other)),
        )
        .with_hint("check that the port belongs to a PostgreSQL server")),
    }
}

async fn handshake(tcp: TcpStream, db: &DbSettings) -> Result<Transport> {
    let config = client_config(db)?;
    let name = match server_name(&db.host) {
        Ok(name) => name,
        Err(e) if db.sslmode == SslMode::VerifyFull => return Err(e),
        // Without a host-name check the name only feeds SNI; an IP address sends none.
        Err(_) => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into()),
    };
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            io_error(e, db, Phase::Connect)
        } else {
            Error::new(ErrorKind::Tls, format!("TLS handshake with {} failed", server_label(db))).with_source(e)
        }
    })?;
    Ok(Transport::Tls(Box::new(tls)))
}

/// Open a new connection to the server and send a CancelRequest for the
/// backend `process_id` / `secret_key`, then wait for the server to close it.
pub async fn send_cancel_request(db: &DbSettings, process_id: i32, secret_key: i32) -> Result<()> {
    let what = format!("cancel the command of backend {process_id}");
    let mut transport = Transport::open(db).await?;
    let mut request = BytesMut::new();
    frontend::cancel_request(process_id, secret_key, &mut request);
    let sent = async {
        transport.write_all(&request).await?;
        transport.flush().await
    };
    sent.await.map_err(|e| io_error(e, db, Phase::Command(&what)))?;
    // The server answers nothing and closes the connection once it has
    // signalled the backend; waiting for that makes the cancel synchronous.
    let mut sink = [0u8; 64];
    loop {
        match transport.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
