//! Local endpoints that record what notifications deliver: an HTTP server
//! that answers with a chosen status or never answers, an SMTP sink speaking
//! just enough ESMTP (no STARTTLS), and a tracing capture for log checks.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One HTTP request as received.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub headers: String,
    pub body: String,
}

impl HttpRequest {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// How the HTTP sink answers.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// This status, with a short body.
    Status(u16),
    /// Read the request, then never answer.
    Hang,
    /// Answer in plain HTTP at once, before reading: what a TLS client sees
    /// when it dials a plain-text server.
    PlainAtOnce,
}

/// An HTTP server on 127.0.0.1 that records every request.
pub struct HttpSink {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<HttpRequest>>>,
}

impl HttpSink {
    pub async fn start(reply: Reply) -> HttpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let rec = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let rec = Arc::clone(&rec);
                tokio::spawn(async move {
                    if let Reply::PlainAtOnce = reply {
                        let _ = sock.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
                        let _ = sock.shutdown().await;
                        return;
                    }
                    let Some(req) = read_request(&mut sock).await else { return };
                    rec.lock().unwrap().push(req);
                    match reply {
                        Reply::Status(code) => {
                            let body = if code == 200 { "ok" } else { "boom" };
                            let resp =
                                format!("HTTP/1.1 {code} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                            let _ = sock.write_all(resp.as_bytes()).await;
                            let _ = sock.shutdown().await;
                        }
                        Reply::PlainAtOnce => {}
                        Reply::Hang => {
                            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                            drop(sock);
                        }
                    }
                });
            }
        });
        HttpSink { port, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn received(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap().clone()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<HttpRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))).unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut first = head.lines().next().unwrap_or_default().split(' ');
    Some(HttpRequest {
        method: first.next().unwrap_or_default().to_string(),
        path: first.next().unwrap_or_default().to_string(),
        headers: head.clone(),
        body: String::from_utf8_lossy(&buf[head_end..]).to_string(),
    })
}

/// One message as the SMTP sink received it.
#[derive(Debug, Clone, Default)]
pub struct Mail {
    /// Every AUTH exchange line (mechanism and payloads).
    pub auth: Vec<String>,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The DATA, dot-unstuffed, CRLF line ends.
    pub data: String,
}

/// A scripted ESMTP server on 127.0.0.1: advertises AUTH PLAIN LOGIN and no
/// STARTTLS; `accept_auth = false` answers AUTH with 535.
pub struct SmtpSink {
    pub port: u16,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    /// Every command line received, across connections.
    pub commands: Arc<Mutex<Vec<String>>>,
}

impl SmtpSink {
    pub async fn start(accept_auth: bool) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let (m, c) = (Arc::clone(&mails), Arc::clone(&commands));
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (m, c) = (Arc::clone(&m), Arc::clone(&c));
                tokio::spawn(async move {
                    let _ = smtp_session(sock, accept_auth, m, c).await;
                });
            }
        });
        SmtpSink { port, mails, commands }
    }

    pub fn received(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }
}

async fn smtp_session(sock: tokio::net::TcpStream, accept_auth: bool, mails: Arc<Mutex<Vec<Mail>>>, commands: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"220 sink.local ESMTP ready\r\n").await?;
    let mut mail = Mail::default();
    while let Some(line) = lines.next_line().await? {
        commands.lock().unwrap().push(line.clone());
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.local\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.local\r\n"
        } else if upper.starts_with("AUTH") {
            mail.auth.push(line.clone());
            if upper.starts_with("AUTH LOGIN") {
                for prompt in [&b"334 VXNlcm5hbWU6\r\n"[..], b"334 UGFzc3dvcmQ6\r\n"] {
                    w.write_all(prompt).await?;
                    if let Some(l) = lines.next_line().await? {
                        mail.auth.push(l);
                    }
                }
            }
            if accept_auth { b"235 2.7.0 Authentication successful\r\n" } else { b"535 5.7.8 Authentication credentials invalid\r\n" }
        } else if upper.starts_with("MAIL FROM:") {
            mail.mail_from = line[10..].trim().trim_matches(['<', '>']).split('>').next().unwrap_or_default().to_string();
            b"250 2.1.0 Ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            mail.rcpt_to.push(line[8..].trim().trim_matches(['<', '>']).to_string());
            b"250 2.1.5 Ok\r\n"
        } else if upper == "DATA" {
            w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').filter(|_| l.starts_with("..")).unwrap_or(&l));
                data.push_str("\r\n");
            }
            mail.data = data;
            mails.lock().unwrap().push(std::mem::take(&mut mail));
            b"250 2.0.0 Ok: queued\r\n"
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 2.0.0 Ok\r\n"
        } else {
            b"502 5.5.2 Command not recognized\r\n"
        };
        w.write_all(reply).await?;
    }
    Ok(())
}

/// Everything logged (all targets, DEBUG and up) while the guard lives, on
/// this thread: the tests run on tokio's current-thread runtime.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn install() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let cap = LogCapture::default();
        let writer = cap.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).finish();
        (cap.clone(), tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Standard base64, for checking AUTH payloads.
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
