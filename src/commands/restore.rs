//! `pgkeep restore`: bring a backup back safely. [`run`] reads as the steps
//! in the README: approval, pre-restore backup, fetch and check, temporary
//! database, load, verify, swap approval, swap, report. Production is not
//! touched before both approvals and a verified temporary database; any
//! failure before the swap drops the temporary database (unless
//! `--keep-temp`) and leaves production as it was.
//!
//! `latest` means the newest pgkeep backup, never a legacy archive. An id
//! that no repository has a pgkeep backup of is looked up among the legacy
//! archives of the old scripts (`full_backup_*.dump.gz`) and restored by
//! [`restore_legacy`](crate::commands::restore_legacy) with the same steps.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::commands::backup::{self, BackupOptions};
use crate::commands::restore_legacy;
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::connect;
use crate::progress::ProgressCounters;
use crate::replay::{self, RecoveryTarget, ReplayPlan, ReplayReport};
use crate::repo::layout::BackupKind;
use crate::restore::approve;
use crate::restore::plan::{incremental_root, latest_data_plan, latest_of_this_cluster, plan_point_in_time};
use crate::restore::platform::{self, PlatformSchemas, PlatformTarget};
use crate::restore::privileges::{self, OwnershipReport};
use crate::restore::source::{self as src, BackupSelector, BackupSource};
use crate::restore::target;
use crate::restore::verify::VerifyReport;
use crate::storage::Storage;

pub(crate) use crate::restore::phases::load_and_verify_as;
pub use crate::restore::report::{PhaseTimes, RestoreReport};

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Which backup.
    pub selector: BackupSelector,
    /// Restore into this new database instead of replacing the configured one.
    pub target_db: Option<String>,
    /// Stop after verification and keep the temporary database.
    pub temp_only: bool,
    /// Keep the temporary database when something fails.
    pub keep_temp: bool,
    /// Skip the pre-restore backup of the database being replaced.
    pub no_pre_backup: bool,
    /// Approve both gates.
    pub yes: bool,
    /// Tables that must be present and not empty (`schema.table` or `table`).
    pub critical_tables: Vec<String>,
    /// Restore only these tables' data (`schema.table` or `table`); the
    /// schema is complete, other tables stay empty. Never swapped in.
    pub tables: Vec<String>,
    /// Point in time: replay archived changes after the base backup up to this target.
    /// `None` with backup `latest`: the newest backup plus everything archived
    /// after it (unless `to_backup`).
    pub point_in_time: Option<RecoveryTarget>,
    /// `--no-owner`: every restored object belongs to the restoring role (pg_restore's semantics).
    pub no_owner: bool,
    /// `--platform-schemas`: restoring into an existing database (`target_db`) the platform set up.
    pub platform_schemas: PlatformSchemas,
    /// Replay across changes the archive cannot reproduce (warned, not refused).
    pub accept_inexact: bool,
    /// Backup `latest` without a target: stop at the backup's consistent
    /// point instead of replaying the archive after it (`--target backup`).
    pub to_backup: bool,
    /// Progress counters.
    pub progress: Arc<ProgressCounters>,
}

impl RestoreOptions {
    /// Options for restoring `selector` with every default: swap into the
    /// configured database, pre-restore backup, both gates asked.
    pub fn new(selector: BackupSelector) -> Self {
        RestoreOptions {
            selector,
            target_db: None,
            temp_only: false,
            keep_temp: false,
            no_pre_backup: false,
            yes: false,
            critical_tables: Vec::new(),
            tables: Vec::new(),
            point_in_time: None,
            no_owner: false,
            platform_schemas: PlatformSchemas::Auto,
            accept_inexact: false,
            to_backup: false,
            progress: Arc::new(ProgressCounters::default()),
        }
    }
}

/// Restore a backup.
pub async fn run(settings: &Settings, opts: &RestoreOptions) -> Result<RestoreReport> {
    let result = run_steps(settings, opts).await;
    audit(settings, "restore", &result).await;
    result
}

