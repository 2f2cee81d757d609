//! [`Secret`]: a string that cannot be printed by accident.
//!
//! `Debug` and `Display` both show `********`; the value is reachable only
//! through [`Secret::expose`], which makes every use greppable.

use std::fmt;

/// A secret value (password, key, webhook URL, passphrase).
/// It may carry where it came from (`DB_PASSWORD`, `~/.pgpass`), for hints;
/// that label is never secret. Equality compares the value only.
#[derive(Clone)]
pub struct Secret(String, Option<String>);

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Secret {}

/// What secrets print as.
pub const REDACTED: &str = "********";

impl Secret {
    /// Wrap a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into(), None)
    }

    /// The same secret, labelled with where it came from (e.g. `PGPASSWORD`).
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.1 = Some(origin.into());
        self
    }

    /// Where the secret came from, when known.
    pub fn origin(&self) -> Option<&str> {
        self.1.as_deref()
    }

    /// The secret itself. Never log or format the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?} {:?}", Some(&s)), "******** ******** Some(********)");
        assert_eq!(s.expose(), "hunter2");
    }
}
