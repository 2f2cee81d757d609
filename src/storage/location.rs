//! [`RepoSpec`]: where a repository lives, a local directory or an S3
//! bucket and prefix. Built by `config`, opened by [`super::open`].

use std::path::PathBuf;

use super::s3::S3Settings;

/// A repository location.
// One value per configured repository: boxing the S3 settings would save nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum RepoSpec {
    /// A directory on the local filesystem.
    Local(PathBuf),
    /// A bucket and prefix on S3 or an S3-compatible store.
    S3(S3Settings),
}

impl RepoSpec {
    /// `/path` or `s3://bucket/prefix`, for messages.
    pub fn display(&self) -> String {
        match self {
            RepoSpec::Local(p) => p.display().to_string(),
            RepoSpec::S3(s) if s.prefix.is_empty() => format!("s3://{}", s.bucket),
            RepoSpec::S3(s) => format!("s3://{}/{}", s.bucket, s.prefix),
        }
    }
}
