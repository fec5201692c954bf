//! Upload sessions: bytes are assembled at the session's own key
//! ([`Driver::assemble`](super::Driver::assemble): one file appended to on
//! the filesystem, a multipart upload on an object store) while they are
//! hashed, and become a blob only by a move after the digest matched.
//!
//! The session's truth is its `hashstate` record: the driver's assembly
//! state (the committed size, an object store's parts) and the SHA-256
//! state at that size. It is written after every chunk commits, so a
//! session survives a restart (or moves to another replica) without
//! rehashing, and bytes a crash left past the recorded state are discarded
//! when it is continued. A crash between the commit and the record only
//! makes that chunk look unsent; the client learns the real offset from the
//! `Range` it is given.
//!
//! Finishing is idempotent: a finish that died after the move into
//! `blobs/` left a session without data, which the next finish with the
//! same digest completes. Sessions belong to the account that opened them
//! (`info`), which may hold only so many at once, and sessions idle too long
//! are purged by the sweep ([`sweep`]), with whatever crashes left behind.

mod hash_pipe;
mod locks;
mod owners;
pub(super) mod sweep;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use std::time::Duration;

use super::{Assembly, ByteStream, DriverError, OrUnknown, Result, Storage, StorageError, paths};
use crate::reference::{Algorithm, Digest, RepoName};
use hash_pipe::HashPipe;
pub(super) use locks::Locks;
pub(super) use owners::Owners;
use paths::UploadId;

/// How upload sessions are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// A session that received no chunk for this long is purged.
    pub max_idle: Duration,
    /// Sessions one account may hold open at once.
    pub per_account: usize,
    /// Memory all uploads receiving a body may hold at once, in bytes: each
    /// holds up to its driver's [`assembly_memory`](super::Driver::assembly_memory)
    /// and [`HASH_BACKLOG`], so this bounds how many stream at once.
    pub memory: usize,
    /// How long an upload waits for its share of `memory` before it is
    /// refused with 429.
    pub memory_wait: Duration,
}

/// The most bytes of one upload waiting to be hashed ([`HashPipe`]).
pub const HASH_BACKLOG: usize = hash_pipe::HASH_BACKLOG;

impl Default for UploadLimits {
    /// distribution purges uploads after a day too; a push opens a handful
    /// of sessions at once (one per layer in flight), so a hundred leaves
    /// room for many parallel pushes while bounding what one account can
    /// abandon.
    fn default() -> Self {
        Self {
            max_idle: Duration::from_secs(24 * 60 * 60),
            per_account: 100,
            memory: 1 << 30,
            memory_wait: Duration::from_secs(10),
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Serialize, Deserialize)]
struct Info {
    repository: String,
    started_at: u64,
    /// The account that opened the session (the token's subject, empty for
    /// an anonymous caller); absent on an open registry, where nothing is
    /// counted per account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct HashRecord {
    offset: u64,
    /// The driver's own part of the assembly state (see
    /// [`Assembly::parts`]); absent for a driver that appends.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    parts: serde_json::Value,
    /// Hex of the serialized SHA-256 state after `offset` bytes.
    sha256: String,
    /// When the record was written (seconds since the epoch): the session's
    /// last activity, from which its idle time counts. Absent in records of
    /// older versions, which count from the session's start.
    #[serde(default)]
    written_at: Option<u64>,
}

struct Session {
    id: UploadId,
    /// What the driver needs to continue the bytes; its `size` is the
    /// session's offset.
    assembly: Assembly,
    hasher: sha2::Sha256,
    owner: Option<String>,
    /// Seconds since the epoch of the last append (or of the start).
    active_at: u64,
}

impl Session {
    fn record(&self) -> Bytes {
        let record = HashRecord {
            offset: self.assembly.size,
            parts: self.assembly.parts.clone(),
            sha256: hex::encode(self.hasher.serialize()),
            written_at: Some(now_secs()),
        };
        Bytes::from(serde_json::to_vec(&record).expect("plain struct serializes"))
    }

