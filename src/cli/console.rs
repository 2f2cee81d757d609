//! The operator's console on stderr. On a terminal: human log lines
//! (`pgkeep::logging::HumanLines`) and, for backup, restore and
//! `verify --deep`, a progress bar by bytes with rate and ETA (and, for a
//! replay, by change-segment bytes with the row changes applied), drawn
//! from the library's `ProgressCounters`. Log lines written while the bar is up
//! clear it first ([`ConsoleWriter`]), so nothing garbles the screen. Off a
//! terminal: no bar, the structured lines as before.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgkeep::progress::{ProgressCounters, ProgressView};

/// The bar on screen, if any: log lines suspend it while they are written.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Whether stderr is a terminal (the console is for a person).
pub fn is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Writes each log line to stderr, clearing the progress bar around it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleWriter;

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for ConsoleWriter {
    type Writer = ConsoleWriter;

    fn make_writer(&'w self) -> Self::Writer {
        ConsoleWriter
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A running progress bar; [`Progress::finish`] clears it.
pub struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

/// What the bar shows: the tables' bytes, or a replay's segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Replay,
}

/// The phase the counters are in, if any: change segments are replayed,
/// or tables are copied or loaded (their total known, not all done; with
/// an `exact` total, as a restore's from the manifest, not all bytes done).
fn phase(v: &ProgressView, exact: bool) -> Option<Phase> {
    let tables_done = v.tables_total > 0 && v.tables_done >= v.tables_total;
    if v.replay_bytes_total > 0 && v.replay_bytes < v.replay_bytes_total {
        Some(Phase::Replay)
    } else if v.bytes_total > 0 && !tables_done && !(exact && v.bytes >= v.bytes_total) {
        Some(Phase::Data)
    } else {
        None
    }
}

/// On a terminal (and unless `quiet`), a bar of `counters`' bytes against
/// their total, with rate and ETA, labelled `verb` (`backup`, `restore`,
/// `verify`); during a replay, of the change segments applied, labelled
/// `replay`, with the row changes applied. It is up only while a phase runs,
/// so prompts before and after (RESTORE, SWAP) stay readable. A restore's
/// total is exact (`restore`, `verify`); a backup's is an estimate from the
/// tables' sizes, so only its tables tell when it is done.
pub fn progress(verb: &'static str, counters: Arc<ProgressCounters>, quiet: bool) -> Option<Progress> {
    let exact = verb != "backup";
    if quiet || !is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template("{prefix} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let ticker = tokio::spawn(async move {
        let mut shown = None;
        loop {
            let v = counters.view();
            let now = phase(&v, exact);
            if now != shown {
                if shown.is_some() {
                    hide(&b);
                }
                if now.is_some() {
                    b.reset();
                    b.set_prefix(if now == Some(Phase::Replay) { "replay" } else { verb });
                    b.set_draw_target(ProgressDrawTarget::stderr());
                    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
                }
                shown = now;
            }
            match shown {
                Some(Phase::Data) => {
                    b.set_length(v.bytes_total.max(v.bytes));
                    b.set_position(v.bytes);
                    b.set_message(format!("{}/{} tables", v.tables_done, v.tables_total));
                }
                Some(Phase::Replay) => {
                    b.set_length(v.replay_bytes_total);
                    b.set_position(v.replay_bytes);
                    b.set_message(format!("{} row changes", v.changes));
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Some(Progress { bar, ticker })
}

impl Progress {
    /// Stop updating and clear the bar from the screen.
    pub fn finish(self) {
        self.ticker.abort();
        hide(&self.bar);
    }
}

/// Clear `bar` and stop routing log lines around it.
fn hide(bar: &ProgressBar) {
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    bar.finish_and_clear();
    bar.set_draw_target(ProgressDrawTarget::hidden());
}
