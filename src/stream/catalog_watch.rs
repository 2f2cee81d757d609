//! Schema changes found in the catalog (pure, but for the query text).
//!
//! A table's definition can change with nothing in the archive showing it:
//! DDL without `pgkeep setup`, or by a role whose event triggers do not
//! fire (a provider's reserved roles run the platform's migrations), and no
//! row change of the table afterwards to carry a new Relation message
//! ([`super::schema_watch`] catches those that have one). Replay would
//! then restore the old definition for every target after it: silently
//! wrong.
//!
//! So at every publication check the stream reads a fingerprint of every
//! table's definition ([`SHAPES_SQL`]: columns with types, defaults,
//! identity and generation, constraints, indexes, persistence, replica
//! identity) and compares it with the previous check's. A change becomes a
//! *suspect*, dated from the check before (it happened after that); one
//! check later, when no captured DDL command named the table meanwhile
//! (its message may lag behind the catalog), it is confirmed: the stream
//! takes a table image, whose `unseen` cover makes replay refuse targets
//! from that point until the image and put the image in place after it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::repo::layout::Lsn;

/// One row per ordinary table or leaf partition outside the system and
/// pgkeep's schemas: oid, schema, name, an md5 of its definition, and its
/// ancestors (`schema.name`, comma-separated: a captured command on a
/// parent changes its partitions and inheritance children too).
pub const SHAPES_SQL: &str = "\
SELECT c.oid, n.nspname::text, c.relname::text, md5(concat_ws('|', c.relpersistence, c.relreplident, \
  (SELECT string_agg(concat_ws(':', a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                               a.attidentity, a.attgenerated, a.attisdropped, pg_get_expr(d.adbin, d.adrelid)), ',' ORDER BY a.attnum) \
     FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
    WHERE a.attrelid = c.oid AND a.attnum > 0), \
  (SELECT string_agg(pg_get_constraintdef(x.oid), ',' ORDER BY x.conname) FROM pg_constraint x WHERE x.conrelid = c.oid), \
  (SELECT string_agg(pg_get_indexdef(i.indexrelid), ',' ORDER BY 1) FROM pg_index i WHERE i.indrelid = c.oid))), \
  coalesce((WITH RECURSIVE up(oid) AS (SELECT inhparent FROM pg_inherits WHERE inhrelid = c.oid \
                                       UNION SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.oid) \
            SELECT string_agg(pn.nspname || '.' || p.relname, ',') FROM up JOIN pg_class p ON p.oid = up.oid \
              JOIN pg_namespace pn ON pn.oid = p.relnamespace), '') \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgkeep') AND n.nspname NOT LIKE 'pg\\_toast%' \
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')";

/// One row per table of [`SHAPES_SQL`]: oid, and the count and sum of the
/// `xmin`s of the catalog rows its shape is made of (its `pg_class` row,
/// columns, defaults, constraints, indexes and parents). Any DDL on the
/// table writes one of them, so an unchanged signature means an unchanged
/// shape, and only the tables whose signature changed are fingerprinted
/// again: about ten times cheaper with thousands of tables.
pub const SIGNATURES_SQL: &str = "\
WITH t AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgkeep') AND n.nspname NOT LIKE 'pg\\_toast%' \
AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')), \
x AS (SELECT c.oid AS rel, c.xmin::text::int8 AS v FROM pg_class c JOIN t ON t.oid = c.oid \
UNION ALL SELECT a.attrelid, a.xmin::text::int8 FROM pg_attribute a JOIN t ON t.oid = a.attrelid WHERE a.attnum > 0 \
UNION ALL SELECT d.adrelid, d.xmin::text::int8 FROM pg_attrdef d JOIN t ON t.oid = d.adrelid \
UNION ALL SELECT k.conrelid, k.xmin::text::int8 FROM pg_constraint k JOIN t ON t.oid = k.conrelid \
UNION ALL SELECT i.indrelid, i.xmin::text::int8 FROM pg_index i JOIN t ON t.oid = i.indrelid \
UNION ALL SELECT h.inhrelid, h.xmin::text::int8 FROM pg_inherits h JOIN t ON t.oid = h.inhrelid \
UNION ALL SELECT h.inhrelid, p.xmin::text::int8 FROM pg_inherits h JOIN t ON t.oid = h.inhrelid JOIN pg_class p ON p.oid = h.inhparent) \
SELECT rel, count(*)::int8, sum(v)::int8 FROM x GROUP BY rel";