/// Record a restore (or rollback) in every repository's audit trail, success or failure.
pub(crate) async fn audit<T: Serialize>(settings: &Settings, operation: &str, result: &Result<T>) {
    let details = match result {
        Ok(v) => serde_json::to_value(v).unwrap_or_default(),
        Err(e) => serde_json::json!({ "error": e.user_line() }),
    };
    let details = serde_json::json!({ "database": settings.db.dbname, "server": format!("{}:{}", settings.db.host, settings.db.port), "result": details });
    if let Ok(repos) = src::open_repositories(settings).await {
        crate::repo::audit::record(&repos, operation, result.is_ok(), details).await;
    }
}

async fn run_steps(settings: &Settings, opts: &RestoreOptions) -> Result<RestoreReport> {
    let server = &settings.db;
    let target_name = opts.target_db.clone().unwrap_or_else(|| server.dbname.clone());
    // A table-level restore is never swapped in: it would replace every other table with an empty one.
    let swapping = opts.target_db.is_none() && !opts.temp_only && opts.tables.is_empty();

    // 1. Find the backup (read-only) and check where it goes, then ask for approval.
    let found = match find_backup(settings, opts).await? {
        Located::Backup(found) => found,
        Located::Legacy(report) => return Ok(*report),
    };
    let source = &found.source;
    let id = source.manifest.backup_id.clone();
    let dest = destination(server, opts, &target_name, &found).await?;
    // A table the archive cannot bring to the target: refused before anything.
    if let Some(plan) = &found.replay_plan {
        replay::preflight(plan, replay_only(opts, &dest, source).as_deref())?;
    }
    let plan = approval_text(server, &found, &dest, &target_name, swapping).await;
    crate::interrupt::guard(approve::gate("RESTORE", plan, opts.yes)).await?;
    offer_leftover_cleanup(server, opts.yes).await;
    let mut times = PhaseTimes::default();

    // 2. Pre-restore backup of the database about to be replaced.
    let mut pre_backup = None;
    if swapping && !opts.no_pre_backup && target::database_exists(server, &target_name).await? {
        let t = Instant::now();
        pre_backup = Some(pre_restore_backup(settings).await?);
        times.pre_backup = t.elapsed().as_secs_f64();
    }

    // 3. Fetch and check: every object the manifest lists exists with its size.
    crate::interrupt::guard(check_objects(source)).await?;

    // 4. The temporary (or new target) database.
    let info = source.manifest.database_info.as_ref();
    let work_db = match &opts.target_db {
        Some(name) if dest.into_platform.is_some() => name.clone(),
        Some(name) => {
            target::create_database(server, name, info).await?;
            name.clone()
        }
        None => target::create_temp_database(server, info).await?,
    };

    // 5-6. Load and verify; on failure (or SIGTERM/SIGINT) drop the work database, production untouched.
    let raw_bytes: u64 = dest.selected.iter().map(|&i| source.manifest.tables[i].raw_bytes).sum();
    tracing::info!(tables = dest.selected.len(), raw_bytes, jobs = settings.jobs, "loading {id} into {work_db}");
    let (roles_created, fk_skipped, verification, ownership) = load_step(settings, opts, &found, &dest, &work_db, &mut times).await?;
    // 6b. Point in time: replay the archived changes up to the target.
    let point_in_time = replay_step(server, opts, &found, &dest, &work_db, &mut times).await?;
    // The database's own owner and settings, now that pgkeep's sessions are done with it.
    // Not into a database the platform set up: its owner, settings and grants are the platform's.
    if dest.into_platform.is_none()
        && let Err(e) = target::apply_database_properties(server, &work_db, source.manifest.database_info.as_ref()).await
    {
        return Err(abandon(server, opts, &work_db, e).await);
    }
    // Interrupted during the last steps: stop before the swap.
    if let Some(signo) = crate::interrupt::received() {
        return Err(abandon(server, opts, &work_db, crate::interrupt::error(signo)).await);
    }
    let progress = opts.progress.view();
    let mut report = RestoreReport {
        backup_id: id.to_string(),
        repository: source.storage.location(),
        restored_into: work_db.clone(),
        pre_restore_backup: pre_backup,
        swap: None,
        rows: verification.rows,
        bytes: progress.bytes,
        roles_created,
        tables_restored: dest.selected.len(),
        foreign_keys_skipped: fk_skipped,
        ownership,
        verification,
        point_in_time,
        not_replayed: found.not_replayed,
        seconds: times,
    };
    if !swapping {
        return Ok(report);
    }

    // 7-8. Swap approval, then swap: target -> target_old, temp -> target.
    if let Err(e) = swap_in(server, opts, &target_name, &work_db, &mut report).await {
        if report.swap.is_none() && e.kind() == ErrorKind::Aborted && crate::interrupt::received().is_some() {
            return Err(abandon(server, opts, &work_db, e).await);
        }
        return Err(e);
    }

    // 9. Post-restore check: the target answers and holds the tables.
    post_restore_check(server, &target_name, &id.to_string(), source.manifest.tables.len()).await?;
    Ok(report)
}

