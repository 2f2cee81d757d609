//! `pgkeep stream`: archive a database's logical changes, continuously, as
//! [`segment::ChangeSegment`]s in every repository (docs/FORMAT.md §5).
//!
//! [`run`] is the whole process, step by step:
//!
//! 1. open every repository;
//! 2. name the stream `<system_identifier>-<slot>` (`IDENTIFY_SYSTEM`);
//! 3. make sure the publication exists — created `FOR TABLE` with only the
//!    tables that have a usable replica identity, never `FOR ALL TABLES`
//!    (which would make UPDATE and DELETE fail on tables without one) —
//!    and that the permanent `pgoutput` slot exists (publication first:
//!    pgoutput looks it up as of each change's time);
//! 4. find the resume point: the end of the segment chain present in every
//!    repository, or the slot's `confirmed_flush_lsn` when there is none;
//!    a gap is an error, segments beyond the common end (a crash between
//!    puts) are removed — the slot was never confirmed past them;
//! 5. run the [`archiver`] until `shutdown` resolves (the open segment is
//!    then stored and confirmed) or a fatal error, reconnecting with
//!    backoff (1 s, 2 s, … 30 s) and going back to step 4 after connection
//!    and transient storage errors.

pub mod archiver;
pub mod ddl;
pub mod segment;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;

use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::catalog::{qualified, quote_ident};
use crate::replication::{ReplicationConnection, validate_slot_name};
use crate::repo::layout::{CHANGES_PREFIX, Lsn, parse_segment_key};
use crate::storage::Storage;
use archiver::{Archiver, SegmentLimits, SessionContext, SessionEnd, SessionTotals};

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What `pgkeep stream` was asked to do.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Logical slot (created, permanent, `pgoutput`, if missing).
    pub slot: String,
    /// Publication (created `FOR TABLE …` if missing).
    pub publication: String,
    /// Close a segment this many seconds after its first transaction.
    pub segment_seconds: u64,
    /// Close a segment once its raw payload exceeds this many bytes.
    pub segment_bytes: u64,
}

