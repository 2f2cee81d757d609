//! Configuration: flags > environment > config file (`pgkeep.toml`) > defaults.
//!
//! [`load`] resolves every setting once, remembers where each value came from
//! ([`Settings::provenance`]) for `pgkeep config`, and reports bad values as
//! configuration errors naming the variable, flag or file key. Secrets are
//! [`Secret`]s and are shown redacted everywhere.

pub mod db;
pub mod encryption;
pub mod layers;
pub mod notify;
mod s3_security;
pub use crate::secret; // a leaf type; re-exported so `config::secret` keeps working

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use db::{DbSettings, SslMode};
pub use encryption::EncryptionSettings;
pub use layers::{Env, ProcessEnv, Source};
pub use notify::{NotifySettings, SmtpSettings, SmtpTls};
pub use secret::Secret;

use layers::{FileLayer, Layers, Raw, parse_as, parse_bool, parse_size};

use crate::error::{Error, Result};
pub use crate::logging::LogFormat; // re-exported: logging is a leaf
pub use crate::storage::RepoSpec;
use crate::storage::s3::S3Settings; // a storage location; re-exported

/// The local repository directory used when neither `--repo` nor `BACKUP_DIR` says otherwise.
pub const DEFAULT_BACKUP_DIR: &str = "pgkeep-backups";

/// Every key the config file may contain.
pub const FILE_KEYS: &[&str] = &[
    "db.url",
    "db.host",
    "db.port",
    "db.user",
    "db.password",
    "db.name",
    "db.sslmode",
    "db.sslrootcert",
    "db.connect_timeout",
    "repos",
    "backup_dir",
    "s3.bucket",
    "s3.prefix",
    "s3.endpoint",
    "s3.region",
    "s3.force_path_style",
    "s3.access_key_id",
    "s3.secret_access_key",
    "s3.part_size",
    "s3.upload_concurrency",
    "s3.max_attempts",
    "s3.timeout",
    "s3.request_timeout",
    "s3.sse",
    "s3.sse_kms_key_id",
    "s3.object_lock_mode",
    "s3.object_lock_days",
    "s3.allow_http",
    "encryption.recipients",
    "encryption.identity_file",
    "encryption.passphrase",
    "encryption.passphrase_file",
    "jobs",
    "retention_days",
    "local_retention_days",
    "log_retention_days",
    "audit_retention_days",
    "notify.slack_webhook_url",
    "notify.email",
    "notify.webhook_url",
    "notify.on_success",
    "notify.timeout",
    "smtp.host",
    "smtp.port",
    "smtp.user",
    "smtp.password",
    "smtp.from",
    "smtp.tls",
    "smtp.allow_insecure",
    "log_format",
    "critical_tables",
    "expire_after_backup",
];

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The database to back up or restore into.
    pub db: DbSettings,
    /// Repositories, local first. Every backup is written to all of them.
    pub repos: Vec<RepoSpec>,
    /// Parallel connections / workers.
    pub jobs: usize,
    /// Days to keep backups in S3 repositories.
    pub retention_days: u32,
    /// Days to keep backups in local repositories.
    pub local_retention_days: u32,
    /// Days to keep per-run log files under a repository's `logs/` (0: forever).
    pub log_retention_days: u32,
    /// Days to keep audit records under a repository's `audit/` (0: forever).
    pub audit_retention_days: u32,
    /// Slack incoming webhook.
    pub slack_webhook_url: Option<Secret>,
    /// Address for email notifications.
    pub notification_email: Option<String>,
    /// Webhook, SMTP server, success policy and timeout of notifications.
    pub notify: NotifySettings,
    /// Log format.
    pub log_format: LogFormat,
    /// Tables that must be present and not empty in every backup and restore (`schema.table`).
    pub critical_tables: Vec<String>,
    /// Run `expire` after every successful backup (the seed's scripts cleaned up after each run).
    pub expire_after_backup: bool,
    /// Client-side encryption: recipients or passphrase to write, keys to read.
    pub encryption: EncryptionSettings,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// (key, shown value, source) of every setting, secrets redacted.
    pub provenance: Vec<(String, String, Source)>,
}

