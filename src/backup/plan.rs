//! The copy plan: one task per table, or per block (ctid) range for large
//! tables, so one huge table does not become one stream. The first and last
//! ranges are open-ended, so rows in blocks beyond the size measured at
//! planning time are still copied. Biggest tasks first.

use crate::pg::catalog::TableInfo;

/// PostgreSQL block size assumed for range planning (ranges stay correct
/// with any block size: they are only a partition of the ctid space).
pub(crate) const BLOCK_SIZE: u64 = 8192;

/// One COPY stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyTask {
    /// Index into the table list.
    pub table: usize,
    /// Range number within the table (0-based).
    pub part: u32,
    /// Block range `[from, to)`; `None` ends are open.
    pub blocks: Option<(Option<u64>, Option<u64>)>,
    /// Estimated bytes, for ordering.
    pub estimate: u64,
}

/// Plan tasks. Ranges are used only on PostgreSQL 14+ (TID range scans);
/// earlier versions would scan the whole table once per range.
pub(crate) fn plan(tables: &[TableInfo], server_version_num: u32, range_bytes: u64) -> Vec<CopyTask> {
    let mut tasks = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let ranges = if t.extension.is_none() && server_version_num >= 140000 && range_bytes > 0 && t.bytes > range_bytes * 3 / 2 {
            t.bytes.div_ceil(range_bytes)
        } else {
            1
        };
        if ranges <= 1 {
            tasks.push(CopyTask { table: i, part: 0, blocks: None, estimate: t.bytes });
            continue;
        }
        let total_blocks = t.bytes.div_ceil(BLOCK_SIZE);
        let per = total_blocks.div_ceil(ranges);
        for r in 0..ranges {
            let from = if r == 0 { None } else { Some(r * per) };
            let to = if r + 1 == ranges { None } else { Some((r + 1) * per) };
            tasks.push(CopyTask { table: i, part: r as u32, blocks: Some((from, to)), estimate: range_bytes });
        }
    }
    tasks.sort_by(|a, b| b.estimate.cmp(&a.estimate).then(a.table.cmp(&b.table)).then(a.part.cmp(&b.part)));
    tasks
}

/// The COPY statement of a task.
pub(crate) fn copy_sql(t: &TableInfo, task: &CopyTask) -> String {
    if let Some((_, filter)) = &t.extension {
        // An extension configuration table: only the rows its filter selects
        // (the extension recreates the others itself).
        let cols = t.columns.iter().map(|c| crate::pg::catalog::quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
        return format!("COPY (SELECT {cols} FROM ONLY {} {filter}) TO STDOUT", t.qualified());
    }
    match task.blocks {
        None => format!("COPY {} {} TO STDOUT", t.qualified(), t.column_list()),
        Some((from, to)) => {
            let cols = if t.columns.is_empty() {
                String::new()
            } else {
                t.columns.iter().map(|c| crate::pg::catalog::quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
            };
            let mut conds = Vec::new();
            if let Some(f) = from {
                conds.push(format!("ctid >= '({f},0)'::tid"));
            }
            if let Some(t) = to {
                conds.push(format!("ctid < '({t},0)'::tid"));
            }
            format!("COPY (SELECT {cols} FROM ONLY {} WHERE {}) TO STDOUT", t.qualified(), conds.join(" AND "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::ColumnEntry;

    fn table(name: &str, bytes: u64) -> TableInfo {
        TableInfo {
            oid: 1,
            schema: "public".into(),
            name: name.into(),
            columns: vec![ColumnEntry { name: "id".into(), type_name: "int".into(), not_null: true }],
            bytes,
            can_select: true,
            extension: None,
        }
    }

    #[test]
    fn ranges_cover_everything_and_ends_are_open() {
        let tables = vec![table("small", 1000), table("big", 1000 * BLOCK_SIZE)];
        let tasks = plan(&tables, 150000, 300 * BLOCK_SIZE);
        let big: Vec<_> = tasks.iter().filter(|t| t.table == 1).collect();
        assert_eq!(big.len(), 4);
        let mut ranges: Vec<_> = big.iter().map(|t| t.blocks.unwrap()).collect();
        ranges.sort_by_key(|r| r.0);
        assert_eq!(ranges.first().unwrap().0, None);
        assert_eq!(ranges.last().unwrap().1, None);
        for w in ranges.windows(2) {
            assert_eq!(w[0].1, w[1].0, "ranges must be contiguous");
        }
        assert_eq!(tasks.last().unwrap().table, 0, "small table last");
        // PostgreSQL 13: no ranges.
        assert_eq!(plan(&tables, 130000, 300 * BLOCK_SIZE).len(), 2);
    }

    #[test]
    fn sql_uses_only_and_quotes() {
        let mut t = table("We\"ird", 10);
        t.columns.push(ColumnEntry { name: "Col A".into(), type_name: "text".into(), not_null: false });
        let task = CopyTask { table: 0, part: 1, blocks: Some((Some(10), None)), estimate: 0 };
        assert_eq!(copy_sql(&t, &task), "COPY (SELECT \"id\", \"Col A\" FROM ONLY \"public\".\"We\"\"ird\" WHERE ctid >= '(10,0)'::tid) TO STDOUT");
        let whole = CopyTask { table: 0, part: 0, blocks: None, estimate: 0 };
        assert_eq!(copy_sql(&t, &whole), "COPY \"public\".\"We\"\"ird\" (\"id\", \"Col A\") TO STDOUT");
    }
}
