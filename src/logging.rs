//! Tracing setup for the binary: text or JSON on stderr, level from -q/-v or
//! `PGKEEP_LOG`, and optionally a per-run log file (always at info level or
//! more, without colours). Logs carry counts, sizes, LSNs and table names,
//! never row data or secrets.

use std::path::Path;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Keeps logging alive for the process; drop at exit.
pub struct LogGuard;

fn level(verbosity: i8) -> &'static str {
    match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "pgkeep=debug,info",
        _ => "pgkeep=trace,debug",
    }
}

/// Install the global subscriber. `verbosity`: -1 quiet, 0 info, 1 debug, 2+ trace.
/// When `log_file` is given, the run is also logged there (created with its folder).
pub fn init(format: LogFormat, verbosity: i8, log_file: Option<&Path>) -> LogGuard {
    let filter = EnvFilter::try_from_env("PGKEEP_LOG").unwrap_or_else(|_| EnvFilter::new(level(verbosity)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let stderr_layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi).with_writer(std::io::stderr).boxed(),
    }
    .with_filter(filter);
    let file = log_file.and_then(|p| {
        std::fs::create_dir_all(p.parent()?).ok()?;
        std::fs::OpenOptions::new().create(true).append(true).open(p).ok()
    });
    let file_layer = file.map(|f| {
        let writer = std::sync::Mutex::new(f);
        match format {
            LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(writer).boxed(),
            LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer).boxed(),
        }
        .with_filter(EnvFilter::new(if verbosity > 0 { level(verbosity) } else { "info" }))
    });
    let _ = tracing_subscriber::registry().with(stderr_layer).with(file_layer).try_init();
    LogGuard
}
