//! Dispatch of the command line to library commands. Each subcommand maps
//! to one library function; this module only translates the flags of
//! [`args`] into the library's option structs and results into exit codes.

use pgkeep::commands;
use pgkeep::config::{self, FlagValues, ProcessEnv};
use pgkeep::error::Result;
use pgkeep::notify::{Event, Notifier, Operation};
use std::time::Instant;

mod args;

pub use args::Cli;
use args::*;

/// Run the parsed command line; returns the exit code.
#[expect(clippy::too_many_lines, reason = "one match over every verb; to be split per verb (issue 13)")]
pub async fn run(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    let flags = FlagValues {
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
    };
    let settings = config::load(&flags, &ProcessEnv)?;
    let verbosity = if g.quiet { -1 } else { g.verbose as i8 };
    // Per-run log file in the first local repository: logs/<verb>_YYYYMMDD_HHMMSS.log.
    let verb = match &cli.command {
        Command::Backup(_) => Some("backup"),
        Command::Restore(_) | Command::Rollback(_) => Some("restore"),
        Command::Drill(_) => Some("drill"),
        Command::Expire(_) => Some("expire"),
        Command::Stream(_) => Some("stream"),
        _ => None,
    };
    let log_file = verb.and_then(|verb| {
        settings.repos.iter().find_map(|r| match r {
            config::RepoSpec::Local(dir) if dir.is_dir() || (verb == "backup" && !dir.exists()) => {
                Some(dir.join("logs").join(format!("{verb}_{}.log", chrono::Utc::now().format("%Y%m%d_%H%M%S"))))
            }
            _ => None,
        })
    });
    let _log_guard = pgkeep::logging::init(settings.log_format, verbosity, log_file.as_deref());

    // backup and restore stop cleanly on SIGTERM/SIGINT (pgkeep::interrupt); `stream` has its own shutdown.
    if matches!(cli.command, Command::Backup(_) | Command::Restore(_)) {
        pgkeep::interrupt::install();
    }
    match cli.command {
        Command::Restore(a) => {
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
            let started = Instant::now();
            let result = match legacy {
                true => commands::restore_legacy::run_legacy(&settings, &opts, &a.backup).await,
                false => commands::restore::run(&settings, &opts).await,
            };
            let report = notified(&settings, Operation::Restore, started, result, |r| Event::restore_succeeded(r, started.elapsed())).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                println!("{}", report.summary());
            }
            Ok(0)
        }
        Command::Check(a) => {
            let max_slot_lag = config::layers::parse_size(&a.max_slot_lag)
                .ok_or_else(|| pgkeep::Error::config(format!("invalid --max-slot-lag `{}`: expected a size such as 1GiB", a.max_slot_lag)))?;
            let opts = commands::check::CheckOptions { max_full_age: a.max_full_age, max_slot_lag, prometheus_file: a.prometheus_file };
            let report = commands::check::run(&settings, &opts).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", report.render());
            }
            Ok(if report.ok() { 0 } else { 3 })
        }
        Command::Drill(a) => {
            let assert_sql = match &a.assert_sql {
                Some(p) => Some(
                    std::fs::read_to_string(p).map_err(|e| pgkeep::Error::config(format!("cannot read --assert-sql file {}", p.display())).with_source(e))?,
                ),
                None => None,
            };
            let opts = commands::drill::DrillOptions {
                backup: a.backup,
                recent: a.recent,
                assert_sql,
                critical_tables: settings.critical_tables.iter().cloned().chain(a.critical_tables).collect(),
            };
            let record = commands::drill::run(&settings, &opts).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&record).unwrap_or_default());
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
        Command::List(a) => {
            let items = match a.legacy {
                true => commands::list::run_with_legacy(&settings).await?,
                false => commands::list::run(&settings).await?,
            };
            // Only the configured database's backups, unless --all-databases (or no database is configured).
            let items = match commands::list::configured_database(&settings).filter(|_| !a.all_databases) {
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
                println!("{}", serde_json::to_string_pretty(&items).unwrap_or_default());
            } else {
                print!("{}", commands::list::render(&items));
                if !a.legacy
                    && let Some(hint) = commands::list::legacy_hint(&settings).await
                {
                    print!("{hint}");
                }
            }
            Ok(0)
        }
        Command::Verify(a) => {
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
            };
            let started = Instant::now();
            let result = match legacy {
                true => commands::verify::run_legacy(&settings, &opts, &a.backup).await,
                false => commands::verify::run(&settings, &opts).await,
            };
            // Exactly one notification: a report whose checks failed is a failure.
            let report = match result {
                Ok(report) => report,
                Err(e) => return notified::<()>(&settings, Operation::Verify, started, Err(e), |_| unreachable!()).await.map(|_| 1),
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", report.render());
            }
            // A failed check: the report above, then one error line and exit 3.
            notified(&settings, Operation::Verify, started, report.into_result(), |_| Event::new(Operation::Verify, pgkeep::notify::Outcome::Success)).await?;
            Ok(0)
        }
        Command::Expire(a) => {
            let opts = commands::expire::ExpireOptions { dry_run: a.dry_run, keep_full: a.keep_full };
            let report = expire_notified(&settings, &opts).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", report.render());
            }
            if !report.is_complete() {
                return Err(expire_incomplete());
            }
            Ok(0)
        }
        Command::Stream(a) => {
            let slot = a.slot.unwrap_or_else(|| pgkeep::stream::default_name(&settings.db.dbname));
            let publication = a.publication.unwrap_or_else(|| pgkeep::stream::default_name(&settings.db.dbname));
            if a.remove {
                let removed = pgkeep::stream::remove(&settings, &slot, &publication).await?;
                println!("{}", if removed.is_empty() { "nothing to remove".to_string() } else { format!("removed {}", removed.join(" and ")) });
                return Ok(0);
            }
            let mut opts = pgkeep::stream::StreamOptions::new(slot, publication);
            opts.segment_seconds = a.segment_seconds;
            opts.auto_backup = match a.no_auto_full_backup {
                true => pgkeep::stream::autobackup::AutoBackupOptions::default(),
                false => pgkeep::stream::autobackup::AutoBackupOptions::enabled(),
            };
            opts.auto_backup.every = a.full_backup_every;
            opts.metrics_addr = a.metrics_addr;
            // Retention after each automatic full backup, as after `pgkeep backup`.
            opts.auto_backup.after_backup = Some(pgkeep::stream::autobackup::AfterBackup::new(|s: config::Settings| async move {
                expire_after_backup(&s).await;
            }));
            opts.segment_bytes = config::layers::parse_size(&a.segment_bytes)
                .filter(|n| *n > 0)
                .ok_or_else(|| pgkeep::Error::config(format!("invalid --segment-bytes `{}`: expected a size such as 16MiB", a.segment_bytes)))?;
            opts.transaction_memory = config::layers::parse_size(&a.transaction_memory)
                .ok_or_else(|| pgkeep::Error::config(format!("invalid --transaction-memory `{}`: expected a size such as 16MiB", a.transaction_memory)))?;
            let started = Instant::now();
            let result = pgkeep::stream::run(&settings, &opts, shutdown_signal()).await;
            let report = notified(&settings, Operation::Stream, started, result, |_| Event::new(Operation::Stream, pgkeep::notify::Outcome::Success)).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                println!(
                    "stream {} stopped at {}: {} segment(s), {} transaction(s), {} change(s)",
                    report.stream_id, report.durable_end, report.totals.segments, report.totals.transactions, report.totals.changes
                );
            }
            Ok(0)
        }
        Command::Setup(a) => {
            if a.remove {
                let removed = pgkeep::stream::setup::remove(&settings).await?;
                println!("{}", if removed.is_empty() { "nothing to remove".to_string() } else { format!("removed {}", removed.join(" and ")) });
            } else {
                let publication = a.publication.unwrap_or_else(|| pgkeep::stream::default_name(&settings.db.dbname));
                println!("{}", pgkeep::stream::setup::install(&settings, &publication).await?.summary());
            }
            Ok(0)
        }
        Command::Rollback(a) => {
            println!("{}", commands::restore::rollback(&settings, a.yes).await?);
            Ok(0)
        }
        Command::Key(KeyArgs { action: KeyAction::Rotate(a) }) => {
            let opts = commands::key::RotateOptions { change: pgkeep::crypto::rewrap::RecipientChange { add: a.add, remove: a.remove }, dry_run: a.dry_run };
            let report = commands::key::run(&settings, &opts).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", report.render());
            }
            if !report.is_complete() {
                return Err(pgkeep::Error::new(pgkeep::ErrorKind::Storage, "key rotation did not complete (see above); run it again once fixed"));
            }
            Ok(0)
        }
        Command::Config(a) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&settings.render_json()).unwrap_or_default());
            } else {
                print!("{}", settings.render_text());
            }
            Ok(0)
        }
        Command::Backup(a) => {
            let chunk_size = config::layers::parse_size(&a.chunk_size)
                .filter(|n| *n >= 64 << 10 && *n <= 1 << 30)
                .ok_or_else(|| pgkeep::Error::config(format!("invalid --chunk-size `{}`: expected a size between 64KiB and 1GiB", a.chunk_size)))?;
            let compression = match a.compress {
                CompressArg::Zstd => pgkeep::pipeline::Compression::zstd(a.compress_level.unwrap_or(1))?,
                CompressArg::Gzip => pgkeep::pipeline::Compression::gzip(a.compress_level.unwrap_or(6))?,
                CompressArg::None => pgkeep::pipeline::Compression::None,
            };
            let opts = commands::backup::BackupOptions { compression, chunk_size: chunk_size as usize, ..commands::backup::BackupOptions::default() };
            let bar = (!g.quiet).then(|| progress_bar(opts.progress.clone())).flatten();
            let started = Instant::now();
            let result = match a.incremental {
                true => commands::incremental::run(&settings, &opts).await,
                false => commands::backup::run(&settings, &opts).await,
            };
            if let Some((bar, ticker)) = bar {
                ticker.abort();
                bar.finish_and_clear();
            }
            let report = notified(&settings, Operation::Backup, started, result, Event::backup_succeeded).await?;
            expire_after_backup(&settings).await;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report.to_json()).unwrap_or_default());
            } else {
                println!("{}", report.summary_line());
            }
            Ok(0)
        }
    }
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

/// A progress bar on stderr when it is a terminal: tables done of total, bytes and rows.
fn progress_bar(counters: std::sync::Arc<pgkeep::progress::ProgressCounters>) -> Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tables  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let ticker = tokio::spawn(async move {
        let started = std::time::Instant::now();
        loop {
            let v = counters.view();
            b.set_length(v.tables_total);
            b.set_position(v.tables_done);
            let secs = started.elapsed().as_secs_f64().max(0.1);
            b.set_message(format!(
                "{} raw, {} rows, {}/s",
                commands::backup::human_bytes(v.bytes),
                v.rows,
                commands::backup::human_bytes((v.bytes as f64 / secs) as u64)
            ));
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    Some((bar, ticker))
}