/// Step 1's answer: a pgkeep backup to restore, or the report of the
/// legacy archive the id named (restored with the same steps).
enum Located {
    Backup(Box<Found>),
    Legacy(Box<RestoreReport>),
}

/// The backup to restore and the changes to replay after it.
struct Found {
    repos: Vec<Arc<dyn Storage>>,
    keys: Arc<crate::crypto::Keyring>,
    source: Arc<BackupSource>,
    /// The changes to replay after the backup, if any.
    replay_plan: Option<ReplayPlan>,
    /// Why `latest` is restored without the changes archived after it.
    not_replayed: Option<String>,
    /// An explicit target (or an incremental's restore point) was asked for.
    point_in_time: Option<RecoveryTarget>,
}

/// Where the backup goes: the tables to restore, and the platform's
/// database when restoring in place into an existing `--target-db`.
struct Destination {
    selected: Vec<usize>,
    into_platform: Option<PlatformTarget>,
}

/// Step 1 (read-only): the backup the selector names and, for a point in
/// time or `latest`, the replay plan; an id no repository has a pgkeep
/// backup of is looked up among the legacy archives.
async fn find_backup(settings: &Settings, opts: &RestoreOptions) -> Result<Located> {
    let server = &settings.db;
    let repos = src::open_repositories(settings).await?;
    let mut replay_plan: Option<ReplayPlan> = None;
    let keys = Arc::new(crate::crypto::Keyring::from_settings(&settings.encryption));
    // A table image is one table at a point of the change archive: never restored alone.
    if let BackupSelector::Id(id) = &opts.selector
        && id.kind() == BackupKind::TableImage
    {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{id} is a table image, which point-in-time restores put in place of its table; it is not restored alone"),
        )
        .with_hint("restore a full backup, or `latest`, with --target-time or --target-lsn at or after the image"));
    }
    // An incremental backup is its full ancestor brought to the incremental's restore point.
    let (selector, point_in_time) = match (&opts.selector, opts.point_in_time) {
        (BackupSelector::Id(id), target) if id.kind() == BackupKind::Incremental => {
            let (root, end) = incremental_root(&repos, id).await?;
            (BackupSelector::Id(root), Some(target.unwrap_or(RecoveryTarget::Lsn(end))))
        }
        (s, t) => (s.clone(), t),
    };
    // `latest` of a database name several clusters back up here: the configured server's cluster.
    let selector = match (&selector, point_in_time) {
        (BackupSelector::Latest, None) => latest_of_this_cluster(&repos, server).await.unwrap_or(selector),
        _ => selector,
    };
    // `latest` without a target: the newest backup plus everything archived after it.
    let mut not_replayed = None;
    if point_in_time.is_none() && !opts.to_backup && matches!(selector, BackupSelector::Latest) {
        match latest_data_plan(&repos, &server.dbname, &keys).await? {
            Ok(mut plan) => {
                plan.accept_inexact = opts.accept_inexact;
                replay_plan = Some(plan);
            }
            Err(why) => not_replayed = Some(why),
        }
    }
    let found = match point_in_time {
        // Point in time: the base is the newest full backup the archive continues up to the target.
        Some(target) => match plan_point_in_time(&repos, &selector, &server.dbname, target, &keys).await {
            Ok(mut plan) => {
                let by_id = BackupSelector::Id(plan.base.backup_id.clone());
                plan.accept_inexact = opts.accept_inexact;
                replay_plan = Some(plan);
                BackupSource::find_with_keys(&repos, &by_id, &server.dbname, &keys).await
            }
            Err(e) => return Err(e),
        },
        None => match &replay_plan {
            Some(plan) => BackupSource::find_with_keys(&repos, &BackupSelector::Id(plan.base.backup_id.clone()), &server.dbname, &keys).await,
            None => BackupSource::find_with_keys(&repos, &selector, &server.dbname, &keys).await,
        },
    };
    let source = match found {
        Ok(s) => Arc::new(s),
        // Legacy archives: an id no repository has a pgkeep backup of.
        Err(e)
            if e.kind() == ErrorKind::NotFound
                && let BackupSelector::Id(id) = &opts.selector =>
        {
            return restore_legacy::run_if_archive(settings, opts, &repos, id, e).await.map(|r| Located::Legacy(Box::new(r)));
        }
        Err(e) => return Err(e),
    };
    Ok(Located::Backup(Box::new(Found { repos, keys, source, replay_plan, not_replayed, point_in_time })))
}

