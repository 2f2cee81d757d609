//! Notifications: tell people that a backup, restore or check failed (always)
//! or succeeded (when `notify.on_success` is set), over Slack, email and a
//! generic JSON webhook.
//!
//! A [`Notifier`] is built once from [`Settings`]; [`Notifier::send`] delivers
//! one [`Event`] to every configured channel at once, each under its own
//! timeout, and returns what went wrong as [`NotifyFailure`] values that are
//! already logged. Nothing here returns an error or panics into the caller: a
//! notification that cannot be delivered never fails the backup it reports.
//!
//! Secrets (webhook URLs, the SMTP password) stay inside the channels. Logs
//! and failures name the channel kind and host only, and every failure text
//! is scrubbed of the secret parts before it leaves this module.

mod email;
pub mod event;
mod slack;
mod webhook;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

pub use event::{Event, Operation, Outcome};

use crate::config::{Secret, Settings};

/// The kind of a notification channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Slack incoming webhook.
    Slack,
    /// Generic JSON webhook.
    Webhook,
    /// Email over SMTP.
    Email,
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelKind::Slack => "slack",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Email => "email",
        })
    }
}

/// A notification that could not be delivered. Safe to print: it names the
/// channel and host, never a URL path, token or password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyFailure {
    /// Which channel.
    pub channel: ChannelKind,
    /// The host (and port) it was sent to.
    pub target: String,
    /// What went wrong, one line.
    pub message: String,
}

impl fmt::Display for NotifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} notification to {} failed: {}", self.channel, self.target, self.message)
    }
}

impl std::error::Error for NotifyFailure {}

/// One configured destination.
enum Channel {
    Slack(slack::SlackChannel),
    Webhook(webhook::WebhookChannel),
    Email(email::EmailChannel),
}

impl Channel {
    fn kind(&self) -> ChannelKind {
        match self {
            Channel::Slack(_) => ChannelKind::Slack,
            Channel::Webhook(_) => ChannelKind::Webhook,
            Channel::Email(_) => ChannelKind::Email,
        }
    }

    fn target(&self) -> String {
        match self {
            Channel::Slack(c) => c.target(),
            Channel::Webhook(c) => c.target(),
            Channel::Email(c) => c.target(),
        }
    }

    /// Strings that must never appear in a failure or log line.
    fn secrets(&self) -> Vec<String> {
        match self {
            Channel::Slack(c) => c.secrets(),
            Channel::Webhook(c) => c.secrets(),
            Channel::Email(c) => c.secrets(),
        }
    }

    async fn deliver(&self, event: &Event) -> Result<(), String> {
        match self {
            Channel::Slack(c) => c.deliver(event).await,
            Channel::Webhook(c) => c.deliver(event).await,
            Channel::Email(c) => c.deliver(event).await,
        }
    }
}

/// Sends [`Event`]s to every configured channel.
pub struct Notifier {
    channels: Vec<Arc<Channel>>,
    on_success: bool,
    timeout: Duration,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let channels: Vec<String> = self.channels.iter().map(|c| format!("{}:{}", c.kind(), c.target())).collect();
        f.debug_struct("Notifier").field("channels", &channels).field("on_success", &self.on_success).field("timeout", &self.timeout).finish()
    }
}

impl Notifier {
    /// The channels configured in `settings`: Slack (`SLACK_WEBHOOK_URL`),
    /// the JSON webhook (`NOTIFY_WEBHOOK_URL`) and email (`NOTIFICATION_EMAIL`
    /// through `SMTP_HOST`). None configured is fine: `send` then does nothing.
    pub fn from_settings(settings: &Settings) -> Notifier {
        let timeout = settings.notify.timeout;
        let http = webhook::http_client(timeout);
        let mut channels = Vec::new();
        if let Some(url) = &settings.slack_webhook_url {
            channels.push(Arc::new(Channel::Slack(slack::SlackChannel::new(url.clone(), http.clone()))));
        }
        if let Some(url) = &settings.notify.webhook_url {
            channels.push(Arc::new(Channel::Webhook(webhook::WebhookChannel::new(url.clone(), http.clone()))));
        }
        if let Some(to) = &settings.notification_email {
            channels.push(Arc::new(Channel::Email(email::EmailChannel::new(to.clone(), settings.notify.smtp.clone(), timeout))));
        }
        Notifier { channels, on_success: settings.notify.on_success, timeout }
    }

