//! Registry storage: blobs, upload sessions, manifests, tags and referrers over
//! a [`Driver`]. The tree it keeps is drawn in [`paths`].
//!
//! Invariants (see ARCHITECTURE.md):
//! - a blob becomes visible only by a rename after its digest was verified;
//! - a repository reads only the blobs linked to it;
//! - blobs are streamed both ways, never held in memory;
//! - upload sessions live in storage, so they survive a restart.

mod buffer;
mod cache;
pub mod driver;
pub mod driver_suite;
pub mod file_range;
pub mod fs;
pub mod fsck;
pub mod gc;
mod index;
mod inventory;
mod manifests;
pub mod metered;
mod migration;
pub mod open;
pub mod paths;
pub mod s3;
mod uploads;
mod v1;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

pub use driver::{
    Assembler, Assembly, ByteStream, Driver, DriverError, FileRanges, Meta, PlainGet, PlainGets,
    Redirects, RelayPlan,
};
pub use file_range::FileRange;
pub use index::Page;
pub use manifests::{ManifestPut, StoredManifest};
pub use migration::MigratedLayer;
pub use paths::UploadId;
pub use uploads::sweep::{STALE_TEMPORARY, UploadSweep};
pub use uploads::{Chunk, HASH_BACKLOG, UploadLimits};

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
    #[error("the uploads' memory budget is taken")]
    UploadMemoryFull,
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
    /// The uploads' memory budget, in shares of what one upload holds
    /// (see [`budget`]).
    upload_memory: Arc<tokio::sync::Semaphore>,
    upload_owners: uploads::Owners,
    /// Every repository, read once and kept up to date (see [`index`]).
    catalog: index::Index,
    /// The tags of the repositories listed most recently.
    tags: TagIndexes,
    /// Directory reads made to answer listings, for tests and diagnostics.
    listing_reads: std::sync::atomic::AtomicU64,
    /// How old the catalog and tag indexes may get before a listing reads
    /// storage again: how long another replica's change may go unseen in
    /// listings (this process' own changes show at once).
    listing_staleness: std::time::Duration,
    /// Links and manifests read or written lately (see [`cache`]).
    cache: cache::Cache,
}

/// How many repositories' tag indexes are kept. A listed repository's tags
/// cost a few dozen bytes each; a repository listed again after its index
/// was dropped is read again.
const TAG_INDEXES: usize = 64;

/// The metadata cache's bound without a configuration (`storage.metadata_cache_mib`).
const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Tag indexes by repository, with when each was last listed.
#[derive(Default)]
struct TagIndexes(std::sync::Mutex<HashMap<RepoName, (Arc<index::Index>, std::time::Instant)>>);

impl TagIndexes {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RepoName, (Arc<index::Index>, std::time::Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of `repo`, made (empty, not yet read) if there is none.
    fn listed(&self, repo: &RepoName) -> Arc<index::Index> {
        let mut indexes = self.lock();
        let now = std::time::Instant::now();
        if let Some((index, used)) = indexes.get_mut(repo) {
            *used = now;
            return Arc::clone(index);
        }
        if indexes.len() >= TAG_INDEXES
            && let Some(oldest) = indexes
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(name, _)| name.clone())
        {
            indexes.remove(&oldest);
        }
        let index = Arc::new(index::Index::default());
        indexes.insert(repo.clone(), (Arc::clone(&index), now));
        index
    }

    /// Drops the index of a repository that does not exist, so that listing
    /// unknown names does not push out the indexes of real ones.
    fn forget(&self, repo: &RepoName) {
        self.lock().remove(repo);
    }

    /// The index of `repo` if one is kept: changes to other repositories'
    /// tags need no bookkeeping.
    fn kept(&self, repo: &RepoName) -> Option<Arc<index::Index>> {
        self.lock().get(repo).map(|(index, _)| Arc::clone(index))
    }
}

/// A blob's bytes as storage hands them out for reading.
pub enum Content {
    Stream(ByteStream),
    /// A range of a local file (a driver with [`FileRanges`]), which the
    /// server may send to a plain TCP socket with `sendfile(2)` instead of
    /// copying it through user space.
    File(FileRange),
}

impl Content {
    pub fn into_stream(self) -> ByteStream {
        match self {
            Content::Stream(stream) => stream,
            Content::File(range) => range.into_stream(),
        }
    }
}

