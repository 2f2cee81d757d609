//! Dispatch of the command line to library commands. Each subcommand maps
//! to one library function; this module only translates the flags of
//! [`args`] into the library's option structs and results into exit codes.

use pgkeep::commands;
use pgkeep::config::{self, FlagValues, ProcessEnv};
use pgkeep::error::Result;
use pgkeep::notify::{Event, Notifier, Operation};
use std::time::Instant;

mod args;
mod console;

pub use args::Cli;
use args::*;

/// Run the parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    // 1. Settings: flags > environment > config file > defaults.
    let settings = config::load(&flag_values(&cli.global), &ProcessEnv)?;
    // 2. Logging, to a per-run log file too for the verbs that keep one.
    let verbosity = if cli.global.quiet { -1 } else { cli.global.verbose as i8 };
    let log_file = log_file(&cli.command, &settings);
    // On a terminal, human lines that keep clear of the progress bar (cli/console.rs).
    let _log_guard = pgkeep::logging::init(settings.log_format, verbosity, log_file.as_deref(), console::ConsoleWriter, console::is_terminal());
    // 3. backup and restore stop cleanly on SIGTERM/SIGINT (pgkeep::interrupt); `stream` has its own shutdown.
    if matches!(cli.command, Command::Backup(_) | Command::Restore(_)) {
        pgkeep::interrupt::install();
    }
    // 4. The verb: one function each.
    match cli.command {
        Command::Backup(a) => backup(&settings, a, cli.global.quiet).await,
        Command::Check(a) => check(&settings, a).await,
        Command::Config(a) => show_config(&settings, &a),
        Command::Drill(a) => drill(&settings, a).await,
        Command::Expire(a) => expire(&settings, &a).await,
        Command::Key(KeyArgs { action: KeyAction::Rotate(a) }) => key_rotate(&settings, a).await,
        Command::List(a) => list(&settings, &a).await,
        Command::Restore(a) => restore(&settings, a, cli.global.quiet).await,
        Command::Rollback(a) => rollback(&settings, &a).await,
        Command::Setup(a) => setup(&settings, a).await,
        Command::Stream(a) => stream(&settings, a).await,
        Command::Verify(a) => verify(&settings, a, cli.global.quiet).await,
    }
}

/// What the global flags contribute to the configuration.
fn flag_values(g: &GlobalArgs) -> FlagValues {
    FlagValues {
        db: g.db.clone(),
        repos: g.repos.clone(),
        jobs: g.jobs,
        config: g.config.clone(),
        log_format: g.log_format.map(|f| match f {
            LogFormatArg::Text => "text".to_string(),
            LogFormatArg::Json => "json".to_string(),
        }),
        encrypt_recipients: g.encrypt_recipients.clone(),
        identity_file: g.identity_file.clone(),
        passphrase_file: g.passphrase_file.clone(),
        s3_sse: g.s3_sse.clone(),
        s3_sse_kms_key_id: g.s3_sse_kms_key_id.clone(),
        s3_object_lock_mode: g.s3_object_lock_mode.clone(),
        s3_object_lock_days: g.s3_object_lock_days,
        allow_http: g.allow_http,
    }
}

/// The per-run log file in the first local repository, `logs/<verb>_YYYYMMDD_HHMMSS.log`,
/// for the verbs that keep one.
fn log_file(command: &Command, settings: &config::Settings) -> Option<std::path::PathBuf> {
    let verb = match command {
        Command::Backup(_) => "backup",
        Command::Restore(_) | Command::Rollback(_) => "restore",
        Command::Drill(_) => "drill",
        Command::Expire(_) => "expire",
        Command::Stream(_) => "stream",
        _ => return None,
    };
    settings.repos.iter().find_map(|r| match r {
        config::RepoSpec::Local(dir) if dir.is_dir() || (verb == "backup" && !dir.exists()) => {
            Some(dir.join("logs").join(format!("{verb}_{}.log", chrono::Utc::now().format("%Y%m%d_%H%M%S"))))
        }
        _ => None,
    })
}