/// What the command line contributes: only what was given.
#[derive(Debug, Clone, Default)]
pub struct FlagValues {
    /// `--db`
    pub db: Option<String>,
    /// `--repo` (repeatable)
    pub repos: Vec<String>,
    /// `--jobs`
    pub jobs: Option<usize>,
    /// `--config`
    pub config: Option<PathBuf>,
    /// `--log-format`
    pub log_format: Option<String>,
    /// `--encrypt-recipient` (repeatable)
    pub encrypt_recipients: Vec<String>,
    /// `--identity-file`
    pub identity_file: Option<PathBuf>,
    /// `--passphrase-file`
    pub passphrase_file: Option<PathBuf>,
    /// `--s3-sse`
    pub s3_sse: Option<String>,
    /// `--s3-sse-kms-key-id`
    pub s3_sse_kms_key_id: Option<String>,
    /// `--s3-object-lock-mode`
    pub s3_object_lock_mode: Option<String>,
    /// `--s3-object-lock-days`
    pub s3_object_lock_days: Option<u32>,
    /// `--allow-http`
    pub allow_http: bool,
}

/// Load the configuration from flags, `env` and the config file.
pub fn load(flags: &FlagValues, env: &dyn Env) -> Result<Settings> {
    // 1. The config file, and the flags by config key.
    let file = config_file(flags, env)?;
    let layers = Layers { flags: flag_map(flags), env, file };

    let mut provenance: Vec<(String, String, Source)> = Vec::new();
    let mut record = |k: &'static str, v: String, s: Source| provenance.push((k.to_string(), v, s));

    // 2. Database.
    if let Some((flag, v)) = layers.flags.get("db.url") {
        record("db.url", redact_url(v), Source::Flag(flag.clone()));
    } else if let Some(v) = env.var("DATABASE_URL") {
        record("db.url", redact_url(&v), Source::Env("DATABASE_URL".into()));
    }
    let db = db::resolve(&layers, &mut record)?;

    // 3. Repositories, each S3 one with the same protections; encryption.
    let repos = repositories(&layers, flags, &mut record)?;
    let encryption = encryption::resolve(&layers, &mut record)?;

    // 4. Everything else.
    let jobs = jobs(&layers, &mut record)?;
    let retention_days = days(&layers, "retention_days", "RETENTION_DAYS", 30, &mut record)?;
    let local_retention_days = days(&layers, "local_retention_days", "LOCAL_RETENTION_DAYS", 7, &mut record)?;
    let log_retention_days = days(&layers, "log_retention_days", "LOG_RETENTION_DAYS", 90, &mut record)?;
    let audit_retention_days = days(&layers, "audit_retention_days", "AUDIT_RETENTION_DAYS", 365, &mut record)?;
    let slack_webhook_url = layers.get("notify.slack_webhook_url", &["SLACK_WEBHOOK_URL"]).map(|r| {
        record("notify.slack_webhook_url", secret::REDACTED.into(), r.source);
        Secret::new(r.value)
    });
    let notification_email = match layers.get("notify.email", &["NOTIFICATION_EMAIL"]) {
        Some(r) => {
            let v = parse_as(&r, "notify.email", "an email address", |s| (s.contains('@') && !s.contains(char::is_whitespace)).then(|| s.to_string()))?;
            record("notify.email", v.clone(), r.source);
            Some(v)
        }
        None => None,
    };
    let notify = notify::resolve(&layers, &mut record)?;
    let log_format = log_format(&layers, &mut record)?;
    let critical_tables = critical_tables(&layers, &mut record);
    let expire_after_backup = expire_after_backup(&layers, &mut record)?;
    let config_file = layers.file.path().map(Path::to_path_buf);

    Ok(Settings {
        db,
        repos,
        jobs,
        retention_days,
        local_retention_days,
        log_retention_days,
        audit_retention_days,
        slack_webhook_url,
        notification_email,
        notify,
        log_format,
        critical_tables,
        expire_after_backup,
        encryption,
        config_file,
        provenance,
    })
}