    fn sha256(&self) -> Digest {
        Digest::from_sha256(self.hasher.clone().finalize().as_slice())
    }
}

/// What a caller knows about the bytes it hands over.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chunk {
    /// Where the client says the bytes start (`Content-Range`); must be the
    /// session's current size.
    pub start: Option<u64>,
    /// How many bytes the client declared (`Content-Length` or the range).
    pub len: Option<u64>,
}

impl Storage {
    /// Opens a session in `repo` for `owner` (`None` on an open registry).
    /// `TooManyUploads` when the owner already holds the most allowed.
    pub async fn upload_start(&self, repo: &RepoName, owner: Option<&str>) -> Result<UploadId> {
        let id = UploadId::new();
        // Held while the session is half made, so that the sweep never
        // takes it for a crash's leftover.
        let _guard = self.upload_locks.lock(id).await;
        if let Some(owner) = owner {
            self.reserve_session(owner, id).await?;
        }
        let started_at = now_secs();
        let info = Info {
            repository: repo.to_string(),
            started_at,
            owner: owner.map(str::to_owned),
        };
        let created = async {
            self.driver
                .put(
                    &paths::upload_info(id),
                    serde_json::to_vec(&info)
                        .expect("plain struct serializes")
                        .into(),
                )
                .await?;
            // Recorded before any byte is sent, so that whatever the
            // assembly holds in the store (a multipart upload) is known to
            // the sweep even if this process dies mid-chunk.
            let assembly = self.driver.start_assembly(&paths::upload_data(id)).await?;
            let session = Session {
                id,
                assembly,
                hasher: sha2::Sha256::new(),
                owner: info.owner.clone(),
                active_at: started_at,
            };
            let recorded = self
                .driver
                .put(&paths::upload_hashstate(id), session.record())
                .await;
            if recorded.is_err() {
                self.discard_assembly(&session).await;
            }
            recorded
        }
        .await;
        if let Err(e) = created {
            // Nothing of a session that failed to start stays (on a full
            // disk, its directory and `info`).
            self.remove_session(id, owner, None).await;
            return Err(e.into());
        }
        Ok(id)
    }

    /// Counts `id` against `owner`'s open sessions, or refuses.
    async fn reserve_session(&self, owner: &str, id: UploadId) -> Result<()> {
        let limit = self.upload_limits.per_account;
        if self.upload_owners.reserve(owner, id, limit) {
            return Ok(());
        }
        // The index may still hold sessions that went another way (another
        // replica finished them, or they were removed by hand): look before
        // refusing. One being worked on right now is certainly open.
        for other in self.upload_owners.sessions(owner) {
            let Some(_guard) = self.upload_locks.try_lock(other) else {
                continue;
            };
            if let Err(DriverError::NotFound(_)) =
                self.driver.stat(&paths::upload_hashstate(other)).await
            {
                self.upload_owners.remove(owner, other);
            }
        }
        if self.upload_owners.reserve(owner, id, limit) {
            Ok(())
        } else {
            Err(StorageError::TooManyUploads { limit })
        }
    }

    /// Bytes received so far.
    pub async fn upload_size(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        Ok(self.load_session(repo, id).await?.assembly.size)
    }

    /// Appends a chunk (all of it or nothing) and returns the new size.
    pub async fn upload_append(
        &self,
        repo: &RepoName,
        id: UploadId,
        chunk: Chunk,
        body: ByteStream,
    ) -> Result<u64> {
        let _guard = self.upload_locks.lock(id).await;
        let mut session = self.load_session(repo, id).await?;
        self.append(&mut session, chunk, body).await?;
        Ok(session.assembly.size)
    }