/// Print `value` as pretty JSON.
fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// `pgkeep backup` (`--incremental` too): one backup notification, then retention.
async fn backup(settings: &config::Settings, a: BackupArgs, quiet: bool) -> Result<u8> {
    let chunk_size = config::layers::parse_size(&a.chunk_size)
        .filter(|n| *n >= 64 << 10 && *n <= 1 << 30)
        .ok_or_else(|| pgkeep::Error::config(format!("invalid --chunk-size `{}`: expected a size between 64KiB and 1GiB", a.chunk_size)))?;
    let compression = match a.compress {
        CompressArg::Zstd => pgkeep::pipeline::Compression::zstd(a.compress_level.unwrap_or(1))?,
        CompressArg::Gzip => pgkeep::pipeline::Compression::gzip(a.compress_level.unwrap_or(6))?,
        CompressArg::None => pgkeep::pipeline::Compression::None,
    };
    let opts = commands::backup::BackupOptions { compression, chunk_size: chunk_size as usize, ..commands::backup::BackupOptions::default() };
    let bar = console::progress("backup", opts.progress.clone(), quiet);
    let started = Instant::now();
    let result = match a.incremental {
        true => commands::incremental::run(settings, &opts).await,
        false => commands::backup::run(settings, &opts).await,
    };
    if let Some(bar) = bar {
        bar.finish();
    }
    let report = notified(settings, Operation::Backup, started, result, Event::backup_succeeded).await?;
    expire_after_backup(settings).await;
    if a.json {
        print_json(&report.to_json());
    } else {
        println!("{}", report.summary_line());
    }
    Ok(0)
}

/// `pgkeep check`: exit 3 when any finding alerts.
async fn check(settings: &config::Settings, a: CheckArgs) -> Result<u8> {
    let max_slot_lag = config::layers::parse_size(&a.max_slot_lag)
        .ok_or_else(|| pgkeep::Error::config(format!("invalid --max-slot-lag `{}`: expected a size such as 1GiB", a.max_slot_lag)))?;
    let opts = commands::check::CheckOptions { max_full_age: a.max_full_age, max_slot_lag, prometheus_file: a.prometheus_file };
    let report = commands::check::run(settings, &opts).await?;
    if a.json {
        print_json(&report);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.ok() { 0 } else { 3 })
}

/// `pgkeep config`: the effective settings and where each came from.
fn show_config(settings: &config::Settings, a: &ConfigArgs) -> Result<u8> {
    if a.json {
        print_json(&settings.render_json());
    } else {
        print!("{}", settings.render_text());
    }
    Ok(0)
}

/// `pgkeep drill`: exit 3 when the drill failed.
async fn drill(settings: &config::Settings, a: DrillArgs) -> Result<u8> {
    let assert_sql = match &a.assert_sql {
        Some(p) => {
            Some(std::fs::read_to_string(p).map_err(|e| pgkeep::Error::config(format!("cannot read --assert-sql file {}", p.display())).with_source(e))?)
        }
        None => None,
    };
    let opts = commands::drill::DrillOptions {
        backup: a.backup,
        recent: a.recent,
        assert_sql,
        critical_tables: settings.critical_tables.iter().cloned().chain(a.critical_tables).collect(),
    };
    let record = commands::drill::run(settings, &opts).await?;
    if a.json {
        print_json(&record);
    } else {
        println!(
            "drill of {}: {} — RTO {:.1}s, {} rows verified, {} assertion(s){}",
            record.backup_id,
            if record.passed { "PASSED" } else { "FAILED" },
            record.rto_seconds,
            record.rows,
            record.assertions,
            record.problems.iter().map(|p| format!("\n  problem: {p}")).collect::<String>()
        );
    }
    Ok(if record.passed { 0 } else { 3 })
}

/// `pgkeep expire`: one notification; an incomplete run prints its report, then fails.
async fn expire(settings: &config::Settings, a: &ExpireArgs) -> Result<u8> {
    let opts = commands::expire::ExpireOptions { dry_run: a.dry_run, keep_full: a.keep_full };
    let report = expire_notified(settings, &opts).await?;
    if a.json {
        print_json(&report);
    } else {
        print!("{}", report.render());
    }
    if !report.is_complete() {
        return Err(expire_incomplete());
    }
    Ok(0)
}

