//! Notifications end to end against local endpoints: Slack and the JSON
//! webhook against a recording HTTP server, email against a scripted SMTP
//! sink; failing, hanging and unreachable endpoints; the success policy; and
//! that no secret part of a URL and no SMTP password reaches a log line, a
//! failure or a printed notifier.

pub mod sinks;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgkeep::config::{FlagValues, Settings, load};
use pgkeep::notify::{ChannelKind, Event, Notifier, NotifyFailure, Operation, Outcome};
use pgkeep::{Error, ErrorKind};
use sinks::{HttpSink, LogCapture, Reply, SmtpSink, base64};

const SLACK_PATH: &str = "/services/T0SLACKSECRET/B0SLACKSECRET/slacktoken0123456789";
const HOOK_PATH: &str = "/hooks/pgkeep/hooktoken-abcdef987?key=querysecret42";
const SMTP_PASSWORD: &str = "sm7p-pa55-w0rd";
const SECRETS: &[&str] = &["T0SLACKSECRET", "B0SLACKSECRET", "slacktoken0123456789", "hooktoken-abcdef987", "querysecret42", SMTP_PASSWORD];

fn settings(pairs: &[(&str, String)]) -> Settings {
    let mut env: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    env.insert("HOME".into(), "/nonexistent-home".into());
    env.insert("PGKEEP_CONFIG".into(), "/dev/null".into());
    load(&FlagValues::default(), &env).expect("config")
}

fn failure_event() -> Event {
    let err = Error::new(ErrorKind::Connect, "cannot connect to db.internal:5432")
        .with_source(std::io::Error::other("connection refused"))
        .with_hint("check DB_HOST and that the server accepts TCP connections");
    Event::failure(Operation::Backup, &err)
        .with_database("shop")
        .with_backup_id("20250102T030405Z")
        .with_size(5 * 1024 * 1024)
        .with_duration(Duration::from_millis(12_300))
}

fn success_event() -> Event {
    Event::new(Operation::Backup, Outcome::Success)
        .with_database("shop")
        .with_backup_id("20250102T030405Z")
        .with_size(1024)
        .with_duration(Duration::from_secs(2))
        .with_summary("backup 20250102T030405Z done in 2.0s")
}

/// No secret may appear in `text`.
fn assert_no_secrets(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "secret {s} leaked in {what}: {text}");
    }
}

fn assert_clean_failures(failures: &[NotifyFailure], logs: &LogCapture) {
    for f in failures {
        assert_no_secrets("failure", &f.to_string());
        assert_no_secrets("failure debug", &format!("{f:?}"));
    }
    assert_no_secrets("logs", &logs.text());
}

#[tokio::test]
async fn failure_reaches_slack_and_webhook_with_every_fact() {
    let (logs, _guard) = LogCapture::install();
    let slack = HttpSink::start(Reply::Status(200)).await;
    let hook = HttpSink::start(Reply::Status(204)).await;
    let s = settings(&[("SLACK_WEBHOOK_URL", slack.url(SLACK_PATH)), ("NOTIFY_WEBHOOK_URL", hook.url(HOOK_PATH))]);
    let notifier = Notifier::from_settings(&s);
    assert_eq!(
        notifier.channels(),
        vec![(ChannelKind::Slack, format!("127.0.0.1:{}", slack.port)), (ChannelKind::Webhook, format!("127.0.0.1:{}", hook.port))]
    );

    let failures = notifier.send(&failure_event()).await;
    assert!(failures.is_empty(), "{failures:?}");

    let got = slack.received();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].method.as_str(), got[0].path.as_str()), ("POST", SLACK_PATH));
    assert!(got[0].headers.to_ascii_lowercase().contains("content-type: application/json"));
    let payload = got[0].json();
    let text = payload["text"].as_str().unwrap();
    assert!(text.starts_with("pgkeep backup FAILED on shop: cannot connect to db.internal:5432: connection refused"), "{text}");
    assert!(text.contains("(hint: check DB_HOST"), "{text}");
    let blocks = payload["blocks"].to_string();
    for needle in ["20250102T030405Z", "shop", "5.0 MiB", "12.3s", "connection refused", "check DB_HOST and that the server"] {
        assert!(blocks.contains(needle), "{needle} missing in Slack blocks {blocks}");
    }

    let got = hook.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, HOOK_PATH);
    let body = got[0].json();
    assert_eq!(body["source"], "pgkeep");
    assert_eq!(body["operation"], "backup");
    assert_eq!(body["outcome"], "failure");
    assert_eq!(body["backup_id"], "20250102T030405Z");
    assert_eq!(body["database"], "shop");
    assert_eq!(body["size_bytes"], 5 * 1024 * 1024);
    assert_eq!(body["duration_ms"], 12_300);
    assert_eq!(body["error"], "cannot connect to db.internal:5432: connection refused");
    assert_eq!(body["hint"], "check DB_HOST and that the server accepts TCP connections");
    assert_eq!(body["error_kind"], "Connect");
    assert_eq!(body["size"], "5.0 MiB");
    assert!(body["host"].as_str().is_some_and(|h| !h.is_empty()));

    assert!(logs.text().contains("notification sent"), "{}", logs.text());
    assert_no_secrets("logs", &logs.text());
    assert_no_secrets("notifier debug", &format!("{notifier:?} {s:?}"));
    assert_no_secrets("config", &format!("{}{}", s.render_text(), s.render_json()));
}