    /// The same notifier with a different per-channel timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether no channel is configured.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// The configured channels as (kind, host), for `pgkeep check` and logs.
    pub fn channels(&self) -> Vec<(ChannelKind, String)> {
        self.channels.iter().map(|c| (c.kind(), c.target())).collect()
    }

    /// Whether `event` would be sent: failures always, successes only with `on_success`.
    pub fn wants(&self, event: &Event) -> bool {
        !self.channels.is_empty() && (event.is_failure() || self.on_success)
    }

    /// Deliver `event` to every channel concurrently, each within the timeout.
    /// Returns the channels that failed; each failure is also logged as a
    /// warning. Never panics and never fails the caller.
    pub async fn send(&self, event: &Event) -> Vec<NotifyFailure> {
        if !self.wants(event) {
            tracing::debug!(operation = %event.operation, outcome = ?event.outcome, "no notification to send");
            return Vec::new();
        }
        let shared = Arc::new(event.clone());
        let timeout = self.timeout;
        let attempts = self.channels.iter().map(|channel| {
            let (channel, event) = (Arc::clone(channel), Arc::clone(&shared));
            async move {
                let task = Arc::clone(&channel);
                let mut handle = tokio::spawn(async move { task.deliver(&event).await });
                let result = match tokio::time::timeout(timeout, &mut handle).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) if e.is_panic() => Err("the sender panicked".to_string()),
                    Ok(Err(_)) => Err("the sender was cancelled".to_string()),
                    Err(_) => {
                        handle.abort();
                        Err(format!("timed out after {}", humantime::format_duration(timeout)))
                    }
                };
                (channel, result)
            }
        });
        let mut failures = Vec::new();
        for (channel, result) in join_all(attempts).await {
            let (kind, target) = (channel.kind(), channel.target());
            match result {
                Ok(()) => tracing::info!(channel = %kind, target = %target, operation = %event.operation, "notification sent"),
                Err(message) => {
                    let message = scrub(&message, &channel.secrets());
                    tracing::warn!(channel = %kind, target = %target, operation = %event.operation, error = %message, "notification failed");
                    failures.push(NotifyFailure { channel: kind, target, message });
                }
            }
        }
        failures
    }
}

/// `host` or `host:port` of a URL, for logs; never its path, query or user info.
fn url_target(url: &Secret) -> String {
    match url::Url::parse(url.expose()) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => "(no host)".into(),
        },
        Err(_) => "(invalid URL)".into(),
    }
}

/// The parts of a URL that may be secret: the whole URL, its path and query,
/// user info, and every path segment or query value long enough to be a token.
fn url_secrets(url: &Secret) -> Vec<String> {
    let raw = url.expose().to_string();
    let mut out = vec![raw.clone()];
    if let Ok(u) = url::Url::parse(&raw) {
        out.push(u.path().to_string());
        if let Some(q) = u.query() {
            out.push(q.to_string());
        }
        if let Some(p) = u.password() {
            out.push(p.to_string());
        }
        if !u.username().is_empty() {
            out.push(u.username().to_string());
        }
        out.extend(u.path_segments().into_iter().flatten().map(str::to_string));
        out.extend(u.query_pairs().map(|(_, v)| v.into_owned()));
    }
    out.retain(|s| s.len() >= 6 && s != "/");
    out
}

/// Replace every secret in `text` with `********`, longest first; also one line.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.replace(['\r', '\n'], " ");
    for s in secrets {
        out = out.replace(s.as_str(), crate::config::secret::REDACTED);
    }
    out
}

/// The text of an error and its causes, `a: b: c`, skipping repeats.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.trim().is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_secrets_of_urls() {
        let u = Secret::new("https://hooks.slack.com/services/T0001/B0002/XXSECRETXX?token=qwerty123");
        assert_eq!(url_target(&u), "hooks.slack.com");
        assert_eq!(url_target(&Secret::new("http://127.0.0.1:8080/x")), "127.0.0.1:8080");
        assert_eq!(url_target(&Secret::new("nonsense")), "(invalid URL)");
        let msg = scrub("error for https://hooks.slack.com/services/T0001/B0002/XXSECRETXX?token=qwerty123 and XXSECRETXX, qwerty123\nnext", &url_secrets(&u));
        assert!(!msg.contains("XXSECRETXX") && !msg.contains("qwerty123") && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn failures_print_channel_and_host() {
        let f = NotifyFailure { channel: ChannelKind::Email, target: "mail.example.com:587".into(), message: "timed out after 10s".into() };
        assert_eq!(f.to_string(), "email notification to mail.example.com:587 failed: timed out after 10s");
    }
}