/// `pgkeep key rotate`: an incomplete rotation prints its report, then fails.
async fn key_rotate(settings: &config::Settings, a: KeyRotateArgs) -> Result<u8> {
    let opts = commands::key::RotateOptions { change: pgkeep::crypto::rewrap::RecipientChange { add: a.add, remove: a.remove }, dry_run: a.dry_run };
    let report = commands::key::run(settings, &opts).await?;
    if a.json {
        print_json(&report);
    } else {
        print!("{}", report.render());
    }
    if !report.is_complete() {
        return Err(pgkeep::Error::new(pgkeep::ErrorKind::Storage, "key rotation did not complete (see above); run it again once fixed"));
    }
    Ok(0)
}

/// `pgkeep list`: the configured database's backups unless `--all-databases`.
async fn list(settings: &config::Settings, a: &ListArgs) -> Result<u8> {
    let items = match a.legacy {
        true => commands::list::run_with_legacy(settings).await?,
        false => commands::list::run(settings).await?,
    };
    // Only the configured database's backups, unless --all-databases (or no database is configured).
    let items = match commands::list::configured_database(settings).filter(|_| !a.all_databases) {
        Some(db) => {
            let (items, hidden) = commands::list::only_database(items, db);
            if hidden > 0 {
                eprintln!("({hidden} backup(s) of other databases not shown; --all-databases lists them)");
            }
            items
        }
        None => items,
    };
    if a.json {
        print_json(&items);
    } else {
        print!("{}", commands::list::render(&items));
        if !a.legacy
            && let Some(hint) = commands::list::legacy_hint(settings).await
        {
            print!("{hint}");
        }
    }
    Ok(0)
}

/// `pgkeep restore` (of a pgkeep backup or a legacy archive): one notification.
async fn restore(settings: &config::Settings, a: RestoreArgs, quiet: bool) -> Result<u8> {
    // `….dump.gz` names a legacy archive; the selector is then unused.
    let legacy = commands::restore_legacy::is_archive_name(&a.backup);
    let opts = commands::restore::RestoreOptions {
        selector: match legacy {
            true => pgkeep::restore::source::BackupSelector::Latest,
            false => pgkeep::restore::source::BackupSelector::parse(&a.backup)?,
        },
        target_db: a.target_db,
        temp_only: a.temp_only,
        keep_temp: a.keep_temp,
        no_pre_backup: a.no_pre_backup,
        no_owner: a.no_owner,
        platform_schemas: a.platform_schemas.parse()?,
        yes: a.yes,
        critical_tables: settings.critical_tables.iter().cloned().chain(a.critical_tables).collect(),
        tables: a.tables,
        point_in_time: match (&a.target_time, &a.target_lsn) {
            (Some(t), _) => Some(pgkeep::replay::RecoveryTarget::parse_time(t)?),
            (None, Some(l)) => Some(pgkeep::replay::RecoveryTarget::parse_lsn(l)?),
            (None, None) => None,
        },
        accept_inexact: a.accept_inexact,
        to_backup: a.target.is_some(),
        progress: std::sync::Arc::new(pgkeep::progress::ProgressCounters::default()),
    };
    let bar = console::progress("restore", opts.progress.clone(), quiet);
    let started = Instant::now();
    let result = match legacy {
        true => commands::restore_legacy::run_legacy(settings, &opts, &a.backup).await,
        false => commands::restore::run(settings, &opts).await,
    };
    if let Some(bar) = bar {
        bar.finish();
    }
    let report = notified(settings, Operation::Restore, started, result, |r| restore_succeeded(r, started.elapsed())).await?;
    if a.json {
        print_json(&report);
    } else {
        println!("{}", report.summary());
    }
    Ok(0)
}

/// `pgkeep rollback`.
async fn rollback(settings: &config::Settings, a: &RollbackArgs) -> Result<u8> {
    println!("{}", commands::restore::rollback(settings, a.yes).await?);
    Ok(0)
}

