//! Tracing setup for the binary: text or JSON on stderr, level from -q/-v or
//! `RUST_LOG`. Logs carry counts, sizes, LSNs and table names, never row data
//! or secrets.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Keeps logging alive for the process; drop at exit.
pub struct LogGuard;

/// Install the global subscriber. `verbosity`: -1 quiet, 0 info, 1 debug, 2+ trace.
pub fn init(format: LogFormat, verbosity: i8) -> LogGuard {
    let level = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "pgkeep=debug,info",
        _ => "pgkeep=trace,debug",
    };
    let filter = EnvFilter::try_from_env("PGKEEP_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
    LogGuard
}
