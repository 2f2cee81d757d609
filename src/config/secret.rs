//! [`Secret`]: a string that cannot be printed by accident.
//!
//! `Debug` and `Display` both show `********`; the value is reachable only
//! through [`Secret::expose`], which makes every use greppable.

use std::fmt;

/// A secret value (password, key, webhook URL, passphrase).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// What secrets print as.
pub const REDACTED: &str = "********";

impl Secret {
    /// Wrap a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
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