/// `pgkeep setup` (and `setup --remove`).
async fn setup(settings: &config::Settings, a: SetupArgs) -> Result<u8> {
    if a.remove {
        println!("{}", removed_line(&commands::setup::remove(settings).await?));
    } else {
        println!("{}", commands::setup::install(settings, a.publication).await?.summary());
    }
    Ok(0)
}

/// `nothing to remove`, or `removed A and B`.
fn removed_line(removed: &[String]) -> String {
    if removed.is_empty() { "nothing to remove".to_string() } else { format!("removed {}", removed.join(" and ")) }
}

/// `pgkeep stream` (and `stream --remove`): one stream notification when it stops;
/// each automatic full backup is followed by retention, as after `pgkeep backup`.
async fn stream(settings: &config::Settings, a: StreamArgs) -> Result<u8> {
    if a.remove {
        println!("{}", removed_line(&commands::stream::remove(settings, a.slot, a.publication).await?));
        return Ok(0);
    }
    let cmd = commands::stream::StreamCommand {
        slot: a.slot,
        publication: a.publication,
        segment_seconds: a.segment_seconds,
        segment_bytes: config::layers::parse_size(&a.segment_bytes)
            .filter(|n| *n > 0)
            .ok_or_else(|| pgkeep::Error::config(format!("invalid --segment-bytes `{}`: expected a size such as 16MiB", a.segment_bytes)))?,
        transaction_memory: config::layers::parse_size(&a.transaction_memory)
            .ok_or_else(|| pgkeep::Error::config(format!("invalid --transaction-memory `{}`: expected a size such as 16MiB", a.transaction_memory)))?,
        auto_full_backup: !a.no_auto_full_backup,
        full_backup_every: a.full_backup_every,
        metrics_addr: a.metrics_addr,
        after_backup: Some(pgkeep::stream::autobackup::AfterBackup::new(|s: config::Settings| async move {
            expire_after_backup(&s).await;
        })),
    };
    let started = Instant::now();
    let result = commands::stream::run(settings, cmd, shutdown_signal()).await;
    let report = notified(settings, Operation::Stream, started, result, |_| Event::new(Operation::Stream, pgkeep::notify::Outcome::Success)).await?;
    if a.json {
        print_json(&report);
    } else {
        println!(
            "stream {} stopped at {}: {} segment(s), {} transaction(s), {} change(s)",
            report.stream_id, report.durable_end, report.totals.segments, report.totals.transactions, report.totals.changes
        );
    }
    Ok(0)
}

/// `pgkeep verify` (of a pgkeep backup or a legacy archive): exactly one
/// notification; a report whose checks failed is a failure (exit 3).
async fn verify(settings: &config::Settings, a: VerifyArgs, quiet: bool) -> Result<u8> {
    if !(a.tolerance.is_finite() && a.tolerance >= 0.0) {
        return Err(pgkeep::Error::config(format!("invalid --tolerance `{}`: expected a percentage >= 0", a.tolerance)));
    }
    // `….dump.gz` names a legacy archive; the selector is then unused.
    let legacy = commands::restore_legacy::is_archive_name(&a.backup);
    let opts = commands::verify::VerifyOptions {
        selector: match legacy {
            true => pgkeep::restore::source::BackupSelector::Latest,
            false => pgkeep::restore::source::BackupSelector::parse(&a.backup)?,
        },
        deep: a.deep,
        scratch_server: a.scratch_db.as_deref().map(|u| pgkeep::verify::scratch::scratch_server(u, &settings.db)).transpose()?,
        compare_production: a.compare_production,
        tolerance_pct: a.tolerance,
        max_age: a.max_age,
        critical_tables: settings.critical_tables.iter().cloned().chain(a.critical_tables).collect(),
        progress: std::sync::Arc::new(pgkeep::progress::ProgressCounters::default()),
    };
    // --deep restores into a scratch database: a bar for that restore.
    let bar = console::progress("verify", opts.progress.clone(), quiet || !opts.deep);
    let started = Instant::now();
    let result = match legacy {
        true => commands::verify::run_legacy(settings, &opts, &a.backup).await,
        false => commands::verify::run(settings, &opts).await,
    };
    if let Some(bar) = bar {
        bar.finish();
    }
    // Exactly one notification: a report whose checks failed is a failure.
    let report = match result {
        Ok(report) => report,
        Err(e) => return notified::<()>(settings, Operation::Verify, started, Err(e), |_| unreachable!()).await.map(|_| 1),
    };
    if a.json {
        print_json(&report);
    } else {
        print!("{}", report.render());
    }
    // A failed check: the report above, then one error line and exit 3.
    notified(settings, Operation::Verify, started, report.into_result(), |_| Event::new(Operation::Verify, pgkeep::notify::Outcome::Success)).await?;
    Ok(0)
}

