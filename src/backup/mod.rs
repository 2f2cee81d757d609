//! The backup capability: the [`engine`] ([`run`]) and the pieces it calls
//! in order: the consistent [`snapshot`], the copy [`plan`] (tables split
//! into block ranges), the parallel COPY [`worker`]s, and [`schema`] capture;
//! [`summary`] says in words what a finished backup holds.

pub(crate) mod engine;
pub(crate) mod plan;
pub(crate) mod schema;
pub(crate) mod snapshot;
pub(crate) mod summary;
pub(crate) mod worker;

pub(crate) use engine::{BackupOptions, BackupReport, human_bytes, run};
