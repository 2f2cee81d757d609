//! The pieces of a full backup, called in order by `commands::backup::run`:
//! the consistent [`snapshot`], the copy [`plan`] (tables split into block
//! ranges), the parallel COPY [`worker`]s, and [`schema`] capture.

pub mod plan;
pub mod schema;
pub mod snapshot;
pub mod worker;