/// Retention after each successful full backup (`pgkeep backup` and the ones
/// `stream` takes by itself; EXPIRE_AFTER_BACKUP, default on). Its failure is
/// logged and notified, never turned into a failed backup or stream.
async fn expire_after_backup(settings: &config::Settings) {
    if !settings.expire_after_backup || pgkeep::interrupt::received().is_some() {
        return;
    }
    let eopts = commands::expire::ExpireOptions { dry_run: false, keep_full: 1 };
    match expire_notified(settings, &eopts).await {
        Ok(r) if r.is_complete() => tracing::info!("expire after backup: {}", r.render().lines().next().unwrap_or_default()),
        Ok(r) => tracing::warn!("expire after backup did not complete: {}", r.render().replace('\n', "; ")),
        Err(e) => tracing::warn!(error = %e.user_line(), "expire after backup failed"),
    }
}

/// Run `expire` and send its one notification: a success only when every
/// repository completed, otherwise a failure. An incomplete run still
/// returns its report (the caller prints it and decides the exit).
async fn expire_notified(settings: &config::Settings, opts: &commands::expire::ExpireOptions) -> Result<commands::expire::ExpireReport> {
    let started = Instant::now();
    let (result, incomplete) = match commands::expire::run(settings, opts).await {
        Ok(r) if !r.is_complete() => (Err(expire_incomplete()), Some(r)),
        other => (other, None),
    };
    let outcome = notified(settings, Operation::Expire, started, result, |_| Event::new(Operation::Expire, pgkeep::notify::Outcome::Success)).await;
    match incomplete {
        Some(r) => Ok(r),
        None => outcome,
    }
}

fn expire_incomplete() -> pgkeep::Error {
    pgkeep::Error::new(pgkeep::ErrorKind::Storage, "expire did not complete in every repository (see above)")
}

/// Tell the configured channels (Slack, email, webhook) how a command ended:
/// failures always, successes when `notify.on_success`. A notification that
/// fails is logged by the notifier and never changes the command's outcome.
async fn notified<T>(settings: &config::Settings, op: Operation, started: Instant, result: Result<T>, success: impl FnOnce(&T) -> Event) -> Result<T> {
    let notifier = Notifier::from_settings(settings);
    if notifier.is_empty() {
        return result;
    }
    let event = match &result {
        Ok(v) => success(v).with_database(&settings.db.dbname).with_duration(started.elapsed()),
        Err(e) => Event::failure(op, e).with_database(&settings.db.dbname).with_duration(started.elapsed()),
    };
    let _ = notifier.send(&event).await;
    result
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C): `stream` then flushes its open segment and exits.
/// The handlers are installed at once, not when first polled, so a signal
/// during the stream's start-up stops it cleanly too.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let (term, int) = (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok());
    let received = |s: Option<Signal>| async move {
        match s {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    async move {
        tokio::select! {
            _ = received(int) => {}
            _ = received(term) => {}
        }
        tracing::info!("shutdown requested: closing the open segment");
    }
}

/// The notification of a finished restore: backup id, target database,
/// bytes loaded, duration and summary.
fn restore_succeeded(report: &pgkeep::restore::report::RestoreReport, took: std::time::Duration) -> Event {
    Event::new(Operation::Restore, pgkeep::notify::Outcome::Success)
        .with_database(&report.restored_into)
        .with_backup_id(&report.backup_id)
        .with_size(report.bytes)
        .with_duration(took)
        .with_summary(report.summary())
}
