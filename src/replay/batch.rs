//! Set-based replay, the pure part: row changes of one table collapse into
//! the net effect of a batch of transactions, which [`super::apply`] then
//! writes with one DELETE, a few UPDATEs and one COPY per table.
//!
//! A table with a key (its primary key, or its replica-identity index) is a
//! [`KeyedBatch`]: a map from key to the row's final state in the batch —
//! deleted, a whole new row, or a patch of some columns (an UPDATE whose
//! unchanged TOASTed values were not sent and are not known here; they stay
//! as they are in the database, never overwritten with NULL). Each entry
//! remembers whether the row existed before the batch, so the writer can
//! check that every DELETE and UPDATE found exactly the rows it expected:
//! a replay that diverges from its base (a gap in the archive, a table
//! that was not published) fails loudly instead of producing wrong data.
//!
//! A table without a key (only `REPLICA IDENTITY FULL`, or inserts only)
//! is an [`UnkeyedBatch`]: its changes in order.
//!
//! Because a batch ends at a commit, every intermediate state the writer
//! produces (deletes first, then patches, then inserts) is a subset of a
//! committed state, so unique constraints hold throughout.

use std::collections::HashMap;

use bytes::Bytes;

use crate::replication::pgoutput::{OldTuple, TupleValue};

/// A column value: `None` is NULL, otherwise the text form.
pub type Value = Option<Bytes>;

/// A value of a patch: `None` when unchanged (not sent), else the new value.
pub type PatchValue = Option<Value>;

/// A row's key: the key columns' text forms.
pub type Key = Vec<Bytes>;

/// A batch's keys and their final states. Replay hashes every key of every
/// change, so the map uses a fast hash (seeded per process) instead of
/// the default SipHash, which took 6 % of a replay's CPU.
pub type Entries = HashMap<Key, Entry, foldhash::fast::RandomState>;

/// Why a change cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A value in binary format (pgkeep asks for text).
    #[error("a value arrived in binary format")]
    Binary,
    /// The tuple has a different number of columns than the relation.
    #[error("a row has {got} values, the relation has {want} columns")]
    Width {
        /// Values in the row.
        got: usize,
        /// Columns of the relation.
        want: usize,
    },
    /// A key column is NULL or was not sent.
    #[error("a key column is NULL or unchanged-TOAST, so the row cannot be found")]
    NoKey,
    /// An UPDATE or DELETE reached a table that has no key and no old row.
    #[error("an UPDATE or DELETE carries no old row and the table has no key")]
    NoOldRow,
    /// An UPDATE of a row this batch deleted.
    #[error("an UPDATE of a row deleted earlier in the same batch")]
    UpdateOfDeleted,
}

/// The state of one key at the end of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowState {
    /// The row is gone.
    Delete,
    /// The row is this whole row.
    Upsert(Vec<Value>),
    /// The row exists and these columns change (`None`: unchanged).
    Patch(Vec<PatchValue>),
}

/// A key's entry in a [`KeyedBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Final state.
    pub state: RowState,
    /// Whether the row existed before the batch (its first change was an UPDATE or DELETE).
    pub existed: bool,
}

/// What [`KeyedBatch::update`] needs from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded in the batch.
    Done,
    /// A key-changing UPDATE with unchanged TOAST values of a row the batch
    /// does not hold: write the batch, then update the row at `old_key`
    /// directly with `values` (`None`: leave as is).
    Direct {
        /// The row's key before the update.
        old_key: Key,
        /// The new values.
        values: Vec<PatchValue>,
    },
}

/// Convert a tuple to values; unchanged TOAST becomes `None` in the outer option.
pub fn patch_values(tuple: &[TupleValue]) -> Result<Vec<PatchValue>, BatchError> {
    tuple
        .iter()
        .map(|v| match v {
            TupleValue::Null => Ok(Some(None)),
            TupleValue::UnchangedToast => Ok(None),
            TupleValue::Text(b) => Ok(Some(Some(b.clone()))),
            TupleValue::Binary(_) => Err(BatchError::Binary),
        })
        .collect()
}

