//! The command line's flags and subcommands (clap derive). Nothing here
//! runs anything: [`super::run`] translates these into the library's option
//! structs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// pgkeep: PostgreSQL backups, verification and point-in-time recovery.
#[derive(Debug, Parser)]
#[command(name = "pgkeep", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Whether this is `backup`, whose async runtime only moves bytes.
    pub fn is_backup(&self) -> bool {
        matches!(self.command, Command::Backup(_))
    }

    /// Whether the command loads backups into a database (restore, a deep
    /// verify, a drill): chunk after chunk of the same size.
    pub fn is_load(&self) -> bool {
        matches!(self.command, Command::Restore(_) | Command::Verify(_) | Command::Drill(_))
    }
}

#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Database to connect to: postgres:// URL or key=value string (default: DB_*, DATABASE_URL, PG* env).
    #[arg(help_heading = "Connection", long, global = true, value_name = "URL")]
    pub(crate) db: Option<String>,
    /// Parallel connections and workers (default: number of cores).
    #[arg(help_heading = "Connection", long, global = true, value_name = "N")]
    pub(crate) jobs: Option<usize>,
    /// Repository: a directory, file:///path or s3://bucket/prefix. Repeatable; replaces BACKUP_DIR/S3_BUCKET.
    #[arg(help_heading = "Repositories", long = "repo", global = true, value_name = "PATH_OR_URL")]
    pub(crate) repos: Vec<String>,
    /// Config file (default: PGKEEP_CONFIG, else ./pgkeep.toml if present).
    #[arg(help_heading = "Repositories", long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// S3 server-side encryption of every object written: AES256 or aws:kms (S3_SSE).
    #[arg(help_heading = "S3", long, global = true, value_name = "MODE")]
    pub(crate) s3_sse: Option<String>,
    /// KMS key id for --s3-sse aws:kms (S3_SSE_KMS_KEY_ID).
    #[arg(help_heading = "S3", long, global = true, value_name = "KEY_ID")]
    pub(crate) s3_sse_kms_key_id: Option<String>,
    /// S3 object lock mode for backup objects written: GOVERNANCE or COMPLIANCE (S3_OBJECT_LOCK_MODE).
    #[arg(help_heading = "S3", long, global = true, value_name = "MODE", requires = "s3_object_lock_days")]
    pub(crate) s3_object_lock_mode: Option<String>,
    /// Retain locked backup objects for this many days after writing (S3_OBJECT_LOCK_DAYS).
    #[arg(help_heading = "S3", long, global = true, value_name = "DAYS", requires = "s3_object_lock_mode")]
    pub(crate) s3_object_lock_days: Option<u32>,
    /// Allow a plain-HTTP S3 endpoint that is not on this machine (S3_ALLOW_HTTP).
    #[arg(help_heading = "S3", long, global = true)]
    pub(crate) allow_http: bool,
    /// Encrypt new backups and change segments to this age recipient (age1…; repeatable;
    /// replaces PGKEEP_ENCRYPT_RECIPIENTS). Restore needs the matching identity file.
    #[arg(help_heading = "Encryption", long = "encrypt-recipient", global = true, value_name = "AGE1…")]
    pub(crate) encrypt_recipients: Vec<String>,
    /// age identity file (AGE-SECRET-KEY-1… lines) to decrypt encrypted backups (PGKEEP_IDENTITY_FILE).
    #[arg(help_heading = "Encryption", long, global = true, value_name = "FILE")]
    pub(crate) identity_file: Option<PathBuf>,
    /// File holding the encryption passphrase (PGKEEP_PASSPHRASE_FILE; or PGKEEP_PASSPHRASE). Never pass it on the command line.
    #[arg(help_heading = "Encryption", long, global = true, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(help_heading = "Output", long, global = true, value_enum)]
    pub(crate) log_format: Option<LogFormatArg>,
    /// Less output (errors and warnings only).
    #[arg(help_heading = "Output", short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// More output (-v debug, -vv trace).
    #[arg(help_heading = "Output", short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Take a full backup of the database into every repository.
    Backup(BackupArgs),
    /// Print the effective configuration and where each value came from (secrets redacted).
    Config(ConfigArgs),
    /// Encryption keys: `key rotate` re-wraps the data keys of existing backups and segments.
    Key(KeyArgs),
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
pub(crate) struct RestoreArgs {
    /// Backup id (e.g. full_backup_20261124_020000), `latest` (the newest pgkeep backup, never a legacy
    /// archive), or a legacy archive of the old scripts: its file name or key (`full_backup_YYYYMMDD_HHMMSS.dump.gz`).
    /// An id with no pgkeep backup restores the legacy archive of that id.
    pub(crate) backup: String,
    /// Restore into this new database; no swap, production untouched.
    #[arg(long, value_name = "NAME")]
    pub(crate) target_db: Option<String>,
    /// Stop after verification and print the temporary database's name.
    #[arg(long, conflicts_with = "target_db")]
    pub(crate) temp_only: bool,
    /// Keep the temporary database if the restore fails.
    #[arg(long)]
    pub(crate) keep_temp: bool,
    /// Skip the backup of the database about to be replaced.
    #[arg(long)]
    pub(crate) no_pre_backup: bool,
    /// Every restored object belongs to the restoring role (pg_restore's --no-owner). Without it,
    /// owners the role can become are restored exactly and the others are replaced by the role, listed in a warning.
    #[arg(long)]
    pub(crate) no_owner: bool,
    /// Restoring into an existing --target-db the platform set up (a new Supabase project): `auto` keeps the
    /// schemas it owns when the restoring role cannot become their owner and restores their tables' data;
    /// `keep` keeps every existing schema but public; `restore` refuses an existing database.
    #[arg(long, value_name = "auto|keep|restore", default_value = "auto")]
    pub(crate) platform_schemas: String,
    /// Approve both gates (RESTORE and SWAP) without asking.
    #[arg(long)]
    pub(crate) yes: bool,
    /// Tables that must be present and not empty, comma separated (schema.table);
    /// adds to `critical_tables` from the config file or PGKEEP_CRITICAL_TABLES.
    #[arg(long, value_delimiter = ',')]
    pub(crate) critical_tables: Vec<String>,
    /// Restore only this table's data (repeatable, schema.table); implies no swap.
    #[arg(long = "table", value_name = "SCHEMA.NAME")]
    pub(crate) tables: Vec<String>,
    /// Point in time: replay archived changes up to and including the last transaction committed
    /// at or before this time (RFC 3339, or `YYYY-MM-DD HH:MM:SS` with an optional zone; UTC if none),
    /// or `latest` for the end of the archive. BACKUP `latest` picks the newest full backup before it.
    #[arg(long, value_name = "TIME", conflicts_with = "target_lsn")]
    pub(crate) target_time: Option<String>,
    /// Point in time: replay transactions whose commit record starts at or before this LSN (e.g. 16/B374D848),
    /// or `latest`.
    #[arg(long, value_name = "LSN")]
    pub(crate) target_lsn: Option<String>,
    /// Restore a point in time even where a table cannot be exact (a table rewrite, CREATE TABLE AS,
    /// DDL inside a function, … shortly before the next full backup): warn instead of refusing.
    #[arg(long)]
    pub(crate) accept_inexact: bool,
    /// `backup`: stop at the backup's consistent point. Without it (and without --target-time/--target-lsn),
    /// BACKUP `latest` restores the latest data: the newest backup plus every change archived after it.
    #[arg(long, value_name = "backup", value_parser = ["backup"], conflicts_with_all = ["target_time", "target_lsn"])]
    pub(crate) target: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Alert when the newest full backup is older than this.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) max_full_age: std::time::Duration,
    /// Alert when a replication slot retains more WAL than this (e.g. 1GiB).
    #[arg(long, default_value = "1GiB")]
    pub(crate) max_slot_lag: String,
    /// Also write Prometheus textfile-collector metrics to this file.
    #[arg(long, value_name = "PATH")]
    pub(crate) prometheus_file: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DrillArgs {
    /// A backup id (default: a random one of the recent full backups).
    pub(crate) backup: Option<String>,
    /// Pick among this many of the newest full backups.
    #[arg(long, default_value_t = 7)]
    pub(crate) recent: usize,
    /// SQL assertions run against the restored database: each statement must return true.
    #[arg(long, value_name = "FILE")]
    pub(crate) assert_sql: Option<PathBuf>,
    /// Tables that must be present and not empty, comma separated (schema.table).
    #[arg(long, value_delimiter = ',')]
    pub(crate) critical_tables: Vec<String>,
    /// Print as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ExpireArgs {
    /// Print the plan; delete nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Always keep at least this many full backups per database.
    #[arg(long, default_value_t = 1)]
    pub(crate) keep_full: usize,
    /// Print as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    /// Logical replication slot (default pgkeep_<database>).
    #[arg(long)]
    pub(crate) slot: Option<String>,
    /// Publication (default pgkeep_<database>): tables with a replica identity; the others go to <publication>_insert_only.
    #[arg(long)]
    pub(crate) publication: Option<String>,
    /// Close a segment after this many seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) segment_seconds: u64,
    /// Close a segment after this many bytes of changes (e.g. 16MiB).
    #[arg(long, default_value = "16MiB")]
    pub(crate) segment_bytes: String,
    /// Keep at most this much of one transaction in memory; a larger one is stored in parts
    /// as it arrives (e.g. 16MiB; 1MiB to 256MiB).
    #[arg(long, default_value = "16MiB")]
    pub(crate) transaction_memory: String,
    /// Stop using change archiving: drop the slot and both publications, then exit.
    #[arg(long)]
    pub(crate) remove: bool,
    /// Also take a full backup this long after the newest one (e.g. 24h; default: off).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) full_backup_every: Option<std::time::Duration>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics while streaming (e.g. 127.0.0.1:9187).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Never take a full backup by itself (by default one is taken when no backup covers the
    /// archive at start, and after a schema change without captured DDL).
    #[arg(long)]
    pub(crate) no_auto_full_backup: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// Publication of `pgkeep stream` (default pgkeep_<database>) new tables are put into.
    #[arg(long)]
    pub(crate) publication: Option<String>,
    /// Remove the event trigger and its functions instead.
    #[arg(long)]
    pub(crate) remove: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also list the old scripts' archives (`full_backup_*.dump.gz`), as kind `legacy`.
    #[arg(long)]
    pub(crate) legacy: bool,
    /// List the backups of every database and cluster, not only the configured database's.
    #[arg(long)]
    pub(crate) all_databases: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Backup id (e.g. full_backup_20261124_020000), `latest`, or a legacy archive (`….dump.gz`).
    #[arg(default_value = "latest")]
    pub(crate) backup: String,
    /// Also restore into a scratch database and compare row counts and fingerprints (dropped afterwards).
    #[arg(long)]
    pub(crate) deep: bool,
    /// Server for the --deep scratch database: postgres:// URL, its database part ignored (default: the configured server).
    #[arg(long, value_name = "URL", requires = "deep")]
    pub(crate) scratch_db: Option<String>,
    /// Compare each table's live row count with the backup's.
    #[arg(long)]
    pub(crate) compare_production: bool,
    /// Allowed live/backup row-count difference for --compare-production, in percent.
    #[arg(long, value_name = "PCT", default_value_t = 10.0)]
    pub(crate) tolerance: f64,
    /// Fail when the backup is older than this (e.g. 48h, 2days).
    #[arg(long, value_name = "DURATION", default_value = "48h", value_parser = humantime::parse_duration)]
    pub(crate) max_age: std::time::Duration,
    /// Tables that must be present and not empty, comma separated (schema.table);
    /// adds to `critical_tables` from the config file or PGKEEP_CRITICAL_TABLES.
    #[arg(long, value_delimiter = ',')]
    pub(crate) critical_tables: Vec<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    /// Approve without asking.
    #[arg(long)]
    pub(crate) yes: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// Compression of data chunks.
    #[arg(long, value_enum, default_value = "zstd")]
    pub(crate) compress: CompressArg,
    /// Compression level (zstd 1-19 or fast levels -1..-7, gzip 1-9; default 1 for zstd, 6 for gzip).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) compress_level: Option<i32>,
    /// Raw bytes per chunk (e.g. 8MiB).
    #[arg(long, default_value = "8MiB")]
    pub(crate) chunk_size: String,
    /// Record an incremental backup: the change archive since the previous backup, pinned up to now
    /// (drains the slot, or waits for a running `pgkeep stream`). Falls back to a full backup, saying why,
    /// when there is no parent, no archive, a gap, or an uncaptured schema change.
    #[arg(long)]
    pub(crate) incremental: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum CompressArg {
    Zstd,
    Gzip,
    None,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// Print as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    #[command(subcommand)]
    pub(crate) action: KeyAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyAction {
    /// Re-wrap the data key of every encrypted backup and change segment for new age recipients,
    /// without re-encrypting data (needs the current identity file or passphrase).
    Rotate(KeyRotateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct KeyRotateArgs {
    /// An age recipient (`age1…`) to add (repeatable).
    #[arg(long = "add-recipient", value_name = "AGE1")]
    pub(crate) add: Vec<String>,
    /// An age recipient (`age1…`) to remove (repeatable).
    #[arg(long = "remove-recipient", value_name = "AGE1")]
    pub(crate) remove: Vec<String>,
    /// Print what would be re-wrapped; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}
