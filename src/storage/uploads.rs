//! Upload sessions: bytes are appended to the session's own area while they
//! are hashed, and become a blob only by a rename after the digest matched.
//!
//! The session's truth is its `hashstate` record: the committed size and the
//! SHA-256 state at that size. It is written after every append commits, so a
//! session survives a restart (or moves to another replica) without rehashing,
//! and bytes a crash left past the recorded size are discarded by the next
//! append. A crash between the append and the record only makes that chunk
//! look unsent; the client learns the real offset from the `Range` it is given.

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use super::{ByteStream, OrUnknown, Result, Storage, StorageError, paths};
use crate::reference::{Algorithm, Digest, RepoName};
use paths::UploadId;

/// One lock per session in use, serializing work on that session within
/// this process. A lock is held while a chunk's body streams in, which may
/// take as long as the client likes, so sessions must never share one (a
/// slow client would stall unrelated uploads); an entry lives only while
/// someone holds or waits for it.
#[derive(Default)]
pub(super) struct Locks(std::sync::Mutex<HashMap<UploadId, Arc<Mutex<()>>>>);

/// Holds a session's lock; dropping it releases the lock and forgets the
/// entry when nobody else wants it.
pub(super) struct SessionGuard<'a> {
    locks: &'a Locks,
    id: UploadId,
    held: Option<OwnedMutexGuard<()>>,
}

impl Locks {
    async fn lock(&self, id: UploadId) -> SessionGuard<'_> {
        let mutex = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(map.entry(id).or_default())
        };
        let held = mutex.lock_owned().await;
        SessionGuard {
            locks: self,
            id,
            held: Some(held),
        }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        // Counted under the map lock, so no one can be about to clone it:
        // only the map's own reference left means no holder, no waiter.
        if map.get(&self.id).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.id);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Info {
    repository: String,
    started_at: u64,
}

#[derive(Serialize, Deserialize)]
struct HashRecord {
    offset: u64,
    /// Hex of the serialized SHA-256 state after `offset` bytes.
    sha256: String,
}

struct Session {
    id: UploadId,
    offset: u64,
    hasher: sha2::Sha256,
}

