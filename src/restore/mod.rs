//! The pieces of a restore, called in order by `commands::restore::run`:
//! finding and reading the backup ([`source`]), approval gates
//! ([`approve`]), the temporary database, swap and rollback ([`target`]),
//! schema scripts ([`schema`]) as a role that may not be a superuser
//! ([`privileges`]), into a database the platform set up ([`platform`]),
//! the parallel data load ([`load`]), the
//! proof that the restored data equals the backup ([`verify`]), the shared
//! phases into an empty database ([`phases`]: schema, load, verify) and
//! what a restore reports ([`report`]).

pub mod approve;
pub mod compat; // which server versions a backup restores onto
pub mod image; // table images put in place during a point-in-time replay
pub mod legacy; // legacy `full_backup_*.dump.gz` archives of the old scripts
pub mod load;
pub mod phases; // load_and_verify: schema, data, post-data, verification
pub mod pipeline; // load, build and verify overlapped per table (COPY FREEZE)
pub mod plan; // base and change chain: `latest`, point in time, incremental ancestors
pub mod platform;
pub mod privileges;
pub mod report; // RestoreReport, PhaseTimes
pub mod schema;
pub mod session_settings; // pg_dump settings the target server does not know
pub mod source;
pub mod target;
pub mod verify;
