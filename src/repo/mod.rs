//! The repository format: layout of keys ([`layout`]), backup manifests
//! ([`manifest`]), repository metadata and the catalog of backups
//! ([`catalog`]), backup id claims ([`claim`]) and repository locks
//! ([`lock`]). `docs/FORMAT.md` specifies
//! what this module implements.

pub mod audit;
pub mod catalog;
pub mod claim;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod manifest_mac; // the MAC of encrypted manifests
pub mod meta;
pub mod rekey; // key rotation of backup manifests
