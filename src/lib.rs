//! pgkeep: a PostgreSQL backup and point-in-time-recovery engine.
//!
//! The library is headless: every command is a function in [`commands`], and
//! the `pgkeep` binary only parses flags, loads [`config`], starts tracing and
//! maps [`error::Error`] kinds to exit codes.
//!
//! Data path (see `ARCHITECTURE.md`): [`pg`] streams tables with
//! `COPY ... TO STDOUT` under one exported snapshot (`backup`), the
//! [`pipeline`] cuts, compresses and checksums chunks off the async runtime,
//! and [`storage`] writes them to every repository at once; [`repo`] owns the
//! on-disk format.
#![warn(unreachable_pub)]

pub(crate) mod backup;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod error;
pub(crate) mod expire;
pub(crate) mod failpoint;
pub mod interrupt;
pub mod logging;
pub(crate) mod lsn;
pub mod notify;
pub mod pg;
pub mod pipeline;
pub mod progress;
pub mod replay;
pub mod replication;
pub mod repo;
pub mod restore;
pub mod secret;
pub mod storage;
pub mod stream;
pub mod verify;

pub use error::{Error, ErrorKind, Result};
