//! A byte range of an open local file: what the filesystem driver hands out
//! for a read, so that the server can send it to a socket without copying it
//! through user space (see `serve::zero_copy`), or stream it where it cannot.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use super::driver::ByteStream;

/// Size of the reads that feed a streamed range.
const READ_CHUNK: usize = 512 << 10;

/// `[offset, end)` of an open file. The file is immutable while it is open
/// here: blobs are written under a temporary name and renamed into place, and
/// a delete unlinks the name, never the open file's content.
#[derive(Clone, Debug)]
pub struct FileRange {
    pub file: Arc<File>,
    pub offset: u64,
    pub end: u64,
}

impl FileRange {
    pub fn new(file: File, offset: u64, end: u64) -> Self {
        Self {
            file: Arc::new(file),
            offset,
            end: end.max(offset),
        }
    }

    pub fn len(&self) -> u64 {
        self.end - self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Streams the range, reading the next chunk on the blocking pool while
    /// the current one is sent: disk (or page cache) reads overlap with
    /// socket writes, and a download holds at most two chunks and no thread
    /// while it waits for a slow client.
    pub fn into_stream(self) -> ByteStream {
        struct State {
            file: Arc<File>,
            at: u64,
            end: u64,
            next: Option<ChunkRead>,
        }
        let next = (self.offset < self.end)
            .then(|| read_chunk(Arc::clone(&self.file), self.offset, self.end));
        let state = State {
            file: self.file,
            at: self.offset,
            end: self.end,
            next,
        };
        futures_util::stream::unfold(state, |mut state| async move {
            let chunk = match state.next.take()?.await {
                Ok(Ok(chunk)) if chunk.is_empty() => return None,
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => return Some((Err(e), state)),
                Err(e) => return Some((Err(io::Error::other(e)), state)),
            };
            state.at += chunk.len() as u64;
            if state.at < state.end {
                state.next = Some(read_chunk(Arc::clone(&state.file), state.at, state.end));
            }
            Some((Ok(chunk), state))
        })
        .boxed()
    }
}

/// A chunk being read on the blocking pool.
type ChunkRead = tokio::task::JoinHandle<io::Result<Bytes>>;

fn read_chunk(file: Arc<File>, at: u64, end: u64) -> ChunkRead {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let want = (end - at).min(READ_CHUNK as u64) as usize;
        let mut buf = vec![0; want];
        let mut filled = 0;
        while filled < want {
            match file.read_at(&mut buf[filled..], at + filled as u64) {
                // The file is shorter than it was: end early; the caller's
                // length check reports it.
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(Bytes::from(buf))
    })
}
