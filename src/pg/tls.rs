//! rustls-based TLS for tokio-postgres (and later the replication client):
//! sslmode prefer / require (encrypt, no verification), verify-ca (chain only),
//! verify-full (chain and host name).
//!
//! TODO(helper): implement.
