//! Changes the archive cannot reproduce exactly, and where they are marked
//! (pure).
//!
//! Logical decoding carries row changes, not what a DDL statement did to
//! existing rows: a table rewrite (a volatile default, an identity or serial
//! column added, `ALTER … TYPE`, `SET LOGGED`), a fast default whose value
//! was computed on the source (`DEFAULT now()`), the rows of `CREATE TABLE
//! AS` / `SELECT INTO`, and anything a function or DO block did (its
//! statements are not in the captured query string). Running the captured
//! statement again on a restore gives other values, so such a change is
//! marked, and replay refuses a target past the mark from a base before it
//! (unless the user accepts it, `--accept-inexact`).
//!
//! Where the marks come from:
//! - `pgkeep setup`'s capture, in the DDL's own transaction:
//!   `pgkeep.inexact` messages ([`InexactMessage`]) from the `table_rewrite`
//!   event trigger, and one `pgkeep.command` message ([`CommandMessage`])
//!   per DDL command, naming its tables and what the capture found
//!   inexact (non-constant fast defaults, CTAS);
//! - the archiver, from those: a command whose tag has no statement in the
//!   captured query string ran inside a function or DO block
//!   ([`TransactionDdl`]); a table whose definition changed without
//!   captured DDL ([`super::schema_watch`]).
//!
//! Every mark of a stored transaction is recorded in its segment's metadata
//! (`inexact`, docs/FORMAT.md §5) as an [`InexactMark`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::layout::Lsn;

/// Prefix of the rewrite trigger's messages.
pub const INEXACT_PREFIX: &str = "pgkeep.inexact";
/// Prefix of the per-command messages of the DDL capture.
pub const COMMAND_PREFIX: &str = "pgkeep.command";
/// Prefix of the capture's fast-default values ([`MissingValue`]).
pub const MISSING_PREFIX: &str = "pgkeep.missing";
/// Prefix of the capture's plain partitions ([`PartitionMessage`]).
pub const PARTITION_PREFIX: &str = "pgkeep.partition";

/// A `pgkeep.partition` message: a partition created with nothing of its
/// own (columns, constraints, indexes and options all from its parent),
/// so `CREATE TABLE schema.table PARTITION OF parent_schema.parent bound`
/// creates it again exactly — also when a function created it, whose
/// statement replay cannot see. Signed like captured DDL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMessage {
    /// The partition's schema.
    pub schema: String,
    /// The partition.
    pub table: String,
    /// The parent's schema.
    pub parent_schema: String,
    /// The parent.
    pub parent: String,
    /// `pg_get_expr(relpartbound)`: `FOR VALUES …` or `DEFAULT`.
    pub bound: String,
    /// Hex `SHA-256(key || hex SHA-256(key || "pgkeep.partition" ␟ schema ␟ table ␟ parent_schema ␟ parent ␟ bound))`.
    #[serde(default)]
    pub mac: String,
}

impl PartitionMessage {
    /// Parse a message's content.
    pub fn parse(content: &[u8]) -> Option<PartitionMessage> {
        serde_json::from_slice(content).ok()
    }

    /// Whether the message was signed with `key`.
    pub fn is_signed_by(&self, key: &str) -> bool {
        signed(&[PARTITION_PREFIX, &self.schema, &self.table, &self.parent_schema, &self.parent, &self.bound], key, &self.mac)
    }

    /// `schema.table`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// Hex `SHA-256(key || hex SHA-256(key || fields joined by ␟))`.
fn mac_of(fields: &[&str], key: &str) -> String {
    use sha2::{Digest, Sha256};
    let payload = fields.join("\u{1f}");
    let inner = hex::encode(Sha256::digest(format!("{key}{payload}").as_bytes()));
    hex::encode(Sha256::digest(format!("{key}{inner}").as_bytes()))
}

fn signed(fields: &[&str], key: &str, mac: &str) -> bool {
    let want = mac_of(fields, key);
    want.len() == mac.len() && want.bytes().zip(mac.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// A `pgkeep.missing` message: the value a column added with a fast
/// default that is not immutable (`DEFAULT now()`) stored for the rows
/// that existed (the catalog's `attmissingval`, as ISO text in UTC). Replay
/// writes it into those rows right after the `ALTER TABLE`, which makes
/// the change exact; signed like captured DDL, since replay writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingValue {
    /// The table's schema.
    pub schema: String,
    /// The table (a leaf partition for a partitioned one).
    pub table: String,
    /// The column.
    pub column: String,
    /// Its value for the existing rows, in the type's text form.
    pub value: String,
    /// Hex `SHA-256(key || hex SHA-256(key || "pgkeep.missing" ␟ schema ␟ table ␟ column ␟ value))`.
    #[serde(default)]
    pub mac: String,
}

impl MissingValue {
    /// Parse a message's content.
    pub fn parse(content: &[u8]) -> Option<MissingValue> {
        serde_json::from_slice(content).ok()
    }

    /// The MAC this message should carry under `key`.
    pub fn expected_mac(&self, key: &str) -> String {
        mac_of(&[MISSING_PREFIX, &self.schema, &self.table, &self.column, &self.value], key)
    }

    /// Whether the message was signed with `key`.
    pub fn is_signed_by(&self, key: &str) -> bool {
        signed(&[MISSING_PREFIX, &self.schema, &self.table, &self.column, &self.value], key, &self.mac)
    }
}

/// A table the archive cannot reproduce from the transaction that
/// committed at `lsn` on, until a newer base (full backup) covers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InexactMark {
    /// `schema.name` of the table (`*`: unknown, every table).
    pub table: String,
    /// Why, in a few words.
    pub reason: String,
    /// Commit LSN of the transaction that made the change.
    pub lsn: Lsn,
    /// Its commit time.
    pub time: Option<DateTime<Utc>>,
}

/// A `pgkeep.inexact` message: the rewrite trigger's finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InexactMessage {
    /// `schema.name`.
    pub table: String,
    /// Why.
    pub reason: String,
}

