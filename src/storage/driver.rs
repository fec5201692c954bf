//! The storage driver: the small set of object operations every backend provides.
//!
//! A driver knows nothing of registries: it stores byte objects under
//! `/`-separated keys built by [`super::paths`]. Everything registry-shaped
//! (digests, links, upload sessions) lives above it in [`super::Storage`], so a
//! new backend (S3 next) implements only this trait and must pass the shared
//! suite in [`super::driver_suite`].
//!
//! Keys are relative, `/`-separated, never empty, never contain `.`/`..`
//! components or a leading `/`; drivers may still refuse anything else as
//! defence in depth.

use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::file_range::FileRange;

/// A stream of bytes read from, or about to be written to, storage.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// What [`Driver::stat`] tells of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// In bytes.
    pub size: u64,
    /// When its content was last written.
    pub modified: std::time::SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Nothing is stored under that key (or prefix).
    #[error("not found: {0}")]
    NotFound(String),
    /// A key the driver refuses to touch (it would escape its root).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl DriverError {
    /// Whether the backend refused a write for want of space (a full disk,
    /// a quota): the client can do nothing about it but wait.
    pub fn is_storage_full(&self) -> bool {
        let DriverError::Io(e) = self else {
            return false;
        };
        matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    }
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Reads a small object whole (links, session metadata, manifests).
    async fn get(&self, key: &str) -> Result<Bytes>;

    /// Writes a small object whole, atomically: a concurrent or later reader
    /// sees the previous content or the new one, never a mix or a prefix.
    async fn put(&self, key: &str, content: Bytes) -> Result<()>;

    /// Streams an object from `offset`, `len` bytes or to the end when `None`.
    /// The caller has checked the range against [`Driver::stat`].
    async fn read(&self, key: &str, offset: u64, len: Option<u64>) -> Result<ByteStream>;

    /// Its [`FileRanges`], when the driver keeps objects in local files:
    /// a capability some drivers have, not part of the contract.
    fn file_ranges(&self) -> Option<&dyn FileRanges> {
        None
    }

    /// An object's size and when it was last written (what garbage
    /// collection's grace period is measured against).
    async fn stat(&self, key: &str) -> Result<Meta>;

    /// Opens an appender that continues an object from byte `at`, creating it
    /// empty when absent (`at` must then be 0). Bytes stored past `at` (left by
    /// a crash before the caller recorded them) are discarded. Written bytes
    /// count only after [`Appender::commit`]; [`Appender::abort`] leaves the
    /// object `at` bytes long. The caller records committed sizes itself and
    /// serializes appenders on one key. `InvalidKey` when `at` is past the end.
    async fn append(&self, key: &str, at: u64) -> Result<Box<dyn Appender>>;

    /// Removes the driver's own leftovers of writes a crash interrupted
    /// (temporary objects of atomic puts) that are older than `older_than`,
    /// and returns how many went. Never touches an object stored under a
    /// key. A driver whose writes leave nothing behind keeps the default.
    async fn sweep_temporaries(&self, older_than: std::time::Duration) -> Result<usize> {
        let _ = older_than;
        Ok(0)
    }

    /// Names (not full keys) of the direct children under a prefix, sorted,
    /// objects and sub-prefixes alike; a sub-prefix only while it holds an
    /// object (a driver's own temporary files are never objects). `NotFound`
    /// when the prefix holds nothing.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Moves an object to `to`, atomically replacing whatever was there.
    async fn rename(&self, from: &str, to: &str) -> Result<()>;

    /// Deletes an object, or everything under a prefix. `NotFound` when
    /// nothing was there.
    async fn delete(&self, key: &str) -> Result<()>;
}

#[async_trait]
pub trait Appender: Send {
    /// Size of the object including the bytes written through this appender so far.
    fn size(&self) -> u64;

    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Makes the written bytes durable and part of the object; returns its
    /// size. On failure the object is left as [`Appender::abort`] leaves it:
    /// the bytes a failed write took (a full disk) are given back.
    async fn commit(self: Box<Self>) -> Result<u64>;

    /// Forgets the written bytes: the object is as it was before the appender opened.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// What a driver that keeps objects in local files can do beside the
/// contract: hand out an object's open file range, which the server may send
/// to a plain TCP socket with `sendfile(2)` instead of copying it through
/// user space.
#[async_trait]
pub trait FileRanges: Send + Sync {
    /// As [`Driver::read`], as an open file range bounded exactly as asked.
    async fn file_range(&self, key: &str, offset: u64, len: Option<u64>) -> Result<FileRange>;
}
