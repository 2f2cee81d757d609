//! S3 protection settings: server-side encryption, object lock and the
//! HTTPS rule, applied to every S3 repository (`[s3]`, `S3_BUCKET` and
//! `--repo s3://…` alike).
//!
//! | setting | flag | environment | file key |
//! |---|---|---|---|
//! | SSE (`AES256`, `aws:kms`) | `--s3-sse` | `S3_SSE` | `s3.sse` |
//! | SSE-KMS key id | `--s3-sse-kms-key-id` | `S3_SSE_KMS_KEY_ID` | `s3.sse_kms_key_id` |
//! | object lock mode (`GOVERNANCE`, `COMPLIANCE`) | `--s3-object-lock-mode` | `S3_OBJECT_LOCK_MODE` | `s3.object_lock_mode` |
//! | retain for N days | `--s3-object-lock-days` | `S3_OBJECT_LOCK_DAYS` | `s3.object_lock_days` |
//! | allow plain HTTP to a non-loopback endpoint | `--allow-http` | `S3_ALLOW_HTTP` | `s3.allow_http` |

use super::layers::{Layers, Source, parse_as, parse_bool};
use crate::error::{Error, Result};
use crate::storage::s3::protection::{self, ObjectLock, S3Security, Sse};

/// Resolve the S3 protections and record their provenance.
pub(super) fn resolve(layers: &Layers<'_>, record: &mut dyn FnMut(&'static str, String, Source)) -> Result<S3Security> {
    let mut out = S3Security::default();
    let kms_key = layers.get("s3.sse_kms_key_id", &["S3_SSE_KMS_KEY_ID"]);
    match layers.get("s3.sse", &["S3_SSE"]) {
        Some(r) => {
            let sse = parse_as(&r, "s3.sse", "AES256 or aws:kms", |s| protection::parse_sse(s, kms_key.as_ref().map(|k| k.value.clone())))?;
            record("s3.sse", r.value.clone(), r.source.clone());
            if let Some(k) = &kms_key {
                if sse == Sse::Aes256 {
                    return Err(Error::config(format!("{} is set but {} is AES256, not aws:kms", k.origin("s3.sse_kms_key_id"), r.origin("s3.sse"))));
                }
                record("s3.sse_kms_key_id", k.value.clone(), k.source.clone());
            }
            out.sse = Some(sse);
        }
        None if kms_key.is_some() => {
            let k = kms_key.expect("checked");
            return Err(Error::config(format!("{} is set without S3_SSE=aws:kms", k.origin("s3.sse_kms_key_id"))).with_hint("set S3_SSE=aws:kms (s3.sse)"));
        }
        None => {}
    }
    let mode = layers.get("s3.object_lock_mode", &["S3_OBJECT_LOCK_MODE"]);
    let days = layers.get("s3.object_lock_days", &["S3_OBJECT_LOCK_DAYS"]);
    match (mode, days) {
        (Some(m), Some(d)) => {
            let mode = parse_as(&m, "s3.object_lock_mode", "GOVERNANCE or COMPLIANCE", protection::parse_lock_mode)?;
            let days = parse_as(&d, "s3.object_lock_days", "a number of days from 1 to 36500", |s| s.parse::<u32>().ok().filter(|n| (1..=36500).contains(n)))?;
            record("s3.object_lock_mode", mode.as_str().into(), m.source.clone());
            record("s3.object_lock_days", days.to_string(), d.source.clone());
            out.object_lock = Some(ObjectLock { mode, days });
        }
        (Some(r), None) | (None, Some(r)) => {
            return Err(Error::config(format!(
                "object lock needs both S3_OBJECT_LOCK_MODE and S3_OBJECT_LOCK_DAYS; only {} is set",
                r.origin("s3.object_lock_*")
            )));
        }
        (None, None) => {}
    }
    if let Some(r) = layers.get("s3.allow_http", &["S3_ALLOW_HTTP"]) {
        out.allow_http = parse_as(&r, "s3.allow_http", "true or false", parse_bool)?;
        record("s3.allow_http", out.allow_http.to_string(), r.source.clone());
    }
    Ok(out)
}
