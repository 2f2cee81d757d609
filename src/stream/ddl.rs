//! Captured DDL: the transactional logical message that `pgkeep setup`'s
//! event trigger emits for every DDL command (docs/FORMAT.md §5).
//!
//! Logical decoding does not carry DDL. The event trigger calls
//! `pg_logical_emit_message(true, 'pgkeep.ddl', <json>)` at the end of each
//! top-level DDL statement, so the statement travels in the same
//! transaction, at the same position, as the catalog change it made; replay
//! runs it there again.

use serde::{Deserialize, Serialize};

/// The prefix of captured DDL messages.
pub const DDL_PREFIX: &str = "pgkeep.ddl";

/// The content of one captured DDL message (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DdlMessage {
    /// The statement text as the client sent it (`current_query()`).
    pub sql: String,
    /// `search_path` at the time, so unqualified names resolve the same way.
    #[serde(default)]
    pub search_path: String,
    /// The command tag (`CREATE TABLE`, `ALTER TABLE`, …).
    #[serde(default)]
    pub tag: String,
    /// The role that ran it.
    #[serde(default)]
    pub role: String,
}

impl DdlMessage {
    /// Parse a message's content; `None` when it is not a DDL message pgkeep can read.
    pub fn parse(content: &[u8]) -> Option<DdlMessage> {
        serde_json::from_slice(content).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_trigger_json_and_rejects_garbage() {
        let m = DdlMessage::parse(br#"{"sql":"ALTER TABLE t ADD c int","search_path":"\"$user\", public","tag":"ALTER TABLE","role":"app"}"#).unwrap();
        assert_eq!(m.tag, "ALTER TABLE");
        assert_eq!(m.sql, "ALTER TABLE t ADD c int");
        assert!(DdlMessage::parse(b"not json").is_none());
    }
}