impl StreamOptions {
    /// `slot` and `publication` with the default segment limits (10 s, 16 MiB).
    pub fn new(slot: impl Into<String>, publication: impl Into<String>) -> StreamOptions {
        StreamOptions {
            slot: slot.into(),
            publication: publication.into(),
            segment_seconds: 10,
            segment_bytes: 16 << 20,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    /// `<system_identifier>-<slot>`.
    pub stream_id: String,
    /// Where archiving resumed.
    pub start_lsn: Lsn,
    /// End of the last segment stored in every repository (and confirmed).
    pub durable_end: Lsn,
    /// Segments, transactions, changes and bytes stored.
    pub totals: SessionTotals,
    /// Tables left out of a publication created by this run (no replica identity).
    pub tables_without_identity: Vec<String>,
    /// Connection attempts that failed or ended and were retried.
    pub reconnects: u64,
}

/// Archive changes until `shutdown` resolves or a fatal error.
pub async fn run(
    settings: &Settings,
    opts: &StreamOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<StreamReport> {
    validate_slot_name(&opts.slot)?;
    if opts.segment_seconds == 0 || opts.segment_bytes == 0 {
        return Err(Error::config(
            "--segment-seconds and --segment-bytes must be at least 1",
        ));
    }
    let mut shutdown = std::pin::pin!(shutdown);
    // 1. Repositories.
    let repos = crate::restore::source::open_repositories(settings).await?;
    // 2. Stream id.
    let mut repl = ReplicationConnection::connect(&settings.db).await?;
    let identity = repl.identify_system().await?;
    let stream_id = format!("{}-{}", identity.systemid, opts.slot);
    let span = tracing::info_span!("stream", stream_id = %stream_id, slot = %opts.slot, lsn = tracing::field::Empty);
    archive(
        settings,
        opts,
        repos,
        repl,
        stream_id,
        &mut shutdown,
        span.clone(),
    )
    .instrument(span)
    .await
}

/// Steps 3 to 5, inside the stream's span.
async fn archive<F: Future<Output = ()>>(
    settings: &Settings,
    opts: &StreamOptions,
    repos: Vec<Arc<dyn Storage>>,
    mut repl: ReplicationConnection,
    stream_id: String,
    shutdown: &mut std::pin::Pin<&mut F>,
    span: tracing::Span,
) -> Result<StreamReport> {
    // 3. Publication, then slot.
    let client = crate::pg::connect::connect(&settings.db).await?;
    let tables_without_identity = ensure_publication(&client.client, &opts.publication).await?;
    ensure_slot(&client.client, &mut repl, &opts.slot, &settings.db.dbname).await?;
    drop(client);
    let mut repl = Some(repl);

    let limits = SegmentLimits {
        max_age: Duration::from_secs(opts.segment_seconds),
        max_bytes: opts.segment_bytes,
    };
    let cx = SessionContext {
        slot: &opts.slot,
        publication: &opts.publication,
        repos: &repos,
        limits,
    };
    let mut totals = SessionTotals::default();
    let mut start_lsn = None;
    let mut durable_end = Lsn(0);
    let mut reconnects = 0;
    let mut backoff = Duration::from_secs(1);
    loop {
        // 4. Resume point, 5. archive.
        let attempt = async {
            let resume = resume_point(&settings.db, &opts.slot, &stream_id, &repos).await?;
            start_lsn.get_or_insert(resume);
            span.record("lsn", tracing::field::display(resume));
            let mut conn = match repl.take() {
                Some(conn) => conn,
                None => ReplicationConnection::connect(&settings.db).await?,
            };
            let mut archiver = Archiver::new(stream_id.clone(), resume);
            let result =
                archiver::run_session(&mut conn, &mut archiver, &cx, &mut totals, shutdown).await;
            durable_end = archiver.durable_end();
            let progressed = durable_end > resume;
            if result.is_ok() {
                let _ = conn.close().await;
            }
            result.map(|end| (end, progressed))
        };
        match attempt.await {
            Ok((SessionEnd::Shutdown, _)) => break,
            Ok((SessionEnd::ServerEnded, progressed)) => {
                tracing::warn!("the server ended the replication stream; reconnecting");
                if progressed {
                    backoff = Duration::from_secs(1);
                }
            }
            Err(e) if e.is_retryable() || e.message().contains("is active for PID") => {
                // A slot still held by a killed predecessor's walsender is
                // released once the server notices; a live second streamer
                // keeps us waiting here, warned every attempt.
                tracing::warn!(error = %e.user_line(), backoff_s = backoff.as_secs(), "stream interrupted; reconnecting");
            }
            Err(e) => return Err(e),
        }
        reconnects += 1;
        tokio::select! {
            _ = shutdown.as_mut() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    let start_lsn = start_lsn.unwrap_or(durable_end);
    tracing::info!(start_lsn = %start_lsn, durable_end = %durable_end, segments = totals.segments, "stream stopped");
    Ok(StreamReport {
        stream_id,
        start_lsn,
        durable_end,
        totals,
        tables_without_identity,
        reconnects,
    })
}

/// Create `publication` if missing, `FOR TABLE` every ordinary table with a
/// usable replica identity. Returns the tables left out (each with a warning).
async fn ensure_publication(
    client: &tokio_postgres::Client,
    publication: &str,
) -> Result<Vec<String>> {
    let db_err = |what: &'static str| {
        move |e: tokio_postgres::Error| {
            let text = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            Error::new(ErrorKind::Database, format!("cannot {what}: {text}"))
        }
    };
    let exists = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(db_err("look up the publication"))?;
    if let Some(row) = exists {
        if row.get::<_, bool>(0) {
            tracing::warn!(
                publication,
                "publication is FOR ALL TABLES: UPDATE and DELETE fail on tables without a replica identity"
            );
        }
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT n.nspname, c.relname,
                    c.relreplident = 'f'
                    OR (c.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
                    OR (c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident))
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND c.relpersistence = 'p'
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(db_err("list tables for the publication"))?;
    let mut usable = Vec::new();
    let mut left_out = Vec::new();
    for row in rows {
        let (schema, name, ok): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
        let table = qualified(&schema, &name);
        if ok {
            usable.push(table);
        } else {
            tracing::warn!(
                table = %table,
                "table has no replica identity and is not streamed; fix: ALTER TABLE {table} ADD PRIMARY KEY (…) \
                 (or ALTER TABLE {table} REPLICA IDENTITY FULL), then ALTER PUBLICATION {} ADD TABLE {table}",
                quote_ident(publication)
            );
            left_out.push(table);
        }
    }
    let mut sql = format!("CREATE PUBLICATION {}", quote_ident(publication));
    if !usable.is_empty() {
        sql.push_str(" FOR TABLE ");
        sql.push_str(&usable.join(", "));
    }
    client
        .batch_execute(&sql)
        .await
        .map_err(db_err("create the publication"))?;
    tracing::info!(
        publication,
        tables = usable.len(),
        left_out = left_out.len(),
        "created publication"
    );
    Ok(left_out)
}

/// Create the permanent pgoutput slot if missing; refuse a slot of another
/// kind, plugin or database.
async fn ensure_slot(
    client: &tokio_postgres::Client,
    repl: &mut ReplicationConnection,
    slot: &str,
    dbname: &str,
) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT slot_type, coalesce(plugin, ''), coalesce(database, '') FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("cannot look up replication slot {slot}: {e}")))?;
    match row {
        None => {
            repl.create_logical_slot(slot, false, false).await?;
        }
        Some(row) => {
            let (kind, plugin, database): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            if kind != "logical" || plugin != "pgoutput" || database != dbname {
                return Err(Error::config(format!(
                    "replication slot {slot} is a {kind} slot with plugin `{plugin}` on database `{database}`, \
                     not a pgoutput slot on `{dbname}`"
                ))
                .with_hint("choose another --slot, or drop that slot if it is unused"));
            }
        }
    }
    Ok(())
}

/// The slot's `confirmed_flush_lsn`.
async fn confirmed_flush(db: &crate::config::DbSettings, slot: &str) -> Result<Lsn> {
    let conn = crate::pg::connect::connect(db).await?;
    let row = conn
        .client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Database,
                format!("cannot read replication slot {slot}: {e}"),
            )
        })?;
    let text: Option<String> = row
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Database,
                format!("replication slot {slot} no longer exists"),
            )
        })?
        .get(0);
    text.ok_or_else(|| {
        Error::new(
            ErrorKind::Database,
            format!("replication slot {slot} has no confirmed position"),
        )
    })?
    .parse()
}