/// Step 1, where it goes: the tables asked for, a server that can load the
/// backup's schema, and an existing `--target-db` inspected as a database
/// the platform set up (a new project), restored into in place.
async fn destination(server: &crate::config::DbSettings, opts: &RestoreOptions, target_name: &str, found: &Found) -> Result<Destination> {
    let source = &found.source;
    let mut selected = select_tables(&source.manifest, &opts.tables)?;
    // A server of an older major than the backup's cannot load its schema: refused before anything.
    crate::restore::compat::check_target(server, &source.manifest.server).await?;
    let mut into_platform: Option<PlatformTarget> = None;
    if opts.target_db.is_some() && target::database_exists(server, target_name).await? {
        let p = platform::inspect(&server.with_dbname(target_name), &source.manifest, opts.platform_schemas).await?;
        selected.retain(|i| !p.tables_kept.contains(i));
        // A replay there may have to suspend the platform's triggers and keys: checked before anything.
        if found.point_in_time.is_some() {
            let conn = connect(&server.with_dbname(target_name)).await?;
            let written = selected.iter().map(|&i| (source.manifest.tables[i].schema.clone(), source.manifest.tables[i].name.clone())).collect();
            replay::suspend::Suspended::preflight(&conn.client, target_name, Some(written)).await?;
        }
        into_platform = Some(p);
    }
    Ok(Destination { selected, into_platform })
}