#[tokio::test]
async fn email_goes_through_the_smtp_sink_with_auth() {
    let (logs, _guard) = LogCapture::install();
    let sink = SmtpSink::start(true).await;
    let s = settings(&[
        ("NOTIFICATION_EMAIL", "ops@example.com,dba@example.com".into()),
        ("SMTP_HOST", "127.0.0.1".into()),
        ("SMTP_PORT", sink.port.to_string()),
        ("SMTP_TLS", "none".into()),
        ("SMTP_USER", "mailer".into()),
        ("SMTP_PASSWORD", SMTP_PASSWORD.into()),
        ("SMTP_FROM", "pgkeep@db1.example.com".into()),
    ]);
    let notifier = Notifier::from_settings(&s);
    assert_eq!(notifier.channels(), vec![(ChannelKind::Email, format!("127.0.0.1:{}", sink.port))]);

    let failures = notifier.send(&failure_event()).await;
    assert!(failures.is_empty(), "{failures:?}");

    let mails = sink.received();
    assert_eq!(mails.len(), 1, "commands: {:?}", sink.commands());
    let m = &mails[0];
    assert_eq!(m.auth, vec![format!("AUTH PLAIN {}", base64(format!("\0mailer\0{SMTP_PASSWORD}").as_bytes()))]);
    assert_eq!(m.mail_from, "pgkeep@db1.example.com");
    assert_eq!(m.rcpt_to, vec!["ops@example.com", "dba@example.com"]);
    // Unfold folded headers and quoted-printable soft line breaks.
    let data = m.data.replace("\r\n ", " ").replace("=\r\n", "");
    assert!(data.contains("Subject: [pgkeep] backup FAILED on shop: cannot connect to db.internal:5432: connection refused"), "{data}");
    assert!(data.contains("To: ops@example.com, dba@example.com"), "{data}");
    for needle in [
        "Backup id: 20250102T030405Z",
        "Database:  shop",
        "Size:      5.0 MiB",
        "Duration:  12.3s",
        "Error: cannot connect to db.internal:5432: connection refused",
        "Hint: check DB_HOST and that the server accepts TCP connections",
    ] {
        assert!(data.contains(needle), "{needle} missing in {data}");
    }
    assert_no_secrets("logs", &logs.text());
    assert_no_secrets("notifier debug", &format!("{notifier:?} {s:?}"));
    assert_no_secrets("config", &format!("{}{}", s.render_text(), s.render_json()));
}

#[tokio::test]
async fn rejected_smtp_auth_is_a_failure_without_the_password() {
    let (logs, _guard) = LogCapture::install();
    let sink = SmtpSink::start(false).await;
    let s = settings(&[
        ("NOTIFICATION_EMAIL", "ops@example.com".into()),
        ("SMTP_HOST", "localhost".into()),
        ("SMTP_PORT", sink.port.to_string()),
        ("SMTP_TLS", "none".into()),
        ("SMTP_USER", "mailer".into()),
        ("SMTP_PASSWORD", SMTP_PASSWORD.into()),
    ]);
    let failures = Notifier::from_settings(&s).send(&failure_event()).await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].channel, ChannelKind::Email);
    assert_eq!(failures[0].target, format!("localhost:{}", sink.port));
    assert!(failures[0].message.contains("535"), "{}", failures[0]);
    assert!(sink.received().is_empty());
    assert!(logs.text().contains("notification failed") && logs.text().contains("channel=email"), "{}", logs.text());
    assert_clean_failures(&failures, &logs);
}

