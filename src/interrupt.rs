//! SIGTERM and SIGINT during `backup` and `restore`: the CLI calls
//! [`install`] once; long steps race their work against [`wait`] (or wrap it
//! in [`guard`]), so an interrupted run stops where it is and goes through
//! its ordinary failure path — uploads aborted, the unfinished backup
//! removed, the temporary database dropped, repository locks released — and
//! ends with one error line. The exit code is 128 + the signal number (130
//! for SIGINT, 143 for SIGTERM), see [`exit_code`]. A second signal exits at
//! once without cleanup.
//!
//! Without [`install`] (library use, tests), [`wait`] never resolves.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};

/// The first signal received, 0 if none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
static CHANNEL: OnceLock<watch::Sender<i32>> = OnceLock::new();

/// Listen for SIGTERM and SIGINT from now on. Call from inside the runtime.
pub fn install() {
    let (tx, _) = watch::channel(0);
    if CHANNEL.set(tx).is_err() {
        return;
    }
    tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::warn!("cannot listen for SIGTERM/SIGINT; an interrupted run is not cleaned up");
            return;
        };
        loop {
            let signo = tokio::select! {
                _ = term.recv() => libc::SIGTERM,
                _ = int.recv() => libc::SIGINT,
            };
            if RECEIVED.compare_exchange(0, signo, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                eprintln!("pgkeep: {} again: exiting without cleanup", name(signo));
                std::process::exit(128 + signo);
            }
            if let Some(tx) = CHANNEL.get() {
                let _ = tx.send(signo);
            }
        }
    });
}

/// The signal received so far, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit code after an interruption: 128 + signal number.
pub fn exit_code() -> Option<u8> {
    received().map(|s| (128 + s) as u8)
}

fn name(signo: i32) -> &'static str {
    match signo {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// The error an interrupted step returns: kind [`ErrorKind::Aborted`].
pub fn error(signo: i32) -> Error {
    Error::new(ErrorKind::Aborted, format!("interrupted by {}", name(signo)))
}

/// Resolves with the signal number once SIGTERM or SIGINT arrives (at once
/// if one already has); never without [`install`].
pub async fn wait() -> i32 {
    let Some(tx) = CHANNEL.get() else { return std::future::pending().await };
    let mut rx = tx.subscribe();
    loop {
        if let Some(s) = received() {
            return s;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Run `work` unless a signal arrives first; then `work` is dropped (its
/// connections closed, its uploads aborted) and the interruption error is
/// returned for the caller's cleanup.
pub async fn guard<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        r = work => r,
        s = wait() => Err(error(s)),
    }
}
