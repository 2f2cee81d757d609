//! Tracing setup for the binary: text or JSON on stderr, level from -q/-v or
//! `PGKEEP_LOG`, and optionally a per-run log file (always at info level or
//! more, without colours, with every field). Logs carry counts, sizes, LSNs
//! and table names, never row data or secrets.
//!
//! On a terminal, text goes out as [`HumanLines`]: the time, the message and
//! the few fields a person reads (sizes humanized), without span fields,
//! snapshot names, ids or LSNs on INFO lines. Off a terminal, and with
//! `--log-format json`, stderr keeps the full structured lines.

use std::fmt;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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
/// `stderr` writes the console lines (the CLI passes one that keeps clear of its
/// progress bar); when `human` and the format is text they are [`HumanLines`].
pub fn init<W>(format: LogFormat, verbosity: i8, log_file: Option<&Path>, stderr: W, human: bool) -> LogGuard
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_env("PGKEEP_LOG").unwrap_or_else(|_| EnvFilter::new(level(verbosity)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let stderr_layer = match (format, human) {
        (LogFormat::Json, _) => tracing_subscriber::fmt::layer().json().with_writer(stderr).boxed(),
        (LogFormat::Text, true) => tracing_subscriber::fmt::layer().event_format(HumanLines).with_ansi(ansi).with_writer(stderr).boxed(),
        (LogFormat::Text, false) => tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi).with_writer(stderr).boxed(),
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

/// Console lines for a person: `HH:MM:SS message (field=value, …)`, with
/// `warning:` / `error:` before WARN and ERROR messages. No span fields; on
/// INFO lines no ids, snapshot names, slots or LSNs ([`is_noise`]).
/// Fields named like sizes (`bytes`, `size`, `…_bytes`) are shown as KiB/MiB/GiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct HumanLines;

impl<S, N> FormatEvent<S, N> for HumanLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = *event.metadata().level();
        let mut fields = HumanFields { all: level <= Level::WARN, ..HumanFields::default() };
        event.record(&mut fields);
        let ansi = w.has_ansi_escapes();
        write!(w, "{} ", chrono::Local::now().format("%H:%M:%S"))?;
        let (tag, colour) = match level {
            Level::ERROR => ("error: ", "\x1b[31m"),
            Level::WARN => ("warning: ", "\x1b[33m"),
            Level::INFO => ("", ""),
            Level::DEBUG => ("debug: ", "\x1b[2m"),
            Level::TRACE => ("trace: ", "\x1b[2m"),
        };
        match ansi && !tag.is_empty() {
            true => write!(w, "{colour}{tag}\x1b[0m")?,
            false => write!(w, "{tag}")?,
        }
        write!(w, "{}", fields.message)?;
        if !fields.shown.is_empty() {
            write!(w, " ({})", fields.shown.join(", "))?;
        }
        writeln!(w)
    }
}

/// The message and the fields a person reads, of one event.
#[derive(Default)]
struct HumanFields {
    message: String,
    shown: Vec<String>,
    /// Keep every field (WARN and ERROR: they explain what went wrong).
    all: bool,
}

impl HumanFields {
    fn push(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else if self.all || !is_noise(field.name()) {
            self.shown.push(format!("{}={value}", field.name()));
        }
    }
}

impl Visit for HumanFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        let n = field.name();
        let text = if n == "bytes" || n == "size" || n.ends_with("_bytes") { human_size(value) } else { value.to_string() };
        self.push(field, text);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match u64::try_from(value) {
            Ok(v) => self.record_u64(field, v),
            Err(_) => self.push(field, value.to_string()),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, format!("{value:.2}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, format!("{value:?}"));
    }
}

/// Fields an INFO line leaves to the log file: identifiers and positions a
/// person does not read while watching a run.
fn is_noise(name: &str) -> bool {
    const NOISE: [&str; 6] = ["lsn", "snapshot", "slot", "_id", "identifier", "xid"];
    name == "id" || NOISE.iter().any(|n| name.contains(n))
}

/// Bytes as B/KiB/MiB/GiB/TiB (`commands::backup::human_bytes` is a layer up).
fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut unit) = (n as f64, "B");
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit == "B" { format!("{n} B") } else { format!("{v:.1} {unit}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the console layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn human(run: impl FnOnce()) -> String {
        let out = Captured::default();
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer().event_format(HumanLines).with_ansi(false).with_writer(move || sink.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn info_lines_drop_spans_ids_and_lsns_and_humanize_sizes() {
        let out = human(|| {
            let span = tracing::info_span!("backup", backup_id = "full_backup_x", lsn = "0/16B3748");
            let _g = span.enter();
            tracing::info!(snapshot = "00000003-1", lsn = "0/16B3748", "exported snapshot");
            tracing::info!(tables = 6, raw_bytes = 3_u64 << 20, seconds = 1.141_700_597, "copying tables");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].ends_with(" exported snapshot"), "{out}");
        assert!(lines[1].ends_with(" copying tables (tables=6, raw_bytes=3.0 MiB, seconds=1.14)"), "{out}");
        assert!(!out.contains("full_backup_x") && !out.contains("0/16B3748") && !out.contains("INFO"), "{out}");
    }

    #[test]
    fn warnings_keep_their_fields() {
        let out = human(|| tracing::warn!(backup_id = "b1", error = "disk full", "expire after backup failed"));
        assert!(out.contains("warning: expire after backup failed (backup_id=b1, error=disk full)"), "{out}");
    }

    #[test]
    fn sizes_read_as_binary_units() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
    }
}