    /// Appends an optional last chunk, verifies the digest and moves the bytes
    /// into place as a blob linked to `repo`. Returns the blob's size. On a
    /// digest mismatch the session stays as it was, so nothing is lost
    /// (except on a driver whose finished assemblies cannot be continued,
    /// after a SHA-512 mismatch: see [`Driver::finish_assembly`](super::Driver::finish_assembly)).
    pub async fn upload_finish(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        last: Option<(Chunk, ByteStream)>,
    ) -> Result<u64> {
        let _guard = self.upload_locks.lock(id).await;
        let mut session = self.load_session(repo, id).await?;
        // An empty last chunk (the usual `PUT ?digest=` of a chunked push)
        // changes nothing, not even where the bytes are.
        let last = match last {
            Some((chunk, body)) => non_empty(body).await?.map(|body| (chunk, body)),
            None => None,
        };
        if let Some((chunk, body)) = last {
            self.append(&mut session, chunk, body).await?;
        }
        let data = paths::upload_data(id);
        let mismatch = |actual| StorageError::DigestMismatch {
            expected: digest.clone(),
            actual,
        };
        if digest.algorithm() == Algorithm::Sha256 && &session.sha256() != digest {
            return Err(mismatch(session.sha256()));
        }
        match self.driver.finish_assembly(&data, &session.assembly).await {
            Ok(()) => {}
            // Gone: an interrupted finish moved the bytes into `blobs/`.
            Err(DriverError::NotFound(_)) => {
                return self.finish_moved(repo, &session, digest).await;
            }
            Err(e) => return Err(e.into()),
        }
        if digest.algorithm() == Algorithm::Sha512 {
            // Only SHA-256 is kept incrementally (what nearly every client
            // uses); a SHA-512 upload is hashed once more at the end.
            let actual = self
                .rehash(&data, Algorithm::Sha512, session.assembly.size)
                .await?;
            if &actual != digest {
                return Err(mismatch(actual));
            }
        }
        // Same digest, same bytes: an existing blob (a concurrent or earlier
        // push) is replaced by its equal, atomically. Moving the bytes even
        // then makes the blob young, so a garbage collection that found it
        // unreferenced leaves it alone (`gc.rs`: nothing written within the
        // grace period is swept).
        self.driver.rename(&data, &paths::blob_data(digest)).await?;
        self.link_blob(repo, digest).await?;
        // The assembly is finished: nothing of it is left to discard.
        self.remove_session(id, session.owner.as_deref(), None)
            .await;
        Ok(session.assembly.size)
    }