/// A whole row, when no value is unchanged-TOAST.
fn full_row(values: &[PatchValue]) -> Option<Vec<Value>> {
    values.iter().cloned().collect()
}

/// Fill the unchanged values of `patch` from `base`.
fn fill(patch: &[PatchValue], base: &[Value]) -> Vec<Value> {
    patch.iter().zip(base).map(|(p, b)| p.clone().unwrap_or_else(|| b.clone())).collect()
}

/// Changes of a table with a key.
#[derive(Debug, Clone)]
pub struct KeyedBatch {
    key_cols: Vec<usize>,
    width: usize,
    entries: Entries,
    changes: u64,
}

impl KeyedBatch {
    /// A batch for a relation of `width` columns whose key is `key_cols`.
    pub fn new(key_cols: Vec<usize>, width: usize) -> KeyedBatch {
        KeyedBatch { key_cols, width, entries: Entries::default(), changes: 0 }
    }

    /// Row changes recorded.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, to write.
    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    /// The key columns.
    pub fn key_cols(&self) -> &[usize] {
        &self.key_cols
    }

    /// Forget everything (after writing).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.changes = 0;
    }

    fn check_width(&self, n: usize) -> Result<(), BatchError> {
        if n == self.width { Ok(()) } else { Err(BatchError::Width { got: n, want: self.width }) }
    }

    fn key_of(&self, values: &[PatchValue]) -> Result<Key, BatchError> {
        self.key_cols
            .iter()
            .map(|&i| match values.get(i) {
                Some(Some(Some(b))) => Ok(b.clone()),
                _ => Err(BatchError::NoKey),
            })
            .collect()
    }

    /// An INSERT.
    pub fn insert(&mut self, new: &[TupleValue]) -> Result<(), BatchError> {
        self.check_width(new.len())?;
        let values = patch_values(new)?;
        let key = self.key_of(&values)?;
        let row = full_row(&values).ok_or(BatchError::NoKey)?;
        self.changes += 1;
        let existed = self.entries.get(&key).is_some_and(|e| e.existed);
        self.entries.insert(key, Entry { state: RowState::Upsert(row), existed });
        Ok(())
    }

    /// A DELETE.
    pub fn delete(&mut self, old: &OldTuple) -> Result<(), BatchError> {
        let old = old_values(old)?;
        self.check_width(old.len())?;
        let key = self.key_of(&old)?;
        self.changes += 1;
        let existed = self.entries.get(&key).is_none_or(|e| e.existed);
        self.entries.insert(key, Entry { state: RowState::Delete, existed });
        Ok(())
    }

    /// An UPDATE.
    pub fn update(&mut self, old: Option<&OldTuple>, new: &[TupleValue]) -> Result<Outcome, BatchError> {
        self.check_width(new.len())?;
        let new = patch_values(new)?;
        let old_full: Option<Vec<PatchValue>> = match old {
            Some(o) => {
                let v = old_values(o)?;
                self.check_width(v.len())?;
                Some(v)
            }
            None => None,
        };
        let new_key = self.key_of(&new)?;
        let old_key = match &old_full {
            Some(o) => self.key_of(o)?,
            None => new_key.clone(),
        };
        self.changes += 1;
        let prev = self.entries.get(&old_key).cloned();
        if matches!(prev, Some(Entry { state: RowState::Delete, .. })) {
            return Err(BatchError::UpdateOfDeleted);
        }
        let existed = prev.as_ref().is_none_or(|e| e.existed);
        // The new row, as whole as we can make it.
        let whole = full_row(&new)
            .or_else(|| match &prev {
                Some(Entry { state: RowState::Upsert(row), .. }) => Some(fill(&new, row)),
                _ => None,
            })
            .or_else(|| {
                // REPLICA IDENTITY FULL sends the whole old row (detoasted); a key
                // tuple's other columns are placeholders, not values.
                let Some(OldTuple::Full(_)) = old else { return None };
                let base = full_row(old_full.as_deref()?)?;
                Some(fill(&new, &base))
            });
        let state = match (whole, prev) {
            (Some(row), _) => RowState::Upsert(row),
            (None, Some(Entry { state: RowState::Patch(p), .. })) if old_key == new_key => {
                RowState::Patch(new.iter().zip(p).map(|(n, p)| n.clone().or(p)).collect())
            }
            (None, None) if old_key == new_key => RowState::Patch(new),
            (None, _) => {
                // The key moved and the unchanged values are only in the database.
                return Ok(Outcome::Direct { old_key, values: new });
            }
        };
        if old_key != new_key {
            self.entries.insert(old_key, Entry { state: RowState::Delete, existed });
            let new_existed = self.entries.get(&new_key).is_some_and(|e| e.existed);
            self.entries.insert(new_key, Entry { state, existed: new_existed });
        } else {
            self.entries.insert(new_key, Entry { state, existed });
        }
        Ok(Outcome::Done)
    }
}

