//! Notification settings beyond the Slack URL and the address: the generic
//! JSON webhook, whether successes are announced, the per-channel timeout and
//! the SMTP server used for email.
//!
//! [`resolve`] reads them from the layers like every other setting, records
//! provenance (webhook URL and SMTP password redacted) and rejects unusable
//! combinations up front, naming the variable or key and never the secret:
//! plain-text SMTP to a non-loopback host, a user without a password, an
//! address without a server, a webhook that is not an http(s) URL.

use std::time::Duration;

use super::layers::{Layers, Raw, Source, parse_as, parse_bool};
use super::secret::{self, Secret};
use crate::error::{Error, Result};

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: loopback hosts only unless `SMTP_ALLOW_INSECURE=true` (port 25).
    None,
}

impl SmtpTls {
    /// The port used when none is configured.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        }
    }

    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::StartTls => "starttls",
            SmtpTls::Tls => "tls",
            SmtpTls::None => "none",
        }
    }
}

/// The SMTP server that email notifications go through.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// TLS mode.
    pub tls: SmtpTls,
    /// User for AUTH; set together with `password`.
    pub user: Option<String>,
    /// Password for AUTH.
    pub password: Option<Secret>,
    /// Sender address; `None` means `pgkeep@<hostname>`.
    pub from: Option<String>,
}

/// Notification settings (the Slack URL and recipient stay in `Settings`).
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// Also notify when an operation succeeds (failures are always sent).
    pub on_success: bool,
    /// Generic JSON webhook receiving the serialized event.
    pub webhook_url: Option<Secret>,
    /// SMTP server; present whenever a notification email is configured.
    pub smtp: Option<SmtpSettings>,
    /// How long one channel may take before it is given up.
    pub timeout: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings { on_success: false, webhook_url: None, smtp: None, timeout: Duration::from_secs(10) }
    }
}

/// Whether `host` is a loopback name or address (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Check that a webhook URL is an absolute http(s) URL; `https_only` also
/// refuses plain http to anything but loopback. The value is never echoed.
pub fn check_webhook_url(raw: &Raw, key: &str, https_only: bool) -> Result<()> {
    let url = url::Url::parse(raw.value.trim()).map_err(|_| Error::config(format!("invalid value for {}: expected an http(s) URL", raw.origin(key))))?;
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if !host.is_empty() && (!https_only || is_loopback_host(host)) => Ok(()),
        "http" if !host.is_empty() => {
            Err(Error::config(format!("{} is a plain http URL to {host}: the webhook token would travel unencrypted", raw.origin(key)))
                .with_hint("use the https:// URL the service gave you"))
        }
        _ => Err(Error::config(format!("invalid value for {}: expected an http(s) URL", raw.origin(key)))),
    }
}

/// Resolve the notification settings from the layers.
pub fn resolve(layers: &Layers<'_>, record: &mut dyn FnMut(&'static str, String, Source)) -> Result<NotifySettings> {
    // 1. Slack URL: recorded by the caller; only its shape is checked here.
    if let Some(r) = layers.get("notify.slack_webhook_url", &["SLACK_WEBHOOK_URL"]) {
        check_webhook_url(&r, "notify.slack_webhook_url", true)?;
    }

    // 2. Generic webhook, success policy and timeout.
    let webhook_url = match layers.get("notify.webhook_url", &["NOTIFY_WEBHOOK_URL"]) {
        Some(r) => {
            check_webhook_url(&r, "notify.webhook_url", false)?;
            record("notify.webhook_url", secret::REDACTED.into(), r.source.clone());
            Some(Secret::new(r.value.trim()))
        }
        None => None,
    };
    let on_success = match layers.get("notify.on_success", &["NOTIFY_ON_SUCCESS"]) {
        Some(r) => {
            let b = parse_as(&r, "notify.on_success", "true or false", parse_bool)?;
            record("notify.on_success", b.to_string(), r.source);
            b
        }
        None => {
            record("notify.on_success", "false".into(), Source::Default);
            false
        }
    };
    let timeout = match layers.get("notify.timeout", &["NOTIFY_TIMEOUT"]) {
        Some(r) => {
            let t = parse_as(&r, "notify.timeout", "a duration from 1s to 5m, such as 10s", |s| {
                humantime::parse_duration(s).ok().filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(300))
            })?;
            record("notify.timeout", humantime::format_duration(t).to_string(), r.source);
            t
        }
        None => Duration::from_secs(10),
    };

    // 3. SMTP, needed exactly when an email address is configured.
    let email = layers.get("notify.email", &["NOTIFICATION_EMAIL"]);
    let smtp = smtp(layers, record, email.as_ref())?;
    Ok(NotifySettings { on_success, webhook_url, smtp, timeout })
}

