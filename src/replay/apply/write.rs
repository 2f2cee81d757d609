//! The batch writers of [`Applier`](super::Applier): one table's keyed
//! batch (DELETE, UPDATE, COPY; patched rows rebuilt whole where unique
//! constraints or identities demand it) and its batch without a key, each
//! statement's row count checked against what the archive says existed.

use super::*;
use crate::replay::batch::Entry;

/// COPY text sent to the server at a time by [`Applier::copy_rows`].
const COPY_PIECE: usize = 1 << 20;

impl Applier {
    /// One table's keyed batch on `client`: DELETE, UPDATE, COPY, each
    /// checked. `part`: only these of its keys (the batch split between
    /// sessions, [`super::lanes`]).
    pub(super) async fn write_keyed(&self, client: &Client, t: &Target, b: &KeyedBatch, part: Option<&[(&Key, &Entry)]>) -> Result<()> {
        let entries = || -> Box<dyn Iterator<Item = (&Key, &Entry)>> {
            match part {
                Some(p) => Box::new(p.iter().copied()),
                None => Box::new(b.entries().iter()),
            }
        };
        let key_cols: Vec<&TargetColumn> = b.key_cols().iter().map(|&i| &t.cols[i]).collect();
        let mut gone: Vec<&Key> = Vec::new();
        let mut patches: HashMap<Vec<bool>, Vec<(&Key, &Vec<PatchValue>)>> = HashMap::new();
        let mut new_rows = 0u64;
        for (key, e) in entries() {
            match &e.state {
                RowState::Delete | RowState::Upsert(_) if e.existed => gone.push(key),
                _ => {}
            }
            match &e.state {
                RowState::Upsert(_) => new_rows += 1,
                RowState::Patch(p) => {
                    let mask: Vec<bool> = p.iter().map(Option::is_some).collect();
                    patches.entry(mask).or_default().push((key, p));
                }
                RowState::Delete => {}
            }
        }
        // 1. Rows replaced or gone.
        if !gone.is_empty() {
            let mut params: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(gone.len()); key_cols.len()];
            for k in &gone {
                for (i, v) in k.iter().enumerate() {
                    params[i].push(Some(text(v)?));
                }
            }
            let n = self.run(client, &sql::delete_by_keys(&t.table, &key_cols), &params, t).await?;
            self.expect(t, "DELETE", n, gone.len() as u64)?;
        }
        // 2. Patches, one statement per set of changed columns; or, where
        //    in-place UPDATEs could collide, whole rows rewritten.
        let mut rebuilt = BytesMut::new();
        if t.rebuild {
            let list: Vec<(&Key, &Vec<PatchValue>)> = patches.values().flatten().copied().collect();
            let (rows, n) = self.rebuild_rows(client, t, &key_cols, &list).await?;
            rebuilt = rows;
            new_rows += n;
            patches.clear();
        }
        for (mask, list) in &patches {
            let set: Vec<usize> = mask.iter().enumerate().filter(|(i, m)| **m && !b.key_cols().contains(i)).map(|(i, _)| i).collect();
            if set.is_empty() {
                continue;
            }
            let set_cols: Vec<&TargetColumn> = set.iter().map(|&i| &t.cols[i]).collect();
            let mut params: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(list.len()); key_cols.len() + set.len()];
            for (k, p) in list {
                for (i, v) in k.iter().enumerate() {
                    params[i].push(Some(text(v)?));
                }
                for (j, &c) in set.iter().enumerate() {
                    let v: &Value = p[c].as_ref().expect("masked in");
                    params[key_cols.len() + j].push(v.as_deref().map(text).transpose()?);
                }
            }
            let n = self.run(client, &sql::update_by_keys(&t.table, &key_cols, &set_cols), &params, t).await?;
            self.expect(t, "UPDATE", n, list.len() as u64)?;
        }
        // 3. New rows, turned into COPY text a piece at a time as they are sent.
        if new_rows > 0 {
            let upserts = entries().filter_map(|(_, e)| match &e.state {
                RowState::Upsert(row) => Some(row.as_slice()),
                _ => None,
            });
            self.copy_rows(client, t, rebuilt, upserts, new_rows).await?;
        }
        Ok(())
    }

    /// Delete the rows at `list`'s keys and return them as COPY rows with
    /// each patch applied (unchanged values as the database has them).
    pub(super) async fn rebuild_rows(
        &self,
        client: &Client,
        t: &Target,
        key_cols: &[&TargetColumn],
        list: &[(&Key, &Vec<PatchValue>)],
    ) -> Result<(BytesMut, u64)> {
        let mut rows = BytesMut::new();
        if list.is_empty() {
            return Ok((rows, 0));
        }
        let mut params: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(list.len()); key_cols.len()];
        for (k, _) in list {
            for (i, v) in k.iter().enumerate() {
                params[i].push(Some(text(v)?));
            }
        }
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let current = client
            .query(sql::delete_returning(&t.table, key_cols, &t.cols).as_str(), &refs)
            .await
            .map_err(crate::pg::query_error(format!("replaying changes of table {} (up to LSN {})", t.display, self.at)))?;
        self.expect(t, "DELETE", current.len() as u64, list.len() as u64)?;
        for r in &current {
            let ord: i64 = r.get(0);
            let (_, patch) = list.get((ord - 1) as usize).ok_or_else(|| Error::internal("a rewritten row's ordinal is out of range"))?;
            let row: Vec<Value> =
                patch.iter().enumerate().map(|(i, p)| p.clone().unwrap_or_else(|| r.get::<_, Option<String>>(i + 1).map(Bytes::from))).collect();
            sql::copy_row(&mut rows, &row);
        }
        Ok((rows, list.len() as u64))
    }

    /// Changes of a table without a key on `client`, in order: runs of inserts as one COPY.
    pub(super) async fn write_unkeyed(&self, client: &Client, t: &Target, changes: &[UnkeyedChange]) -> Result<()> {
        let inserted = |c: &UnkeyedChange| matches!(c, UnkeyedChange::Insert(_));
        let mut rest = changes;
        while !rest.is_empty() {
            // A run of inserts: one COPY.
            let run = rest.iter().take_while(|c| inserted(c)).count();
            if run > 0 {
                let rows = rest[..run].iter().filter_map(|c| match c {
                    UnkeyedChange::Insert(row) => Some(row.as_slice()),
                    _ => None,
                });
                self.copy_rows(client, t, BytesMut::new(), rows, run as u64).await?;
                rest = &rest[run..];
                continue;
            }
            let c = &rest[0];
            rest = &rest[1..];
            // Rewritten whole where UPDATE may not set a column (GENERATED ALWAYS identity).
            if let (true, UnkeyedChange::Update { old, new }) = (t.rebuild, c) {
                let params: Vec<Option<&str>> = texts(old)?;
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                let n = client
                    .execute(sql::delete_one_equal(&t.table, &t.cols).as_str(), &refs)
                    .await
                    .map_err(crate::pg::query_error(format!("replaying a change of table {} (LSN {})", t.display, self.at)))?;
                self.expect(t, "DELETE", n, 1)?;
                let row: Vec<Value> = new.iter().zip(old).map(|(n, o)| n.clone().unwrap_or_else(|| o.clone())).collect();
                self.copy_rows(client, t, BytesMut::new(), std::iter::once(row.as_slice()), 1).await?;
                continue;
            }
            let (stmt, values): (String, Vec<Option<&str>>) = match c {
                UnkeyedChange::Delete(old) => (sql::delete_one_equal(&t.table, &t.cols), texts(old)?),
                UnkeyedChange::Update { old, new } => {
                    let mut v = texts(old)?;
                    for n in new {
                        v.push(n.as_ref().expect("filled from the old row").as_deref().map(text).transpose()?);
                    }
                    (sql::update_one_equal(&t.table, &t.cols), v)
                }
                UnkeyedChange::Insert(_) => unreachable!("runs of inserts are copied above"),
            };
            let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            let n = client
                .execute(stmt.as_str(), &params)
                .await
                .map_err(crate::pg::query_error(format!("replaying a change of table {} (LSN {})", t.display, self.at)))?;
            self.expect(t, if matches!(c, UnkeyedChange::Delete(_)) { "DELETE" } else { "UPDATE" }, n, 1)?;
        }
        Ok(())
    }

    /// Run a statement whose parameters are `text[]`s.
    pub(super) async fn run(&self, client: &Client, stmt: &str, params: &[Vec<Option<&str>>], t: &Target) -> Result<u64> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        client.execute(stmt, &refs).await.map_err(crate::pg::query_error(format!("replaying changes of table {} (up to LSN {})", t.display, self.at)))
    }

    /// One `COPY … FROM STDIN` of `first` (rows already in COPY text) and
    /// then `rows`, `n` in all. The rows become COPY text [`COPY_PIECE`]
    /// bytes at a time as they are sent, so a batch's new rows never sit
    /// in memory twice (as values and as one COPY buffer).
    pub(super) async fn copy_rows<'r>(&self, client: &Client, t: &Target, first: BytesMut, rows: impl Iterator<Item = &'r [Value]>, n: u64) -> Result<()> {
        let fail = crate::pg::query_error(format!("replaying inserts into table {} (up to LSN {})", t.display, self.at));
        let sink = client.copy_in(sql::copy_in(&t.table, &t.cols).as_str()).await.map_err(&fail)?;
        futures::pin_mut!(sink);
        let mut piece = first;
        for row in rows {
            sql::copy_row(&mut piece, row);
            if piece.len() >= COPY_PIECE {
                sink.send(piece.split().freeze()).await.map_err(&fail)?;
            }
        }
        if !piece.is_empty() {
            sink.send(piece.freeze()).await.map_err(&fail)?;
        }
        let done = sink.finish().await.map_err(&fail)?;
        self.expect(t, "COPY", done, n)
    }

    pub(super) fn expect(&self, t: &Target, what: &str, got: u64, want: u64) -> Result<()> {
        if got == want {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::CheckFailed,
            format!(
                "replay diverged on table {} at LSN {}: a {what} touched {got} row(s) where the archive says {want}",
                t.display, self.at
            ),
        )
        .with_hint("the base backup and the archive do not fit together (a gap, or a table whose changes were not archived); restore without a target, or from another backup"))
    }
}