/// The config file: --config, else PGKEEP_CONFIG, else ./pgkeep.toml if present.
fn config_file(flags: &FlagValues, env: &dyn Env) -> Result<FileLayer> {
    let known: BTreeSet<&'static str> = FILE_KEYS.iter().copied().collect();
    let explicit = flags.config.clone().map(|p| (p, "--config")).or_else(|| env.var("PGKEEP_CONFIG").map(|p| (PathBuf::from(p), "PGKEEP_CONFIG")));
    match explicit {
        Some((path, origin)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::config(format!("cannot read config file {} (from {origin})", path.display())).with_source(e))?;
            FileLayer::parse(&path, &text, &known)
        }
        None => {
            let path = Path::new("pgkeep.toml");
            // Only "not found" means "no config file": a file that exists but cannot
            // be read (permissions, a directory, not UTF-8) is an error naming it.
            match std::fs::read_to_string(path) {
                Ok(text) => FileLayer::parse(path, &text, &known),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileLayer::default()),
                Err(e) => {
                    let why = if e.kind() == std::io::ErrorKind::InvalidData { "it is not UTF-8 text".to_string() } else { e.to_string() };
                    Err(Error::config(format!("cannot read config file {} (found in the current directory): {why}", path.display()))
                        .with_hint("fix or remove the file, or pass another with --config"))
                }
            }
        }
    }
}

/// The values given as flags, by config key: (flag, value).
fn flag_map(flags: &FlagValues) -> BTreeMap<&'static str, (String, String)> {
    let mut flag_map = BTreeMap::new();
    if let Some(db) = &flags.db {
        flag_map.insert("db.url", ("--db".to_string(), db.clone()));
    }
    if let Some(j) = flags.jobs {
        flag_map.insert("jobs", ("--jobs".to_string(), j.to_string()));
    }
    if let Some(f) = &flags.log_format {
        flag_map.insert("log_format", ("--log-format".to_string(), f.clone()));
    }
    if !flags.encrypt_recipients.is_empty() {
        flag_map.insert("encryption.recipients", ("--encrypt-recipient".to_string(), flags.encrypt_recipients.join(",")));
    }
    let path_flags =
        [("encryption.identity_file", "--identity-file", &flags.identity_file), ("encryption.passphrase_file", "--passphrase-file", &flags.passphrase_file)];
    for (key, flag, value) in path_flags {
        if let Some(p) = value {
            flag_map.insert(key, (flag.to_string(), p.display().to_string()));
        }
    }
    let s3_flags = [
        ("s3.sse", "--s3-sse", flags.s3_sse.clone()),
        ("s3.sse_kms_key_id", "--s3-sse-kms-key-id", flags.s3_sse_kms_key_id.clone()),
        ("s3.object_lock_mode", "--s3-object-lock-mode", flags.s3_object_lock_mode.clone()),
        ("s3.object_lock_days", "--s3-object-lock-days", flags.s3_object_lock_days.map(|d| d.to_string())),
        ("s3.allow_http", "--allow-http", flags.allow_http.then(|| "true".to_string())),
    ];
    for (key, flag, value) in s3_flags {
        if let Some(v) = value {
            flag_map.insert(key, (flag.to_string(), v));
        }
    }
    flag_map
}

