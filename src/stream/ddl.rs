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
    /// Hex `SHA-256(key || hex SHA-256(key || sql ␟ search_path ␟ tag ␟ role))`
    /// with the database's `pgkeep.ddl_key`: only `pgkeep setup`'s capture
    /// function can sign, and replay runs only what it signed (any role may
    /// call `pg_logical_emit_message`).
    #[serde(default)]
    pub mac: String,
}

impl DdlMessage {
    /// Parse a message's content; `None` when it is not a DDL message pgkeep can read.
    pub fn parse(content: &[u8]) -> Option<DdlMessage> {
        serde_json::from_slice(content).ok()
    }

    /// The MAC this message should carry under `key`.
    pub fn expected_mac(&self, key: &str) -> String {
        use sha2::{Digest, Sha256};
        let payload = format!("{}\u{1f}{}\u{1f}{}\u{1f}{}", self.sql, self.search_path, self.tag, self.role);
        let inner = hex::encode(Sha256::digest(format!("{key}{payload}").as_bytes()));
        hex::encode(Sha256::digest(format!("{key}{inner}").as_bytes()))
    }

    /// Whether the message was signed with `key`.
    pub fn is_signed_by(&self, key: &str) -> bool {
        let want = self.expected_mac(key);
        // Constant-time enough for a hex string of fixed length.
        want.len() == self.mac.len() && want.bytes().zip(self.mac.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
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
        let mut signed = m.clone();
        signed.mac = m.expected_mac("k1");
        assert!(signed.is_signed_by("k1"));
        assert!(!signed.is_signed_by("k2"));
        signed.sql.push(' ');
        assert!(!signed.is_signed_by("k1"), "a changed statement fails");
        assert!(!m.is_signed_by("k1"), "an unsigned message fails");
    }
}