fn smtp(layers: &Layers<'_>, record: &mut dyn FnMut(&'static str, String, Source), email: Option<&Raw>) -> Result<Option<SmtpSettings>> {
    let host = layers.get("smtp.host", &["SMTP_HOST"]);
    let port = layers.get("smtp.port", &["SMTP_PORT"]);
    let user = layers.get("smtp.user", &["SMTP_USER"]);
    let password = layers.get("smtp.password", &["SMTP_PASSWORD"]);
    let from = layers.get("smtp.from", &["SMTP_FROM"]);
    let tls = layers.get("smtp.tls", &["SMTP_TLS"]);
    let insecure = layers.get("smtp.allow_insecure", &["SMTP_ALLOW_INSECURE"]);

    let Some(email) = email else {
        return Ok(None);
    };
    let Some(host) = host else {
        return Err(Error::config(format!("{} is set but no SMTP server is configured", email.origin("notify.email")))
            .with_hint("set SMTP_HOST (and SMTP_PORT, SMTP_USER, SMTP_PASSWORD as needed), or unset the address"));
    };
    let host_name = host.value.trim().to_string();
    if host_name.is_empty() || host_name.contains(['/', ' ', '@']) {
        return Err(Error::config(format!("invalid value for {}: expected a host name", host.origin("smtp.host"))));
    }
    record("smtp.host", host_name.clone(), host.source);

    let (mode, mode_src) = match &tls {
        Some(r) => {
            let m = parse_as(r, "smtp.tls", "starttls, tls or none", |s| match s.to_ascii_lowercase().as_str() {
                "starttls" => Some(SmtpTls::StartTls),
                "tls" | "ssl" | "smtps" => Some(SmtpTls::Tls),
                "none" | "off" | "plain" => Some(SmtpTls::None),
                _ => None,
            })?;
            (m, r.source.clone())
        }
        None => (SmtpTls::StartTls, Source::Default),
    };
    let allow_insecure = match &insecure {
        Some(r) => parse_as(r, "smtp.allow_insecure", "true or false", parse_bool)?,
        None => false,
    };
    if mode == SmtpTls::None && !allow_insecure && !is_loopback_host(&host_name) {
        let origin = tls.as_ref().map(|r| r.origin("smtp.tls")).unwrap_or_else(|| "smtp.tls".into());
        return Err(Error::config(format!("{origin} = none sends mail and credentials to {host_name} unencrypted"))
            .with_hint("use SMTP_TLS=starttls or tls, or set SMTP_ALLOW_INSECURE=true if the network is trusted"));
    }
    record("smtp.tls", mode.as_str().into(), mode_src);
    if let Some(r) = &insecure {
        record("smtp.allow_insecure", allow_insecure.to_string(), r.source.clone());
    }

    let port_num = match &port {
        Some(r) => {
            let p = parse_as(r, "smtp.port", "a port number", |s| s.parse::<u16>().ok().filter(|p| *p > 0))?;
            record("smtp.port", p.to_string(), r.source.clone());
            p
        }
        None => {
            let p = mode.default_port();
            record("smtp.port", p.to_string(), Source::Derived(format!("default for smtp.tls = {}", mode.as_str())));
            p
        }
    };

    match (&user, &password) {
        (Some(u), Some(p)) => {
            record("smtp.user", u.value.clone(), u.source.clone());
            record("smtp.password", secret::REDACTED.into(), p.source.clone());
        }
        (None, None) => {}
        (Some(u), None) => {
            return Err(Error::config(format!("{} is set but no SMTP password is", u.origin("smtp.user")))
                .with_hint("set SMTP_PASSWORD too, or unset SMTP_USER to send without AUTH"));
        }
        (None, Some(p)) => {
            return Err(Error::config(format!("{} is set but no SMTP user is", p.origin("smtp.password"))).with_hint("set SMTP_USER too"));
        }
    }

    let from = match from {
        Some(r) => {
            let v = parse_as(&r, "smtp.from", "an email address", |s| (s.contains('@') && !s.contains(['\r', '\n'])).then(|| s.to_string()))?;
            record("smtp.from", v.clone(), r.source);
            Some(v)
        }
        None => {
            record("smtp.from", format!("pgkeep@{}", local_hostname()), Source::Derived("default: pgkeep@<hostname>".into()));
            None
        }
    };

    Ok(Some(SmtpSettings { host: host_name, port: port_num, tls: mode, user: user.map(|u| u.value), password: password.map(|p| Secret::new(p.value)), from }))
}

