//! Slack incoming webhook (`SLACK_WEBHOOK_URL`): a `text` fallback line and
//! Block Kit `blocks` with the facts, the error and its hint.

use serde_json::{Value, json};

use super::webhook::{HttpClient, post_json};
use super::{Event, url_secrets, url_target};
use crate::config::Secret;

/// Slack's limit for a section's text is 3000 characters; stay well under.
const MAX_TEXT: usize = 2500;

/// A Slack incoming webhook.
pub(super) struct SlackChannel {
    url: Secret,
    client: HttpClient,
}

impl SlackChannel {
    pub(super) fn new(url: Secret, client: HttpClient) -> Self {
        SlackChannel { url, client }
    }

    pub(super) fn target(&self) -> String {
        url_target(&self.url)
    }

    pub(super) fn secrets(&self) -> Vec<String> {
        url_secrets(&self.url)
    }

    pub(super) async fn deliver(&self, event: &Event) -> Result<(), String> {
        post_json(&self.client, &self.url, &payload(event)).await
    }
}

/// The message: `{"text": …, "blocks": […]}`.
pub(super) fn payload(event: &Event) -> Value {
    let icon = if event.is_failure() { ":x:" } else { ":white_check_mark:" };
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": format!("{icon} *pgkeep {}*", escape(&event.headline()))},
    })];
    let fields: Vec<Value> = event
        .facts()
        .into_iter()
        .filter(|(label, _)| !matches!(*label, "Operation" | "Outcome"))
        .take(10)
        .map(|(label, value)| json!({"type": "mrkdwn", "text": format!("*{label}*\n{}", escape(&value))}))
        .collect();
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if let Some(err) = &event.error {
        let mut text = format!("*Error:* {}", escape(&super::event::truncate(err, MAX_TEXT)));
        if let Some(hint) = &event.hint {
            text.push_str(&format!("\n*Hint:* {}", escape(&super::event::truncate(hint, 400))));
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    if let Some(summary) = &event.summary {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": escape(&super::event::truncate(summary, MAX_TEXT))}],
        }));
    }
    let mut text = format!("pgkeep {}", event.headline());
    if let Some(hint) = &event.hint {
        text.push_str(&format!(" (hint: {hint})"));
    }
    json!({"text": text, "blocks": blocks})
}

/// Slack's three control characters in mrkdwn.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};
    use crate::notify::Operation;
    use std::time::Duration;

    #[test]
    fn failure_payload_has_facts_error_and_hint() {
        let err = Error::new(ErrorKind::Storage, "cannot write <pack> to s3://b").with_hint("check the bucket & policy");
        let e = Event::failure(Operation::Backup, &err)
            .with_database("shop")
            .with_backup_id("20250101T000000Z")
            .with_size(2048)
            .with_duration(Duration::from_secs(5));
        let p = payload(&e);
        let all = p.to_string();
        assert!(p["text"].as_str().unwrap().starts_with("pgkeep backup FAILED on shop: cannot write <pack>"));
        for needle in ["20250101T000000Z", "shop", "2.0 KiB", "5.0s", "&lt;pack&gt;", "check the bucket &amp; policy"] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }
        assert_eq!(p["blocks"].as_array().unwrap().len(), 3);
    }
}
