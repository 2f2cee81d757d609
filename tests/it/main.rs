//! pgkeep's integration tests, in one test binary so the harness compiles
//! and links once: `cargo test --test it`, or one file's tests with
//! `cargo test --test it <file>::` (e.g. `pg_matrix::`).
//!
//! Each module is one file of tests, most against real PostgreSQL clusters and a
//! real Garage server that [`harness`] starts. Tests of every module run in
//! parallel threads of this one process, so nothing here may change
//! process-wide state (environment, signal handlers, working directory):
//! environment goes to the children the tests spawn, per `Command`. A test
//! that re-runs this binary as a child names the child's test by its full
//! path (`stream::child_streamer`, `huge_values::rss_probe`); a child's
//! `ru_maxrss` counts this process's memory, so it is measured one process
//! further down (`huge_values`).
//! [`harness::postgres::PgCluster::shared`] is one cluster per file, as when
//! every file was its own binary, stopped once the run has moved past the
//! file; [`harness::garage::Garage::shared`] is one server for all, each test
//! using its own bucket.

mod harness;

mod architecture;
mod backup;
mod backup_deadlines;
mod backup_edges;
mod backup_rewrite;
mod backup_s3;
mod check;
mod cli;
mod console;
mod crypto;
mod drill;
mod expire;
mod expire_records;
mod fuzz_smoke;
mod huge_values;
mod key_rotate;
mod least_privilege;
mod legacy;
mod managed_roles;
mod notify;
mod pg_connect;
mod pg_matrix;
mod pg_versions;
mod pitr;
mod pitr_bigtxn;
mod pitr_crash;
mod pitr_images;
mod pitr_inexact;
mod pitr_latest;
mod pitr_random;
mod pitr_unarchived;
mod quickstart;
mod reliability;
mod replay_unique;
mod replication_conn;
mod replication_stream;
mod repo_lock;
mod restore;
mod s3_lock;
mod seams;
mod secrets;
mod storage_local;
mod storage_s3;
mod stream;
mod stream_cli;
mod stream_setup;
mod suite;
mod verify;
mod verify_chains;
mod verify_legacy;