/// The repositories: `--repo`, else the file's `repos` when the environment
/// names none, else `backup_dir` (or its default) plus the `[s3]` bucket.
/// Every S3 one gets the same protections, its endpoint checked.
fn repositories(layers: &Layers<'_>, flags: &FlagValues, record: &mut dyn FnMut(&'static str, String, Source)) -> Result<Vec<RepoSpec>> {
    let env = layers.env;
    let s3_security = s3_security::resolve(layers, record)?;
    let s3_base = s3_settings(layers, record)?;
    let mut repos = if !flags.repos.is_empty() {
        let mut out = Vec::new();
        for r in &flags.repos {
            out.push(parse_repo(r, "--repo", &s3_base)?);
        }
        record("repos", flags.repos.join(", "), Source::Flag("--repo".into()));
        out
    } else if env.var("BACKUP_DIR").is_none()
        && env.var("S3_BUCKET").is_none()
        && let Some((list, src)) = layers.file_list("repos")
    {
        // The file's list applies only when the environment names no repository:
        // environment beats file, for repositories as for everything else.
        let mut out = Vec::new();
        for r in &list {
            out.push(parse_repo(r, "repos in the config file", &s3_base)?);
        }
        record("repos", list.join(", "), src);
        out
    } else {
        let (dir, src) = match layers.get("backup_dir", &["BACKUP_DIR"]) {
            Some(r) => (PathBuf::from(r.value), r.source),
            None => (PathBuf::from(DEFAULT_BACKUP_DIR), Source::Default),
        };
        let dir = absolute(&dir);
        record("backup_dir", dir.display().to_string(), src);
        let mut out = vec![RepoSpec::Local(dir)];
        if let Some(s3) = s3_base.clone() {
            out.push(RepoSpec::S3(s3));
        }
        out
    };
    for spec in &mut repos {
        if let RepoSpec::S3(s) = spec {
            s.security = s3_security.clone();
            if let Some(ep) = &s.endpoint {
                crate::storage::s3::protection::check_endpoint(ep, s.security.allow_http)?;
            }
        }
    }
    Ok(repos)
}

/// `jobs`: a positive number, by default the number of cores.
fn jobs(layers: &Layers<'_>, record: &mut dyn FnMut(&'static str, String, Source)) -> Result<usize> {
    Ok(match layers.get("jobs", &["PGKEEP_JOBS"]) {
        Some(r) => {
            let j = parse_as(&r, "jobs", "a positive number", |s| s.parse::<usize>().ok().filter(|j| *j > 0))?;
            record("jobs", j.to_string(), r.source);
            j
        }
        None => {
            let j = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
            record("jobs", j.to_string(), Source::Derived("default: number of cores".into()));
            j
        }
    })
}

/// `log_format`: text (the default) or json.
fn log_format(layers: &Layers<'_>, record: &mut dyn FnMut(&'static str, String, Source)) -> Result<LogFormat> {
    Ok(match layers.get("log_format", &["PGKEEP_LOG_FORMAT"]) {
        Some(r) => {
            let f = parse_as(&r, "log_format", "text or json", |s| match s {
                "text" => Some(LogFormat::Text),
                "json" => Some(LogFormat::Json),
                _ => None,
            })?;
            record("log_format", r.value.clone(), r.source);
            f
        }
        None => {
            record("log_format", "text".into(), Source::Default);
            LogFormat::Text
        }
    })
}

/// `critical_tables`: a comma-separated value, or the file's list.
fn critical_tables(layers: &Layers<'_>, record: &mut dyn FnMut(&'static str, String, Source)) -> Vec<String> {
    match layers.get("critical_tables", &["PGKEEP_CRITICAL_TABLES"]) {
        Some(r) => {
            let list: Vec<String> = r.value.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
            record("critical_tables", list.join(", "), r.source);
            list
        }
        None => match layers.file_list("critical_tables") {
            Some((list, src)) => {
                record("critical_tables", list.join(", "), src);
                list
            }
            None => Vec::new(),
        },
    }
}

/// `expire_after_backup`: on by default.
fn expire_after_backup(layers: &Layers<'_>, record: &mut dyn FnMut(&'static str, String, Source)) -> Result<bool> {
    Ok(match layers.get("expire_after_backup", &["EXPIRE_AFTER_BACKUP"]) {
        Some(r) => {
            let v = parse_as(&r, "expire_after_backup", "true or false", parse_bool)?;
            record("expire_after_backup", v.to_string(), r.source);
            v
        }
        None => {
            record("expire_after_backup", "true".into(), Source::Default);
            true
        }
    })
}

