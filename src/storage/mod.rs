//! Registry storage: blobs, upload sessions, manifests, tags and referrers over
//! a [`Driver`]. The tree it keeps is drawn in [`paths`].
//!
//! Invariants (see ARCHITECTURE.md):
//! - a blob becomes visible only by a rename after its digest was verified;
//! - a repository reads only the blobs linked to it;
//! - blobs are streamed both ways, never held in memory;
//! - upload sessions live in storage, so they survive a restart.

pub mod driver;
pub mod driver_suite;
pub mod file_range;
pub mod fs;
mod manifests;
pub mod paths;
mod uploads;

use std::sync::Arc;

use bytes::Bytes;

pub use driver::{Appender, ByteStream, Content, Driver, DriverError};
pub use file_range::FileRange;
pub use manifests::{ManifestPut, StoredManifest};
pub use paths::UploadId;
pub use uploads::sweep::{STALE_TEMPORARY, UploadSweep};
pub use uploads::{Chunk, UploadLimits};

use crate::reference::{Digest, RepoName};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob unknown: {0}")]
    BlobUnknown(Digest),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("repository unknown: {0}")]
    NameUnknown(RepoName),
    #[error("upload unknown")]
    UploadUnknown,
    #[error("upload data shorter than its record (moved into place or lost)")]
    UploadDataMissing,
    #[error("the account holds {limit} upload sessions already")]
    TooManyUploads { limit: usize },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("chunk does not start at upload offset {current}")]
    RangeMismatch { current: u64 },
    #[error("declared {declared} bytes, received {received}")]
    SizeMismatch { declared: u64, received: u64 },
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest larger than {limit} bytes")]
    ManifestTooLarge { limit: usize },
    #[error("manifest references unknown blob or manifest {0}")]
    ManifestBlobUnknown(Digest),
    #[error("request body: {0}")]
    BodyRead(std::io::Error),
    #[error(transparent)]
    Driver(#[from] DriverError),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Maps a driver's `NotFound` to the registry error that absence means here.
trait OrUnknown<T> {
    fn or_unknown(self, unknown: impl FnOnce() -> StorageError) -> Result<T>;
}

impl<T> OrUnknown<T> for std::result::Result<T, DriverError> {
    fn or_unknown(self, unknown: impl FnOnce() -> StorageError) -> Result<T> {
        match self {
            Err(DriverError::NotFound(_)) => Err(unknown()),
            other => Ok(other?),
        }
    }
}

pub struct Storage {
    driver: Arc<dyn Driver>,
    upload_locks: uploads::Locks,
    upload_limits: UploadLimits,
    upload_owners: uploads::Owners,
    catalog: CatalogCache,
}

/// The repository list, kept briefly: a client paging through a large
/// catalog would otherwise make the server walk every repository once per
/// page. Changes made through this process drop it at once; changes made by
/// another replica over the same storage show within [`CATALOG_TTL`].
#[derive(Default)]
struct CatalogCache {
    /// Bumped by every change that can add or remove a repository.
    generation: std::sync::atomic::AtomicU64,
    entry: std::sync::Mutex<Option<CatalogEntry>>,
}

/// A walk's result: the generation it saw, when, and the names.
type CatalogEntry = (u64, std::time::Instant, Arc<Vec<String>>);

const CATALOG_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl Storage {
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        Self {
            driver,
            upload_locks: uploads::Locks::default(),
            upload_limits: UploadLimits::default(),
            upload_owners: uploads::Owners::default(),
            catalog: CatalogCache::default(),
        }
    }

    pub fn with_upload_limits(mut self, limits: UploadLimits) -> Self {
        self.upload_limits = limits;
        self
    }

    /// Something that may add or remove a repository happened.
    fn catalog_changed(&self) {
        self.catalog
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    /// Size of a blob linked to `repo`; `BlobUnknown` when it is not linked
    /// there (whether or not another repository has it).
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let unknown = || StorageError::BlobUnknown(digest.clone());
        self.driver
            .stat(&paths::layer_link(repo, digest))
            .await
            .or_unknown(unknown)?;
        self.driver
            .stat(&paths::blob_data(digest))
            .await
            .or_unknown(unknown)
    }

    /// `len` bytes (or the rest) of a blob from `offset`, as a stream or an
    /// open file range. The caller checked the blob with
    /// [`Storage::blob_size`] and the range against it.
    pub async fn blob_read(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Content> {
        self.driver
            .read_content(&paths::blob_data(digest), offset, len)
            .await
            .or_unknown(|| StorageError::BlobUnknown(digest.clone()))
    }

    /// Unlinks a blob from a repository. The content stays for other
    /// repositories until garbage collection.
    pub async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let deleted = self
            .driver
            .delete(&paths::layer_link(repo, digest))
            .await
            .or_unknown(|| StorageError::BlobUnknown(digest.clone()));
        self.catalog_changed();
        deleted
    }

    /// Links a blob of `from` into `to`. `false` when `from` does not have it.
    pub async fn blob_mount(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> Result<bool> {
        match self.blob_size(from, digest).await {
            Ok(_) => {
                self.link_blob(to, digest).await?;
                Ok(true)
            }
            Err(StorageError::BlobUnknown(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.driver
            .put(&paths::layer_link(repo, digest), Bytes::new())
            .await?;
        self.catalog_changed();
        Ok(())
    }

    /// Whether anything was ever stored for `repo`.
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        match self.driver.list(&paths::repository(repo)).await {
            Ok(children) => Ok(children.iter().any(|c| c.starts_with('_'))),
            Err(DriverError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The refresh-token revocation record, if any was ever written.
    pub async fn revocations(&self) -> Result<Option<Bytes>> {
        match self.driver.get(&paths::revocations()).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(DriverError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put_revocations(&self, record: Bytes) -> Result<()> {
        Ok(self.driver.put(&paths::revocations(), record).await?)
    }

    /// Every repository, sorted. A directory is a repository when it holds
    /// one of the `_`-prefixed metadata directories; names nest (`a` and
    /// `a/b` can both be repositories).
    pub async fn catalog(&self) -> Result<Arc<Vec<String>>> {
        use std::sync::atomic::Ordering;
        let generation = self.catalog.generation.load(Ordering::SeqCst);
        if let Some((at, when, list)) = self
            .catalog
            .entry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && *at == generation
            && when.elapsed() < CATALOG_TTL
        {
            return Ok(Arc::clone(list));
        }
        let list = Arc::new(self.walk_repositories().await?);
        // A change during the walk may be missing from it: keep the list
        // only if nothing changed meanwhile.
        if self.catalog.generation.load(Ordering::SeqCst) == generation {
            *self.catalog.entry.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((generation, std::time::Instant::now(), Arc::clone(&list)));
        }
        Ok(list)
    }

    async fn walk_repositories(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let mut pending: Vec<Option<RepoName>> = vec![None];
        while let Some(name) = pending.pop() {
            let key = match &name {
                None => paths::REPOSITORIES.to_owned(),
                Some(name) => paths::repository(name),
            };
            let children = match self.driver.list(&key).await {
                Ok(c) => c,
                Err(DriverError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(name) = &name
                && children.iter().any(|c| c.starts_with('_'))
            {
                found.push(name.to_string());
            }
            for child in children.iter().filter(|c| !c.starts_with('_')) {
                let full = match &name {
                    None => child.clone(),
                    Some(name) => format!("{name}/{child}"),
                };
                // Anything that is not a valid name was not made by us: skip it.
                if let Ok(repo) = RepoName::parse(&full) {
                    pending.push(Some(repo));
                }
            }
        }
        found.sort();
        Ok(found)
    }
}
