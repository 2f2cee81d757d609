//! The audit trail: one JSON object per operation that changes a database or
//! a repository (restore, swap, rollback, expire, drill), written to every
//! repository under `audit/<YYYYMMDD_HHMMSS>_<operation>_<nonce>.json`, with
//! who ran it (OS user, host, pgkeep version) and what it did. Backups carry
//! the same facts in their manifest (`started_by`). Recording is best
//! effort: a repository that refuses the record is logged, never fatal.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::AUDIT_PREFIX;
use super::manifest::RunInfo;
use crate::storage::{PutOptions, Storage};

/// One audit record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the operation finished.
    pub at: DateTime<Utc>,
    /// `restore`, `swap`, `rollback`, `expire`, `drill`…
    pub operation: String,
    /// Who ran it.
    pub run_by: RunInfo,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it did (operation specific; never secrets or row data).
    pub details: serde_json::Value,
}

/// Write an audit record to every repository (best effort). Returns its key.
pub async fn record(repos: &[Arc<dyn Storage>], operation: &str, ok: bool, details: serde_json::Value) -> String {
    let rec = AuditRecord { at: Utc::now(), operation: operation.to_string(), run_by: RunInfo::current(), ok, details };
    let key = format!("{AUDIT_PREFIX}{}_{operation}_{:06x}.json", rec.at.format("%Y%m%d_%H%M%S"), rand::random::<u32>() & 0xff_ffff);
    tracing::info!(operation, ok, key = %key, user = %rec.run_by.os_user, host = %rec.run_by.host, "audit");
    let body = match serde_json::to_vec_pretty(&rec) {
        Ok(b) => Bytes::from(b),
        Err(_) => return key,
    };
    for r in repos {
        if let Err(e) = r.put(&key, body.clone(), PutOptions::default()).await {
            tracing::warn!(repo = %r.location(), error = %e.user_line(), "audit record not written");
        }
    }
    key
}

/// Every audit record of a repository, oldest first (unparsable ones skipped).
pub async fn list(storage: &dyn Storage) -> crate::error::Result<Vec<AuditRecord>> {
    let mut out = Vec::new();
    for o in storage.list(AUDIT_PREFIX).await? {
        if let Ok(bytes) = storage.get(&o.key, None).await
            && let Ok(rec) = serde_json::from_slice::<AuditRecord>(&bytes)
        {
            out.push(rec);
        }
    }
    Ok(out)
}