fn days(layers: &Layers<'_>, key: &'static str, env: &str, default: u32, record: &mut dyn FnMut(&'static str, String, Source)) -> Result<u32> {
    match layers.get(key, &[env]) {
        Some(r) => {
            let d = parse_as(&r, key, "a whole number of days", |s| s.parse::<u32>().ok())?;
            record(key, d.to_string(), r.source);
            Ok(d)
        }
        None => {
            record(key, default.to_string(), Source::Default);
            Ok(default)
        }
    }
}

/// S3 settings from `S3_*`/`AWS_*` env and `[s3]`; `None` when no bucket is configured.
fn s3_settings(layers: &Layers<'_>, record: &mut dyn FnMut(&'static str, String, Source)) -> Result<Option<S3Settings>> {
    let bucket = layers.get("s3.bucket", &["S3_BUCKET"]);
    let prefix = layers.get("s3.prefix", &["S3_PREFIX"]);
    let endpoint = layers.get("s3.endpoint", &["S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]);
    let region = layers.get("s3.region", &["S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"]);
    let path_style = layers.get("s3.force_path_style", &["S3_FORCE_PATH_STYLE"]);
    let key_id = layers.get("s3.access_key_id", &[]);
    let secret_key = layers.get("s3.secret_access_key", &[]);
    let part_size = layers.get("s3.part_size", &["PGKEEP_S3_PART_SIZE"]);
    let concurrency = layers.get("s3.upload_concurrency", &["PGKEEP_S3_UPLOAD_CONCURRENCY"]);
    let attempts = layers.get("s3.max_attempts", &["PGKEEP_S3_MAX_ATTEMPTS"]);
    let timeout = layers.get("s3.timeout", &["PGKEEP_S3_TIMEOUT"]);
    let request_timeout = layers.get("s3.request_timeout", &["PGKEEP_S3_REQUEST_TIMEOUT"]);

    let show = |r: &Option<Raw>, k: &'static str, record: &mut dyn FnMut(&'static str, String, Source)| {
        if let Some(r) = r {
            record(k, r.value.clone(), r.source.clone());
        }
    };
    show(&bucket, "s3.bucket", record);
    show(&prefix, "s3.prefix", record);
    show(&endpoint, "s3.endpoint", record);
    show(&region, "s3.region", record);
    show(&key_id, "s3.access_key_id", record);
    if let Some(r) = &secret_key {
        record("s3.secret_access_key", secret::REDACTED.into(), r.source.clone());
    }

    let force_path_style = match &path_style {
        Some(r) => parse_as(r, "s3.force_path_style", "true or false", parse_bool)?,
        // S3-compatible stores behind a custom endpoint nearly always need path style.
        None => endpoint.is_some(),
    };
    let part_size_raw = part_size;
    let part_size = match &part_size_raw {
        Some(r) => parse_as(r, "s3.part_size", "a size of at least 5MiB (e.g. 16MiB)", |s| {
            parse_size(s).filter(|n| *n >= 5 << 20 && *n <= 5 << 30).map(|n| n as usize)
        })?,
        None => 16 << 20,
    };
    let upload_concurrency = match &concurrency {
        Some(r) => parse_as(r, "s3.upload_concurrency", "a number from 1 to 64", |s| s.parse::<usize>().ok().filter(|n| (1..=64).contains(n)))?,
        None => 4,
    };
    let max_attempts = match &attempts {
        Some(r) => parse_as(r, "s3.max_attempts", "a number from 1 to 20", |s| s.parse::<u32>().ok().filter(|n| (1..=20).contains(n)))?,
        None => 5,
    };
    let at_least_1s = |s: &str| humantime::parse_duration(s).ok().filter(|d| *d >= Duration::from_secs(1));
    let stall_timeout = match &timeout {
        Some(r) => parse_as(r, "s3.timeout", "a duration of at least 1s, such as 60s or 2m", at_least_1s)?,
        None => crate::storage::s3::DEFAULT_STALL_TIMEOUT,
    };
    let request_timeout_v = match &request_timeout {
        Some(r) => parse_as(r, "s3.request_timeout", "a duration of at least 1s, such as 20s", at_least_1s)?,
        None => crate::storage::s3::DEFAULT_REQUEST_TIMEOUT.min(stall_timeout),
    };
    let Some(bucket) = bucket else {
        return Ok(None);
    };
    let src = |r: &Option<Raw>, default: &str| r.as_ref().map(|r| r.source.clone()).unwrap_or_else(|| Source::Derived(default.into()));
    record("s3.force_path_style", force_path_style.to_string(), src(&path_style, "default: true with a custom endpoint"));
    record("s3.part_size", part_size.to_string(), src(&part_size_raw, "default"));
    record("s3.upload_concurrency", upload_concurrency.to_string(), src(&concurrency, "default"));
    record("s3.max_attempts", max_attempts.to_string(), src(&attempts, "default"));
    record("s3.timeout", humantime::format_duration(stall_timeout).to_string(), src(&timeout, "default"));
    record("s3.request_timeout", humantime::format_duration(request_timeout_v).to_string(), src(&request_timeout, "default: 20s, at most s3.timeout"));
    if bucket.value.contains('/') || bucket.value.trim().is_empty() {
        return Err(Error::config(format!("invalid bucket name in {}: use S3_PREFIX for the path inside the bucket", bucket.origin("s3.bucket"))));
    }
    Ok(Some(S3Settings {
        bucket: bucket.value,
        prefix: prefix.map(|p| p.value.trim_matches('/').to_string()).unwrap_or_default(),
        endpoint: endpoint.map(|e| e.value),
        region: region.map(|r| r.value),
        force_path_style,
        access_key_id: key_id.map(|k| k.value),
        secret_access_key: secret_key.map(|s| Secret::new(s.value)),
        part_size,
        upload_concurrency,
        max_attempts,
        request_timeout: request_timeout_v,
        stall_timeout,
        connect_timeout: Duration::from_secs(10),
        security: Default::default(),
    }))
}

/// Parse one `--repo` value: a path, `file:///path`, or `s3://bucket/prefix`.
pub fn parse_repo(value: &str, origin: &str, s3_base: &Option<S3Settings>) -> Result<RepoSpec> {
    if let Some(rest) = value.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::config(format!("{origin} `{value}` names no bucket")));
        }
        let base = s3_base.clone().unwrap_or_else(|| S3Settings {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            part_size: 16 << 20,
            upload_concurrency: 4,
            max_attempts: 5,
            request_timeout: crate::storage::s3::DEFAULT_REQUEST_TIMEOUT,
            stall_timeout: crate::storage::s3::DEFAULT_STALL_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
            security: Default::default(),
        });
        return Ok(RepoSpec::S3(S3Settings { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string(), ..base }));
    }
    if value.contains("://") && !value.starts_with("file://") {
        return Err(Error::config(format!("{origin} `{value}`: unsupported repository URL (use a path, file:///path or s3://bucket/prefix)")));
    }
    let path = value.strip_prefix("file://").unwrap_or(value);
    if path.is_empty() {
        return Err(Error::config(format!("{origin} is empty")));
    }
    Ok(RepoSpec::Local(absolute(Path::new(path))))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()) }
}

