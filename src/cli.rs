//! Flag definitions (clap derive) and dispatch to library commands.
//!
//! Each subcommand maps to one library function; this file only translates
//! flags into the library's option structs and results into exit codes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pgkeep::commands;
use pgkeep::config::{self, FlagValues, ProcessEnv};
use pgkeep::error::Result;
use pgkeep::notify::{Event, Notifier, Operation};
use std::time::Instant;

/// pgkeep: PostgreSQL backups, verification and point-in-time recovery.
#[derive(Debug, Parser)]
#[command(name = "pgkeep", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Database to connect to: postgres:// URL or key=value string (default: DB_*, DATABASE_URL, PG* env).
    #[arg(long, global = true, value_name = "URL")]
    db: Option<String>,
    /// Repository: a directory, file:///path or s3://bucket/prefix. Repeatable; replaces BACKUP_DIR/S3_BUCKET.
    #[arg(long = "repo", global = true, value_name = "PATH_OR_URL")]
    repos: Vec<String>,
    /// Parallel connections and workers (default: number of cores).
    #[arg(long, global = true, value_name = "N")]
    jobs: Option<usize>,
    /// Config file (default: PGKEEP_CONFIG, else ./pgkeep.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Less output (errors and warnings only).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Encrypt new backups and change segments to this age recipient (age1…; repeatable;
    /// replaces PGKEEP_ENCRYPT_RECIPIENTS). Restore needs the matching identity file.
    #[arg(long = "encrypt-recipient", global = true, value_name = "AGE1…")]
    encrypt_recipients: Vec<String>,
    /// age identity file (AGE-SECRET-KEY-1… lines) to decrypt encrypted backups (PGKEEP_IDENTITY_FILE).
    #[arg(long, global = true, value_name = "FILE")]
    identity_file: Option<PathBuf>,
    /// File holding the encryption passphrase (PGKEEP_PASSPHRASE_FILE; or PGKEEP_PASSPHRASE). Never pass it on the command line.
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// S3 server-side encryption of every object written: AES256 or aws:kms (S3_SSE).
    #[arg(long, global = true, value_name = "MODE")]
    s3_sse: Option<String>,
    /// KMS key id for --s3-sse aws:kms (S3_SSE_KMS_KEY_ID).
    #[arg(long, global = true, value_name = "KEY_ID")]
    s3_sse_kms_key_id: Option<String>,
    /// S3 object lock mode for backup objects written: GOVERNANCE or COMPLIANCE (S3_OBJECT_LOCK_MODE).
    #[arg(long, global = true, value_name = "MODE", requires = "s3_object_lock_days")]
    s3_object_lock_mode: Option<String>,
    /// Retain locked backup objects for this many days after writing (S3_OBJECT_LOCK_DAYS).
    #[arg(long, global = true, value_name = "DAYS", requires = "s3_object_lock_mode")]
    s3_object_lock_days: Option<u32>,
    /// Allow a plain-HTTP S3 endpoint that is not on this machine (S3_ALLOW_HTTP).
    #[arg(long, global = true)]
    allow_http: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take a full backup of the database into every repository.
    Backup(BackupArgs),
    /// Print the effective configuration and where each value came from (secrets redacted).
    Config(ConfigArgs),
    /// Monitoring: repositories, newest full backup age, replication slots (exit 3 on alert).
    Check(CheckArgs),
    /// Test restore of a random recent backup into a temporary database, with SQL assertions; records the RTO.
    Drill(DrillArgs),
    /// Remove backups past their repository's retention (chain-aware; never the newest full backup).
    Expire(ExpireArgs),
    /// List the backups in every repository.
    List(ListArgs),
    /// Archive logical changes continuously from a replication slot into change segments (SIGTERM/SIGINT: flush and exit).
    Stream(StreamArgs),
    /// Install DDL capture (an event trigger) in the database for `stream`; --remove takes it out. Needs a superuser.
    Setup(SetupArgs),
    /// Restore a backup into a temporary database, verify it, then swap it in (two approvals).
    Restore(RestoreArgs),
    /// Swap `<db>_old` back in place of the database a restore replaced.
    Rollback(RollbackArgs),
    /// Check a backup without touching production: files, format, critical tables, age (exit 3 on a failed check).
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// Backup id (e.g. full_backup_20261124_020000), `latest` (the newest pgkeep backup, never a legacy
    /// archive), or a legacy archive of the old scripts: its file name or key (`full_backup_YYYYMMDD_HHMMSS.dump.gz`).
    /// An id with no pgkeep backup restores the legacy archive of that id.
    backup: String,
    /// Restore into this new database; no swap, production untouched.
    #[arg(long, value_name = "NAME")]
    target_db: Option<String>,
    /// Stop after verification and print the temporary database's name.
    #[arg(long, conflicts_with = "target_db")]
    temp_only: bool,
    /// Keep the temporary database if the restore fails.
    #[arg(long)]
    keep_temp: bool,
    /// Skip the backup of the database about to be replaced.
    #[arg(long)]
    no_pre_backup: bool,
    /// Approve both gates (RESTORE and SWAP) without asking.
    #[arg(long)]
    yes: bool,
    /// Tables that must be present and not empty, comma separated (schema.table);
    /// adds to `critical_tables` from the config file or PGKEEP_CRITICAL_TABLES.
    #[arg(long, value_delimiter = ',')]
    critical_tables: Vec<String>,
    /// Restore only this table's data (repeatable, schema.table); implies no swap.
    #[arg(long = "table", value_name = "SCHEMA.NAME")]
    tables: Vec<String>,
    /// Point in time: replay archived changes up to and including the last transaction committed
    /// at or before this time (RFC 3339, or `YYYY-MM-DD HH:MM:SS` with an optional zone; UTC if none),
    /// or `latest` for the end of the archive. BACKUP `latest` picks the newest full backup before it.
    #[arg(long, value_name = "TIME", conflicts_with = "target_lsn")]
    target_time: Option<String>,
    /// Point in time: replay transactions whose commit record starts at or before this LSN (e.g. 16/B374D848),
    /// or `latest`.
    #[arg(long, value_name = "LSN")]
    target_lsn: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Alert when the newest full backup is older than this.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    max_full_age: std::time::Duration,
    /// Alert when a replication slot retains more WAL than this (e.g. 1GiB).
    #[arg(long, default_value = "1GiB")]
    max_slot_lag: String,
    /// Also write Prometheus textfile-collector metrics to this file.
    #[arg(long, value_name = "PATH")]
    prometheus_file: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DrillArgs {
    /// A backup id (default: a random one of the recent full backups).
    backup: Option<String>,
    /// Pick among this many of the newest full backups.
    #[arg(long, default_value_t = 7)]
    recent: usize,
    /// SQL assertions run against the restored database: each statement must return true.
    #[arg(long, value_name = "FILE")]
    assert_sql: Option<PathBuf>,
    /// Tables that must be present and not empty, comma separated (schema.table).
    #[arg(long, value_delimiter = ',')]
    critical_tables: Vec<String>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ExpireArgs {
    /// Print the plan; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Always keep at least this many full backups per database.
    #[arg(long, default_value_t = 1)]
    keep_full: usize,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StreamArgs {
    /// Logical replication slot (default pgkeep_<database>).
    #[arg(long)]
    slot: Option<String>,
    /// Publication (default pgkeep_<database>): tables with a replica identity; the others go to <publication>_insert_only.
    #[arg(long)]
    publication: Option<String>,
    /// Close a segment after this many seconds.
    #[arg(long, default_value_t = 10)]
    segment_seconds: u64,
    /// Close a segment after this many bytes of changes (e.g. 16MiB).
    #[arg(long, default_value = "16MiB")]
    segment_bytes: String,
    /// Stop using change archiving: drop the slot and both publications, then exit.
    #[arg(long)]
    remove: bool,
    /// Also take a full backup this long after the newest one (e.g. 24h; default: off).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    full_backup_every: Option<std::time::Duration>,
    /// Never take a full backup by itself (by default one is taken when no backup covers the
    /// archive at start, and after a schema change without captured DDL).
    #[arg(long)]
    no_auto_full_backup: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SetupArgs {
    /// Publication of `pgkeep stream` (default pgkeep_<database>) new tables are put into.
    #[arg(long)]
    publication: Option<String>,
    /// Remove the event trigger and its functions instead.
    #[arg(long)]
    remove: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Print as JSON.
    #[arg(long)]
    json: bool,
    /// Also list the old scripts' archives (`full_backup_*.dump.gz`), as kind `legacy`.
    #[arg(long)]
    legacy: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Backup id (e.g. full_backup_20261124_020000) or `latest`.
    #[arg(default_value = "latest")]
    backup: String,
    /// Also restore into a scratch database and compare row counts and fingerprints (dropped afterwards).
    #[arg(long)]
    deep: bool,
    /// Server for the --deep scratch database: postgres:// URL, its database part ignored (default: the configured server).
    #[arg(long, value_name = "URL", requires = "deep")]
    scratch_db: Option<String>,
    /// Compare each table's live row count with the backup's.
    #[arg(long)]
    compare_production: bool,
    /// Allowed live/backup row-count difference for --compare-production, in percent.
    #[arg(long, value_name = "PCT", default_value_t = 10.0)]
    tolerance: f64,
    /// Fail when the backup is older than this (e.g. 48h, 2days).
    #[arg(long, value_name = "DURATION", default_value = "48h", value_parser = humantime::parse_duration)]
    max_age: std::time::Duration,
    /// Tables that must be present and not empty, comma separated (schema.table);
    /// adds to `critical_tables` from the config file or PGKEEP_CRITICAL_TABLES.
    #[arg(long, value_delimiter = ',')]
    critical_tables: Vec<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RollbackArgs {
    /// Approve without asking.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// Compression of data chunks.
    #[arg(long, value_enum, default_value = "zstd")]
    compress: CompressArg,
    /// Compression level (zstd 1-19 or fast levels -1..-7, gzip 1-9; default 1 for zstd, 6 for gzip).
    #[arg(long, allow_hyphen_values = true)]
    compress_level: Option<i32>,
    /// Raw bytes per chunk (e.g. 8MiB).
    #[arg(long, default_value = "8MiB")]
    chunk_size: String,
    /// Record an incremental backup: the change archive since the previous backup, pinned up to now
    /// (drains the slot, or waits for a running `pgkeep stream`). Falls back to a full backup, saying why,
    /// when there is no parent, no archive, a gap, or an uncaptured schema change.
    #[arg(long)]
    incremental: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompressArg {
    Zstd,
    Gzip,
    None,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// Run the parsed command line; returns the exit code.
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
                yes: a.yes,
                critical_tables: settings.critical_tables.iter().cloned().chain(a.critical_tables).collect(),
                tables: a.tables,
                point_in_time: match (&a.target_time, &a.target_lsn) {
                    (Some(t), _) => Some(pgkeep::replay::RecoveryTarget::parse_time(t)?),
                    (None, Some(l)) => Some(pgkeep::replay::RecoveryTarget::parse_lsn(l)?),
                    (None, None) => None,
                },
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
                Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                    pgkeep::Error::config(format!("cannot read --assert-sql file {}", p.display())).with_source(e)
                })?),
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
            if a.json {
                println!("{}", serde_json::to_string_pretty(&items).unwrap_or_default());
            } else {
                print!("{}", commands::list::render(&items));
            }
            Ok(0)
        }
        Command::Verify(a) => {
            if !(a.tolerance.is_finite() && a.tolerance >= 0.0) {
                return Err(pgkeep::Error::config(format!("invalid --tolerance `{}`: expected a percentage >= 0", a.tolerance)));
            }
            let opts = commands::verify::VerifyOptions {
                selector: pgkeep::restore::source::BackupSelector::parse(&a.backup)?,
                deep: a.deep,
                scratch_server: a.scratch_db.as_deref().map(|u| pgkeep::verify::scratch::scratch_server(u, &settings.db)).transpose()?,
                compare_production: a.compare_production,
                tolerance_pct: a.tolerance,
                max_age: a.max_age,
                critical_tables: settings.critical_tables.iter().cloned().chain(a.critical_tables).collect(),
            };
            let started = Instant::now();
            let report = notified(&settings, Operation::Verify, started, commands::verify::run(&settings, &opts).await, |_| {
                Event::new(Operation::Verify, pgkeep::notify::Outcome::Success)
            })
            .await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", report.render());
            }
            // A failed check: the report above, then one error line and exit 3.
            notified(&settings, Operation::Verify, started, report.into_result(), |_| {
                Event::new(Operation::Verify, pgkeep::notify::Outcome::Success)
            })
            .await?;
            Ok(0)
        }
        Command::Expire(a) => {
            let opts = commands::expire::ExpireOptions { dry_run: a.dry_run, keep_full: a.keep_full };
            let started = Instant::now();
            let report = notified(&settings, Operation::Expire, started, commands::expire::run(&settings, &opts).await, |_| {
                Event::new(Operation::Expire, pgkeep::notify::Outcome::Success)
            })
            .await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", report.render());
            }
            if !report.is_complete() {
                let err = pgkeep::Error::new(pgkeep::ErrorKind::Storage, "expire did not complete in every repository (see above)");
                return notified::<()>(&settings, Operation::Expire, started, Err(err), |_| unreachable!()).await.map(|_| 1);
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
            opts.segment_bytes = config::layers::parse_size(&a.segment_bytes)
                .filter(|n| *n > 0)
                .ok_or_else(|| pgkeep::Error::config(format!("invalid --segment-bytes `{}`: expected a size such as 16MiB", a.segment_bytes)))?;
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
            let opts = commands::backup::BackupOptions {
                compression,
                chunk_size: chunk_size as usize,
                ..commands::backup::BackupOptions::default()
            };
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
            // Retention after each successful backup (EXPIRE_AFTER_BACKUP, default on); its
            // failure is reported and notified, never turned into a failed backup.
            if settings.expire_after_backup {
                let eopts = commands::expire::ExpireOptions { dry_run: false, keep_full: 1 };
                let expired = notified(&settings, Operation::Expire, Instant::now(), commands::expire::run(&settings, &eopts).await, |_| {
                    Event::new(Operation::Expire, pgkeep::notify::Outcome::Success)
                })
                .await;
                match expired {
                    Ok(r) if r.is_complete() => tracing::info!("expire after backup: {}", r.render().lines().next().unwrap_or_default()),
                    Ok(r) => tracing::warn!("expire after backup did not complete: {}", r.render().replace('\n', "; ")),
                    Err(e) => tracing::warn!(error = %e.user_line(), "expire after backup failed"),
                }
            }
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report.to_json()).unwrap_or_default());
            } else {
                println!("{}", report.summary_line());
            }
            Ok(0)
        }
    }
}

/// Tell the configured channels (Slack, email, webhook) how a command ended:
/// failures always, successes when `notify.on_success`. A notification that
/// fails is logged by the notifier and never changes the command's outcome.
async fn notified<T>(
    settings: &config::Settings,
    op: Operation,
    started: Instant,
    result: Result<T>,
    success: impl FnOnce(&T) -> Event,
) -> Result<T> {
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
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested: closing the open segment");
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