/// [`SHAPES_SQL`] for the tables whose oids are `$1` only.
pub fn shapes_of_sql() -> String {
    format!("{SHAPES_SQL} AND c.oid = ANY($1::oid[])")
}

/// A table's definition as the catalog shows it: `(schema, name,
/// fingerprint, ancestors)`, the ancestors as `schema.name`.
pub type Shape = (String, String, String, Vec<String>);

/// A definition change found in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspect {
    /// `(schema, name)`.
    pub table: (String, String),
    /// Its ancestors (`schema.name`): a captured command naming one explains it.
    ancestors: Vec<String>,
    /// When it was found.
    found: Instant,
    /// The server's WAL insert position right after the check that found
    /// it: a captured DDL command that explains it was committed before.
    seen_at: Lsn,
    /// The server's WAL position (and clock) before the check before: it happened after.
    pub since: (Lsn, Option<DateTime<Utc>>),
    /// The table's oid and its fingerprint before the change.
    before: (u32, String),
}

impl Suspect {
    /// `schema.name`, as captured commands name tables.
    pub fn name(&self) -> String {
        format!("{}.{}", self.table.0, self.table.1)
    }
}

/// The last shapes, their signatures ([`SIGNATURES_SQL`]), and the
/// suspects not yet confirmed.
#[derive(Debug, Default)]
pub struct CatalogWatch {
    shapes: Option<HashMap<u32, Shape>>,
    /// The signature of each table in `shapes` as last read.
    signatures: HashMap<u32, (i64, i64)>,
    suspects: Vec<Suspect>,
    /// Bumped whenever [`CatalogWatch::baseline`] may have changed.
    generation: u64,
}

impl CatalogWatch {
    /// The tables whose signature differs from the last one read (or that
    /// are new): only those need fingerprinting again.
    pub fn stale(&self, signatures: &[(u32, i64, i64)]) -> Vec<u32> {
        signatures.iter().filter(|(oid, n, sum)| self.signatures.get(oid) != Some(&(*n, *sum))).map(|(oid, _, _)| *oid).collect()
    }

    /// A check at `at` read `signatures` for every table and the `fresh`
    /// shapes of the [`stale`](CatalogWatch::stale) ones; `since` is where
    /// the server was before the previous check. A table whose fingerprint
    /// changed becomes a suspect (a new or dropped table is the
    /// publications' business, not this). A stale table the shapes did not
    /// return (dropped meanwhile) is read again at the next check.
    pub fn observe(&mut self, signatures: &[(u32, i64, i64)], fresh: HashMap<u32, Shape>, at: Instant, seen_at: Lsn, since: (Lsn, Option<DateTime<Utc>>)) {
        let first = self.shapes.is_none();
        let shapes = self.shapes.get_or_insert_with(HashMap::new);
        let before = shapes.len();
        shapes.retain(|oid, _| signatures.iter().any(|(o, _, _)| o == oid));
        let mut changed = shapes.len() != before;
        for (oid, shape) in fresh {
            let old = shapes.insert(oid, shape.clone());
            changed |= old.as_ref() != Some(&shape);
            let Some((_, _, old_print, _)) = old.filter(|(_, _, p, _)| !first && *p != shape.2) else { continue };
            let table = (shape.0.clone(), shape.1.clone());
            if !self.suspects.iter().any(|s| s.table == table) {
                self.suspects.push(Suspect { table, ancestors: shape.3, found: at, seen_at, since, before: (oid, old_print) });
            }
        }
        self.signatures = signatures.iter().filter(|(oid, _, _)| shapes.contains_key(oid)).map(|(o, n, s)| (*o, (*n, *s))).collect();
        self.generation += u64::from(changed);
    }

    /// Changes whenever [`CatalogWatch::baseline`] may have.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The shapes to keep for the next run ([`super::watch_state`]): the
    /// last check's, with each suspect not yet confirmed at its fingerprint
    /// from before the change (so the next run finds it again). `None`
    /// before the first check.
    pub fn baseline(&self) -> Option<HashMap<u32, Shape>> {
        let mut shapes = self.shapes.clone()?;
        for s in &self.suspects {
            if let Some(shape) = shapes.get_mut(&s.before.0) {
                shape.2 = s.before.1.clone();
            }
        }
        Some(shapes)
    }

    /// Start from the shapes an earlier run kept: the first check compares
    /// with them instead of only learning.
    pub fn seed(&mut self, shapes: HashMap<u32, Shape>) {
        if self.shapes.is_none() {
            self.shapes = Some(shapes);
        }
    }