/// Replace the password in a postgres URL or conninfo string with `********`.
pub fn redact_url(s: &str) -> String {
    if let Ok(mut u) = url::Url::parse(s) {
        if u.password().is_some() {
            let _ = u.set_password(Some(secret::REDACTED));
        }
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" { secret::REDACTED.to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        if !pairs.is_empty() {
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return u.to_string();
    }
    // conninfo: blank out password=...
    s.split_whitespace()
        .map(|kv| if kv.starts_with("password=") { format!("password={}", secret::REDACTED) } else { kv.to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Settings {
    /// The effective configuration as text: one `key = value  (source)` line each.
    pub fn render_text(&self) -> String {
        let width = self.provenance.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        if let Some(f) = &self.config_file {
            out.push_str(&format!("# config file: {}\n", f.display()));
        }
        for (k, v, s) in &self.provenance {
            out.push_str(&format!("{k:width$} = {v}    ({s})\n"));
        }
        out.push_str(&format!("{:width$} = {}    (effective)\n", "repositories", self.repos.iter().map(RepoSpec::display).collect::<Vec<_>>().join(", ")));
        out
    }

    /// The effective configuration as JSON.
    pub fn render_json(&self) -> serde_json::Value {
        let items: Vec<serde_json::Value> =
            self.provenance.iter().map(|(k, v, s)| serde_json::json!({"key": k, "value": v, "source": s.to_string()})).collect();
        serde_json::json!({
            "config_file": self.config_file.as_ref().map(|p| p.display().to_string()),
            "settings": items,
            "repositories": self.repos.iter().map(RepoSpec::display).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests;