/// A `pgkeep.command` message: one DDL command, as the capture saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommandMessage {
    /// The command tag (`CREATE TABLE`, `ALTER TABLE`, …).
    pub tag: String,
    /// `schema.name` of the tables the command created or changed.
    #[serde(default)]
    pub tables: Vec<String>,
    /// What the capture found inexact.
    #[serde(default)]
    pub inexact: Vec<InexactMessage>,
}

impl InexactMessage {
    /// Parse a message's content.
    pub fn parse(content: &[u8]) -> Option<InexactMessage> {
        serde_json::from_slice(content).ok()
    }
}

impl CommandMessage {
    /// Parse a message's content.
    pub fn parse(content: &[u8]) -> Option<CommandMessage> {
        serde_json::from_slice(content).ok()
    }
}

/// The DDL of one transaction as the archiver receives it: the captured
/// query strings and the commands that came with them.
#[derive(Debug, Default)]
pub struct TransactionDdl {
    /// The last captured query string.
    sql: Option<String>,
    /// Commands seen per (query string, tag).
    seen: HashMap<(String, String), usize>,
    /// (table, reason) found so far.
    marks: Vec<(String, String)>,
    /// Partitions replay can create from their bound (`pgkeep.partition`).
    partitions: Vec<String>,
}

impl TransactionDdl {
    /// A `pgkeep.ddl` message with query string `sql`.
    pub fn ddl(&mut self, sql: &str) {
        self.sql = Some(sql.to_string());
    }

    /// A `pgkeep.partition` message: replay creates that partition, also
    /// when a function created it.
    pub fn partition(&mut self, p: &PartitionMessage) {
        self.partitions.push(p.name());
    }

    /// A `pgkeep.inexact` message.
    pub fn inexact(&mut self, m: InexactMessage) {
        self.mark(m.table, m.reason);
    }

    /// A `pgkeep.command` message. A command is one of the captured string's
    /// statements only while the string holds more statements of its tag
    /// than commands of that tag came: a further one ran inside a function,
    /// procedure or DO block, whose statements replay cannot see.
    pub fn command(&mut self, c: CommandMessage) {
        for m in c.inexact {
            self.mark(m.table, m.reason);
        }
        let sql = self.sql.clone().unwrap_or_default();
        let n = self.seen.entry((sql.clone(), c.tag.clone())).or_insert(0);
        *n += 1;
        if *n > statements_of_tag(&sql, &c.tag) {
            let reason = format!("{} ran inside a function, procedure or DO block (not replayable from the captured statement)", c.tag);
            // A plain partition is created again from its bound: only a CREATE TABLE of nothing else is exact.
            let recreated = c.tag == "CREATE TABLE" && !c.tables.is_empty() && c.tables.iter().all(|t| self.partitions.contains(t));
            if c.tables.is_empty() {
                self.mark("*".into(), reason);
            } else if !recreated {
                for t in c.tables {
                    self.mark(t, reason.clone());
                }
            }
        }
    }

    /// The table's definition changed without captured DDL.
    pub fn schema_changed(&mut self, table: String) {
        self.mark(table, "its definition changed without captured DDL (no `pgkeep setup`, or a role whose DDL is not captured)".into());
    }

    fn mark(&mut self, table: String, reason: String) {
        if !self.marks.iter().any(|(t, r)| *t == table && *r == reason) {
            self.marks.push((table, reason));
        }
    }

    /// The marks of the transaction, as it committed at `lsn` / `time`.
    pub fn finish(self, lsn: Lsn, time: Option<DateTime<Utc>>) -> Vec<InexactMark> {
        self.marks.into_iter().map(|(table, reason)| InexactMark { table, reason, lsn, time }).collect()
    }