/// Step 1, what the RESTORE gate asks: the backup, the changes replayed,
/// where it goes, and extensions only the provider may create.
async fn approval_text(server: &crate::config::DbSettings, found: &Found, dest: &Destination, target_name: &str, swapping: bool) -> String {
    let id = &found.source.manifest.backup_id;
    let what = match &found.replay_plan {
        Some(p) => format!("backup {id} with changes replayed to {}", p.target),
        None => format!("backup {id}"),
    };
    let mut plan = if let Some(p) = &dest.into_platform {
        format!(
            "restore {what} in place into the existing database {target_name} on {}:{}, keeping the platform's schemas ({})",
            server.host,
            server.port,
            p.schemas.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    } else if swapping {
        format!("restore {what} and then replace database {target_name} on {}:{}", server.host, server.port)
    } else {
        format!("restore {what} into a new database on {}:{}", server.host, server.port)
    };
    // Extensions only the provider may create, said before anything starts.
    // (Best effort: the probe in the new database decides; a server without the configured
    // or the maintenance database only loses the early warning.)
    let provider_only = provider_only_extensions(server, &found.source).await.unwrap_or_else(|e| {
        tracing::debug!(error = %e.user_line(), "cannot check the backup's extensions before the restore");
        Vec::new()
    });
    if !provider_only.is_empty() {
        let list = privileges::list_extensions(&provider_only);
        tracing::warn!(extensions = %list, "the backup uses extensions this role may not be able to create; the restore checks them first in the new database");
        plan.push_str(&format!(" (WARNING: extensions that may need the provider: {list})"));
    }
    plan
}

/// Steps 5-6: load `work_db` and verify it against the backup. A failure
/// (or a failed verification, or SIGTERM/SIGINT) drops the work database
/// (unless `--keep-temp`), or, in a platform's database, says what was written.
async fn load_step(
    settings: &Settings,
    opts: &RestoreOptions,
    found: &Found,
    dest: &Destination,
    work_db: &str,
    times: &mut PhaseTimes,
) -> Result<(usize, Vec<String>, VerifyReport, OwnershipReport)> {
    let (server, source) = (&settings.db, &found.source);
    let id = &source.manifest.backup_id;
    let loaded = crate::interrupt::guard(load_and_verify_as(
        source,
        &server.with_dbname(work_db),
        &dest.selected,
        settings.jobs,
        &opts.critical_tables,
        &opts.progress,
        times,
        opts.no_owner,
        dest.into_platform.as_ref(),
    ))
    .await;
    let (roles_created, fk_skipped, verification, mut ownership) = match loaded {
        Ok(v) if v.2.passed() => v,
        other => {
            let err = match other {
                Err(e) => e,
                Ok((_, _, report, _)) => {
                    Error::new(ErrorKind::CheckFailed, format!("restored data does not match backup {id}: {}", report.problems.join("; ")))
                }
            };
            if let Some(p) = &dest.into_platform {
                return Err(platform::partial_failure(p, err));
            }
            return Err(abandon(server, opts, work_db, err).await);
        }
    };
    if let Some(p) = &dest.into_platform {
        let m = &source.manifest;
        ownership.kept_by_platform.extend(p.tables_kept.iter().map(|&i| format!("TABLE DATA {}.{}", m.tables[i].schema, m.tables[i].name)));
    }
    Ok((roles_created, fk_skipped, verification, ownership))
}

/// The tables a replay is restricted to: those selected, when not every
/// table is restored (`--table`, or a platform's tables kept as they are).
fn replay_only(opts: &RestoreOptions, dest: &Destination, source: &BackupSource) -> Option<Vec<(String, String)>> {
    (!opts.tables.is_empty() || dest.into_platform.as_ref().is_some_and(|p| !p.tables_kept.is_empty()))
        .then(|| dest.selected.iter().map(|&i| (source.manifest.tables[i].schema.clone(), source.manifest.tables[i].name.clone())).collect())
}

/// Step 6b: replay the archived changes up to the target, when there is a
/// replay plan. A failure drops the work database like any step before the swap.
async fn replay_step(
    server: &crate::config::DbSettings,
    opts: &RestoreOptions,
    found: &Found,
    dest: &Destination,
    work_db: &str,
    times: &mut PhaseTimes,
) -> Result<Option<ReplayReport>> {
    let Some(plan) = &found.replay_plan else { return Ok(None) };
    let (source, repos, keys) = (&found.source, &found.repos, &found.keys);
    let id = &source.manifest.backup_id;
    let t = Instant::now();
    let only = replay_only(opts, dest, source);
    let work = server.with_dbname(work_db);
    let report =
        match crate::interrupt::guard(replay::run(repos, plan, &work, only, keys, &crate::restore::image::TableImages::new(repos, keys), &opts.progress)).await
        {
            Ok(r) => r,
            Err(e) if dest.into_platform.is_some() => {
                return Err(platform::partial_failure(
                    dest.into_platform.as_ref().expect("checked"),
                    e.context(format!("replaying changes after backup {id}")),
                ));
            }
            Err(e) => {
                // By default (`latest` without a target), say how to get the backup alone.
                let alone = if found.point_in_time.is_none() { " (`--target backup` restores the backup alone)" } else { "" };
                return Err(abandon(server, opts, work_db, e.context(format!("replaying changes after backup {id}{alone}"))).await);
            }
        };
    times.replay = t.elapsed().as_secs_f64();
    Ok(Some(report))
}

/// Take the pre-restore backup of the configured database; returns its id.
pub(crate) async fn pre_restore_backup(settings: &Settings) -> Result<String> {
    let bopts = BackupOptions { kind: BackupKind::PreRestore, ..BackupOptions::default() };
    let report = backup::run(settings, &bopts).await.map_err(|e| e.context("pre-restore backup failed; nothing was restored"))?;
    Ok(report.manifest.backup_id.to_string())
}

/// Temporary databases of interrupted restores (no session, older than 10
/// minutes) are dropped with approval: `--yes` or typing DROP. Never
/// silently: each is named, and declining keeps them.
async fn offer_leftover_cleanup(server: &crate::config::DbSettings, yes: bool) {
    let leftovers: Vec<String> = match target::temp_databases(server).await {
        Ok(all) => all.into_iter().filter(|t| t.is_leftover(std::time::Duration::from_secs(600))).map(|t| t.name).collect(),
        Err(e) => {
            tracing::warn!(error = %e.user_line(), "cannot look for leftover temporary restore databases");
            return;
        }
    };
    if leftovers.is_empty() {
        return;
    }
    let names = leftovers.join(", ");
    let what = format!("drop {} leftover temporary database(s) of interrupted restores: {names}", leftovers.len());
    if let Err(e) = crate::interrupt::guard(approve::gate("DROP", what, yes)).await {
        tracing::warn!(databases = %names, reason = %e.user_line(), "leftover temporary restore databases kept");
        return;
    }
    for name in leftovers {
        match target::drop_database(server, &name).await {
            Ok(()) => tracing::warn!(database = %name, "dropped leftover temporary restore database"),
            Err(e) => tracing::warn!(database = %name, error = %e.user_line(), "cannot drop leftover temporary restore database"),
        }
    }
}

/// A failed restore before the swap: drop the work database (unless
/// `--keep-temp`) and say that production was not touched.
pub(crate) async fn abandon(server: &crate::config::DbSettings, opts: &RestoreOptions, work_db: &str, err: Error) -> Error {
    if opts.keep_temp {
        return err.context(format!("restore failed; production untouched; database {work_db} kept for inspection"));
    }
    let _ = target::drop_database(server, work_db).await;
    err.context(format!("restore failed; production untouched; {work_db} dropped"))
}

/// The SWAP gate, then the swap; records it in `report`.
pub(crate) async fn swap_in(
    server: &crate::config::DbSettings,
    opts: &RestoreOptions,
    target_name: &str,
    work_db: &str,
    report: &mut RestoreReport,
) -> Result<()> {
    if let Err(e) =
        crate::interrupt::guard(approve::gate("SWAP", format!("replace database {target_name} with the verified restore {work_db}"), opts.yes)).await
    {
        // Interrupted at the prompt: the caller drops the work database like any interrupted step.
        if crate::interrupt::received().is_some() {
            return Err(e);
        }
        return Err(e.context(format!("the verified restore is kept as database {work_db}")));
    }
    let t = Instant::now();
    let outcome = target::swap(server, target_name, work_db).await?;
    report.seconds.swap = t.elapsed().as_secs_f64();
    report.restored_into = target_name.to_string();
    report.swap = Some(outcome);
    Ok(())
}

/// After the swap, `target_name` answers and holds at least `tables` tables.
pub(crate) async fn post_restore_check(server: &crate::config::DbSettings, target_name: &str, id: &str, tables: usize) -> Result<()> {
    let conn = connect(&server.with_dbname(target_name)).await?;
    let n: i64 = conn
        .client
        .query_one("SELECT count(*)::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')", &[])
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("post-restore check on {target_name} failed: {e}")))?
        .get(0);
    if (n as usize) < tables {
        return Err(Error::new(ErrorKind::CheckFailed, format!("after the swap, database {target_name} has {n} tables, backup {id} has {tables}"))
            .with_hint("`pgkeep rollback` swaps the previous database back"));
    }
    Ok(())
}

