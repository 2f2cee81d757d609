//! The repository format: layout of keys, backup manifests, repository
//! metadata and locks. See `docs/FORMAT.md`, which this module implements.