    /// Finishes a session whose bytes an earlier finish already moved into
    /// `blobs/` (it died before removing the session): the blob in place
    /// completes it, as that finish would have, if it is provably the
    /// session's own content. Nothing else is linked: a session without data
    /// never lends its repository a blob it did not upload.
    async fn finish_moved(
        &self,
        repo: &RepoName,
        session: &Session,
        digest: &Digest,
    ) -> Result<u64> {
        let own = session.sha256();
        let size = session.assembly.size;
        let blob = paths::blob_data(digest);
        let same = match digest.algorithm() {
            Algorithm::Sha256 => &own == digest,
            // The session's SHA-256 is known: the blob is its content when
            // its own SHA-256 is the same (read once; this path is rare).
            Algorithm::Sha512 => match self.driver.stat(&blob).await.map(|m| m.size) {
                Ok(found) if found == size => {
                    self.rehash(&blob, Algorithm::Sha256, size).await? == own
                }
                Ok(_) | Err(DriverError::NotFound(_)) => false,
                Err(e) => return Err(e.into()),
            },
        };
        if !same {
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                actual: own,
            });
        }
        match self.driver.stat(&blob).await.map(|m| m.size) {
            Ok(found) if found == size => {}
            // Moved, then lost (collected as unlinked): the bytes are gone,
            // so is the session; the client starts again.
            Ok(_) | Err(DriverError::NotFound(_)) => {
                self.remove_session(session.id, session.owner.as_deref(), None)
                    .await;
                return Err(StorageError::UploadUnknown);
            }
            Err(e) => return Err(e.into()),
        }
        self.link_blob(repo, digest).await?;
        self.remove_session(session.id, session.owner.as_deref(), None)
            .await;
        tracing::info!(upload = %session.id, %digest, "finished an upload an interrupted finish had moved");
        Ok(size)
    }

    pub async fn upload_cancel(&self, repo: &RepoName, id: UploadId) -> Result<()> {
        let _guard = self.upload_locks.lock(id).await;
        let session = self.load_session(repo, id).await?;
        self.discard_assembly(&session).await;
        let deleted = self
            .driver
            .delete(&paths::upload(id))
            .await
            .or_unknown(|| StorageError::UploadUnknown);
        if let Some(owner) = &session.owner {
            self.upload_owners.remove(owner, id);
        }
        deleted
    }

    /// A whole blob in one request: a session that lives for this call only.
    pub async fn blob_put(
        &self,
        repo: &RepoName,
        owner: Option<&str>,
        digest: &Digest,
        chunk: Chunk,
        body: ByteStream,
    ) -> Result<u64> {
        let id = self.upload_start(repo, owner).await?;
        let result = self
            .upload_finish(repo, id, digest, Some((chunk, body)))
            .await;
        if result.is_err() {
            let session = self.read_session(id).await.ok().map(|(_, s)| s);
            self.remove_session(id, owner, session.as_ref()).await;
        }
        result
    }

    /// Gives back what a session's unfinished assembly holds in the store;
    /// a failure is the sweep's to retry, not the caller's.
    async fn discard_assembly(&self, session: &Session) {
        let data = paths::upload_data(session.id);
        if let Err(e) = self.driver.discard_assembly(&data, &session.assembly).await {
            tracing::warn!(upload = %session.id, error = %e, "could not discard an upload's parts");
        }
    }

    /// Removes a session's storage and its count against its owner; the
    /// parts of an unfinished assembly too when `unfinished` is given.
    async fn remove_session(
        &self,
        id: UploadId,
        owner: Option<&str>,
        unfinished: Option<&Session>,
    ) {
        if let Some(session) = unfinished {
            self.discard_assembly(session).await;
        }
        // The blob is already in place (or the session is being abandoned):
        // a leftover session directory is the sweep's, not an error.
        match self.driver.delete(&paths::upload(id)).await {
            Ok(()) | Err(DriverError::NotFound(_)) => {}
            Err(e) => tracing::warn!(upload = %id, error = %e, "could not remove upload session"),
        }
        if let Some(owner) = owner {
            self.upload_owners.remove(owner, id);
        }
    }

    async fn load_session(&self, repo: &RepoName, id: UploadId) -> Result<Session> {
        let (repository, session) = self.read_session(id).await?;
        // A session belongs to the repository it was started in: it cannot be
        // continued (or finished into) another one.
        if repository != repo.as_str() {
            return Err(StorageError::UploadUnknown);
        }
        Ok(session)
    }

    /// A session's record and the repository it belongs to; `UploadUnknown`
    /// when either file is missing or unreadable.
    async fn read_session(&self, id: UploadId) -> Result<(String, Session)> {
        let unknown = || StorageError::UploadUnknown;
        let info = self
            .driver
            .get(&paths::upload_info(id))
            .await
            .or_unknown(unknown)?;
        let info: Info = serde_json::from_slice(&info).map_err(|_| unknown())?;
        let record = self
            .driver
            .get(&paths::upload_hashstate(id))
            .await
            .or_unknown(unknown)?;
        let record: HashRecord = serde_json::from_slice(&record).map_err(|_| unknown())?;
        let state = hex::decode(&record.sha256).map_err(|_| unknown())?;
        let state =
            SerializedState::<sha2::Sha256>::try_from(state.as_slice()).map_err(|_| unknown())?;
        let hasher = sha2::Sha256::deserialize(&state).map_err(|_| unknown())?;
        let session = Session {
            id,
            assembly: Assembly {
                size: record.offset,
                parts: record.parts,
            },
            hasher,
            owner: info.owner,
            active_at: record.written_at.unwrap_or(info.started_at),
        };
        Ok((info.repository, session))
    }

    /// Streams `body` onto the session; on any failure the session is left as
    /// it was (the assembler rolls back, the record is not rewritten).
    async fn append(
        &self,
        session: &mut Session,
        chunk: Chunk,
        mut body: ByteStream,
    ) -> Result<()> {
        let offset = session.assembly.size;
        if let Some(start) = chunk.start
            && start != offset
        {
            return Err(StorageError::RangeMismatch { current: offset });
        }
        // Its share of the uploads' memory budget, held while the body
        // streams: past the budget, uploads wait their turn, and past the
        // wait they are refused rather than let memory grow unbounded.
        let _share = tokio::time::timeout(
            self.upload_limits.memory_wait,
            self.upload_memory.clone().acquire_owned(),
        )
        .await
        .map_err(|_| StorageError::UploadMemoryFull)?
        .expect("the budget is never closed");
        let data = paths::upload_data(session.id);
        // Gone: the data was moved into place by a finish that did not get
        // to remove the session (or lost).
        let gone = |e: DriverError| match e {
            DriverError::NotFound(_) => StorageError::UploadDataMissing,
            e => e.into(),
        };
        let mut assembler = self
            .driver
            .assemble(&data, &session.assembly)
            .await
            .map_err(gone)?;
        let mut hasher = HashPipe::start(session.hasher.clone());
        let mut received = 0u64;
        let outcome: Result<()> = async {
            while let Some(bytes) = body.next().await {
                let bytes = bytes.map_err(StorageError::BodyRead)?;
                received += bytes.len() as u64;
                if let Some(declared) = chunk.len
                    && received > declared
                {
                    return Err(StorageError::SizeMismatch { declared, received });
                }
                hasher.update(bytes.clone()).await;
                assembler.write(bytes).await.map_err(gone)?;
            }
            match chunk.len {
                Some(declared) if declared != received => {
                    Err(StorageError::SizeMismatch { declared, received })
                }
                _ => Ok(()),
            }
        }
        .await;
        let hashed = match outcome {
            Ok(()) => hasher.finish().await,
            Err(e) => Err(e),
        };
        let hasher = match hashed {
            Ok(hasher) => hasher,
            Err(e) => {
                if let Err(abort) = assembler.abort().await {
                    tracing::warn!(upload = %session.id, error = %abort, "could not roll back chunk");
                }
                return Err(e);
            }
        };
        // A failed commit gives back what it wrote (the assembler's contract).
        let assembly = assembler.commit().await.map_err(gone)?;
        let size = assembly.size;
        let updated = Session {
            id: session.id,
            assembly,
            hasher,
            owner: session.owner.clone(),
            active_at: now_secs(),
        };
        if let Err(e) = self
            .driver
            .put(&paths::upload_hashstate(session.id), updated.record())
            .await
        {
            // Unless the record did land (only its directory's sync failed),
            // the chunk does not count: give its bytes back now rather than
            // at the next append, which may never come (a full disk would
            // stay full).
            let landed = matches!(self.read_session(session.id).await,
                Ok((_, recorded)) if recorded.assembly.size == size);
            if !landed {
                self.drop_residue(&data, &session.assembly).await;
                return Err(e.into());
            }
            tracing::warn!(upload = %session.id, error = %e, "upload record written, not synced");
        }
        *session = updated;
        Ok(())
    }

    /// Cuts the session's data back to its recorded state.
    async fn drop_residue(&self, data: &str, recorded: &Assembly) {
        let cut = async { self.driver.assemble(data, recorded).await?.abort().await };
        if let Err(e) = cut.await {
            tracing::warn!(key = data, error = %e, "could not give back an unrecorded chunk");
        }
    }

    /// The digest under `alg` of the first `len` bytes at `key`, read back.
    pub(super) async fn rehash(&self, key: &str, alg: Algorithm, len: u64) -> Result<Digest> {
        Ok(match alg {
            Algorithm::Sha256 => Digest::from_sha256(&self.hash::<sha2::Sha256>(key, len).await?),
            Algorithm::Sha512 => Digest::from_sha512(&self.hash::<sha2::Sha512>(key, len).await?),
        })
    }

    async fn hash<H: sha2::Digest + Send>(&self, key: &str, len: u64) -> Result<Vec<u8>> {
        let mut hasher = H::new();
        if len > 0 {
            let mut stream = self.driver.read(key, 0, Some(len)).await?;
            while let Some(bytes) = stream.next().await {
                hasher.update(&bytes.map_err(DriverError::Io)?);
            }
        }
        Ok(hasher.finalize().to_vec())
    }
}

/// `body`, unless it holds no byte at all (read up to its first non-empty
/// frame, which is put back in front).
async fn non_empty(mut body: ByteStream) -> Result<Option<ByteStream>> {
    while let Some(bytes) = body.next().await {
        let bytes = bytes.map_err(StorageError::BodyRead)?;
        if !bytes.is_empty() {
            let first = futures_util::stream::once(async move { Ok(bytes) });
            return Ok(Some(Box::pin(first.chain(body))));
        }
    }
    Ok(None)
}
