//! Database connection settings: `--db`/`DATABASE_URL` URLs or conninfo
//! strings, the seed's `DB_*` variables, libpq's `PG*` variables, `~/.pgpass`.
//!
//! Field by field, the first of these wins: `--db` flag, `DB_*`, `DATABASE_URL`,
//! `PG*`, config file `[db]`, `~/.pgpass` (password only), defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::layers::{Env, Layers, Raw, Source, parse_as};
use super::secret::Secret;
use crate::error::{Error, Result};

/// libpq's sslmode values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it; no certificate check.
    Prefer,
    /// Require TLS; no certificate check.
    Require,
    /// Require TLS and a certificate signed by a trusted CA.
    VerifyCa,
    /// Require TLS, a trusted certificate, and a matching host name.
    VerifyFull,
}

impl SslMode {
    /// Parse libpq's spelling (`allow` is treated as `prefer`).
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s.to_ascii_lowercase().as_str() {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Resolved connection settings for one database.
#[derive(Debug, Clone)]
pub struct DbSettings {
    /// Host name, IP address, or a Unix socket directory (starts with `/`).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role name.
    pub user: String,
    /// Password, if any.
    pub password: Option<Secret>,
    /// Database name.
    pub dbname: String,
    /// TLS mode.
    pub sslmode: SslMode,
    /// CA bundle for verify-ca / verify-full; system roots when `None`.
    pub sslrootcert: Option<PathBuf>,
    /// Connect timeout (DNS + TCP + TLS + auth).
    pub connect_timeout: Duration,
}

impl DbSettings {
    /// `host:port/dbname`, for messages. Never includes credentials.
    pub fn display_target(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }

    /// The same server with another database.
    pub fn with_dbname(&self, dbname: &str) -> DbSettings {
        DbSettings { dbname: dbname.to_string(), ..self.clone() }
    }
}

/// Fields parsed out of a URL or conninfo string.
#[derive(Debug, Default, Clone)]
pub struct ConnFields {
    fields: BTreeMap<&'static str, String>,
}

const CONN_KEYS: &[&str] = &["host", "port", "user", "password", "dbname", "sslmode", "sslrootcert", "connect_timeout"];

fn canonical_key(k: &str) -> Option<&'static str> {
    let k = match k {
        "hostaddr" => "host",
        "database" => "dbname",
        other => other,
    };
    CONN_KEYS.iter().copied().find(|c| *c == k)
}

impl ConnFields {
    /// Parse `postgres://user:pass@host:port/db?sslmode=…` or `host=… dbname=…`.
    /// `origin` names where the string came from, for errors (never the string itself: it may hold a password).
    pub fn parse(s: &str, origin: &str) -> Result<ConnFields> {
        let s = s.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Self::parse_url(s, origin)
        } else if s.contains('=') {
            Self::parse_conninfo(s, origin)
        } else {
            Err(Error::config(format!("{origin} is not a postgres:// URL or a key=value connection string")))
        }
    }

    fn parse_url(s: &str, origin: &str) -> Result<ConnFields> {
        let url = url::Url::parse(s).map_err(|e| Error::config(format!("{origin} is not a valid postgres:// URL: {e}")))?;
        let mut f = ConnFields::default();
        let dec = |v: &str| percent_decode(v).ok_or_else(|| Error::config(format!("{origin} has invalid percent-encoding")));
        if let Some(h) = url.host_str().filter(|h| !h.is_empty()) {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            f.fields.insert("host", dec(h)?);
        }
        if let Some(p) = url.port() {
            f.fields.insert("port", p.to_string());
        }
        if !url.username().is_empty() {
            f.fields.insert("user", dec(url.username())?);
        }
        if let Some(pw) = url.password() {
            f.fields.insert("password", dec(pw)?);
        }
        let path = url.path().trim_start_matches('/');
        if !path.is_empty() {
            f.fields.insert("dbname", dec(path)?);
        }
        for (k, v) in url.query_pairs() {
            match canonical_key(&k) {
                Some(key) => {
                    f.fields.insert(key, v.into_owned());
                }
                None if k == "application_name" || k == "options" => {}
                None => {
                    return Err(Error::config(format!("{origin} has unsupported parameter `{k}`")));
                }
            }
        }
        Ok(f)
    }