/// A blob a repository may read (from [`Storage::blob_open`]).
pub struct LinkedBlob<'a> {
    storage: &'a Storage,
    digest: Digest,
    pub size: u64,
}

impl LinkedBlob<'_> {
    /// An address of the store's own that serves the blob, when the driver
    /// redirects reads ([`Redirects`]); `None` when it is read through
    /// [`LinkedBlob::read`].
    pub async fn redirect(&self) -> Result<Option<String>> {
        let Some(redirects) = self.storage.driver.redirects() else {
            return Ok(None);
        };
        let key = paths::blob_data(&self.digest);
        Ok(Some(redirects.presigned_get(&key).await?))
    }

    /// `len` bytes (or the rest) from `offset`, as a stream or an open file
    /// range; the caller checked the range against [`LinkedBlob::size`].
    pub async fn read(&self, offset: u64, len: Option<u64>) -> Result<Content> {
        let key = paths::blob_data(&self.digest);
        let driver = &self.storage.driver;
        let content = match driver.file_ranges() {
            Some(files) => files.file_range(&key, offset, len).await.map(Content::File),
            None => driver.read(&key, offset, len).await.map(Content::Stream),
        };
        content.or_unknown(|| StorageError::BlobUnknown(self.digest.clone()))
    }

    /// `len` bytes from `offset` as a read the server may send from the
    /// store's own answers ([`PlainGets`]), when the driver can sign them;
    /// otherwise (or should the store decline) [`LinkedBlob::read`].
    pub fn relayed(&self, offset: u64, len: u64) -> Option<RelayedRead> {
        let gets = self.storage.driver.plain_gets()?;
        Some(RelayedRead {
            gets,
            key: paths::blob_data(&self.digest),
            offset,
            len,
        })
    }
}

/// The bytes `[offset, offset + len)` of the object at `key`, to be fetched
/// with requests `gets` signs (see [`LinkedBlob::relayed`]).
pub struct RelayedRead {
    pub gets: Arc<dyn PlainGets>,
    pub key: String,
    pub offset: u64,
    pub len: u64,
}

/// The shares of uploads' memory `limits` allows, at least one: an upload
/// receiving a body holds its driver's write buffers and its bytes waiting
/// to be hashed.
fn budget(driver: &dyn Driver, limits: &UploadLimits) -> Arc<tokio::sync::Semaphore> {
    let share = driver.assembly_memory() + uploads::HASH_BACKLOG;
    let shares = (limits.memory / share).max(1);
    Arc::new(tokio::sync::Semaphore::new(shares))
}

