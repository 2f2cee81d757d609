//! `pgkeep backup`: a full backup of one database into every configured
//! repository. The engine lives in [`crate::backup`] ([`crate::backup::engine`]);
//! this module is the command's entry point and keeps the paths
//! `pgkeep::commands::backup::{run, BackupOptions, …}` that callers use.

pub use crate::backup::engine::{BackupOptions, BackupReport, human_bytes, run};
pub(crate) use crate::backup::engine::{open_repositories, preflight, remove_prefix, store_schema};