/// This machine's host name, or `localhost` when it cannot be read.
pub fn local_hostname() -> String {
    hostname::get().ok().and_then(|h| h.into_string().ok()).filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::super::{FlagValues, load};
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        m.insert("HOME".into(), "/nonexistent-home".into());
        m.insert("PGKEEP_CONFIG".into(), "/dev/null".into());
        m
    }

    fn line(e: crate::error::Error) -> String {
        e.user_line()
    }

    #[test]
    fn defaults_without_any_channel() {
        let s = load(&FlagValues::default(), &env(&[])).unwrap();
        assert!(!s.notify.on_success);
        assert!(s.notify.webhook_url.is_none());
        assert!(s.notify.smtp.is_none());
        assert_eq!(s.notify.timeout, Duration::from_secs(10));
    }

    #[test]
    fn smtp_from_env_with_defaults_and_redaction() {
        let e = env(&[
            ("NOTIFICATION_EMAIL", "ops@example.com"),
            ("SMTP_HOST", "mail.example.com"),
            ("SMTP_USER", "mailer"),
            ("SMTP_PASSWORD", "sm7p-pa55"),
            ("NOTIFY_WEBHOOK_URL", "https://hooks.example.com/pgkeep/tok3n-s3cret"),
            ("NOTIFY_ON_SUCCESS", "yes"),
            ("NOTIFY_TIMEOUT", "3s"),
        ]);
        let s = load(&FlagValues::default(), &e).unwrap();
        let smtp = s.notify.smtp.as_ref().unwrap();
        assert_eq!((smtp.host.as_str(), smtp.port, smtp.tls), ("mail.example.com", 587, SmtpTls::StartTls));
        assert_eq!(smtp.password.as_ref().unwrap().expose(), "sm7p-pa55");
        assert!(smtp.from.is_none());
        assert!(s.notify.on_success);
        assert_eq!(s.notify.timeout, Duration::from_secs(3));
        let out = format!("{}{}{s:?}", s.render_text(), s.render_json());
        for secret in ["sm7p-pa55", "tok3n-s3cret"] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        assert!(out.contains("smtp.password") && out.contains("notify.webhook_url"));
        assert!(s.render_text().contains("pgkeep@"), "default sender shown");
    }

    #[test]
    fn file_keys_and_tls_modes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgkeep.toml");
        std::fs::write(
            &p,
            "[notify]\nemail = 'a@b.c'\non_success = true\nwebhook_url = 'http://10.0.0.1/hook'\n[smtp]\nhost = 'smtp.b.c'\ntls = 'tls'\nfrom = 'backup@b.c'\n",
        )
        .unwrap();
        let mut e = env(&[]);
        e.remove("PGKEEP_CONFIG");
        let s = load(&FlagValues { config: Some(p), ..Default::default() }, &e).unwrap();
        let smtp = s.notify.smtp.unwrap();
        assert_eq!((smtp.port, smtp.tls, smtp.from.as_deref()), (465, SmtpTls::Tls, Some("backup@b.c")));
        assert!(s.notify.on_success);
        assert!(s.notify.webhook_url.is_some(), "plain http is fine for the generic webhook");
    }

    #[test]
    fn plaintext_smtp_only_on_loopback_or_when_allowed() {
        let base = [("NOTIFICATION_EMAIL", "a@b.c"), ("SMTP_TLS", "none")];
        let mut e = env(&base);
        e.insert("SMTP_HOST".into(), "mail.example.com".into());
        let err = line(load(&FlagValues::default(), &e).unwrap_err());
        assert!(err.contains("SMTP_TLS = none") && err.contains("SMTP_ALLOW_INSECURE"), "{err}");
        e.insert("SMTP_ALLOW_INSECURE".into(), "true".into());
        assert_eq!(load(&FlagValues::default(), &e).unwrap().notify.smtp.unwrap().port, 25);
        for host in ["localhost", "127.0.0.1", "::1", "[::1]"] {
            let mut e = env(&base);
            e.insert("SMTP_HOST".into(), host.into());
            assert!(load(&FlagValues::default(), &e).is_ok(), "{host}");
        }
    }

    #[test]
    fn unusable_combinations_are_config_errors() {
        let err = line(load(&FlagValues::default(), &env(&[("NOTIFICATION_EMAIL", "a@b.c")])).unwrap_err());
        assert!(err.contains("NOTIFICATION_EMAIL is set but no SMTP server") && err.contains("SMTP_HOST"), "{err}");
        let e = env(&[("NOTIFICATION_EMAIL", "a@b.c"), ("SMTP_HOST", "h"), ("SMTP_USER", "u")]);
        assert!(line(load(&FlagValues::default(), &e).unwrap_err()).contains("SMTP_PASSWORD"));
        let e = env(&[("NOTIFICATION_EMAIL", "a@b.c"), ("SMTP_HOST", "h"), ("SMTP_PORT", "99999")]);
        assert!(line(load(&FlagValues::default(), &e).unwrap_err()).contains("invalid value for SMTP_PORT"));
        let e = env(&[("NOTIFY_ON_SUCCESS", "sometimes")]);
        assert!(line(load(&FlagValues::default(), &e).unwrap_err()).contains("NOTIFY_ON_SUCCESS"));
    }

    #[test]
    fn bad_webhook_urls_are_named_not_echoed() {
        let e = env(&[("NOTIFY_WEBHOOK_URL", "not a url s3cret")]);
        let err = line(load(&FlagValues::default(), &e).unwrap_err());
        assert!(err.contains("NOTIFY_WEBHOOK_URL") && !err.contains("s3cret"), "{err}");
        let e = env(&[("SLACK_WEBHOOK_URL", "http://hooks.slack.com/services/T/B/s3cret")]);
        let err = line(load(&FlagValues::default(), &e).unwrap_err());
        assert!(err.contains("SLACK_WEBHOOK_URL") && err.contains("https") && !err.contains("s3cret"), "{err}");
        let e = env(&[("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/services/T/B/x")]);
        assert!(load(&FlagValues::default(), &e).is_ok(), "loopback http allowed for tests");
    }
}