impl Storage {
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        Self {
            upload_memory: budget(driver.as_ref(), &UploadLimits::default()),
            driver,
            upload_locks: uploads::Locks::default(),
            upload_limits: UploadLimits::default(),
            upload_owners: uploads::Owners::default(),
            catalog: index::Index::default(),
            tags: TagIndexes::default(),
            listing_reads: Default::default(),
            listing_staleness: index::REFRESH,
            cache: cache::Cache::new(index::REFRESH, DEFAULT_CACHE_BYTES),
        }
    }

    /// How long another replica's changes may go unseen here (in listings,
    /// and in the links and manifests this replica cached), and how many
    /// bytes that cache holds at most.
    pub fn with_cache(mut self, staleness: std::time::Duration, max_bytes: usize) -> Self {
        self.listing_staleness = staleness;
        self.cache = cache::Cache::new(staleness, max_bytes);
        self
    }

    /// A small object, through the metadata cache.
    async fn cached_get(&self, key: &str) -> std::result::Result<Bytes, DriverError> {
        if let Some(bytes) = self.cache.get(key) {
            return Ok(bytes);
        }
        match self.driver.get(key).await {
            Ok(bytes) => {
                self.cache.set(key, bytes.clone());
                Ok(bytes)
            }
            // Absence is not kept: another replica's upload or push may
            // make it present any moment, and the next step of a client's
            // push (a manifest naming the blob) may come here.
            Err(e) => Err(e),
        }
    }

    /// An object's size, through the metadata cache (for content-addressed
    /// objects, whose size never changes while they exist).
    async fn cached_size(&self, key: &str) -> std::result::Result<u64, DriverError> {
        let entry = format!("{key}#size");
        if let Some(bytes) = self.cache.get(&entry)
            && let Ok(size) = <[u8; 8]>::try_from(bytes.as_ref())
        {
            return Ok(u64::from_le_bytes(size));
        }
        let size = self.driver.stat(key).await?.size;
        let bytes = Bytes::copy_from_slice(&size.to_le_bytes());
        self.cache.set(&entry, bytes);
        Ok(size)
    }

    /// Writes a small object and what this replica knows of it.
    async fn cached_put(&self, key: &str, content: Bytes) -> std::result::Result<(), DriverError> {
        let written = self.driver.put(key, content.clone()).await;
        match &written {
            Ok(()) => self.cache.set(key, content),
            // Whether it landed is unknown: ask storage next time.
            Err(_) => self.cache.forget(key),
        }
        written
    }

    /// Deletes a small object and what this replica knows of it.
    async fn cached_delete(&self, key: &str) -> std::result::Result<(), DriverError> {
        let deleted = self.driver.delete(key).await;
        self.cache.forget(key);
        deleted
    }

    /// Tells `observer` of every operation on the store (the storage metrics).
    pub fn metered(mut self, observer: Arc<dyn metered::Observer>) -> Self {
        self.driver = Arc::new(metered::Metered::new(self.driver, observer));
        self
    }

    pub fn with_upload_limits(mut self, limits: UploadLimits) -> Self {
        self.upload_limits = limits;
        self.upload_memory = budget(self.driver.as_ref(), &limits);
        self
    }

    /// How many directories were read to answer catalog and tag listings
    /// since the start: what a page costs in storage reads.
    pub fn listing_reads(&self) -> u64 {
        self.listing_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_listing_read(&self) {
        self.listing_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    /// Size of a blob linked to `repo`; `BlobUnknown` when it is not linked
    /// there (whether or not another repository has it).
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let unknown = || StorageError::BlobUnknown(digest.clone());
        self.cached_get(&paths::layer_link(repo, digest))
            .await
            .or_unknown(unknown)?;
        self.cached_size(&paths::blob_data(digest))
            .await
            .or_unknown(unknown)
    }

    /// A blob `repo` may read: linked there, with its size. Its bytes are
    /// read through the handle only, so no read can skip the link check.
    pub async fn blob_open(&self, repo: &RepoName, digest: &Digest) -> Result<LinkedBlob<'_>> {
        let size = self.blob_size(repo, digest).await?;
        Ok(LinkedBlob {
            storage: self,
            digest: digest.clone(),
            size,
        })
    }

    /// Unlinks a blob from a repository. The content stays for other
    /// repositories until garbage collection.
    pub async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let deleted = self
            .cached_delete(&paths::layer_link(repo, digest))
            .await
            .or_unknown(|| StorageError::BlobUnknown(digest.clone()));
        // Unlinking the last blob may have removed the repository.
        self.catalog_recheck(repo).await;
        deleted
    }

    /// Links a blob of `from` into `to`: its size, or `None` when `from`
    /// does not have it.
    pub async fn blob_mount(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        match self.blob_size(from, digest).await {
            Ok(size) => {
                self.link_blob(to, digest).await?;
                Ok(Some(size))
            }
            Err(StorageError::BlobUnknown(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.cached_put(&paths::layer_link(repo, digest), Bytes::new())
            .await?;
        self.catalog.insert(repo.as_str());
        Ok(())
    }

    /// A change that may have removed `repo` happened. When that cannot be
    /// checked, the catalog is read again at the next listing.
    async fn catalog_recheck(&self, repo: &RepoName) {
        let checked = self
            .catalog
            .recheck(repo.as_str(), self.repository_exists(repo))
            .await;
        if let Err(e) = checked {
            tracing::warn!(repository = %repo, error = %e, "catalog entry not re-checked");
            self.catalog.invalidate();
        }
    }

    /// Whether anything was ever stored for `repo`.
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        match self.driver.list(&paths::repository(repo)).await {
            Ok(children) => Ok(children.iter().any(|c| c.starts_with('_'))),
            Err(DriverError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the store answers a request (any answer, "not found"
    /// included) within `timeout`: what a readiness probe asks of it.
    pub async fn answers(&self, timeout: std::time::Duration) -> bool {
        let key = paths::revocations();
        let asked = self.driver.stat(&key);
        matches!(
            tokio::time::timeout(timeout, asked).await,
            Ok(Ok(_) | Err(DriverError::NotFound(_)))
        )
    }

    /// The refresh-token revocation record, if any was ever written.
    pub async fn revocations(&self) -> Result<Option<Bytes>> {
        match self.driver.get(&paths::revocations()).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(DriverError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Rewrites the revocation record with what `change` makes of the
    /// current one (`None`: there is none yet), by read-then-swap, again
    /// when another writer (another replica, another `token revoke`) came
    /// in between, so that no revocation is lost. Atomic where the driver's
    /// conditional writes are; elsewhere the last writer wins.
    pub async fn update_revocations<E: From<StorageError>>(
        &self,
        change: impl Fn(Option<&[u8]>) -> std::result::Result<Bytes, E>,
    ) -> std::result::Result<(), E> {
        use driver::Precondition;
        let key = paths::revocations();
        loop {
            let (record, condition) = match self.driver.get_versioned(&key).await {
                Ok((bytes, version)) => (Some(bytes), Precondition::Matches(version)),
                Err(DriverError::NotFound(_)) => (None, Precondition::Absent),
                Err(e) => return Err(StorageError::from(e).into()),
            };
            let updated = change(record.as_deref())?;
            match self.driver.put_if(&key, updated, condition).await {
                Ok(()) => return Ok(()),
                Err(DriverError::PreconditionFailed(_)) => continue,
                Err(e) => return Err(StorageError::from(e).into()),
            }
        }
    }

    /// The upload sessions this replica knows of (started here, or found
    /// by its sweep), for the metrics.
    pub fn upload_sessions(&self) -> usize {
        self.upload_owners.total()
    }

    /// A personal access token's record, if there is one.
    pub async fn access_token(&self, id: &paths::AccessTokenId) -> Result<Option<Bytes>> {
        match self.driver.get(&paths::access_token_record(id)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(DriverError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a new token's record; ids are random, so one that exists
    /// already is a fault, refused where the driver can tell.
    pub async fn create_access_token(
        &self,
        id: &paths::AccessTokenId,
        record: Bytes,
    ) -> Result<()> {
        let key = paths::access_token_record(id);
        let condition = driver::Precondition::Absent;
        Ok(self.driver.put_if(&key, record, condition).await?)
    }

    /// Deletes a token: its record first, so that it stops working at once,
    /// then when it was last used.
    pub async fn delete_access_token(&self, id: &paths::AccessTokenId) -> Result<()> {
        for key in [paths::access_token_record(id), paths::access_token_used(id)] {
            match self.driver.delete(&key).await {
                Ok(()) | Err(DriverError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The ids of every token kept.
    pub async fn access_token_ids(&self) -> Result<Vec<paths::AccessTokenId>> {
        match self.driver.list(&paths::access_tokens()).await {
            Ok(names) => Ok(names
                .iter()
                .filter_map(|n| paths::AccessTokenId::parse(n))
                .collect()),
            Err(DriverError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// When a token was last used (a separate object, so that recording a
    /// use never rewrites, or brings back, the record a revocation deleted).
    pub async fn access_token_used(&self, id: &paths::AccessTokenId) -> Result<Option<u64>> {
        match self.driver.get(&paths::access_token_used(id)).await {
            Ok(bytes) => Ok(std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.trim().parse().ok())),
            Err(DriverError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn record_access_token_use(&self, id: &paths::AccessTokenId, at: u64) -> Result<()> {
        let key = paths::access_token_used(id);
        Ok(self.driver.put(&key, Bytes::from(at.to_string())).await?)
    }

    /// Up to `n` repositories after `last` that `visible` admits, in the
    /// spec's list order. A directory is a repository when it holds one of
    /// the `_`-prefixed metadata directories; names nest (`a` and `a/b` can
    /// both be repositories).
    pub async fn catalog_page(
        &self,
        last: Option<&str>,
        n: usize,
        visible: impl Fn(&str) -> bool,
    ) -> Result<Page> {
        self.catalog
            .refresh(self.walk_repositories(), self.listing_staleness)
            .await?;
        Ok(self.catalog.page(last, n, visible))
    }

    async fn walk_repositories(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let mut pending: Vec<Option<RepoName>> = vec![None];
        while let Some(name) = pending.pop() {
            let key = match &name {
                None => paths::REPOSITORIES.to_owned(),
                Some(name) => paths::repository(name),
            };
            self.count_listing_read();
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
        Ok(found)
    }
}