/// Step 4: list the stream's segments in every repository, remove orphans
/// past the common end, and return where to resume.
async fn resume_point(
    db: &crate::config::DbSettings,
    slot: &str,
    stream_id: &str,
    repos: &[Arc<dyn Storage>],
) -> Result<Lsn> {
    let prefix = format!("{CHANGES_PREFIX}{stream_id}/");
    let mut listings = Vec::new();
    for repo in repos {
        let keys = repo
            .list(&prefix)
            .await?
            .into_iter()
            .map(|m| m.key)
            .collect();
        listings.push((repo.location(), keys));
    }
    let confirmed = confirmed_flush(db, slot).await?;
    let plan = plan_resume(stream_id, &listings, confirmed)?;
    if !plan.orphans.is_empty() {
        // Segments past the common end may belong to another live streamer
        // between its puts: only remove them when nobody consumes the slot.
        if let Some(pid) = slot_active_pid(db, slot).await? {
            return Err(Error::new(
                ErrorKind::Database,
                format!("replication slot {slot} is active for PID {pid}; not touching segments past the common end"),
            )
            .with_hint("run one `pgkeep stream` per slot"));
        }
    }
    for (index, key) in &plan.orphans {
        tracing::warn!(key = %key, repository = %repos[*index].location(), "removing a segment stored past the common end (interrupted run)");
        repos[*index].delete(key).await?;
    }
    Ok(plan.resume)
}

/// The pid of the walsender consuming `slot`, if any.
async fn slot_active_pid(db: &crate::config::DbSettings, slot: &str) -> Result<Option<i32>> {
    let conn = crate::pg::connect::connect(db).await?;
    let row = conn
        .client
        .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active", &[&slot])
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("cannot read replication slot {slot}: {e}")))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Where to resume, and segments to remove `(repository index, key)`.
#[derive(Debug, PartialEq, Eq)]
struct ResumePlan {
    resume: Lsn,
    orphans: Vec<(usize, String)>,
}

/// Pure part of [`resume_point`]: `listings` are `(location, keys)` per repository.
fn plan_resume(
    stream_id: &str,
    listings: &[(String, Vec<String>)],
    confirmed: Lsn,
) -> Result<ResumePlan> {
    let mut chains = Vec::new();
    for (location, keys) in listings {
        let mut segs: Vec<(Lsn, Lsn, &String)> = keys
            .iter()
            .filter_map(|k| {
                parse_segment_key(k)
                    .filter(|(s, _, _)| s == stream_id)
                    .map(|(_, a, b)| (a, b, k))
            })
            .collect();
        segs.sort();
        for pair in segs.windows(2) {
            let (prev_end, next_start) = (pair[0].1, pair[1].0);
            if prev_end != next_start {
                return Err(Error::corrupt(format!(
                    "repository {location} is missing changes [{prev_end}, {next_start}) of stream {stream_id} \
                     (segments {} and {} are not contiguous)",
                    pair[0].2, pair[1].2
                )));
            }
        }
        chains.push(segs);
    }
    let Some(resume) = chains.iter().filter_map(|c| c.last().map(|s| s.1)).min() else {
        return Ok(ResumePlan {
            resume: confirmed,
            orphans: Vec::new(),
        });
    };
    if confirmed > resume {
        let location = chains
            .iter()
            .zip(listings)
            .find(|(c, _)| c.last().is_some_and(|s| s.1 == resume))
            .map(|(_, l)| l.0.clone());
        return Err(Error::corrupt(format!(
            "repository {} ends stream {stream_id} at {resume} but the slot already confirmed {confirmed}: \
             changes [{resume}, {confirmed}) are missing",
            location.unwrap_or_default()
        ))
        .with_hint("take a new full backup and use a new slot, or restore the missing segments"));
    }
    let mut orphans = Vec::new();
    for (index, chain) in chains.iter().enumerate() {
        for (start, end, key) in chain {
            if *start >= resume {
                orphans.push((index, (*key).clone()));
            } else if *end > resume {
                return Err(Error::corrupt(format!(
                    "segment {key} in repository {} overlaps the common end {resume} of stream {stream_id}",
                    listings[index].0
                )));
            }
        }
    }
    Ok(ResumePlan { resume, orphans })
}

