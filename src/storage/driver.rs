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

/// An object's version, as [`Driver::get_versioned`] reads it: it changes
/// with every write (an ETag; on the filesystem, the file's identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

/// What [`Driver::put_if`] requires of the object before it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing is stored under the key (create-if-absent).
    Absent,
    /// The object is still at this version (compare-and-swap).
    Matches(Version),
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A conditional write's condition did not hold.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// Nothing is stored under that key (or prefix).
    #[error("not found: {0}")]
    NotFound(String),
    /// A key the driver refuses to touch (it would escape its root).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The store could not be reached or did not answer as it should
    /// (an object store down, refusing our credentials): nothing the
    /// client can fix, a matter for later or for the operator.
    #[error("store unavailable: {0}")]
    Unavailable(String),
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

/// Whether a driver may accept `key`: relative, `/`-separated segments
/// that are each one plain path component, none empty or starting with
/// `.` (a driver's own names), no backslash or NUL. Keys are built from
/// validated names, but the driver is the last line before its store, so
/// every driver checks again, and all accept exactly the same keys.
pub fn valid_key(key: &str) -> bool {
    use std::path::{Component, Path};
    !key.is_empty()
        && !key.contains('\0')
        && !key.contains('\\')
        && key.split('/').all(|part| {
            !part.is_empty() && !part.starts_with('.') && {
                let mut parts = Path::new(part).components();
                matches!(parts.next(), Some(Component::Normal(_))) && parts.next().is_none()
            }
        })
}

#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Reads a small object whole (links, session metadata, manifests).
    async fn get(&self, key: &str) -> Result<Bytes>;

    /// As [`Driver::get`], with the version [`Driver::put_if`] compares
    /// against.
    async fn get_versioned(&self, key: &str) -> Result<(Bytes, Version)>;

    /// As [`Driver::put`], only when `condition` holds at the time of the
    /// write; `PreconditionFailed` otherwise. Atomic where
    /// [`Driver::conditional_writes`] says so; elsewhere the condition is
    /// checked, then the object written, and of two writers racing in
    /// between the last one wins.
    async fn put_if(&self, key: &str, content: Bytes, condition: Precondition) -> Result<()>;

    /// Whether [`Driver::put_if`] is atomic against every other writer.
    fn conditional_writes(&self) -> bool;

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

    /// Its [`Redirects`], when the store can hand a reader an address of
    /// its own for an object (and the configuration wants it): a
    /// capability, not part of the contract.
    fn redirects(&self) -> Option<&dyn Redirects> {
        None
    }

    /// Its [`PlainGets`], when the store is reached over plain HTTP and
    /// signs requests the server may send itself: a capability, not part
    /// of the contract.
    fn plain_gets(&self) -> Option<std::sync::Arc<dyn PlainGets>> {
        None
    }

    /// An object's size and when it was last written (what garbage
    /// collection's grace period is measured against).
    async fn stat(&self, key: &str) -> Result<Meta>;

    /// Starts assembling an object at `key` from writes that may span many
    /// requests and processes (an upload's bytes): returns the state to
    /// record, which [`Driver::assemble`], [`Driver::finish_assembly`] and
    /// [`Driver::discard_assembly`] are handed back, by this process or any
    /// other. Nothing is readable at `key` until the assembly is finished.
    async fn start_assembly(&self, key: &str) -> Result<Assembly>;

    /// Continues the assembly at `key` from a recorded state. Written bytes
    /// count only once [`Assembler::commit`] returned the new state and the
    /// caller recorded it: bytes a crash left past a recorded state are
    /// discarded when that state is continued, and an older state may be
    /// continued after a newer one was committed (the newer one's bytes
    /// are then lost). [`Assembler::abort`] leaves the recorded state valid.
    /// The caller serializes assemblers on one key. `NotFound` (here, or
    /// from the assembler) when the assembly is gone: finished, discarded,
    /// or its bytes moved away.
    async fn assemble(&self, key: &str, from: &Assembly) -> Result<Box<dyn Assembler>>;

    /// Makes the assembled bytes the object at `key`, exactly `state.size`
    /// bytes long, readable as any other. Idempotent: an object finished
    /// from this state already is left as it is. Afterwards the assembly
    /// may not be continued (an object store's multipart upload is closed).
    /// `NotFound` when its bytes are gone.
    async fn finish_assembly(&self, key: &str, state: &Assembly) -> Result<()>;

    /// Gives back what an unfinished assembly holds in the store beside
    /// `key` (an object store's multipart upload, its parts and pending
    /// bytes). An assembly already gone is not an error. What is at `key`
    /// itself (a finished object, or the bytes of a driver that assembles in
    /// place) is the caller's to delete.
    async fn discard_assembly(&self, key: &str, state: &Assembly) -> Result<()>;

    /// The most memory one [`Assembler`] holds (its write buffers): what an
    /// upload's share of the memory budget is counted in.
    fn assembly_memory(&self) -> usize;

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

    /// Moves an object to `to`, replacing whatever was there: the object at
    /// `to` is the old one or the moved one, never a mix. On an object store
    /// a copy then a delete, so after a crash the source may still be there
    /// beside its copy (never the other way round).
    async fn rename(&self, from: &str, to: &str) -> Result<()>;

    /// Deletes an object, or everything under a prefix. `NotFound` when
    /// nothing was there.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// The recorded state of an object being assembled (see