impl Session {
    fn record(&self) -> Bytes {
        let record = HashRecord {
            offset: self.offset,
            sha256: hex::encode(self.hasher.serialize()),
        };
        Bytes::from(serde_json::to_vec(&record).expect("plain struct serializes"))
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
    pub async fn upload_start(&self, repo: &RepoName) -> Result<UploadId> {
        let id = UploadId::new();
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let info = Info {
            repository: repo.to_string(),
            started_at,
        };
        let session = Session {
            id,
            offset: 0,
            hasher: sha2::Sha256::new(),
        };
        self.driver
            .put(
                &paths::upload_info(id),
                serde_json::to_vec(&info)
                    .expect("plain struct serializes")
                    .into(),
            )
            .await?;
        self.driver
            .put(&paths::upload_hashstate(id), session.record())
            .await?;
        Ok(id)
    }

    /// Bytes received so far.
    pub async fn upload_size(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        Ok(self.load_session(repo, id).await?.offset)
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
        Ok(session.offset)
    }

    /// Appends an optional last chunk, verifies the digest and moves the bytes
    /// into place as a blob linked to `repo`. Returns the blob's size. On a
    /// digest mismatch the session stays as it was, so nothing is lost.
    pub async fn upload_finish(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        last: Option<(Chunk, ByteStream)>,
    ) -> Result<u64> {
        let _guard = self.upload_locks.lock(id).await;
        let mut session = self.load_session(repo, id).await?;
        if let Some((chunk, body)) = last {
            self.append(&mut session, chunk, body).await?;
        }
        let data = paths::upload_data(id);
        let actual = match digest.algorithm() {
            Algorithm::Sha256 => Digest::from_sha256(session.hasher.clone().finalize().as_slice()),
            // Only SHA-256 is kept incrementally (what nearly every client
            // uses); a SHA-512 upload is hashed once more at the end.
            Algorithm::Sha512 => self.rehash_sha512(&data, session.offset).await?,
        };
        if &actual != digest {
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        self.ensure_exact_length(&data, session.offset).await?;
        let blob = paths::blob_data(digest);
        // Same digest, same bytes: an existing blob (a concurrent or earlier
        // push) is already right, and replacing it would be too.
        match self.driver.stat(&blob).await {
            Ok(_) => {}
            Err(super::DriverError::NotFound(_)) => self.driver.rename(&data, &blob).await?,
            Err(e) => return Err(e.into()),
        }
        self.link_blob(repo, digest).await?;
        self.delete_session(id).await;
        Ok(session.offset)
    }

    pub async fn upload_cancel(&self, repo: &RepoName, id: UploadId) -> Result<()> {
        let _guard = self.upload_locks.lock(id).await;
        self.load_session(repo, id).await?;
        self.driver
            .delete(&paths::upload(id))
            .await
            .or_unknown(|| StorageError::UploadUnknown)
    }

    /// A whole blob in one request: a session that lives for this call only.
    pub async fn blob_put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        chunk: Chunk,
        body: ByteStream,
    ) -> Result<u64> {
        let id = self.upload_start(repo).await?;
        let result = self
            .upload_finish(repo, id, digest, Some((chunk, body)))
            .await;
        if result.is_err() {
            self.delete_session(id).await;
        }
        result
    }

    async fn delete_session(&self, id: UploadId) {
        // The blob is already in place (or the session is being abandoned):
        // a leftover session directory is garbage for gc, not an error.
        if let Err(e) = self.driver.delete(&paths::upload(id)).await {
            tracing::warn!(upload = %id, error = %e, "could not remove upload session");
        }
    }

    async fn load_session(&self, repo: &RepoName, id: UploadId) -> Result<Session> {
        let unknown = || StorageError::UploadUnknown;
        let info = self
            .driver
            .get(&paths::upload_info(id))
            .await
            .or_unknown(unknown)?;
        let info: Info = serde_json::from_slice(&info).map_err(|_| unknown())?;
        // A session belongs to the repository it was started in: it cannot be
        // continued (or finished into) another one.
        if info.repository != repo.as_str() {
            return Err(unknown());
        }
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
        Ok(Session {
            id,
            offset: record.offset,
            hasher,
        })
    }

    /// Streams `body` onto the session; on any failure the session is left as
    /// it was (the appender rolls back, the record is not rewritten).
    async fn append(
        &self,
        session: &mut Session,
        chunk: Chunk,
        mut body: ByteStream,
    ) -> Result<()> {
        if let Some(start) = chunk.start
            && start != session.offset
        {
            return Err(StorageError::RangeMismatch {
                current: session.offset,
            });
        }
        let mut appender = self
            .driver
            .append(&paths::upload_data(session.id), session.offset)
            .await?;
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
                appender.write(bytes).await?;
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
                if let Err(abort) = appender.abort().await {
                    tracing::warn!(upload = %session.id, error = %abort, "could not roll back chunk");
                }
                return Err(e);
            }
        };
        let size = appender.commit().await?;
        let updated = Session {
            id: session.id,
            offset: size,
            hasher,
        };
        self.driver
            .put(&paths::upload_hashstate(session.id), updated.record())
            .await?;
        *session = updated;
        Ok(())
    }

    async fn rehash_sha512(&self, data: &str, len: u64) -> Result<Digest> {
        let mut hasher = sha2::Sha512::new();
        if len > 0 {
            let mut stream = self.driver.read(data, 0, Some(len)).await?;
            while let Some(bytes) = stream.next().await {
                hasher.update(&bytes.map_err(super::DriverError::Io)?);
            }
        }
        Ok(Digest::from_sha512(hasher.finalize().as_slice()))
    }

    /// Makes the session's data object exactly `len` bytes: creates it when no
    /// byte was ever sent, and drops bytes a crash left past the record.
    async fn ensure_exact_length(&self, data: &str, len: u64) -> Result<()> {
        match self.driver.stat(data).await {
            Ok(size) if size == len => Ok(()),
            Ok(_) | Err(super::DriverError::NotFound(_)) => {
                let appender = self.driver.append(data, len).await?;
                appender.commit().await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Hashes an upload's bytes on the blocking pool, beside the task that
/// receives them and the thread that writes them: on a fast link, SHA-256
/// is the largest cost of a push, and run inline it would serialize with
/// both. Chunks are handed over in batches (the bytes are shared, not
/// copied), and at most [`HASH_BACKLOG`] bytes wait, which bounds memory.
struct HashPipe {
    queue: tokio::sync::mpsc::UnboundedSender<(Vec<Bytes>, OwnedSemaphorePermit)>,
    /// KiB the hashing thread may still fall behind by.
    backlog: Arc<Semaphore>,
    batch: Vec<Bytes>,
    batched: usize,
    worker: tokio::task::JoinHandle<sha2::Sha256>,
}

/// Bytes handed to the hashing thread at once: small enough to be hashed
/// while still in the cache the receive copied them into.
const HASH_BATCH: usize = 256 << 10;
/// Bytes waiting for the hashing thread, at most. The hash is the slowest
/// stage of a push, and on a busy machine its thread loses the CPU now and
/// then; a deep backlog lets receiving go on meanwhile and gives the hash
/// something to catch up on, instead of each stage waiting for the other in
/// turn. 1 GiB pushes alternated between builds (ten rounds each): medians
/// of 1,100 MB/s with 1 MiB waiting, 1,185 with 4 MiB, 1,257 with 8 MiB; a
/// second series put 16 MiB level with 8.
const HASH_BACKLOG: usize = 8 << 20;

impl HashPipe {
    fn start(mut hasher: sha2::Sha256) -> Self {
        let (queue, mut batches) =
            tokio::sync::mpsc::unbounded_channel::<(Vec<Bytes>, OwnedSemaphorePermit)>();
        let worker = tokio::task::spawn_blocking(move || {
            while let Some((batch, permit)) = batches.blocking_recv() {
                for bytes in batch {
                    hasher.update(&bytes);
                }
                drop(permit);
            }
            hasher
        });
        Self {
            queue,
            backlog: Arc::new(Semaphore::new(HASH_BACKLOG >> 10)),
            batch: Vec::new(),
            batched: 0,
            worker,
        }
    }

    async fn update(&mut self, bytes: Bytes) {
        self.batched += bytes.len();
        self.batch.push(bytes);
        if self.batched >= HASH_BATCH {
            self.send().await;
        }
    }

    async fn send(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // A batch larger than the whole backlog (one huge frame) waits for
        // the backlog to empty instead of forever.
        let kib = self.batched.div_ceil(1 << 10).min(HASH_BACKLOG >> 10) as u32;
        let permit = Arc::clone(&self.backlog)
            .acquire_many_owned(kib)
            .await
            .expect("the backlog semaphore is never closed");
        let batch = std::mem::take(&mut self.batch);
        self.batched = 0;
        // The worker only stops when the queue closes, so this cannot fail
        // while `self` is alive.
        let _ = self.queue.send((batch, permit));
    }

    /// The hash state after every byte given.
    async fn finish(mut self) -> Result<sha2::Sha256> {
        self.send().await;
        drop(self.queue);
        self.worker
            .await
            .map_err(|e| StorageError::Driver(super::DriverError::Io(std::io::Error::other(e))))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn the_hash_pipe_hashes_every_byte_in_order_even_past_its_backlog() {
        // Frames of many sizes, one larger than the whole backlog: the pipe
        // must neither reorder, drop nor wait forever for room.
        let sizes = [
            1,
            4095,
            300 << 10,
            HASH_BACKLOG + (1 << 20),
            17,
            5 << 20,
            256 << 10,
        ];
        let frames: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from((0..n).map(|j| (i * 31 + j * 7) as u8).collect::<Vec<_>>()))
            .collect();
        let mut expected = sha2::Sha256::new();
        let mut pipe = HashPipe::start(sha2::Sha256::new());
        let run = async {
            for frame in &frames {
                expected.update(frame);
                pipe.update(frame.clone()).await;
            }
            pipe.finish().await
        };
        let hashed = tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .expect("the pipe waited forever")
            .expect("hashing thread");
        assert_eq!(hashed.finalize(), expected.finalize());
    }

    #[tokio::test]
    async fn a_held_session_never_blocks_another_and_entries_go_away() {
        let locks = Locks::default();
        let ids: Vec<UploadId> = (0..200).map(|_| UploadId::new()).collect();
        let first = locks.lock(ids[0]).await;
        // Whatever their ids, other sessions lock at once (the bound only
        // turns a hang into a failure).
        for id in &ids[1..] {
            let guard = tokio::time::timeout(std::time::Duration::from_secs(5), locks.lock(*id));
            assert!(
                guard.await.is_ok(),
                "session {id} waited for another session"
            );
        }
        // The same session waits…
        let mut waiting = Box::pin(locks.lock(ids[0]));
        assert!((&mut waiting).now_or_never().is_none());
        drop(first);
        // …and gets it once released; the entry survives while it is held.
        let second = waiting.await;
        assert_eq!(locks.0.lock().unwrap().len(), 1);
        drop(second);
        assert!(
            locks.0.lock().unwrap().is_empty(),
            "entries must not pile up"
        );
    }
}