/// Every object of the backup exists in the repository with the right size.
async fn check_objects(source: &BackupSource) -> Result<()> {
    for o in &source.manifest.objects {
        let key = source.manifest.backup_id.key(&o.key);
        match source.storage.head(&key).await? {
            Some(m) if m.size == o.size => {}
            Some(m) => {
                return Err(Error::corrupt(format!("object {key} in {} has {} bytes, the manifest says {}", source.storage.location(), m.size, o.size)));
            }
            None => {
                return Err(Error::corrupt(format!("object {key} is missing from {}", source.storage.location())));
            }
        }
    }
    Ok(())
}

/// Extensions of the backup's schema that, by the server's catalog, the
/// configured role cannot create (empty for a superuser). Read-only: asks
/// the configured database, or the maintenance database when it is missing.
async fn provider_only_extensions(server: &crate::config::DbSettings, source: &BackupSource) -> Result<Vec<(String, String)>> {
    let bytes = source.read_chunk(&source.manifest.schema.pre_data).await?;
    let wanted = privileges::extensions_created(&String::from_utf8_lossy(&bytes));
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let conn = match connect(server).await {
        Ok(c) => c,
        Err(_) => connect(&server.with_dbname("postgres")).await?,
    };
    privileges::provider_only_extensions(&conn.client, &wanted).await
}