/// [`Driver::start_assembly`]): small, serializable, and all any process
/// needs to continue, finish or discard it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assembly {
    /// Bytes that count.
    pub size: u64,
    /// The driver's own record (an object store's multipart upload, its
    /// parts and the bytes waiting to fill the next one); null for a driver
    /// that appends to one object.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub parts: serde_json::Value,
}

#[async_trait]
pub trait Assembler: Send {
    /// Size of the assembly including the bytes written through this assembler so far.
    fn size(&self) -> u64;

    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Makes the written bytes durable and part of the assembly; returns the
    /// state to record. On failure the last recorded state stays valid and
    /// the bytes a failed write took (a full disk) are given back.
    async fn commit(self: Box<Self>) -> Result<Assembly>;

    /// Forgets the written bytes: the state the assembler was opened with stays valid.
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

/// What a driver whose store serves objects itself can do beside the
/// contract: sign a short-lived address from which a client reads an object
/// straight from the store (an S3 presigned URL), so its bytes bypass the
/// gateway. Asked for only after the request was authorized.
#[async_trait]
pub trait Redirects: Send + Sync {
    /// An address that serves the object at `key` for a GET (ranges
    /// included) until it expires.
    async fn presigned_get(&self, key: &str) -> Result<String>;
}

/// What a driver whose store is reached over plain HTTP can do beside the
/// contract: sign a `GET` of an object that the server sends on a
/// connection of its own, so that the answer's body can go from that socket
/// to the client's with `splice(2)`, never through user space (see
/// `serve::zero_copy::ranges`). Asked for only after the request was
/// authorized, and only where a client's connection can take such a body.
#[async_trait]
pub trait PlainGets: Send + Sync {
    /// A signed `GET` of the object at `key`, valid briefly: it is sent at
    /// once, with a `Range` header of the reader's (which the signature
    /// leaves out, as presigned S3 requests do).
    async fn signed_get(&self, key: &str) -> Result<PlainGet>;

    /// How reads are split and bounded.
    fn plan(&self) -> &RelayPlan;
}

/// A request [`PlainGets`] signed.
#[derive(Debug, Clone)]
pub struct PlainGet {
    /// `host:port` to connect to (and send as `Host`).
    pub authority: String,
    /// The request target: path and query, the signature in the query.
    pub target: String,
}

/// How a relayed read is split: ranged `GET`s of `range` bytes, `ahead` of
/// them sent before the one being relayed is done (their answers wait in
/// their sockets), each taking one of `budget`'s permits while it waits,
/// so that all reads together keep a bounded number of connections and
/// kernel buffers; a read that finds none free asks for its next range only
/// when it needs it. A source silent for `idle` fails the body.
#[derive(Debug, Clone)]
pub struct RelayPlan {
    pub range: u64,
    pub ahead: usize,
    pub budget: std::sync::Arc<tokio::sync::Semaphore>,
    pub idle: std::time::Duration,
}
