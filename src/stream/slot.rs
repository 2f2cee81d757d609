//! The permanent slot of `pgkeep stream`, and where archiving resumes on it
//! (step 4 of [`super::run`]).
//!
//! [`ensure_slot`] creates the `pgoutput` slot if missing (a failover slot
//! on PostgreSQL 17 and later; an existing idle slot is altered to one) and
//! refuses a slot of another kind, plugin or database. [`resume_point`]
//! lists the stream's segments in every repository and asks the pure
//! [`plan_resume`]:
//! the common end of the chains (or the slot's `confirmed_flush_lsn` when
//! there are none), gaps as errors, and segments past the common end (a
//! crash between puts; never confirmed) to delete, which happens only while
//! no other walsender consumes the slot. Parts of transactions committed at
//! or after the resume point ([`stale_parts`]) are deleted the same way.

use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::replication::{FAILOVER_MIN_SERVER_VERSION, ReplicationConnection, alter_slot_failover_command};
use crate::repo::layout::{CHANGES_PREFIX, Lsn, parse_part_key, parse_segment_key};
use crate::storage::Storage;

/// Create the permanent pgoutput slot if missing; refuse a slot of another
/// kind, plugin or database. Returns whether the slot existed already.
pub async fn ensure_slot(client: &tokio_postgres::Client, repl: &mut ReplicationConnection, slot: &str, dbname: &str) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT slot_type, coalesce(plugin, ''), coalesce(database, ''), active, (to_jsonb(s) ->> 'failover')::bool \
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("cannot look up replication slot {slot}: {e}")))?;
    match row {
        None => {
            // A failover slot on 17+, so that a managed failover keeps it.
            repl.create_logical_slot_with(slot, false, false, true).await?;
            Ok(false)
        }
        Some(row) => {
            let (kind, plugin, database): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            if kind != "logical" || plugin != "pgoutput" || database != dbname {
                return Err(Error::config(format!(
                    "replication slot {slot} is a {kind} slot with plugin `{plugin}` on database `{database}`, \
                     not a pgoutput slot on `{dbname}`"
                ))
                .with_hint("choose another --slot, or drop that slot if it is unused"));
            }
            // 17+: a slot made before (an older server or pgkeep) becomes a failover slot.
            let (active, failover): (bool, Option<bool>) = (row.get(3), row.get(4));
            if failover == Some(false) && !active && repl.server_version_num() >= FAILOVER_MIN_SERVER_VERSION {
                match repl.simple_query(&alter_slot_failover_command(slot)?).await {
                    Ok(_) => tracing::info!(slot = %slot, "replication slot is now a failover slot"),
                    Err(e) => {
                        tracing::warn!(slot = %slot, error = %e.user_line(), "could not make the replication slot a failover slot; a failover of the server will lose it")
                    }
                }
            }
            Ok(true)
        }
    }
}

/// The slot's `confirmed_flush_lsn`.
async fn confirmed_flush(db: &crate::config::DbSettings, slot: &str) -> Result<Lsn> {
    let conn = crate::pg::connect::connect(db).await?;
    let row = conn
        .client
        .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("cannot read replication slot {slot}: {e}")))?;
    let text: Option<String> = row.ok_or_else(|| Error::new(ErrorKind::Database, format!("replication slot {slot} no longer exists")))?.get(0);
    text.ok_or_else(|| Error::new(ErrorKind::Database, format!("replication slot {slot} has no confirmed position")))?.parse()
}

/// Step 4: list the stream's segments in every repository, remove orphans
/// past the common end, and return where to resume and where the chain
/// starts.
pub async fn resume_point(db: &crate::config::DbSettings, slot: &str, stream_id: &str, repos: &[Arc<dyn Storage>]) -> Result<ResumePlan> {
    let prefix = format!("{CHANGES_PREFIX}{stream_id}/");
    let mut listings = Vec::new();
    for repo in repos {
        let keys = repo.list(&prefix).await?.into_iter().map(|m| m.key).collect();
        listings.push((repo.location(), keys));
    }
    let confirmed = confirmed_flush(db, slot).await?;
    let mut plan = plan_resume(stream_id, &listings, confirmed)?;
    plan.orphans.extend(stale_parts(stream_id, &listings, plan.resume));
    if !plan.orphans.is_empty() {
        // Segments past the common end may belong to another live streamer
        // between its puts: only remove them when nobody consumes the slot.
        if let Some(pid) = slot_active_pid(db, slot).await? {
            return Err(Error::new(ErrorKind::Database, format!("replication slot {slot} is active for PID {pid}; not touching segments past the common end"))
                .with_sqlstate(SLOT_IN_USE)
                .with_hint("run one `pgkeep stream` per slot"));
        }
    }
    for (index, key) in &plan.orphans {
        tracing::warn!(key = %key, repository = %repos[*index].location(), "removing a segment or transaction part stored past the common end (interrupted run)");
        repos[*index].delete(key).await?;
    }
    Ok(plan)
}

/// SQLSTATE object_in_use: the server's refusal to stream from a slot
/// another walsender holds ("replication slot … is active for PID …"), and
/// [`resume_point`]'s own refusal in that case.
pub const SLOT_IN_USE: &str = "55006";

