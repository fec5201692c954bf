//! Registry storage: blobs, upload sessions, manifests, tags and referrers over
//! a [`Driver`].
//!
//! Invariants (see ARCHITECTURE.md):
//! - a blob becomes visible only by a rename after its digest was verified;
//! - a repository reads only the blobs linked to it;
//! - blobs are streamed both ways, never held in memory;
//! - upload sessions live in storage, so they survive a restart.

pub mod driver;
pub mod driver_suite;
pub mod fs;
pub mod paths;

use std::sync::Arc;

use bytes::Bytes;

pub use driver::{Appender, ByteStream, Driver, DriverError};
pub use paths::UploadId;

use crate::reference::{Digest, Reference, RepoName};

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

pub struct Storage {
    driver: Arc<dyn Driver>,
}

impl Storage {
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        Self { driver }
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    pub async fn blob_size(&self, _repo: &RepoName, _digest: &Digest) -> Result<u64> {
        todo!()
    }

    pub async fn manifest_delete(&self, _repo: &RepoName, _reference: &Reference) -> Result<()> {
        todo!()
    }

    pub async fn put_placeholder(&self, _b: Bytes) {}
}