    /// Suspects found at least `settle` before `at` whose check the stream
    /// has decoded past (`decoded`: every transaction committed before it
    /// was received, so a captured command explaining the change has been
    /// seen whatever the stream's lag): those a captured DDL command
    /// explains (`captured(schema.name, after)`: one named the table after
    /// that instant, here `settle` before it was found) are dropped; the
    /// others are returned, confirmed.
    pub fn confirm(&mut self, at: Instant, settle: Duration, decoded: Lsn, captured: impl Fn(&str, Instant) -> bool) -> Vec<Suspect> {
        let (ready, waiting): (Vec<Suspect>, Vec<Suspect>) =
            std::mem::take(&mut self.suspects).into_iter().partition(|s| at.saturating_duration_since(s.found) >= settle && decoded >= s.seen_at);
        self.suspects = waiting;
        self.generation += u64::from(!ready.is_empty());
        ready
            .into_iter()
            .filter(|s| {
                let after = s.found.checked_sub(settle).unwrap_or(s.found);
                !std::iter::once(s.name()).chain(s.ancestors.iter().cloned()).any(|t| captured(&t, after))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A check that read every table again.
    fn observe_all(w: &mut CatalogWatch, now: HashMap<u32, Shape>, at: Instant, seen_at: Lsn, since: (Lsn, Option<DateTime<Utc>>)) {
        let signatures: Vec<(u32, i64, i64)> = now.keys().map(|oid| (*oid, 0, 0)).collect();
        w.observe(&signatures, now, at, seen_at, since);
    }

    fn shapes(list: &[(u32, &str, &str)]) -> HashMap<u32, Shape> {
        let parent = |name: &str| if name == "part" { vec!["public.parent".to_string()] } else { Vec::new() };
        list.iter().map(|(oid, name, print)| (*oid, ("public".to_string(), name.to_string(), print.to_string(), parent(name)))).collect()
    }

    #[test]
    fn a_changed_definition_is_confirmed_unless_captured_ddl_named_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs(5);
        let since = (Lsn(0x10), None);
        let mut w = CatalogWatch::default();
        let decoded = Lsn(0x1000);
        observe_all(&mut w, shapes(&[(1, "a", "x"), (2, "b", "y"), (4, "part", "p")]), t0, Lsn(0x15), since);
        assert!(w.confirm(t0, s, decoded, |_, _| false).is_empty(), "the first check only learns");
        observe_all(&mut w, shapes(&[(1, "a", "x2"), (2, "b", "y2"), (3, "c", "z"), (4, "part", "p2")]), t0 + s, Lsn(0x25), (Lsn(0x20), None));
        assert!(w.confirm(t0 + s, s, decoded, |_, _| false).is_empty(), "not settled yet");
        observe_all(&mut w, shapes(&[(1, "a", "x2"), (2, "b", "y2"), (3, "c", "z"), (4, "part", "p2")]), t0 + 2 * s, Lsn(0x35), (Lsn(0x30), None));
        let confirmed = w.confirm(t0 + 2 * s, s, decoded, |t, _| t == "public.b" || t == "public.parent");
        assert_eq!(confirmed.iter().map(Suspect::name).collect::<Vec<_>>(), ["public.a"], "b and part's parent were captured; c is new");
        assert_eq!(confirmed[0].since, (Lsn(0x20), None));
        assert!(w.confirm(t0 + 3 * s, s, decoded, |_, _| false).is_empty(), "once");
    }

    #[test]
    fn the_next_run_starts_from_the_baseline_and_finds_unconfirmed_changes_again() {
        let t0 = Instant::now();
        let s = Duration::from_secs(5);
        let mut w = CatalogWatch::default();
        assert!(w.baseline().is_none());
        observe_all(&mut w, shapes(&[(1, "a", "x"), (2, "b", "y")]), t0, Lsn(0x10), (Lsn(0x10), None));
        observe_all(&mut w, shapes(&[(1, "a", "x2"), (2, "b", "y")]), t0 + s, Lsn(0x20), (Lsn(0x10), None));
        // Stopped before `a` was confirmed: the baseline keeps its old fingerprint.
        let kept = w.baseline().unwrap();
        assert_eq!(kept[&1].2, "x");
        // A new run, seeded: its first check finds `a` (and a change to `b` made meanwhile).
        let mut next = CatalogWatch::default();
        next.seed(kept);
        observe_all(&mut next, shapes(&[(1, "a", "x2"), (2, "b", "y3")]), t0, Lsn(0x30), (Lsn(0x20), None));
        let found = next.confirm(t0 + s, s, Lsn(0x30), |_, _| false);
        assert_eq!(found.iter().map(Suspect::name).collect::<Vec<_>>().len(), 2);
        assert!(found.iter().all(|f| f.since == (Lsn(0x20), None)));
    }

    #[test]
    fn only_tables_whose_signature_changed_are_fingerprinted_again() {
        let t0 = Instant::now();
        let since = (Lsn(0x10), None);
        let mut c = CatalogWatch::default();
        let sigs = [(1, 3, 100), (2, 4, 200)];
        assert_eq!(c.stale(&sigs), vec![1, 2]);
        c.observe(&sigs, shapes(&[(1, "a", "x"), (2, "b", "y")]), t0, Lsn(0x10), since);
        assert_eq!(c.baseline().unwrap().len(), 2);
        assert!(c.stale(&sigs).is_empty(), "unchanged: nothing to read");
        // b altered, c created, a dropped.
        let sigs = [(2, 4, 260), (3, 2, 300)];
        assert_eq!(c.stale(&sigs), vec![2, 3]);
        c.observe(&sigs, shapes(&[(2, "b", "y2"), (3, "c", "z")]), t0, Lsn(0x20), since);
        let all = c.baseline().unwrap();
        assert_eq!(all.keys().copied().collect::<std::collections::BTreeSet<_>>(), [2, 3].into());
        assert_eq!(c.confirm(t0 + Duration::from_secs(60), Duration::from_secs(5), Lsn(0x20), |_, _| false)[0].name(), "public.b");
        assert_eq!(c.baseline().unwrap()[&2].2, "y2");
        // A stale table the shapes query did not return (dropped meanwhile) is read again next time.
        let sigs = [(2, 4, 260), (3, 2, 300), (4, 1, 400)];
        c.observe(&sigs, HashMap::new(), t0, Lsn(0x30), since);
        assert_eq!(c.stale(&sigs), vec![4]);
    }

    #[test]
    fn the_generation_moves_only_when_the_baseline_may_have() {
        let t0 = Instant::now();
        let since = (Lsn(0x10), None);
        let mut c = CatalogWatch::default();
        let sigs = [(1, 1, 1)];
        c.observe(&sigs, shapes(&[(1, "a", "x")]), t0, Lsn(0x10), since);
        let g = c.generation();
        c.observe(&sigs, HashMap::new(), t0, Lsn(0x10), since);
        c.observe(&sigs, shapes(&[(1, "a", "x")]), t0, Lsn(0x10), since);
        assert_eq!(c.generation(), g, "nothing changed");
        c.observe(&[(1, 1, 2)], shapes(&[(1, "a", "x2")]), t0, Lsn(0x10), since);
        assert!(c.generation() > g);
        let g = c.generation();
        assert_eq!(c.confirm(t0 + Duration::from_secs(60), Duration::from_secs(5), Lsn(0x10), |_, _| false).len(), 1);
        assert!(c.generation() > g, "a confirmed suspect leaves the baseline");
    }

    /// A stream that lags behind the catalog check has not yet received the
    /// DDL command that explains a change: the suspect waits until the
    /// stream has decoded past the check, however long ago it was found.
    #[test]
    fn a_suspect_waits_for_the_stream_to_decode_past_its_check() {
        let t0 = Instant::now();
        let s = Duration::from_secs(5);
        let mut w = CatalogWatch::default();
        observe_all(&mut w, shapes(&[(1, "a", "x")]), t0, Lsn(0x10), (Lsn(0x10), None));
        observe_all(&mut w, shapes(&[(1, "a", "x2")]), t0 + s, Lsn(0x200), (Lsn(0x10), None));
        assert!(w.confirm(t0 + 10 * s, s, Lsn(0x1ff), |_, _| false).is_empty(), "the stream has not decoded past the check");
        // The stream catches up and meets the captured command: explained.
        assert!(w.confirm(t0 + 11 * s, s, Lsn(0x200), |t, _| t == "public.a").is_empty());
        // Not captured: confirmed once decoded past.
        observe_all(&mut w, shapes(&[(1, "a", "x3")]), t0 + 12 * s, Lsn(0x300), (Lsn(0x200), None));
        assert!(w.confirm(t0 + 20 * s, s, Lsn(0x2ff), |_, _| false).is_empty());
        assert_eq!(w.confirm(t0 + 20 * s, s, Lsn(0x300), |_, _| false).len(), 1);
    }
}