    /// Whether anything was marked.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

/// How many statements of `sql` can have produced a command tagged `tag`:
/// the statement's first word is the tag's, and the tag's other words come
/// among its next few words (`CREATE UNIQUE INDEX CONCURRENTLY` for
/// `CREATE INDEX`, `SELECT * INTO` for `SELECT INTO`).
pub fn statements_of_tag(sql: &str, tag: &str) -> usize {
    let tag_words: Vec<String> = tag.split_whitespace().map(str::to_ascii_uppercase).collect();
    let Some((first, rest)) = tag_words.split_first() else {
        return 0;
    };
    crate::pg::split::split_statements(sql)
        .into_iter()
        .filter(|stmt| {
            let words = leading_words(stmt, 12);
            words.first() == Some(first) && rest.iter().all(|w| words[1..].contains(w))
        })
        .count()
}

/// The first `n` words (letters only, upper case) of a statement, after
/// leading comments.
fn leading_words(stmt: &str, n: usize) -> Vec<String> {
    let mut s = stmt.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i + 1..]).trim_start();
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.find("*/").map_or("", |i| &rest[i + 2..]).trim_start();
        } else {
            break;
        }
    }
    s.split(|c: char| !c.is_ascii_alphabetic() && c != '_').filter(|w| !w.is_empty()).take(n).map(str::to_ascii_uppercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(tag: &str, tables: &[&str]) -> CommandMessage {
        CommandMessage { tag: tag.into(), tables: tables.iter().map(|t| t.to_string()).collect(), inexact: Vec::new() }
    }

    #[test]
    fn missing_values_are_signed_over_every_field() {
        let mut m = MissingValue::parse(br#"{"schema":"public","table":"t","column":"at","value":"2026-12-04 21:00:00+00"}"#).unwrap();
        assert!(!m.is_signed_by("k"), "unsigned");
        m.mac = m.expected_mac("k");
        assert!(m.is_signed_by("k") && !m.is_signed_by("k2"));
        m.value.push('1');
        assert!(!m.is_signed_by("k"), "a changed value fails");
    }

    #[test]
    fn a_plain_partition_created_by_a_function_is_not_marked() {
        let mut t = TransactionDdl::default();
        t.ddl("SELECT make_partition('2026-12-01')");
        let p = PartitionMessage::parse(
            br#"{"schema":"public","table":"events_2026_12","parent_schema":"public","parent":"events","bound":"FOR VALUES FROM ('2026-12-01') TO ('2027-01-01')"}"#,
        )
        .unwrap();
        assert!(!p.is_signed_by("k"));
        t.partition(&p);
        t.command(cmd("CREATE TABLE", &["public.events_2026_12"]));
        assert!(t.is_empty());
        t.command(cmd("CREATE INDEX", &["public.events_2026_12"]));
        assert_eq!(t.finish(Lsn(1), None).len(), 1, "anything else the function did is marked");
    }

    #[test]
    fn counts_the_statements_that_can_carry_a_tag() {
        let sql = "BEGIN; CREATE UNIQUE INDEX CONCURRENTLY i ON t (a); /* x */ create table n as select 1; SELECT * INTO c FROM t; SELECT f(); COMMIT";
        assert_eq!(statements_of_tag(sql, "CREATE INDEX"), 1);
        assert_eq!(statements_of_tag(sql, "CREATE TABLE AS"), 1);
        assert_eq!(statements_of_tag(sql, "SELECT INTO"), 1);
        assert_eq!(statements_of_tag(sql, "ALTER TABLE"), 0);
        assert_eq!(statements_of_tag("DO $$ BEGIN EXECUTE 'CREATE TABLE x ()'; END $$", "CREATE TABLE"), 0);
        assert_eq!(statements_of_tag("", "CREATE TABLE"), 0);
    }

    #[test]
    fn a_command_without_its_statement_ran_inside_a_function() {
        let mut t = TransactionDdl::default();
        t.ddl("ALTER TABLE a ADD x int; SELECT make_partition('2026_12')");
        t.command(cmd("ALTER TABLE", &["public.a"]));
        assert!(t.is_empty(), "the ALTER is in the string");
        t.command(cmd("CREATE TABLE", &["public.p_2026_12"]));
        t.command(cmd("ALTER TABLE", &["public.b"]));
        let marks = t.finish(Lsn(7), None);
        assert_eq!(marks.iter().map(|m| m.table.as_str()).collect::<Vec<_>>(), ["public.p_2026_12", "public.b"]);
        assert!(marks.iter().all(|m| m.lsn == Lsn(7) && m.reason.contains("inside a function")));
    }

    #[test]
    fn capture_and_rewrite_findings_become_marks_once() {
        let mut t = TransactionDdl::default();
        t.ddl("ALTER TABLE t ADD c timestamptz DEFAULT now()");
        let found = InexactMessage { table: "public.t".into(), reason: "fast default".into() };
        t.command(CommandMessage { tag: "ALTER TABLE".into(), tables: vec!["public.t".into()], inexact: vec![found.clone()] });
        t.inexact(found);
        t.command(cmd("DROP TABLE", &[]));
        let marks = t.finish(Lsn(1), None);
        assert_eq!(marks.len(), 2, "{marks:?}");
        assert_eq!(marks[1].table, "*", "a command without tables outside the string marks every table");
        assert!(CommandMessage::parse(br#"{"tag":"CREATE TABLE"}"#).is_some());
        assert!(InexactMessage::parse(b"{").is_none());
    }
}
