//! Repository metadata (`pgkeep.repo.json`, docs/FORMAT.md "Repository
//! metadata"): the format version and identity of a repository, written once
//! when the first backup goes into it, and checked by [`open`], the one
//! repository opener every command uses.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::{COPY_SUFFIX, REPO_META_KEY};
use super::manifest::RunInfo;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{PutOptions, Storage};

/// The repository format version this build reads and writes.
pub const REPO_FORMAT_VERSION: u32 = 1;

/// Contents of `pgkeep.repo.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoMeta {
    /// Always `pgkeep-repository`.
    pub format: String,
    /// Repository format version.
    pub version: u32,
    /// Random id, to tell repositories apart in logs.
    pub repository_id: String,
    /// When the repository was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: RunInfo,
}

fn parse(bytes: &[u8], what: &str) -> Result<RepoMeta> {
    let meta: RepoMeta = serde_json::from_slice(bytes).map_err(|e| Error::corrupt(format!("repository metadata {what} cannot be parsed: {e}")))?;
    if meta.format != "pgkeep-repository" {
        return Err(Error::corrupt(format!("{what} is not pgkeep repository metadata")));
    }
    if meta.version != REPO_FORMAT_VERSION {
        // A usage error (exit 2): the repository is fine, this pgkeep is too old for it.
        return Err(Error::config(format!("repository {what} has format version {}, this pgkeep supports {REPO_FORMAT_VERSION}", meta.version))
            .with_hint("use a pgkeep release that supports this repository format"));
    }
    Ok(meta)
}

/// How a command uses a repository it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read it, or add to one that exists (`stream`): the format version is
    /// checked when the metadata exists; an absent metadata file is fine
    /// and is not created.
    Read,
    /// Write backups (`backup`): the repository must be writable, and its
    /// metadata is checked, or created when the repository is new.
    Write,
}

/// Open the repository at `spec`: the one opener, which always checks the
/// format version (docs/FORMAT.md: an unknown version is refused, naming
/// the repository and the version).
pub async fn open(spec: &crate::config::RepoSpec, access: Access) -> Result<std::sync::Arc<dyn Storage>> {
    let storage = crate::storage::open(spec).await?;
    match access {
        Access::Read => {
            load(storage.as_ref()).await?;
        }
        Access::Write => {
            storage.check_writable().await?;
            ensure(storage.as_ref()).await?;
        }
    }
    Ok(storage)
}

/// Open every configured repository with [`open`]: for reading, local ones
/// first (the cheaper copy is read first); for writing, in configured order.
pub async fn open_all(specs: &[crate::config::RepoSpec], access: Access) -> Result<Vec<std::sync::Arc<dyn Storage>>> {
    let mut specs: Vec<&crate::config::RepoSpec> = specs.iter().collect();
    if access == Access::Read {
        specs.sort_by_key(|s| matches!(s, crate::config::RepoSpec::S3(_)));
    }
    if specs.is_empty() {
        return Err(crate::error::Error::config("no repository configured").with_hint("set BACKUP_DIR, S3_BUCKET or --repo"));
    }
    let mut out = Vec::new();
    for spec in specs {
        out.push(open(spec, access).await?);
    }
    Ok(out)
}

/// Write `body` at `key` in every repository, for state a caller writes
/// again later (a stream's kept state): a failure is a warning naming the
/// repository and `what`. Returns whether every write succeeded.
pub async fn put_all(repos: &[std::sync::Arc<dyn Storage>], key: &str, body: Bytes, what: &str) -> bool {
    let mut all = true;
    for repo in repos {
        if let Err(e) = repo.put(key, body.clone(), PutOptions::default()).await {
            tracing::warn!(key, repository = %repo.location(), error = %e.user_line(), "cannot write {what}");
            all = false;
        }
    }
    all
}

/// Read the repository metadata, falling back to its copy; `None` for an empty repository.
pub async fn load(storage: &dyn Storage) -> Result<Option<RepoMeta>> {
    let copy_key = format!("{REPO_META_KEY}{COPY_SUFFIX}");
    let mut first_err = None;
    for key in [REPO_META_KEY, copy_key.as_str()] {
        match storage.get(key, None).await {
            Ok(bytes) => match parse(&bytes, &format!("{key} in {}", storage.location())) {
                Ok(m) => return Ok(Some(m)),
                // An unknown version is not damage: the copy does not overrule it.
                Err(e) if e.kind() == ErrorKind::Config => return Err(e),
                Err(e) => first_err = first_err.or(Some(e)),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Load the metadata, creating it (and its copy) if the repository is new.
pub async fn ensure(storage: &dyn Storage) -> Result<RepoMeta> {
    if let Some(m) = load(storage).await? {
        return Ok(m);
    }
    let meta = RepoMeta {
        format: "pgkeep-repository".into(),
        version: REPO_FORMAT_VERSION,
        repository_id: hex::encode(rand::random::<[u8; 16]>()),
        created_at: Utc::now(),
        created_by: RunInfo::current(),
    };
    let bytes = Bytes::from(serde_json::to_vec_pretty(&meta).map_err(|e| Error::internal(e.to_string()))?);
    storage.put(REPO_META_KEY, bytes.clone(), PutOptions::default()).await?;
    storage.put(&format!("{REPO_META_KEY}{COPY_SUFFIX}"), bytes, PutOptions::default()).await?;
    tracing::info!(repo = %storage.location(), id = %meta.repository_id, "initialized repository");
    Ok(meta)
}
