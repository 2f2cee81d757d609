//! Assertions on pgkeep's user-facing errors for bad input: the attempt
//! fails fast, and the error is one line of the right kind that names what
//! it should and never a secret.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use pgkeep::config::DbSettings;
use pgkeep::{Error, ErrorKind};

/// Await `attempt`, expecting it to fail within `limit`; `what` names the
/// attempt if it succeeds instead ("connect to host:port/db").
pub async fn fails_within<T>(limit: Duration, what: impl Display, attempt: impl Future<Output = Result<T, Error>>) -> Error {
    let started = Instant::now();
    let result = attempt.await;
    let elapsed = started.elapsed();
    let err = match result {
        Ok(_) => panic!("{what} unexpectedly succeeded"),
        Err(e) => e,
    };
    assert!(elapsed < limit, "{what} took {elapsed:?}: {}", err.user_line());
    err
}

/// `err` is one line of `kind` that mentions every `must_contain` and none
/// of `must_not_contain`, in that line or in its `Debug` form.
#[track_caller]
pub fn assert_one_line_error(err: &Error, kind: ErrorKind, must_contain: &[&str], must_not_contain: &[&str]) {
    let line = err.user_line();
    eprintln!("{kind:?}: {line}");
    assert_eq!(err.kind(), kind, "wrong kind for: {line}");
    assert!(!line.contains('\n'), "not one line: {line:?}");
    for needle in must_contain {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    for secret in must_not_contain {
        assert!(!line.contains(secret), "secret leaked: {line}");
        assert!(!format!("{err:?}").contains(secret), "secret leaked in Debug: {err:?}");
    }
}

/// The error from a connection to `db` is one line of `kind`, mentions every
/// `needle`, and never the password.
#[track_caller]
pub fn assert_error(err: &Error, kind: ErrorKind, db: &DbSettings, needles: &[&str]) {
    let password = db.password.as_ref().map(|pw| pw.expose());
    assert_one_line_error(err, kind, needles, password.as_slice());
}

/// `err` has a hint that mentions `needle`.
#[track_caller]
pub fn assert_hint(err: &Error, needle: &str) {
    assert!(err.hint().unwrap_or_default().contains(needle), "{:?}", err.hint());
}