/// Indexes of the manifest tables to restore: all, or those named
/// (`schema.table`, or `table` in `public`). Unknown names are an error.
fn select_tables(m: &crate::repo::manifest::BackupManifest, names: &[String]) -> Result<Vec<usize>> {
    if names.is_empty() {
        return Ok((0..m.tables.len()).collect());
    }
    let mut out = Vec::new();
    for name in names {
        let (schema, table) = name.split_once('.').unwrap_or(("public", name.as_str()));
        match m.tables.iter().position(|t| t.schema == schema && t.name == table) {
            Some(i) => out.push(i),
            None => {
                return Err(Error::config(format!("table {schema}.{table} is not in backup {}", m.backup_id))
                    .with_hint("name tables as schema.table, as `pgkeep list` and the manifest show them"));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `pgkeep rollback`: swap `<name>_old` back in place of `<name>`.
pub async fn rollback(settings: &Settings, yes: bool) -> Result<String> {
    let result = rollback_steps(settings, yes).await;
    audit(settings, "rollback", &result).await;
    result
}

async fn rollback_steps(settings: &Settings, yes: bool) -> Result<String> {
    let name = &settings.db.dbname;
    approve::gate("SWAP", format!("put database {name}_old back as {name} on {}:{}", settings.db.host, settings.db.port), yes).await?;
    let (aside, terminated) = target::rollback(&settings.db, name).await?;
    Ok(format!("rolled back: {name}_old is {name} again; the replaced database is kept as {aside}; {terminated} session(s) terminated"))
}
