//! One orchestrator per CLI verb (only `cli` calls these): each reads as commented steps over the capabilities below it.

pub mod backup;
pub mod check;
pub mod drill;
pub mod expire;
pub mod incremental;
pub mod key; // `key rotate`
pub mod list;
pub mod restore;
pub mod restore_legacy; // restore of legacy `full_backup_*.dump.gz` archives
pub mod setup; // DDL capture for `stream`
pub mod stream;
pub mod verify;
