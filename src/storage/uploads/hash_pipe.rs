//! The upload's hashing stage, beside receiving and writing.

use std::sync::Arc;

use bytes::Bytes;
use sha2::Digest as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::super::{DriverError, Result, StorageError};

/// Hashes an upload's bytes on the blocking pool, beside the task that
/// receives them and the thread that writes them: on a fast link, SHA-256
/// is the largest cost of a push, and run inline it would serialize with
/// both. Chunks are handed over in batches (the bytes are shared, not
/// copied), and at most [`HASH_BACKLOG`] bytes wait, which bounds memory.
pub(super) struct HashPipe {
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
pub(super) const HASH_BACKLOG: usize = 8 << 20;

impl HashPipe {
    pub(super) fn start(mut hasher: sha2::Sha256) -> Self {
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

    pub(super) async fn update(&mut self, bytes: Bytes) {
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
    pub(super) async fn finish(mut self) -> Result<sha2::Sha256> {
        self.send().await;
        drop(self.queue);
        self.worker
            .await
            .map_err(|e| StorageError::Driver(DriverError::Io(std::io::Error::other(e))))
    }
}

#[cfg(test)]
mod tests {
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
}