#[tokio::test]
async fn starttls_is_the_default_and_is_required() {
    let (logs, _guard) = LogCapture::install();
    let sink = SmtpSink::start(true).await;
    let s = settings(&[
        ("NOTIFICATION_EMAIL", "ops@example.com".into()),
        ("SMTP_HOST", "127.0.0.1".into()),
        ("SMTP_PORT", sink.port.to_string()),
        ("SMTP_USER", "mailer".into()),
        ("SMTP_PASSWORD", SMTP_PASSWORD.into()),
    ]);
    let failures = Notifier::from_settings(&s).send(&failure_event()).await;
    assert_eq!(failures.len(), 1, "the sink offers no STARTTLS: {failures:?}");
    let cmds = sink.commands();
    assert!(!cmds.iter().any(|c| c.starts_with("AUTH") || c.starts_with("MAIL")), "sent in clear text: {cmds:?}");
    assert_clean_failures(&failures, &logs);
}

#[tokio::test]
async fn failing_and_hanging_endpoints_fail_within_the_timeout() {
    let (logs, _guard) = LogCapture::install();
    let broken = HttpSink::start(Reply::Status(500)).await;
    let hanging = HttpSink::start(Reply::Hang).await;
    let s = settings(&[("NOTIFY_WEBHOOK_URL", broken.url(HOOK_PATH)), ("SLACK_WEBHOOK_URL", hanging.url(SLACK_PATH)), ("NOTIFY_TIMEOUT", "1s".into())]);
    let started = Instant::now();
    let mut failures = Notifier::from_settings(&s).send(&failure_event()).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "channels run concurrently within 1s each, took {took:?}");
    failures.sort_by_key(|f| f.channel.to_string());
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0].channel, ChannelKind::Slack);
    assert!(failures[0].message.contains("timed out"), "{}", failures[0]);
    assert_eq!(failures[0].target, format!("127.0.0.1:{}", hanging.port));
    assert_eq!(failures[1].channel, ChannelKind::Webhook);
    assert!(failures[1].message.contains("HTTP 500"), "{}", failures[1]);
    assert_eq!(broken.received().len(), 1);
    let text = logs.text();
    assert!(text.contains("channel=slack") && text.contains("channel=webhook"), "{text}");
    assert!(text.contains(&format!("target=127.0.0.1:{}", hanging.port)), "{text}");
    assert_clean_failures(&failures, &logs);
}

#[tokio::test]
async fn unreachable_and_tls_failures_are_values_not_panics() {
    let (logs, _guard) = LogCapture::install();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    // https against a plain-HTTP server: the TLS handshake fails.
    let plain = HttpSink::start(Reply::PlainAtOnce).await;
    let s = settings(&[
        ("NOTIFY_WEBHOOK_URL", format!("http://127.0.0.1:{closed_port}{HOOK_PATH}")),
        ("SLACK_WEBHOOK_URL", format!("https://127.0.0.1:{}{SLACK_PATH}", plain.port)),
        ("NOTIFY_TIMEOUT", "2s".into()),
    ]);
    let mut failures = Notifier::from_settings(&s).send(&failure_event()).await;
    failures.sort_by_key(|f| f.channel.to_string());
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0].channel, ChannelKind::Slack);
    assert!(!failures[0].message.contains("timed out"), "the TLS handshake fails at once: {}", failures[0]);
    assert_eq!(failures[1].channel, ChannelKind::Webhook);
    assert!(failures[1].message.contains("cannot connect"), "{}", failures[1]);
    assert_clean_failures(&failures, &logs);
}

#[tokio::test]
async fn successes_are_sent_only_with_on_success() {
    let hook = HttpSink::start(Reply::Status(200)).await;
    let quiet = Notifier::from_settings(&settings(&[("NOTIFY_WEBHOOK_URL", hook.url(HOOK_PATH))]));
    assert!(!quiet.wants(&success_event()));
    assert!(quiet.send(&success_event()).await.is_empty());
    assert!(hook.received().is_empty(), "success sent without on_success");

    let loud = Notifier::from_settings(&settings(&[("NOTIFY_WEBHOOK_URL", hook.url(HOOK_PATH)), ("NOTIFY_ON_SUCCESS", "true".into())]));
    assert!(loud.send(&success_event()).await.is_empty());
    let got = hook.received();
    assert_eq!(got.len(), 1);
    let body = got[0].json();
    assert_eq!(body["outcome"], "success");
    assert_eq!(body["headline"], "backup ok: 20250102T030405Z");
    assert_eq!(body["summary"], "backup 20250102T030405Z done in 2.0s");
    assert!(body["error"].is_null());
}

#[tokio::test]
async fn nothing_configured_sends_nothing() {
    let n = Notifier::from_settings(&settings(&[]));
    assert!(n.is_empty());
    assert!(!n.wants(&failure_event()));
    assert!(n.send(&failure_event()).await.is_empty());
}
