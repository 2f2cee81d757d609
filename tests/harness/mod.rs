//! Shared integration-test harness: throwaway PostgreSQL clusters, a Garage
//! S3 server, and a fault-injecting proxy. Each test binary includes it with
//! `mod harness;` and uses the parts it needs.
#![allow(dead_code)]

pub mod assert_error;
pub mod backup_check;
pub mod fake_s3;
pub mod fault_proxy;
pub mod garage;
pub mod pitr_db;
pub mod postgres;
pub mod storage_conformance;
pub mod streaming;
pub mod supabase;
pub mod versions;
