//! Noticing schema changes the archive has no DDL for (pure).
//!
//! Logical decoding does not carry DDL; `pgkeep setup`'s event trigger puts
//! each DDL statement into the stream as a `pgkeep.ddl` message
//! ([`super::ddl`]). pgoutput sends a table's Relation message again after
//! its definition changed. When that new Relation message differs from the
//! previous one of this session (column names, types, type modifiers or
//! flags, or the table's name or schema) and no `pgkeep.ddl` message came
//! in between, the change was not captured: replay cannot go past it from
//! an older base backup, so `pgkeep stream` warns and takes a new one.

use std::collections::HashMap;

use crate::pg::catalog::qualified;
use crate::replication::pgoutput::{Oid, Relation};
use crate::repo::layout::Lsn;

/// The parts of a Relation message that describe the table's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    namespace: String,
    name: String,
    /// (name, type oid, type modifier, flags) per column.
    columns: Vec<(String, Oid, i32, u8)>,
}

impl Shape {
    fn of(r: &Relation) -> Shape {
        Shape {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            columns: r.columns.iter().map(|c| (c.name.clone(), c.type_oid, c.type_modifier, c.flags)).collect(),
        }
    }
}

/// A table whose definition changed without a captured DDL statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncapturedChange {
    /// `"schema"."name"` as it is now.
    pub table: String,
    /// Its previous name, when that changed.
    pub previous_name: Option<String>,
    /// Whether its columns changed (names, types or key flags).
    pub columns_changed: bool,
    /// Commit LSN of the transaction that first used the new definition.
    pub lsn: Lsn,
}

/// Relation shapes and DDL messages seen in one replication session.
#[derive(Debug, Default)]
pub struct SchemaWatch {
    /// Per relation: its last shape, and the DDL message count when it came.
    relations: HashMap<Oid, (Shape, u64)>,
    ddl_messages: u64,
}

impl SchemaWatch {
    /// A `pgkeep.ddl` message went by.
    pub fn ddl_message(&mut self) {
        self.ddl_messages += 1;
    }

    /// A Relation message went by in the transaction committing at `lsn`.
    /// Returns the change when it differs from the previous one of this
    /// relation and no DDL message came in between.
    pub fn relation(&mut self, r: &Relation, lsn: Lsn) -> Option<UncapturedChange> {
        let shape = Shape::of(r);
        let previous = self.relations.insert(r.id, (shape.clone(), self.ddl_messages));
        let (old, ddl_then) = previous?;
        if old == shape || ddl_then != self.ddl_messages {
            return None;
        }
        let renamed = (old.namespace != shape.namespace || old.name != shape.name).then(|| qualified(&old.namespace, &old.name));
        Some(UncapturedChange { table: qualified(&shape.namespace, &shape.name), previous_name: renamed, columns_changed: old.columns != shape.columns, lsn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{Column, ReplicaIdentity};

    fn rel(name: &str, cols: &[(&str, Oid)]) -> Relation {
        Relation {
            id: 7,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: cols.iter().map(|(n, t)| Column { flags: 0, name: (*n).into(), type_oid: *t, type_modifier: -1 }).collect(),
        }
    }

    #[test]
    fn a_changed_relation_without_ddl_is_reported_once() {
        let mut w = SchemaWatch::default();
        assert_eq!(w.relation(&rel("t", &[("a", 23)]), Lsn(1)), None, "first sight");
        assert_eq!(w.relation(&rel("t", &[("a", 23)]), Lsn(2)), None, "resent unchanged");
        let change = w.relation(&rel("t", &[("a", 23), ("b", 25)]), Lsn(3)).unwrap();
        assert_eq!(change, UncapturedChange { table: r#""public"."t""#.into(), previous_name: None, columns_changed: true, lsn: Lsn(3) });
        assert_eq!(w.relation(&rel("t", &[("a", 23), ("b", 25)]), Lsn(4)), None);
        let renamed = w.relation(&rel("u", &[("a", 23), ("b", 25)]), Lsn(5)).unwrap();
        assert_eq!(renamed.previous_name.as_deref(), Some(r#""public"."t""#));
        assert!(!renamed.columns_changed);
    }

    #[test]
    fn a_ddl_message_in_between_covers_the_change() {
        let mut w = SchemaWatch::default();
        w.relation(&rel("t", &[("a", 23)]), Lsn(1));
        w.ddl_message();
        assert_eq!(w.relation(&rel("t", &[("a", 20)]), Lsn(2)), None);
        // The next change needs its own message.
        assert!(w.relation(&rel("t", &[("a", 21)]), Lsn(3)).is_some());
    }
}