/// The values of an old tuple.
fn old_values(old: &OldTuple) -> Result<Vec<PatchValue>, BatchError> {
    match old {
        OldTuple::Key(v) | OldTuple::Full(v) => patch_values(v),
    }
}

/// One change of a table without a key, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnkeyedChange {
    /// Insert this row.
    Insert(Vec<Value>),
    /// Delete one row equal to this one.
    Delete(Vec<Value>),
    /// Update one row equal to `old` with `new` (`None`: unchanged).
    Update {
        /// The whole old row.
        old: Vec<Value>,
        /// The new values.
        new: Vec<PatchValue>,
    },
}

/// Changes of a table without a key.
#[derive(Debug, Clone, Default)]
pub struct UnkeyedBatch {
    /// The changes in order.
    pub changes: Vec<UnkeyedChange>,
    width: usize,
}

impl UnkeyedBatch {
    /// A batch for a relation of `width` columns.
    pub fn new(width: usize) -> UnkeyedBatch {
        UnkeyedBatch { changes: Vec::new(), width }
    }

    fn check_width(&self, n: usize) -> Result<(), BatchError> {
        if n == self.width { Ok(()) } else { Err(BatchError::Width { got: n, want: self.width }) }
    }

    /// An INSERT.
    pub fn insert(&mut self, new: &[TupleValue]) -> Result<(), BatchError> {
        self.check_width(new.len())?;
        let row = full_row(&patch_values(new)?).ok_or(BatchError::NoKey)?;
        self.changes.push(UnkeyedChange::Insert(row));
        Ok(())
    }

    /// A DELETE: needs the whole old row.
    pub fn delete(&mut self, old: &OldTuple) -> Result<(), BatchError> {
        let OldTuple::Full(v) = old else { return Err(BatchError::NoOldRow) };
        self.check_width(v.len())?;
        let row = full_row(&patch_values(v)?).ok_or(BatchError::NoOldRow)?;
        self.changes.push(UnkeyedChange::Delete(row));
        Ok(())
    }

    /// An UPDATE: needs the whole old row.
    pub fn update(&mut self, old: Option<&OldTuple>, new: &[TupleValue]) -> Result<(), BatchError> {
        let Some(OldTuple::Full(v)) = old else { return Err(BatchError::NoOldRow) };
        self.check_width(v.len())?;
        self.check_width(new.len())?;
        let old = full_row(&patch_values(v)?).ok_or(BatchError::NoOldRow)?;
        let new = patch_values(new)?;
        // Unchanged values are the old ones.
        let new = new.iter().zip(&old).map(|(n, o)| Some(n.clone().unwrap_or_else(|| o.clone()))).collect();
        self.changes.push(UnkeyedChange::Update { old, new });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }
    fn v(s: &str) -> Value {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }
    fn k(s: &str) -> Key {
        vec![Bytes::copy_from_slice(s.as_bytes())]
    }

    #[test]
    fn insert_update_delete_collapse_per_key() {
        let mut b = KeyedBatch::new(vec![0], 2);
        b.insert(&[t("1"), t("a")]).unwrap();
        b.update(None, &[t("1"), t("b")]).unwrap();
        b.update(None, &[t("2"), t("x")]).unwrap();
        b.delete(&OldTuple::Key(vec![t("3"), TupleValue::Null])).unwrap();
        b.insert(&[t("3"), t("again")]).unwrap();
        let e = b.entries();
        assert_eq!(e[&k("1")], Entry { state: RowState::Upsert(vec![v("1"), v("b")]), existed: false });
        assert_eq!(e[&k("2")], Entry { state: RowState::Upsert(vec![v("2"), v("x")]), existed: true });
        assert_eq!(e[&k("3")], Entry { state: RowState::Upsert(vec![v("3"), v("again")]), existed: true });
        assert_eq!(b.changes(), 5);
    }