/// Whether `e` says another process holds the slot. That passes once the
/// server notices a killed predecessor's walsender is gone. Decided on the
/// SQLSTATE, so a server speaking another language is read the same.
pub fn is_slot_in_use(e: &Error) -> bool {
    e.sqlstate() == Some(SLOT_IN_USE)
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

/// Where to resume, where the chain starts, and segments to remove.
#[derive(Debug, PartialEq, Eq)]
pub struct ResumePlan {
    /// The common end of the chains, or the slot's confirmed position.
    pub resume: Lsn,
    /// The latest first-segment start over the repositories (every
    /// repository holds the chain from here), or `resume` when there are
    /// no segments yet: a base backup must be consistent at or after it.
    pub chain_start: Lsn,
    /// Segments past the common end: `(repository index, key)`.
    pub orphans: Vec<(usize, String)>,
}

/// Pure part of [`resume_point`]: `listings` are `(location, keys)` per repository.
pub fn plan_resume(stream_id: &str, listings: &[(String, Vec<String>)], confirmed: Lsn) -> Result<ResumePlan> {
    let mut chains = Vec::new();
    for (location, keys) in listings {
        let mut segs: Vec<(Lsn, Lsn, &String)> =
            keys.iter().filter_map(|k| parse_segment_key(k).filter(|(s, _, _)| s == stream_id).map(|(_, a, b)| (a, b, k))).collect();
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
        return Ok(ResumePlan { resume: confirmed, chain_start: confirmed, orphans: Vec::new() });
    };
    let chain_start = chains.iter().filter_map(|c| c.first().map(|s| s.0)).max().unwrap_or(resume).min(resume);
    if confirmed > resume {
        let location = chains.iter().zip(listings).find(|(c, _)| c.last().is_some_and(|s| s.1 == resume)).map(|(_, l)| l.0.clone());
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
    Ok(ResumePlan { resume, chain_start, orphans })
}

/// Parts of transactions committed at or after `resume`: no stored segment
/// refers to them (a crash before the Commit was archived); the server
/// resends those transactions and their parts are written again.
pub fn stale_parts(stream_id: &str, listings: &[(String, Vec<String>)], resume: Lsn) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (index, (_, keys)) in listings.iter().enumerate() {
        for key in keys {
            if parse_part_key(key).is_some_and(|(s, commit, _)| s == stream_id && commit >= resume) {
                out.push((index, key.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::layout::segment_key;

    #[test]
    fn a_busy_slot_is_known_by_its_code_in_any_language() {
        let busy = |text: &str| Error::new(ErrorKind::Database, format!("cannot stream changes from replication slot s: {text}"));
        assert!(is_slot_in_use(&busy("Replikations-Slot »s« ist aktiv für PID 42").with_sqlstate("55006")));
        assert!(!is_slot_in_use(&busy("replication slot \"s\" is active for PID 42")));
        assert!(!is_slot_in_use(&busy("replication slot \"s\" is active for PID 42").with_sqlstate("42704")));
    }

    #[test]
    fn parts_of_transactions_not_archived_are_stale() {
        use crate::repo::layout::part_key;
        let a = vec![segment_key("1-s", Lsn(5), Lsn(10)), part_key("1-s", Lsn(8), 1), part_key("1-s", Lsn(12), 1), part_key("2-s", Lsn(12), 1)];
        let b = vec![part_key("1-s", Lsn(10), 2)];
        let stale = stale_parts("1-s", &[("a".into(), a), ("b".into(), b)], Lsn(10));
        assert_eq!(stale, vec![(0, part_key("1-s", Lsn(12), 1)), (1, part_key("1-s", Lsn(10), 2))]);
    }

    fn keys(ranges: &[(u64, u64)]) -> Vec<String> {
        ranges.iter().map(|(a, b)| segment_key("1-s", Lsn(*a), Lsn(*b))).collect()
    }

    #[test]
    fn no_segments_resume_at_the_slot() {
        let plan = plan_resume("1-s", &[("a".into(), vec![]), ("b".into(), keys(&[]))], Lsn(7)).unwrap();
        assert_eq!(plan, ResumePlan { resume: Lsn(7), chain_start: Lsn(7), orphans: vec![] });
    }

    #[test]
    fn common_end_wins_and_extra_segments_are_orphans() {
        let a = keys(&[(5, 10), (10, 20), (20, 30)]);
        let b = keys(&[(5, 10), (10, 20)]);
        let plan = plan_resume("1-s", &[("a".into(), a.clone()), ("b".into(), b)], Lsn(10)).unwrap();
        assert_eq!(plan.resume, Lsn(20));
        assert_eq!(plan.chain_start, Lsn(5));
        assert_eq!(plan.orphans, vec![(0, a[2].clone())]);
        // Other streams are ignored.
        let other = vec![segment_key("2-s", Lsn(0), Lsn(99))];
        assert_eq!(plan_resume("1-s", &[("a".into(), other)], Lsn(3)).unwrap().resume, Lsn(3));
    }

    #[test]
    fn gaps_are_errors_naming_the_range() {
        let e = plan_resume("1-s", &[("a".into(), keys(&[(5, 10), (12, 20)]))], Lsn(5)).unwrap_err();
        assert!(e.message().contains("[0/A, 0/C)"), "{}", e.message());
        let e = plan_resume("1-s", &[("a".into(), keys(&[(5, 10)]))], Lsn(15)).unwrap_err();
        assert!(e.message().contains("[0/A, 0/F)"), "{}", e.message());
    }
}
