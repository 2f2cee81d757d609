//! `pgkeep setup` as the command line runs it: install DDL capture for the
//! publication of `pgkeep stream` (`pgkeep_<database>` unless named), or,
//! with `--remove`, take it out. The capture itself is [`crate::stream::setup`].

use crate::config::Settings;
use crate::error::Result;
use crate::stream::{self, setup::SetupReport};

/// Install (idempotently) DDL capture; new tables go into `publication`
/// (default `pgkeep_<database>`).
pub async fn install(settings: &Settings, publication: Option<String>) -> Result<SetupReport> {
    let publication = publication.unwrap_or_else(|| stream::default_name(&settings.db.dbname));
    stream::setup::install(settings, &publication).await
}

/// Take DDL capture out. Returns what was removed.
pub async fn remove(settings: &Settings) -> Result<Vec<String>> {
    stream::setup::remove(settings).await
}
