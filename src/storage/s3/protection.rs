//! Server-side protections of an S3 repository: server-side encryption
//! (SSE-S3 `AES256` or SSE-KMS with an optional key id) and object lock
//! (a retention mode and a retain-until date) on every object written, and
//! the rule that credentials and data only travel over HTTPS to a store
//! that is not on this machine.
//!
//! Object lock applies to backup data and change segments (`backups/`,
//! `changes/`), not to lock objects, audit records or probes, which pgkeep
//! must be able to rewrite and delete. The bucket must have object lock
//! enabled; pgkeep never shortens or removes a retention.

use chrono::{DateTime, Duration, Utc};

use crate::error::{Error, Result};

/// Server-side encryption of written objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// SSE-S3: `x-amz-server-side-encryption: AES256`.
    Aes256,
    /// SSE-KMS: `aws:kms`, with a key id or the bucket's default KMS key.
    Kms {
        /// `x-amz-server-side-encryption-aws-kms-key-id`, when set.
        key_id: Option<String>,
    },
}

/// Object lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete.
    Governance,
    /// Nobody, not even the root account, may delete before retain-until.
    Compliance,
}

impl LockMode {
    /// The header value: `GOVERNANCE` or `COMPLIANCE`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// Retention set on every backup object written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// Governance or compliance.
    pub mode: LockMode,
    /// Retain until the write time plus this many days.
    pub days: u32,
}

impl ObjectLock {
    /// Whether objects under `key` get the retention (backup data and segments).
    pub fn applies_to(key: &str) -> bool {
        key.starts_with("backups/") || key.starts_with("changes/")
    }

    /// The retain-until date of an object written at `at`.
    pub fn retain_until(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        at + Duration::days(i64::from(self.days))
    }
}

/// SSE, object lock and the HTTPS rule of one S3 repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Security {
    /// Server-side encryption requested on every write.
    pub sse: Option<Sse>,
    /// Retention set on backup objects.
    pub object_lock: Option<ObjectLock>,
    /// Allow `http://` endpoints that are not loopback (`S3_ALLOW_HTTP`).
    pub allow_http: bool,
}

impl S3Security {
    /// The `x-amz-server-side-encryption` value.
    pub(super) fn sse_header(&self) -> Option<aws_sdk_s3::types::ServerSideEncryption> {
        use aws_sdk_s3::types::ServerSideEncryption as S;
        self.sse.as_ref().map(|s| match s {
            Sse::Aes256 => S::Aes256,
            Sse::Kms { .. } => S::AwsKms,
        })
    }

    /// The KMS key id, for SSE-KMS with a key id.
    pub(super) fn kms_key_id(&self) -> Option<String> {
        match &self.sse {
            Some(Sse::Kms { key_id }) => key_id.clone(),
            _ => None,
        }
    }

    /// Mode and retain-until for an object written now under `key`, if locked.
    pub(super) fn lock_for(&self, key: &str) -> Option<(aws_sdk_s3::types::ObjectLockMode, aws_sdk_s3::primitives::DateTime)> {
        use aws_sdk_s3::types::ObjectLockMode as M;
        let lock = self.object_lock.filter(|_| ObjectLock::applies_to(key))?;
        let until = lock.retain_until(Utc::now());
        let mode = match lock.mode {
            LockMode::Governance => M::Governance,
            LockMode::Compliance => M::Compliance,
        };
        Some((mode, aws_sdk_s3::primitives::DateTime::from_secs(until.timestamp())))
    }
}

/// Refuse a plain-HTTP endpoint that is not on this machine, unless allowed:
/// credentials would be signed in the clear and data sent unencrypted.
pub fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<()> {
    let Ok(url) = url::Url::parse(endpoint) else {
        return Ok(()); // reported as an invalid endpoint by the caller
    };
    if url.scheme() != "http" || allow_http {
        return Ok(());
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if loopback {
        return Ok(());
    }
    let shown = format!("http://{}{}", url.host_str().unwrap_or(""), url.port().map(|p| format!(":{p}")).unwrap_or_default());
    Err(Error::config(format!("S3 endpoint {shown} uses plain HTTP; pgkeep requires HTTPS for a store that is not on this machine"))
        .with_hint("use an https:// endpoint, or set S3_ALLOW_HTTP=true (--allow-http) for a trusted network"))
}

/// Parse `AES256` / `aws:kms` (case-insensitive).
pub fn parse_sse(value: &str, kms_key_id: Option<String>) -> Option<Sse> {
    match value.trim().to_ascii_lowercase().as_str() {
        "aes256" | "sse-s3" => Some(Sse::Aes256),
        "aws:kms" | "kms" | "sse-kms" => Some(Sse::Kms { key_id: kms_key_id }),
        _ => None,
    }
}

/// Parse `GOVERNANCE` / `COMPLIANCE` (case-insensitive).
pub fn parse_lock_mode(value: &str) -> Option<LockMode> {
    match value.trim().to_ascii_uppercase().as_str() {
        "GOVERNANCE" => Some(LockMode::Governance),
        "COMPLIANCE" => Some(LockMode::Compliance),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_only_to_loopback_unless_allowed() {
        assert!(check_endpoint("https://s3.example.com", false).is_ok());
        assert!(check_endpoint("http://127.0.0.1:3900", false).is_ok());
        assert!(check_endpoint("http://localhost:9000", false).is_ok());
        assert!(check_endpoint("http://[::1]:9000", false).is_ok());
        let e = check_endpoint("http://user:secret@minio.internal:9000/x", false).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        let line = e.user_line();
        assert!(line.contains("http://minio.internal:9000") && !line.contains("secret"), "{line}");
        assert!(line.contains("S3_ALLOW_HTTP"), "{line}");
        assert!(check_endpoint("http://minio.internal:9000", true).is_ok());
    }

    #[test]
    fn parsing_and_scope() {
        assert_eq!(parse_sse("AES256", None), Some(Sse::Aes256));
        assert_eq!(parse_sse("aws:kms", Some("k".into())), Some(Sse::Kms { key_id: Some("k".into()) }));
        assert_eq!(parse_sse("rot13", None), None);
        assert_eq!(parse_lock_mode("governance"), Some(LockMode::Governance));
        assert_eq!(parse_lock_mode("x"), None);
        assert!(ObjectLock::applies_to("backups/full_backup_20260101_000000/manifest.json"));
        assert!(ObjectLock::applies_to("changes/1-s/0000000000000001-0000000000000002.seg"));
        assert!(!ObjectLock::applies_to("locks/backup-abc.json"));
        assert!(!ObjectLock::applies_to("audit/x.json"));
        let sec = S3Security { object_lock: Some(ObjectLock { mode: LockMode::Compliance, days: 7 }), ..Default::default() };
        assert!(sec.lock_for("locks/x.json").is_none());
        assert!(sec.lock_for("backups/x/data/w01-000001.pack").is_some());
    }
}
