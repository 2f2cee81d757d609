//! Shared integration-test harness: throwaway PostgreSQL clusters, a Garage
//! S3 server, and a fault-injecting proxy. The test binary (`main.rs`) declares
//! it once; each test file takes it with `use crate::harness;`.

pub mod assert_error;
pub mod backup_check;
pub mod fake_s3;
pub mod fault_proxy;
pub mod garage;
pub mod pitr_db;
pub mod postgres;
mod shared_clusters;
pub mod storage_conformance;
pub mod streaming;
pub mod supabase;
pub mod versions;
