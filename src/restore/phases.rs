//! The shared restore phases into an empty database: roles, pre-data, then
//! load, index builds and verification overlapped per table
//! ([`pipeline`]), the serial post-data and sequences
//! ([`load_and_verify`]). Shared by `commands::restore`, `verify --deep`
//! and drills.

use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::pg::connect;
use crate::progress::ProgressCounters;
use crate::restore::platform::{self, PlatformTarget};
use crate::restore::privileges::{self, OwnerPolicy, OwnershipReport, RoleAccess};
use crate::restore::report::PhaseTimes;
use crate::restore::source::BackupSource;
use crate::restore::verify::{self, VerifyReport};
use crate::restore::{load, pipeline, schema};

/// Roles, pre-data, parallel load of `selected` tables, post-data,
/// sequences, then verification, into the empty database `work`. Returns
/// (roles created, foreign keys skipped, verification). Shared by restore,
/// `verify --deep` and drills.
pub(crate) async fn load_and_verify(
    source: &Arc<BackupSource>,
    work: &crate::config::DbSettings,
    selected: &[usize],
    jobs: usize,
    critical_tables: &[String],
    progress: &Arc<ProgressCounters>,
    times: &mut PhaseTimes,
) -> Result<(usize, Vec<String>, VerifyReport)> {
    let (roles, skipped, report, _) = load_and_verify_as(source, work, selected, jobs, critical_tables, progress, times, false, None).await?;
    Ok((roles, skipped, report))
}

/// [`load_and_verify`] as the connecting role, which may not be a
/// superuser: owners it cannot become are replaced by itself (all owners
/// with `no_owner`), and extensions it cannot create stop the restore
/// before the schema runs, listed. Also returns what differs in ownership.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn load_and_verify_as(
    source: &Arc<BackupSource>,
    work: &crate::config::DbSettings,
    selected: &[usize],
    jobs: usize,
    critical_tables: &[String],
    progress: &Arc<ProgressCounters>,
    times: &mut PhaseTimes,
    no_owner: bool,
    into_platform: Option<&PlatformTarget>,
) -> Result<(usize, Vec<String>, VerifyReport, OwnershipReport)> {
    let m = &source.manifest;
    let text = async |c: &crate::repo::manifest::ChunkRef| -> Result<String> {
        let bytes = source.read_chunk(c).await?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::corrupt(format!("schema chunk {} is not UTF-8", c.object)))
    };
    let t = Instant::now();
    let roles_created = match &m.schema.globals {
        Some(g) => schema::apply_globals(work, &text(g).await?).await?,
        None => 0,
    };
    let pre_data = text(&m.schema.pre_data).await?;
    let policy = {
        let conn = connect(work).await?;
        let access = RoleAccess::load(&conn.client).await?;
        // Extensions the role cannot create: all of them named, before any schema.
        if !access.superuser {
            // Into a database the platform set up, its extensions are there already.
            let mut wanted = privileges::extensions_created(&pre_data);
            if into_platform.is_some() {
                let installed: Vec<String> = conn
                    .client
                    .query("SELECT extname::text FROM pg_extension", &[])
                    .await
                    .map_err(crate::pg::query_error("cannot list installed extensions"))?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                wanted.retain(|e| !installed.contains(e));
            }
            let refused = privileges::probe_extensions(&conn.client, &wanted).await?;
            if !refused.is_empty() {
                return Err(Error::new(
                    ErrorKind::AccessDenied,
                    format!("role {} cannot create extension(s) of backup {}: {}", access.current, m.backup_id, privileges::list_extensions(&refused)),
                )
                .with_hint("ask the provider to allow them (or restore as a superuser); nothing was restored"));
            }
        }
        OwnerPolicy { access, no_owner }
    };
    let mut ownership = schema::run_pre_data_as(work, &pre_data, &policy, into_platform).await?;
    times.schema = t.elapsed().as_secs_f64();

    let (post_data, post_ownership) = schema::post_data_as(&text(&m.schema.post_data).await?, &policy);
    ownership.merge(post_ownership);
    ownership.restoring_role = policy.access.current.clone();
    progress.tables_total.store(selected.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let raw_total: u64 = selected.iter().flat_map(|&t| m.tables[t].chunks.iter()).map(|c| c.raw_size).sum();
    progress.bytes_total.store(raw_total, std::sync::atomic::Ordering::Relaxed);
    let partial = selected.len() < m.tables.len();
    let (report, fk_skipped) = match into_platform {
        // The platform's tables exist with their foreign keys: referenced
        // tables first, chunk by chunk, then post-data, then verification.
        Some(platform) => {
            let t = Instant::now();
            for wave in platform::load_waves(work, m, selected).await? {
                load::load_tables(source.clone(), work, &wave, jobs, progress.clone()).await?;
            }
            times.data = t.elapsed().as_secs_f64();
            let t = Instant::now();
            warn_ownership(&ownership, &policy);
            let skipped = schema::run_post_data_into(work, &post_data, jobs, partial, Some(platform)).await?;
            // Post-data objects of the platform's schemas that were already there.
            let (kept, other): (Vec<String>, Vec<String>) =
                skipped.into_iter().partition(|b| !b.starts_with("FK CONSTRAINT") && !b.starts_with("EVENT TRIGGER") && !b.starts_with("PUBLICATION"));
            ownership.kept_by_platform.extend(kept);
            schema::set_sequences(work, &m.sequences).await?;
            times.indexes = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let report = verify::verify_tables(m, work, selected, critical_tables, jobs).await?;
            times.verify = t.elapsed().as_secs_f64();
            (report, other)
        }
        // An empty database: each table loaded frozen, its indexes built and
        // its rows read back as soon as it is in; then the serial post-data
        // (foreign keys, triggers…), sequences and the final checks.
        None => {
            let post = schema::split_post_data(work, &post_data).await?;
            let (mut report, stages) = pipeline::run(source, work, selected, &post.parallel, &post.preamble, jobs, progress).await?;
            warn_ownership(&ownership, &policy);
            let t = Instant::now();
            let skipped = schema::run_serial_blocks(work, &post, partial, None).await?;
            schema::set_sequences(work, &m.sequences).await?;
            let serial = t.elapsed().as_secs_f64();
            let t = Instant::now();
            verify::final_checks(m, work, selected, critical_tables, &mut report).await?;
            // Wall-clock stages: data until the last table is in; indexes
            // and verify for what each added after that.
            times.data = stages.loaded;
            times.indexes = (stages.built - stages.loaded).max(0.0) + serial;
            times.verify = (stages.verified - stages.built.max(stages.loaded)).max(0.0) + t.elapsed().as_secs_f64();
            times.busy = Some(stages.busy);
            (report, skipped)
        }
    };
    Ok((roles_created, fk_skipped, report, ownership))
}

/// One warning listing what differs in ownership, if anything.
fn warn_ownership(ownership: &OwnershipReport, policy: &OwnerPolicy) {
    if !ownership.is_empty() {
        tracing::warn!(role = %policy.access.current, "{}", ownership.describe());
    }
}
