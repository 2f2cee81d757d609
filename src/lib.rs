//! pgkeep: a PostgreSQL backup and point-in-time-recovery engine.
//!
//! The library is headless: every command is a function here, and the
//! `pgkeep` binary only parses flags, loads [`config`], starts tracing and
//! maps [`error::Error`] kinds to exit codes.
//!
//! Data path (see `ARCHITECTURE.md`): [`pg`] streams tables with
//! `COPY ... TO STDOUT` under one exported snapshot, the pipeline cuts,
//! compresses and checksums chunks off the async runtime, and [`storage`]
//! writes them to every repository at once; [`repo`] owns the on-disk format.

pub mod config;
pub mod error;
pub mod pg;
pub mod repo;
pub mod storage;

pub use error::{Error, ErrorKind, Result};
