//! The backup capability: the [`engine`] ([`run`]) and the pieces it calls
//! in order: the consistent [`snapshot`], the copy [`plan`] (tables split
//! into block ranges), the parallel COPY [`worker`]s, and [`schema`] capture;
//! [`summary`] says in words what a finished backup holds.

pub mod engine;
pub mod plan;
pub mod schema;
pub mod snapshot;
pub mod summary;
pub mod worker;

pub use engine::{BackupOptions, BackupReport, human_bytes, run};