    #[test]
    fn unchanged_toast_is_never_null() {
        let mut b = KeyedBatch::new(vec![0], 3);
        // Row not in the batch: a patch that leaves column 2 alone.
        b.update(None, &[t("1"), t("n"), TupleValue::UnchangedToast]).unwrap();
        assert_eq!(b.entries()[&k("1")].state, RowState::Patch(vec![Some(v("1")), Some(v("n")), None]));
        // A second patch keeps the first's values where it sends none.
        b.update(None, &[t("1"), TupleValue::UnchangedToast, TupleValue::Null]).unwrap();
        assert_eq!(b.entries()[&k("1")].state, RowState::Patch(vec![Some(v("1")), Some(v("n")), Some(None)]));
        // Row inserted in the batch: the unchanged value comes from it.
        b.insert(&[t("2"), t("a"), t("big")]).unwrap();
        b.update(None, &[t("2"), t("b"), TupleValue::UnchangedToast]).unwrap();
        assert_eq!(b.entries()[&k("2")].state, RowState::Upsert(vec![v("2"), v("b"), v("big")]));
    }

    #[test]
    fn key_change_moves_the_row() {
        let mut b = KeyedBatch::new(vec![0], 2);
        let out = b.update(Some(&OldTuple::Key(vec![t("1"), TupleValue::Null])), &[t("9"), t("a")]).unwrap();
        assert_eq!(out, Outcome::Done);
        assert_eq!(b.entries()[&k("1")], Entry { state: RowState::Delete, existed: true });
        assert_eq!(b.entries()[&k("9")], Entry { state: RowState::Upsert(vec![v("9"), v("a")]), existed: false });
        // Moving a row whose TOASTed value only the database has: direct.
        let out = b.update(Some(&OldTuple::Key(vec![t("5"), TupleValue::Null])), &[t("6"), TupleValue::UnchangedToast]).unwrap();
        assert_eq!(out, Outcome::Direct { old_key: k("5"), values: vec![Some(v("6")), None] });
        // With REPLICA IDENTITY FULL the old row fills it in.
        let out = b.update(Some(&OldTuple::Full(vec![t("7"), t("old")])), &[t("8"), TupleValue::UnchangedToast]).unwrap();
        assert_eq!(out, Outcome::Done);
        assert_eq!(b.entries()[&k("8")].state, RowState::Upsert(vec![v("8"), v("old")]));
    }

    #[test]
    fn bad_changes_are_errors() {
        let mut b = KeyedBatch::new(vec![0], 2);
        assert_eq!(b.insert(&[t("1")]), Err(BatchError::Width { got: 1, want: 2 }));
        assert_eq!(b.insert(&[TupleValue::Null, t("x")]), Err(BatchError::NoKey));
        assert_eq!(b.insert(&[TupleValue::Binary(Bytes::new()), t("x")]), Err(BatchError::Binary));
        b.delete(&OldTuple::Key(vec![t("1"), TupleValue::Null])).unwrap();
        assert_eq!(b.update(None, &[t("1"), t("x")]), Err(BatchError::UpdateOfDeleted));
        let mut u = UnkeyedBatch::new(1);
        assert_eq!(u.delete(&OldTuple::Key(vec![t("1")])), Err(BatchError::NoOldRow));
        assert_eq!(u.update(None, &[t("1")]), Err(BatchError::NoOldRow));
        u.insert(&[t("1")]).unwrap();
        u.update(Some(&OldTuple::Full(vec![t("1")])), &[TupleValue::UnchangedToast]).unwrap();
        assert_eq!(u.changes[1], UnkeyedChange::Update { old: vec![v("1")], new: vec![Some(v("1"))] });
    }
}