/// The default slot and publication name for a database: `pgkeep_<db>`,
/// lower-cased, anything but `[a-z0-9_]` replaced by `_`, at most 63 bytes.
pub fn default_name(dbname: &str) -> String {
    let mut n: String = format!("pgkeep_{dbname}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    n.truncate(63);
    n
}

/// Stop using change archiving: drop pgkeep's slot (so the server stops
/// retaining WAL for it) and its publication. Returns what was removed.
pub async fn remove(settings: &Settings, slot: &str, publication: &str) -> Result<Vec<String>> {
    validate_slot_name(slot)?;
    let conn = crate::pg::connect(&settings.db).await?;
    let mut removed = Vec::new();
    let fail = crate::pg::query_error;
    let dropped = conn
        .client
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await
        .map_err(fail(format!("cannot drop replication slot {slot}")))?;
    if !dropped.is_empty() {
        removed.push(format!("replication slot {slot}"));
    } else {
        let active: Option<i32> = conn
            .client
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .map_err(fail(format!("cannot look up replication slot {slot}")))?
            .and_then(|r| r.get(0));
        if let Some(pid) = active {
            return Err(Error::new(ErrorKind::Database, format!("replication slot {slot} is in use by pid {pid}"))
                .with_hint("stop `pgkeep stream` first, then run this again"));
        }
    }
    let exists = conn
        .client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(fail(format!("cannot look up publication {publication}")))?
        .is_some();
    if exists {
        conn.client
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(publication)))
            .await
            .map_err(fail(format!("cannot drop publication {publication}")))?;
        removed.push(format!("publication {publication}"));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::layout::segment_key;

    fn keys(ranges: &[(u64, u64)]) -> Vec<String> {
        ranges
            .iter()
            .map(|(a, b)| segment_key("1-s", Lsn(*a), Lsn(*b)))
            .collect()
    }

    #[test]
    fn no_segments_resume_at_the_slot() {
        let plan = plan_resume(
            "1-s",
            &[("a".into(), vec![]), ("b".into(), keys(&[]))],
            Lsn(7),
        )
        .unwrap();
        assert_eq!(
            plan,
            ResumePlan {
                resume: Lsn(7),
                orphans: vec![]
            }
        );
    }

    #[test]
    fn common_end_wins_and_extra_segments_are_orphans() {
        let a = keys(&[(5, 10), (10, 20), (20, 30)]);
        let b = keys(&[(5, 10), (10, 20)]);
        let plan =
            plan_resume("1-s", &[("a".into(), a.clone()), ("b".into(), b)], Lsn(10)).unwrap();
        assert_eq!(plan.resume, Lsn(20));
        assert_eq!(plan.orphans, vec![(0, a[2].clone())]);
        // Other streams are ignored.
        let other = vec![segment_key("2-s", Lsn(0), Lsn(99))];
        assert_eq!(
            plan_resume("1-s", &[("a".into(), other)], Lsn(3))
                .unwrap()
                .resume,
            Lsn(3)
        );
    }

    #[test]
    fn gaps_are_errors_naming_the_range() {
        let e =
            plan_resume("1-s", &[("a".into(), keys(&[(5, 10), (12, 20)]))], Lsn(5)).unwrap_err();
        assert!(e.message().contains("[0/A, 0/C)"), "{}", e.message());
        let e = plan_resume("1-s", &[("a".into(), keys(&[(5, 10)]))], Lsn(15)).unwrap_err();
        assert!(e.message().contains("[0/A, 0/F)"), "{}", e.message());
    }
}