    fn parse_conninfo(s: &str, origin: &str) -> Result<ConnFields> {
        let mut f = ConnFields::default();
        let mut chars = s.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next() != Some('=') {
                return Err(Error::config(format!("{origin}: expected `=` after `{key}`")));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'\'') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '\'' => {
                            closed = true;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                if !closed {
                    return Err(Error::config(format!("{origin}: unterminated quoted value for `{key}`")));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    if c == '\\' {
                        chars.next();
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                        continue;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            match canonical_key(&key) {
                Some(k) => {
                    f.fields.insert(k, value);
                }
                None if key == "application_name" || key == "options" => {}
                None => {
                    return Err(Error::config(format!("{origin} has unsupported parameter `{key}`")));
                }
            }
        }
        Ok(f)
    }

    /// The value of a field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One `~/.pgpass` lookup: host:port:database:username:password, `*` wildcards.
pub fn pgpass_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    // libpq matches "localhost" for Unix-socket connections.
    let host = if host.starts_with('/') { "localhost" } else { host };
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass_line(line);
        if fields.len() < 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(&fields[0], host) && m(&fields[1], &port) && m(&fields[2], db) && m(&fields[3], user) {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().expect("non-empty").push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut().expect("non-empty").push(c),
        }
    }
    out
}

fn pgpass_path(env: &dyn Env) -> Option<PathBuf> {
    if let Some(p) = env.var("PGPASSFILE") {
        return Some(PathBuf::from(p));
    }
    env.var("HOME").map(|h| Path::new(&h).join(".pgpass"))
}

/// Where a password came from, in the words of a hint: `DB_PASSWORD`,
/// `DATABASE_URL`, `--db`, `config file /etc/pgkeep.toml`.
fn password_origin(source: &Source) -> String {
    match source {
        Source::Flag(n) | Source::Env(n) => n.clone(),
        Source::File(p) => format!("config file {}", p.display()),
        Source::PassFile(p) => p.display().to_string(),
        Source::Derived(n) => n.trim_start_matches("flag ").trim_start_matches("env ").to_string(),
        Source::Default => "default".into(),
    }
}

/// Resolve database settings. `record` receives (key, shown value, source) for `pgkeep config`.
pub fn resolve(layers: &Layers<'_>, record: &mut dyn FnMut(&'static str, String, Source)) -> Result<DbSettings> {
    // URL-like sources: --db flag (highest), DATABASE_URL (below DB_*), file db.url.
    let flag_url = layers.flags.get("db.url").map(|(flag, v)| (ConnFields::parse(v, flag), Source::Flag(flag.clone())));
    let env_url = layers.env.var("DATABASE_URL").map(|v| (ConnFields::parse(&v, "DATABASE_URL"), Source::Env("DATABASE_URL".into())));
    let file_url = layers.file_value("db.url").map(|r| (ConnFields::parse(&r.value, &r.origin("db.url")), r.source));
    let flag_url = flag_url.map(|(r, s)| r.map(|f| (f, s))).transpose()?;
    let env_url = env_url.map(|(r, s)| r.map(|f| (f, s))).transpose()?;
    let file_url = file_url.map(|(r, s)| r.map(|f| (f, s))).transpose()?;

    let from_url = |u: &Option<(ConnFields, Source)>, field: &str| -> Option<Raw> {
        u.as_ref().and_then(|(f, src)| f.get(field).map(|v| Raw { value: v.to_string(), source: Source::Derived(format!("{src}")) }))
    };

    let pick = |field: &'static str, key: &str, seed_env: &[&str], pg_env: &[&str]| -> Option<Raw> {
        from_url(&flag_url, field)
            .or_else(|| seed_env.iter().find_map(|n| env_raw(layers.env, n)))
            .or_else(|| from_url(&env_url, field))
            .or_else(|| pg_env.iter().find_map(|n| env_raw(layers.env, n)))
            .or_else(|| layers.file_value(key))
            .or_else(|| from_url(&file_url, field))
    };

    let os_user = whoami::username().unwrap_or_else(|_| "postgres".to_string());

    let host = pick("host", "db.host", &["DB_HOST"], &["PGHOST"]);
    let port = pick("port", "db.port", &["DB_PORT"], &["PGPORT"]);
    let user = pick("user", "db.user", &["DB_USER"], &["PGUSER"]);
    let password = pick("password", "db.password", &["DB_PASSWORD"], &["PGPASSWORD"]);
    let dbname = pick("dbname", "db.name", &["DB_NAME"], &["PGDATABASE"]);
    let sslmode = pick("sslmode", "db.sslmode", &["DB_SSLMODE"], &["PGSSLMODE"]);
    let sslrootcert = pick("sslrootcert", "db.sslrootcert", &[], &["PGSSLROOTCERT"]);
    let timeout = pick("connect_timeout", "db.connect_timeout", &[], &["PGCONNECT_TIMEOUT"]);

    let (host, host_src) = value_or(host, "localhost");
    let port_v: u16 = match &port {
        Some(r) => parse_as(r, "db.port", "a port number (1-65535)", |s| s.parse().ok().filter(|p| *p > 0))?,
        None => 5432,
    };
    let port_src = port.map(|r| r.source).unwrap_or(Source::Default);
    let (user, user_src) = value_or(user, &os_user);
    let (dbname, dbname_src) = match dbname {
        Some(r) => (r.value, r.source),
        None => (user.clone(), Source::Derived("default: same as user".into())),
    };
    let sslmode_v = match &sslmode {
        Some(r) => parse_as(r, "db.sslmode", "disable, prefer, require, verify-ca or verify-full", SslMode::parse)?,
        None => SslMode::Prefer,
    };
    let sslmode_src = sslmode.map(|r| r.source).unwrap_or(Source::Default);
    let timeout_v = match &timeout {
        Some(r) => parse_as(r, "db.connect_timeout", "a number of seconds", |s| s.parse::<u64>().ok().map(|n| Duration::from_secs(n.max(1))))?,
        None => Duration::from_secs(10),
    };
    let timeout_src = timeout.map(|r| r.source).unwrap_or(Source::Default);
    let (sslrootcert_v, sslrootcert_src) = match sslrootcert {
        Some(r) => (Some(PathBuf::from(r.value)), r.source),
        None => {
            let default = layers.env.var("HOME").map(|h| Path::new(&h).join(".postgresql/root.crt")).filter(|p| p.exists());
            (default, Source::Default)
        }
    };
    let (password, password_src) = match password {
        Some(r) => (Some(Secret::new(r.value).with_origin(password_origin(&r.source))), r.source),
        None => match pgpass_path(layers.env) {
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => match pgpass_lookup(&text, &host, port_v, &dbname, &user) {
                    Some(pw) => (Some(Secret::new(pw).with_origin(path.display().to_string())), Source::PassFile(path)),
                    None => (None, Source::Default),
                },
                Err(_) => (None, Source::Default),
            },
            None => (None, Source::Default),
        },
    };

    record("db.host", host.clone(), host_src);
    record("db.port", port_v.to_string(), port_src);
    record("db.user", user.clone(), user_src);
    record("db.password", if password.is_some() { super::secret::REDACTED.to_string() } else { "(none)".into() }, password_src);
    record("db.name", dbname.clone(), dbname_src);
    record("db.sslmode", sslmode_v.as_str().to_string(), sslmode_src);
    record("db.sslrootcert", sslrootcert_v.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(system roots)".into()), sslrootcert_src);
    record("db.connect_timeout", format!("{}s", timeout_v.as_secs()), timeout_src);

    Ok(DbSettings { host, port: port_v, user, password, dbname, sslmode: sslmode_v, sslrootcert: sslrootcert_v, connect_timeout: timeout_v })
}

