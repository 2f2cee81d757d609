//! `verify --compare-production`: each table's row count in the live
//! database (`SELECT count(*)`, in a read-only session) against the
//! manifest, with the difference; within the tolerance passes.

use super::{Check, CheckResult};
use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::qualified;
use crate::pg::connect;
use crate::repo::manifest::BackupManifest;

/// Percent difference of `live` from `backed_up` (100 when the backup had none and live has some).
pub fn difference_pct(live: u64, backed_up: u64) -> f64 {
    match backed_up {
        0 if live == 0 => 0.0,
        0 => 100.0,
        b => (live as f64 - b as f64).abs() / b as f64 * 100.0,
    }
}

/// Compare live row counts in `db` with the manifest. `Err` only when the
/// database cannot be reached.
pub async fn check_production(db: &DbSettings, m: &BackupManifest, tolerance_pct: f64) -> Result<CheckResult> {
    let tables: Vec<BackedUpCount> = m
        .tables
        .iter()
        .map(|t| BackedUpCount {
            schema: t.schema.clone(),
            name: t.name.clone(),
            rows: t.rows,
            filter: t.extension.as_ref().map(|e| e.filter.clone()).unwrap_or_default(),
        })
        .collect();
    compare_counts(db, &tables, tolerance_pct).await
}

/// One table's row count in a backup (a manifest or a legacy archive).
#[derive(Debug, Clone)]
pub struct BackedUpCount {
    /// Schema.
    pub schema: String,
    /// Table.
    pub name: String,
    /// Rows in the backup.
    pub rows: u64,
    /// A `WHERE …` that selects the rows the backup holds (extension tables), or empty.
    pub filter: String,
}

/// Compare live row counts in `db` with `tables`. `Err` only when the
/// database cannot be reached.
pub async fn compare_counts(db: &DbSettings, tables: &[BackedUpCount], tolerance_pct: f64) -> Result<CheckResult> {
    let conn = connect(db).await?;
    conn.client
        .batch_execute("SET default_transaction_read_only = on")
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("cannot open a read-only session on {}: {e}", db.display_target())))?;
    let mut problems = Vec::new();
    let mut details = Vec::new();
    let mut worst: Option<(String, i128, f64)> = None;
    for t in tables {
        let name = format!("{}.{}", t.schema, t.name);
        let sql = format!("SELECT count(*)::int8 FROM ONLY {} {}", qualified(&t.schema, &t.name), t.filter);
        let live: i64 = match conn.client.query_one(sql.as_str(), &[]).await {
            Ok(row) => row.get(0),
            Err(e) => {
                let msg = crate::pg::error_message(&e);
                problems.push(format!("table {name} cannot be counted in {}: {msg}", db.display_target()));
                continue;
            }
        };
        let live = live.max(0) as u64;
        let diff = live as i128 - t.rows as i128;
        let pct = difference_pct(live, t.rows);
        let line = format!("table {name}: {live} rows live, {} in the backup ({diff:+}, {pct:.1}%)", t.rows);
        if pct > tolerance_pct {
            problems.push(format!("{line}, beyond {tolerance_pct}%"));
        }
        details.push(line);
        if worst.as_ref().is_none_or(|w| pct > w.2) {
            worst = Some((name, diff, pct));
        }
    }
    let summary = match &worst {
        Some((name, diff, pct)) => {
            format!("{} tables within {tolerance_pct}% of {}; largest difference {name} {diff:+} rows ({pct:.1}%)", tables.len(), db.display_target())
        }
        None => "the backup has no tables".to_string(),
    };
    let mut r = CheckResult::from_problems(Check::Production, None, summary, problems);
    r.details = details;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::difference_pct;

    #[test]
    fn percent_difference() {
        assert_eq!(difference_pct(0, 0), 0.0);
        assert_eq!(difference_pct(5, 0), 100.0);
        assert_eq!(difference_pct(110, 100), 10.0);
        assert_eq!(difference_pct(50, 100), 50.0);
    }
}
