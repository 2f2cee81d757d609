//! Layered lookup with provenance: flags > environment > config file > defaults.
//!
//! Every setting is looked up by its config-file key (`db.host`); the
//! [`Layers`] remember where each value came from so `pgkeep config` can say
//! so, and parse errors name the variable, flag or file key that held the bad value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag, e.g. `--jobs`.
    Flag(String),
    /// An environment variable.
    Env(String),
    /// A key in the config file.
    File(PathBuf),
    /// Derived from another setting (e.g. a field of `--db` or `DATABASE_URL`).
    Derived(String),
    /// `~/.pgpass` or `PGPASSFILE`.
    PassFile(PathBuf),
    /// Built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(n) => write!(f, "flag {n}"),
            Source::Env(n) => write!(f, "env {n}"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Derived(n) => write!(f, "{n}"),
            Source::PassFile(p) => write!(f, "passfile {}", p.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A raw value and where it came from.
#[derive(Debug, Clone)]
pub struct Raw {
    /// The value as text.
    pub value: String,
    /// Its origin.
    pub source: Source,
}

impl Raw {
    /// How to name this value in an error: `RETENTION_DAYS`, `--jobs`, `retention_days in FILE`.
    pub fn origin(&self, key: &str) -> String {
        match &self.source {
            Source::Flag(n) | Source::Env(n) => n.clone(),
            Source::File(p) => format!("{key} in {}", p.display()),
            Source::Derived(n) => format!("{key} (from {n})"),
            Source::PassFile(p) => format!("{key} (from {})", p.display()),
            Source::Default => format!("default {key}"),
        }
    }
}

/// The environment, abstracted so tests can pass a map instead of the process env.
pub trait Env {
    /// The value of variable `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned().filter(|v| !v.is_empty())
    }
}

/// The config file, flattened to dotted keys.
#[derive(Debug, Default)]
pub struct FileLayer {
    path: Option<PathBuf>,
    values: BTreeMap<String, String>,
    lists: BTreeMap<String, Vec<String>>,
}

impl FileLayer {
    /// Parse `text` (TOML) read from `path`. Keys not in `known` are rejected.
    pub fn parse(path: &Path, text: &str, known: &BTreeSet<&'static str>) -> Result<Self> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let msg = e.message().replace('\n', " ");
            let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1)).map(|l| format!(" at line {l}")).unwrap_or_default();
            Error::config(format!("cannot parse config file {}{line}: {msg}", path.display()))
        })?;
        let mut layer = FileLayer { path: Some(path.to_path_buf()), ..Default::default() };
        flatten(path, "", &table, known, &mut layer)?;
        Ok(layer)
    }

    /// The file's path, if a file was loaded.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

fn flatten(path: &Path, prefix: &str, table: &toml::Table, known: &BTreeSet<&'static str>, out: &mut FileLayer) -> Result<()> {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        if let toml::Value::Table(t) = v {
            flatten(path, &key, t, known, out)?;
            continue;
        }
        if !known.contains(key.as_str()) {
            return Err(Error::config(format!("unknown key `{key}` in config file {}", path.display()))
                .with_hint("run `pgkeep config --help` or see the configuration table in the README"));
        }
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => {
                let mut list = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => list.push(s.clone()),
                        other => {
                            return Err(Error::config(format!(
                                "`{key}` in config file {} must be a list of strings, found {}",
                                path.display(),
                                other.type_str()
                            )));
                        }
                    }
                }
                out.lists.insert(key, list);
                continue;
            }
            other => {
                return Err(Error::config(format!("`{key}` in config file {} has unsupported type {}", path.display(), other.type_str())));
            }
        };
        out.values.insert(key, text);
    }
    Ok(())
}

/// Flags, environment and file, consulted in that order.
pub struct Layers<'a> {
    /// Values given as flags, by config key.
    pub flags: BTreeMap<&'static str, (String, String)>,
    /// The environment.
    pub env: &'a dyn Env,
    /// The config file.
    pub file: FileLayer,
}

impl<'a> Layers<'a> {
    /// Look up `key`: flag, then each of `env_names` in order, then the file.
    pub fn get(&self, key: &str, env_names: &[&str]) -> Option<Raw> {
        if let Some((flag, v)) = self.flags.get(key) {
            return Some(Raw { value: v.clone(), source: Source::Flag(flag.clone()) });
        }
        for name in env_names {
            if let Some(v) = self.env.var(name) {
                return Some(Raw { value: v, source: Source::Env((*name).to_string()) });
            }
        }
        self.file_value(key)
    }

    /// Look up `key` in the config file only.
    pub fn file_value(&self, key: &str) -> Option<Raw> {
        self.file.values.get(key).map(|v| Raw { value: v.clone(), source: Source::File(self.file.path.clone().unwrap_or_default()) })
    }

    /// A list from the config file.
    pub fn file_list(&self, key: &str) -> Option<(Vec<String>, Source)> {
        self.file.lists.get(key).map(|l| (l.clone(), Source::File(self.file.path.clone().unwrap_or_default())))
    }
}

/// Parse a value with `parse`, or fail naming where the value came from.
pub fn parse_as<T>(raw: &Raw, key: &str, expected: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<T> {
    parse(raw.value.trim()).ok_or_else(|| Error::config(format!("invalid value for {}: expected {expected}", raw.origin(key))))
}

/// Parse a boolean the way people write them in env vars.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parse a byte size: `8388608`, `8MiB`, `8M`, `64KiB`, `1G`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_bools() {
        assert_eq!(parse_size("8MiB"), Some(8 << 20));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("12x"), None);
        assert_eq!(parse_bool("YES"), Some(true));
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn file_errors_name_file_and_key() {
        let known: BTreeSet<&'static str> = ["jobs", "db.host"].into_iter().collect();
        let p = Path::new("/etc/pgkeep.toml");
        let e = FileLayer::parse(p, "jobs = 3\n[db]\nhots = 'x'\n", &known).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Config);
        assert!(e.user_line().contains("db.hots"), "{}", e.user_line());
        assert!(e.user_line().contains("/etc/pgkeep.toml"));
        let e = FileLayer::parse(p, "jobs = = 3", &known).unwrap_err();
        assert!(e.user_line().starts_with("cannot parse config file /etc/pgkeep.toml at line 1"), "{}", e.user_line());
        assert!(!e.user_line().contains('\n'));
    }
}
