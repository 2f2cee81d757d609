//! The generic JSON webhook (`NOTIFY_WEBHOOK_URL`): POSTs the serialized
//! [`Event`] plus its rendered headline, size and duration. Also the HTTP
//! client and the POST helper that the Slack channel shares.
//!
//! Error texts are built from reqwest errors stripped of their URL, so the
//! path and query of a webhook (where the token lives) never reach them.

use std::time::Duration;

use serde::Serialize;

use super::{Event, error_chain, url_secrets, url_target};
use crate::config::Secret;

/// The HTTP client shared by Slack and the webhook, or why it could not be built.
pub(super) type HttpClient = Result<reqwest::Client, String>;

/// A client with no redirects (a redirect could carry the token elsewhere)
/// and pgkeep's user agent. The whole request is bounded by the timeout in
/// `Notifier::send`; `connect_timeout` only keeps a dead host from pinning a socket.
pub(super) fn http_client(connect_timeout: Duration) -> HttpClient {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pgkeep/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e.without_url())))
}

/// POST `body` as JSON to `url`; any non-2xx status is a failure.
pub(super) async fn post_json(client: &HttpClient, url: &Secret, body: &impl Serialize) -> Result<(), String> {
    let client = client.as_ref().map_err(Clone::clone)?;
    let response = client.post(url.expose()).json(body).send().await.map_err(|e| describe(e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // A little of the body helps ("invalid_payload", "no_service"); never the URL.
    let text = response.text().await.unwrap_or_default();
    let text = super::event::truncate(text.trim(), 200);
    if text.is_empty() { Err(format!("HTTP {status}")) } else { Err(format!("HTTP {status}: {text}")) }
}

fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_builder() {
        "invalid request"
    } else {
        "request failed"
    };
    format!("{what}: {}", error_chain(&e))
}

/// What the webhook receives: the event's fields plus ready-made texts.
#[derive(Serialize)]
struct WebhookBody<'a> {
    source: &'static str,
    #[serde(flatten)]
    event: &'a Event,
    headline: String,
    size: Option<String>,
    duration: Option<String>,
}

/// A generic JSON webhook.
pub(super) struct WebhookChannel {
    url: Secret,
    client: HttpClient,
}

impl WebhookChannel {
    pub(super) fn new(url: Secret, client: HttpClient) -> Self {
        WebhookChannel { url, client }
    }

    pub(super) fn target(&self) -> String {
        url_target(&self.url)
    }

    pub(super) fn secrets(&self) -> Vec<String> {
        url_secrets(&self.url)
    }

    pub(super) async fn deliver(&self, event: &Event) -> Result<(), String> {
        let body = WebhookBody { source: "pgkeep", event, headline: event.headline(), size: event.size_text(), duration: event.duration_text() };
        post_json(&self.client, &self.url, &body).await
    }
}
