//! The `pgkeep` command line: parses flags, loads configuration, starts
//! tracing and maps errors to exit codes. Everything else is in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    install_panic_hook();
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgkeep: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pgkeep: error: {}", e.user_line());
            ExitCode::from(e.kind().exit_code() as u8)
        }
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