fn env_raw(env: &dyn Env, name: &str) -> Option<Raw> {
    env.var(name).map(|v| Raw { value: v, source: Source::Env(name.to_string()) })
}

fn value_or(raw: Option<Raw>, default: &str) -> (String, Source) {
    match raw {
        Some(r) => (r.value, r.source),
        None => (default.to_string(), Source::Default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_conninfo() {
        let f = ConnFields::parse("postgresql://al%40ice:p%3Ass@db.example.com:6543/my%20db?sslmode=verify-full", "--db").unwrap();
        assert_eq!(f.get("user"), Some("al@ice"));
        assert_eq!(f.get("password"), Some("p:ss"));
        assert_eq!(f.get("host"), Some("db.example.com"));
        assert_eq!(f.get("port"), Some("6543"));
        assert_eq!(f.get("dbname"), Some("my db"));
        assert_eq!(f.get("sslmode"), Some("verify-full"));

        let f = ConnFields::parse("host=/tmp port=5433 dbname='a b' password='it\\'s'", "x").unwrap();
        assert_eq!(f.get("host"), Some("/tmp"));
        assert_eq!(f.get("dbname"), Some("a b"));
        assert_eq!(f.get("password"), Some("it's"));

        let e = ConnFields::parse("postgres://u:secretpw@h/db?bogus=1", "DATABASE_URL").unwrap_err();
        assert!(e.user_line().contains("DATABASE_URL"));
        assert!(!e.user_line().contains("secretpw"));
    }

    #[test]
    fn pgpass_matching() {
        let text = "# comment\nother:5432:*:bob:nope\ndb.example:*:app:alice:pa\\:ss:word\n*:*:*:*:fallback\n";
        assert_eq!(pgpass_lookup(text, "db.example", 5432, "app", "alice").as_deref(), Some("pa:ss:word"));
        assert_eq!(pgpass_lookup(text, "other", 5432, "x", "bob").as_deref(), Some("nope"));
        assert_eq!(pgpass_lookup(text, "zzz", 1, "x", "y").as_deref(), Some("fallback"));
    }
}
