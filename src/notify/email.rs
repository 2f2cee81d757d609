//! Email over SMTP (`NOTIFICATION_EMAIL`, `SMTP_*`) with lettre on tokio and
//! rustls: STARTTLS by default, implicit TLS or (loopback / explicitly
//! allowed) plain text, AUTH when a user and password are configured.
//!
//! One connection per message, no pool: notifications are rare. Subject
//! `[pgkeep] backup FAILED on <db>: <error>` or `[pgkeep] backup ok: <id>`,
//! plain-text body with the facts, the error and its hint.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Event, error_chain};
use crate::config::{SmtpSettings, SmtpTls};

/// Email to one or more comma-separated addresses through one SMTP server.
pub(super) struct EmailChannel {
    to: String,
    smtp: Option<SmtpSettings>,
    timeout: Duration,
}

impl EmailChannel {
    pub(super) fn new(to: String, smtp: Option<SmtpSettings>, timeout: Duration) -> Self {
        EmailChannel { to, smtp, timeout }
    }

    pub(super) fn target(&self) -> String {
        match &self.smtp {
            Some(s) => format!("{}:{}", s.host, s.port),
            None => "(no SMTP server)".into(),
        }
    }

    pub(super) fn secrets(&self) -> Vec<String> {
        self.smtp.as_ref().and_then(|s| s.password.as_ref()).map(|p| vec![p.expose().to_string()]).unwrap_or_default()
    }

    pub(super) async fn deliver(&self, event: &Event) -> Result<(), String> {
        let smtp = self.smtp.as_ref().ok_or_else(|| "no SMTP server is configured (set SMTP_HOST)".to_string())?;
        let message = message(event, &self.to, smtp)?;
        let transport = transport(smtp, self.timeout)?;
        transport.send(message).await.map(|_| ()).map_err(|e| format!("SMTP: {}", error_chain(&e)))
    }
}

/// The message: sender, every recipient, subject and plain-text body.
fn message(event: &Event, to: &str, smtp: &SmtpSettings) -> Result<Message, String> {
    let from = smtp.from.clone().unwrap_or_else(|| format!("pgkeep@{}", crate::config::notify::local_hostname()));
    let from: Mailbox = from.parse().map_err(|e| format!("invalid sender address {from:?}: {e}"))?;
    let mut builder = Message::builder().from(from).subject(event.subject());
    let mut recipients = 0;
    for addr in to.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let mailbox: Mailbox = addr.parse().map_err(|e| format!("invalid recipient address {addr:?}: {e}"))?;
        builder = builder.to(mailbox);
        recipients += 1;
    }
    if recipients == 0 {
        return Err("no recipient address".into());
    }
    builder.header(ContentType::TEXT_PLAIN).body(event.text_body()).map_err(|e| format!("cannot build the message: {e}"))
}

/// A transport for `smtp`, TLS and AUTH as configured.
fn transport(smtp: &SmtpSettings, timeout: Duration) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls_params = || TlsParameters::new(smtp.host.clone()).map_err(|e| format!("cannot set up TLS for {}: {}", smtp.host, error_chain(&e)));
    let tls = match smtp.tls {
        SmtpTls::StartTls => Tls::Required(tls_params()?),
        SmtpTls::Tls => Tls::Wrapper(tls_params()?),
        SmtpTls::None => Tls::None,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str()).port(smtp.port).tls(tls).timeout(Some(timeout));
    if let (Some(user), Some(password)) = (&smtp.user, &smtp.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_string())).authentication(vec![Mechanism::Plain, Mechanism::Login]);
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Operation, Outcome};

    fn smtp() -> SmtpSettings {
        SmtpSettings { host: "mail.example.com".into(), port: 587, tls: SmtpTls::StartTls, user: None, password: None, from: Some("backup@example.com".into()) }
    }

    #[test]
    fn message_has_recipients_subject_and_body() {
        let e = Event::new(Operation::Backup, Outcome::Success).with_backup_id("20250101T000000Z").with_database("shop");
        let m = message(&e, "a@example.com, b@example.com", &smtp()).unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(text.contains("Subject: [pgkeep] backup ok: 20250101T000000Z"), "{text}");
        assert!(text.contains("a@example.com") && text.contains("b@example.com"));
        assert!(text.contains("From: backup@example.com"));
        assert_eq!(m.envelope().to().len(), 2);
    }

    #[test]
    fn bad_addresses_are_failures_not_panics() {
        let e = Event::new(Operation::Backup, Outcome::Success);
        assert!(message(&e, " , ", &smtp()).unwrap_err().contains("no recipient"));
        let mut s = smtp();
        s.from = Some("not an address".into());
        assert!(message(&e, "a@example.com", &s).unwrap_err().contains("invalid sender"));
        assert!(transport(&s, Duration::from_secs(1)).is_ok());
    }
}
