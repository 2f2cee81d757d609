//! Named failpoints at crash-sensitive moments, for tests: when the
//! environment variable `PGKEEP_FAILPOINT` names a point, the process aborts
//! there at once (like `kill -9`: no cleanup, no destructors). Costs one
//! cached lookup when unset. Testing only; never set it in production.

use std::sync::OnceLock;

/// Abort the process if `PGKEEP_FAILPOINT` equals `name`.
pub(crate) fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("PGKEEP_FAILPOINT").ok().filter(|v| !v.is_empty()));
    if armed.as_deref() == Some(name) {
        eprintln!("pgkeep: failpoint {name} hit, aborting");
        std::process::abort();
    }
}
