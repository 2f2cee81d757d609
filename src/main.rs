//! The `pgkeep` command line: parses flags, loads configuration, starts
//! tracing and maps errors to exit codes. Everything else is in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    install_panic_hook();
    let args = cli::Cli::parse();
    if !args.is_backup() {
        tune_allocator();
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
/// MiB. A fixed threshold keeps blocks of 1 MiB and more in their own
/// mappings, returned to the system when freed. Not for `backup`: there a
/// fresh mapping per chunk buffer costs a page fault and a zeroed page for
/// every 4 KiB that passes through (14% of its CPU), while the heap reuses
/// the same few buffers (its peak stays near 100 MiB with 2 jobs).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

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
