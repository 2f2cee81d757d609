//! The one public error type of pgkeep.
//!
//! An [`Error`] is a boxed inner struct: a [`ErrorKind`] that says what class of
//! failure happened (and so which exit code and whether a retry can help), a
//! one-line message that names the thing involved (host, bucket, object key,
//! backup id), an optional hint for the user, the SQLSTATE when a PostgreSQL
//! server answered with an error, and the source chain.
//!
//! Code that reacts to a server error decides on [`Error::sqlstate`], never
//! on the message: servers word their messages in their `lc_messages`
//! language.
//!
//! Messages are built by pgkeep itself, never from user secrets: callers pass
//! host names, keys and ids, never passwords or URLs with credentials.

use std::fmt;

/// What class of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad flags, environment or config file. Exit code 2.
    Config,
    /// The database could not be reached (DNS, refused, timeout).
    Connect,
    /// The database refused our credentials.
    Auth,
    /// TLS was required but failed or was refused.
    Tls,
    /// The database answered with an error (SQL, privileges, missing database).
    Database,
    /// A storage object or bucket does not exist.
    NotFound,
    /// The store refused access (credentials, permissions, read-only directory).
    AccessDenied,
    /// A storage operation failed in a way a retry may fix (5xx, throttling, timeouts, resets).
    StorageTransient,
    /// A storage operation failed for good.
    Storage,
    /// Stored data does not match its checksum, or cannot be parsed.
    Corrupt,
    /// A verification or health check found a problem. Exit code 3.
    CheckFailed,
    /// The repository is locked by another pgkeep process.
    Locked,
    /// The user declined an approval gate, or the process was interrupted.
    Aborted,
    /// A bug in pgkeep or an impossible state.
    Internal,
}

impl ErrorKind {
    /// The process exit code documented in the README.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Config => 2,
            ErrorKind::CheckFailed => 3,
            _ => 1,
        }
    }

    /// Whether repeating the same operation may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::StorageTransient | ErrorKind::Connect)
    }
}

struct Inner {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
    sqlstate: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// pgkeep's error: a kind, a one-line message naming the thing, a hint and a source.
pub struct Error {
    inner: Box<Inner>,
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message that names the thing involved.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { inner: Box::new(Inner { kind, message: message.into(), hint: None, sqlstate: None, source: None }) }
    }

    /// Shorthand for a configuration error (exit code 2).
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// Shorthand for an internal error.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    /// Shorthand for corrupt stored data.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Corrupt, message)
    }

    /// Attach a hint telling the user what to do.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.inner.hint = Some(hint.into());
        self
    }

    /// Attach the SQLSTATE of the server error behind this one (five
    /// characters, e.g. `55006`).
    pub fn with_sqlstate(mut self, code: impl Into<String>) -> Self {
        self.inner.sqlstate = Some(code.into());
        self
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Box::new(source));
        self
    }

    /// Prefix the message with more context ("while writing backup X: ...").
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.inner.message = format!("{context}: {}", self.inner.message);
        self
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The one-line message, without hint or source.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.inner.hint.as_deref()
    }

    /// The SQLSTATE of the server error behind this one: the code attached
    /// with [`with_sqlstate`](Self::with_sqlstate), else the first one in the
    /// source chain (a pgkeep [`Error`] or a `tokio_postgres::Error`). `None`
    /// when no server answered with an error (I/O, storage, pgkeep's own checks).
    pub fn sqlstate(&self) -> Option<&str> {
        if let Some(code) = &self.inner.sqlstate {
            return Some(code);
        }
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            if let Some(code) = e.downcast_ref::<Error>().and_then(|e| e.inner.sqlstate.as_deref()) {
                return Some(code);
            }
            if let Some(code) = e.downcast_ref::<tokio_postgres::Error>().and_then(|e| e.code()) {
                return Some(code.code());
            }
            next = e.source();
        }
        None
    }

    /// Whether a retry may help.
    pub fn is_retryable(&self) -> bool {
        self.inner.kind.is_retryable()
    }

    /// One line for the user: message, the innermost useful cause, and the hint.
    pub fn user_line(&self) -> String {
        let mut line = self.inner.message.clone();
        if let Some(src) = &self.inner.source {
            let cause = root_cause_text(src.as_ref());
            if !cause.is_empty() && !line.contains(&cause) {
                line.push_str(": ");
                line.push_str(&cause);
            }
        }
        if let Some(hint) = &self.inner.hint {
            line.push_str(" (hint: ");
            line.push_str(hint);
            line.push(')');
        }
        // One line, always.
        line.replace(['\n', '\r'], " ")
    }
}

/// The text of the deepest error in a chain that says something.
pub(crate) fn root_cause_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = err;
    let mut best = cur.to_string();
    while let Some(next) = cur.source() {
        let text = next.to_string();
        if !text.trim().is_empty() {
            best = text;
        }
        cur = next;
    }
    best.trim().to_string()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("hint", &self.inner.hint)
            .field("sqlstate", &self.inner.sqlstate)
            .field("source", &self.inner.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source.as_ref().map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_line_is_one_line_with_cause_and_hint() {
        let io = std::io::Error::other("disk\nfull");
        let e = Error::new(ErrorKind::Storage, "cannot write object backups/x").with_source(io).with_hint("free some space");
        let line = e.user_line();
        assert_eq!(line, "cannot write object backups/x: disk full (hint: free some space)");
        assert_eq!(e.kind().exit_code(), 1);
    }

    #[test]
    fn sqlstate_survives_context_hint_and_wrapping() {
        let e =
            Error::new(ErrorKind::Database, "cannot create database x").with_sqlstate("42P04").with_hint("pick another name").context("restore of backup b1");
        assert_eq!(e.sqlstate(), Some("42P04"));
        assert_eq!(e.kind(), ErrorKind::Database);
        assert_eq!(e.kind().exit_code(), 1);
        assert_eq!(e.message(), "restore of backup b1: cannot create database x");
        // A new error with this one as its source finds the code in the chain.
        let outer = Error::new(ErrorKind::Internal, "step failed").with_source(e);
        assert_eq!(outer.sqlstate(), Some("42P04"));
        // Its own code wins over the chain's.
        assert_eq!(outer.with_sqlstate("55006").sqlstate(), Some("55006"));
        // No server error, no code.
        let io = Error::new(ErrorKind::Storage, "x").with_source(std::io::Error::other("disk"));
        assert_eq!(io.sqlstate(), None);
        assert!(format!("{:?}", Error::internal("y").with_sqlstate("XX000")).contains("XX000"));
    }

    #[test]
    fn exit_codes_follow_readme() {
        assert_eq!(ErrorKind::Config.exit_code(), 2);
        assert_eq!(ErrorKind::CheckFailed.exit_code(), 3);
        assert_eq!(ErrorKind::Connect.exit_code(), 1);
        assert!(ErrorKind::StorageTransient.is_retryable());
        assert!(!ErrorKind::Corrupt.is_retryable());
    }
}
