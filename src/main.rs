//! The `pgkeep` command line: parses flags, loads configuration, starts
//! tracing and maps errors to exit codes. Everything else is in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    install_panic_hook();
    let args = cli::Cli::parse();
    if !args.is_backup() {
        tune_allocator(if args.is_load() { LOAD_MMAP_THRESHOLD } else { 1 << 20 });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(runtime_threads(args.is_backup())).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgkeep: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        // Stopped by SIGTERM/SIGINT (pgkeep::interrupt): one line, exit 128 + signal,
        // without waiting for a prompt thread that may still read the terminal.
        Err(e) if let Some(code) = pgkeep::interrupt::exit_code() => {
            eprintln!("pgkeep: error: {}", e.user_line());
            std::process::exit(code.into())
        }
        Err(e) => {
            eprintln!("pgkeep: error: {}", e.user_line());
            ExitCode::from(e.kind().exit_code() as u8)
        }
    }
}

/// Threads of the async runtime: one per core, except for `backup`, whose
/// heavy work is on rayon (compression, checksums) and on the server; its
/// runtime only moves bytes, and a second idle worker mostly wakes to steal
/// nothing (on 2 cores: 13% less CPU with one). A restore fingerprints its
/// read-back on the runtime and keeps one per core. `PGKEEP_RUNTIME_THREADS`
/// overrides.
fn runtime_threads(backup: bool) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let default = if backup { cores.div_ceil(2) } else { cores };
    std::env::var("PGKEEP_RUNTIME_THREADS").ok().and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0).unwrap_or(default)
}

/// glibc's malloc raises its mmap threshold each time a large block is
/// freed, after which the multi-megabyte buffers of every chunk and segment
/// come from the heap and fragment it: a long-running `stream` would keep
/// growing, and a point-in-time restore's replay batches peaked over 200
/// MiB. A fixed threshold keeps blocks from that size up in their own
/// mappings, returned to the system when freed: 1 MiB for most verbs.
/// Not for `backup`: there a fresh mapping per chunk buffer costs a page
/// fault and a zeroed page for every 4 KiB that passes through (14% of its
/// CPU), while the heap reuses the same few buffers (its peak stays near
/// 100 MiB with 2 jobs).
fn tune_allocator(threshold: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, threshold);
    }
}

/// The fixed threshold for verbs that load backups: their chunk buffers
/// (8 MiB) stay in the heap and are reused, as `backup`'s are (a mapping per
/// chunk was a fifth of a restore's own CPU, in page faults and zeroing),
/// while larger blocks (chunks of huge values) still get mappings of
/// their own, and the threshold no longer moves. Measured:
/// restore system CPU 3.6–4.6 s → 3.1–3.2 s on the 3 GiB benchmark, peak
/// 107 → 133–145 MiB; a 0.25 GiB transaction's replay peaks at 157 MiB
/// either way.
const LOAD_MMAP_THRESHOLD: i32 = 32 << 20;

/// Print panics as one line (no backtrace, no values from the stack) and
/// exit with code 1: a panic is a pgkeep bug, never a user error.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("pgkeep: internal error{at}: {}", msg.replace('\n', " "));
        std::process::exit(1);
    }));
}
