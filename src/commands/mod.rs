//! One function per CLI verb. The CLI and the `stream` daemon both call these.

pub mod backup;
pub mod list;
pub mod restore;
