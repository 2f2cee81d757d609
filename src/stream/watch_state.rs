//! What `pgkeep stream`'s checks saw last, kept for the next run
//! (docs/FORMAT.md §5.3): the table definitions of the catalog watch
//! ([`super::catalog_watch`]) and the UPDATE + DELETE counts of tables
//! without a replica identity ([`super::write_watch`]), with the server's
//! position then.
//!
//! Without it, each run's first check only learns, so a definition changed
//! without captured DDL, or an UPDATE of a table without a replica identity,
//! made while no stream ran was never noticed, and a replay across it was
//! silently wrong. A run seeded from the kept state finds such a change at
//! its first check, dated from the kept position.
//!
//! Kept in every repository as `stream-state/<system-id>-<slot>.watch.json`,
//! written when it changed (after a check) and when the stream stops. A
//! missing or unreadable object is no error: the run starts by learning, as
//! before.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::catalog_watch::Shape;
use crate::error::ErrorKind;
use crate::repo::layout::{Lsn, STREAM_STATE_PREFIX};
use crate::storage::Storage;

/// The kept state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchState {
    /// The server's position (and clock) at the check that saw this:
    /// changes after it are compared.
    pub at: Lsn,
    /// The server's clock then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Where an UPDATE or DELETE counted after `at` may have been made
    /// (statistics lag): the write watch's cover start then.
    pub writes_since: Lsn,
    /// Its clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_since_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Table oid → `[schema, name, fingerprint, [ancestor…]]`.
    #[serde(default)]
    pub shapes: HashMap<u32, Shape>,
    /// Table oid → `n_tup_upd + n_tup_del`, for tables of the insert-only publication.
    #[serde(default)]
    pub writes: HashMap<i64, i64>,
}

/// Where the state is kept.
#[derive(Clone)]
pub struct WatchLog {
    repos: Vec<Arc<dyn Storage>>,
    key: String,
}

impl WatchLog {
    /// The state of stream `base` (`<system_identifier>-<slot>`) in `repos`.
    pub fn new(repos: &[Arc<dyn Storage>], base: &str) -> WatchLog {
        WatchLog { repos: repos.to_vec(), key: format!("{STREAM_STATE_PREFIX}{base}.watch.json") }
    }

    /// The kept state with the newest position in any repository; `None`
    /// when there is none (or none readable: a warning).
    pub async fn load(&self) -> Option<WatchState> {
        let mut best: Option<WatchState> = None;
        for repo in &self.repos {
            match repo.get(&self.key, None).await {
                Ok(bytes) => match serde_json::from_slice::<WatchState>(&bytes) {
                    Ok(s) if best.as_ref().is_none_or(|b| s.at > b.at) => best = Some(s),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(key = %self.key, repository = %repo.location(), error = %e, "unreadable state of the last checks; ignored"),
                },
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(key = %self.key, repository = %repo.location(), error = %e.user_line(), "cannot read the state of the last checks"),
            }
        }
        best
    }

    /// Write `state` to every repository; whether every write succeeded
    /// (a failure is a warning: written again next time).
    pub async fn save(&self, state: &WatchState) -> bool {
        let Ok(body) = serde_json::to_vec(state) else { return false };
        crate::repo::meta::put_all(&self.repos, &self.key, body.into(), "the state of the last checks").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_round_trip_through_json() {
        let shapes: HashMap<u32, Shape> = [
            (1, ("public".to_string(), "a".to_string(), "f1".to_string(), vec![])),
            (2, ("s".to_string(), "part".to_string(), "f2".to_string(), vec!["s.parent".to_string(), "s.root".to_string()])),
        ]
        .into();
        let st = WatchState { at: Lsn(9), at_time: None, writes_since: Lsn(3), writes_since_time: None, shapes, writes: [(7, 4)].into() };
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains(r#""2":["s","part","f2",["s.parent","s.root"]]"#), "{json}");
        assert_eq!(serde_json::from_str::<WatchState>(&json).unwrap(), st);
    }
}
