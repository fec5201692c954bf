//! Reads in ranges, several at once: a large object is read as ranged GETs
//! of one part's size, the one being sent streamed as it arrives and the
//! next few fetched at the same time into buffers of their own.
//!
//! Why: one GET is one stream from the store, and a store serves one stream
//! at what one of its connections (or threads) does — on a Garage sharing two
//! cores, 362 MB/s (2026-12-03); AWS's performance guidelines plan one
//! connection per 85–90 MB/s and recommend byte-range fetches for more. Several ranges at
//! once are what its own clients do for large objects.
//!
//! Bounds: a pull holds at most [`ReadAhead::ranges`] ranges fetched ahead,
//! and all pulls together at most the driver's read-ahead budget; a pull
//! that finds the budget spent streams its next range on its own (one GET at
//! a time, as without read-ahead), so many pulls at once never hold more
//! than the budget. A range fetched ahead is kept as the chunks it arrived
//! in, so read-ahead adds no copy of its own.
//!
//! Consistency: every range after the first is asked for with the first
//! answer's ETag (`If-Match`), so a range never comes from another version
//! of the object; each answer must cover exactly the range asked for.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResult, ObjectStore};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::storage::driver::{ByteStream, RelayPlan};

/// How reads of large objects are split, and the memory they may hold.
#[derive(Debug, Clone)]
pub struct ReadAhead {
    /// Bytes per range (the driver's part size).
    range: u64,
    /// Ranges one read fetches ahead of the one it sends; 0 for one GET per
    /// read.
    ranges: usize,
    /// Ranges all reads may hold fetched ahead, one permit each.
    budget: Arc<Semaphore>,
}

impl ReadAhead {
    /// Ranges of `range` bytes, `ranges` ahead per read, `memory` bytes in
    /// all reads' buffers.
    pub fn new(range: usize, ranges: usize, memory: usize) -> Self {
        let range = range.max(1);
        Self {
            range: range as u64,
            ranges,
            budget: Arc::new(Semaphore::new(memory / range)),
        }
    }

    /// The same split for reads relayed from the store's answers
    /// ([`RelayPlan`]): ranges of the same size, as many ahead, waiting on
    /// the same budget; without read-ahead, one GET for the whole read.
    pub fn plan(&self, idle: std::time::Duration) -> RelayPlan {
        RelayPlan {
            range: if self.ranges == 0 {
                u64::MAX
            } else {
                self.range
            },
            ahead: self.ranges,
            budget: Arc::clone(&self.budget),
            idle,
        }
    }

    /// Off: every read is one GET.
    pub fn off() -> Self {
        Self::new(1, 0, 0)
    }

    /// The range the first GET of a read of `len` bytes (or the rest) from
    /// `offset` asks for: all of it without read-ahead, else one range.
    pub fn first(&self, offset: u64, len: Option<u64>) -> Option<GetRange> {
        let len = match self.ranges {
            0 => len,
            _ => Some(len.map_or(self.range, |len| len.min(self.range))),
        };
        match (offset, len) {
            (0, None) => None,
            (offset, None) => Some(GetRange::Offset(offset)),
            (offset, Some(len)) => Some(GetRange::Bounded(offset..offset.saturating_add(len))),
        }
    }

    /// The read whose first GET answered `first`: that answer's body, then
    /// the rest of `len` bytes from its start (or the rest of the object) in
    /// ranges. `describe` names the object in errors.
    pub fn read(
        &self,
        objects: Arc<dyn ObjectStore>,
        path: Path,
        first: GetResult,
        len: Option<u64>,
        describe: Arc<str>,
    ) -> ByteStream {
        let start = first.range.start;
        let end = len.map_or(first.meta.size, |len| {
            start.saturating_add(len).min(first.meta.size)
        });
        let next = first.range.end;
        let etag = first.meta.e_tag.clone();
        let current = body(first, describe.clone());
        if self.ranges == 0 || next >= end {
            return current;
        }
        Ranged {
            ahead_limit: self.ranges,
            range: self.range,
            budget: Arc::clone(&self.budget),
            source: Arc::new(Source {
                objects,
                path,
                etag,
                describe,
            }),
            current: Some(current),
            ahead: VecDeque::new(),
            next,
            end,
        }
        .boxed()
    }
}

/// The object a read's later ranges come from.
struct Source {
    objects: Arc<dyn ObjectStore>,
    path: Path,
    /// The first answer's: later ranges must be of the same version.
    etag: Option<String>,
    describe: Arc<str>,
}

impl Source {
    async fn get(&self, range: Range<u64>) -> io::Result<GetResult> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: self.etag.clone(),
            ..GetOptions::default()
        };
        let result = self
            .objects
            .get_opts(&self.path, options)
            .await
            .map_err(|e| io::Error::other(format!("{}: {e}", self.describe)))?;
        if result.range != range {
            return Err(io::Error::other(format!(
                "{}: the store answered bytes {:?} for {range:?}",
                self.describe, result.range
            )));
        }
        Ok(result)
    }

    /// `range` whole, as the chunks it arrived in (not copied again), with
    /// `permit` held until they are sent.
    async fn fetch(&self, range: Range<u64>, permit: OwnedSemaphorePermit) -> io::Result<Fetched> {
        let wanted = range.end - range.start;
        let mut stream = body(self.get(range).await?, self.describe.clone());
        let (mut chunks, mut got) = (VecDeque::new(), 0);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            got += chunk.len() as u64;
            chunks.push_back(chunk);
        }
        if got != wanted {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: a range's answer had {got} bytes of {wanted}",
                    self.describe
                ),
            ));
        }
        Ok(Fetched {
            chunks,
            _permit: permit,
        })
    }
}

/// A range fetched ahead, sent chunk by chunk; its share of the budget is
/// given back once the last chunk went.
struct Fetched {
    chunks: VecDeque<Bytes>,
    _permit: OwnedSemaphorePermit,
}

impl Stream for Fetched {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.get_mut().chunks.pop_front().map(Ok))
    }
}

fn body(result: GetResult, describe: Arc<str>) -> ByteStream {
    result
        .into_stream()
        .map_err(move |e| io::Error::other(format!("{describe}: {e}")))
        .boxed()
}

/// A range fetched ahead, on a task of its own so that it progresses while
/// the one before it is sent; cancelled when the read is dropped.
struct Fetch(tokio::task::JoinHandle<io::Result<Fetched>>);

impl Drop for Fetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Ranged {
    ahead_limit: usize,
    range: u64,
    budget: Arc<Semaphore>,
    source: Arc<Source>,
    /// The range being streamed, when it is not one fetched ahead.
    current: Option<ByteStream>,
    /// Ranges fetched ahead, in order, right after `current`'s.
    ahead: VecDeque<Fetch>,
    /// Where the first range neither streamed nor fetched starts.
    next: u64,
    end: u64,
}

impl Ranged {
    fn next_range(&mut self) -> Range<u64> {
        let range = self.next..self.next.saturating_add(self.range).min(self.end);
        self.next = range.end;
        range
    }

    /// Starts fetching the next ranges, as far as this read's limit and the
    /// budget allow.
    fn fetch_ahead(&mut self) {
        while self.ahead.len() < self.ahead_limit && self.next < self.end {
            let Ok(permit) = Arc::clone(&self.budget).try_acquire_owned() else {
                break;
            };
            let range = self.next_range();
            let source = Arc::clone(&self.source);
            self.ahead.push_back(Fetch(tokio::spawn(async move {
                source.fetch(range, permit).await
            })));
        }
    }
}

impl Stream for Ranged {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            this.fetch_ahead();
            if let Some(current) = &mut this.current {
                match ready!(current.poll_next_unpin(cx)) {
                    None => this.current = None,
                    Some(Err(e)) => {
                        // Nothing after a failed range: the body ends here.
                        this.end = this.next;
                        this.ahead.clear();
                        this.current = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Some(chunk) => return Poll::Ready(Some(chunk)),
                }
                continue;
            }
            if let Some(front) = this.ahead.front_mut() {
                let fetched = ready!(Pin::new(&mut front.0).poll(cx));
                this.ahead.pop_front();
                match fetched.unwrap_or_else(|e| Err(io::Error::other(e))) {
                    Ok(fetched) => this.current = Some(fetched.boxed()),
                    Err(e) => {
                        this.end = this.next;
                        this.ahead.clear();
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                continue;
            }
            if this.next >= this.end {
                return Poll::Ready(None);
            }
            // No budget left to fetch ahead: this range streams on its own.
            let range = this.next_range();
            let source = Arc::clone(&this.source);
            let describe = source.describe.clone();
            this.current = Some(
                futures_util::stream::once(async move {
                    source.get(range).await.map(|result| body(result, describe))
                })
                .try_flatten()
                .boxed(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    const RANGE: usize = 64 << 10;

    /// An in-memory object of `len` numbered bytes, and its content.
    async fn object(len: usize) -> (Arc<dyn ObjectStore>, Path, Vec<u8>) {
        let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let path = Path::from("blob");
        objects
            .put(&path, PutPayload::from(content.clone()))
            .await
            .unwrap();
        (objects, path, content)
    }

    /// The read of `len` bytes (or the rest) from `offset`, as the driver
    /// opens it.
    async fn open(
        ahead: &ReadAhead,
        objects: &Arc<dyn ObjectStore>,
        path: &Path,
        offset: u64,
        len: Option<u64>,
    ) -> ByteStream {
        let options = GetOptions {
            range: ahead.first(offset, len),
            ..GetOptions::default()
        };
        let first = objects.get_opts(path, options).await.unwrap();
        ahead.read(
            Arc::clone(objects),
            path.clone(),
            first,
            len,
            Arc::from("blob"),
        )
    }

    async fn collect(mut stream: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    /// With room for every range, for one range, or for none, a read
    /// returns exactly its bytes, and gives the budget back when done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_are_exact_whatever_the_budget() {
        let (objects, path, content) = object(10 * RANGE + 77).await;
        for budget in [8 * RANGE, RANGE, 0] {
            let ahead = ReadAhead::new(RANGE, 3, budget);
            let permits = ahead.budget.available_permits();
            for (offset, len) in [
                (0, None),
                (RANGE as u64 - 1, Some(3 * RANGE as u64 + 2)),
                (5, None),
            ] {
                let got = collect(open(&ahead, &objects, &path, offset, len).await).await;
                let end = len.map_or(content.len(), |len| (offset + len) as usize);
                assert!(
                    got == content[offset as usize..end],
                    "budget {budget}, offset {offset}, len {len:?}: wrong bytes"
                );
            }
            assert_eq!(ahead.budget.available_permits(), permits, "budget {budget}");
        }
    }

    /// A read dropped half way (a client that went away) cancels what it
    /// fetched ahead and gives its budget back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_read_gives_its_budget_back() {
        let (objects, path, _) = object(20 * RANGE).await;
        let ahead = ReadAhead::new(RANGE, 4, 16 * RANGE);
        let mut stream = open(&ahead, &objects, &path, 0, None).await;
        let _ = stream.next().await.unwrap().unwrap();
        assert!(
            ahead.budget.available_permits() < 16,
            "ranges were fetched ahead"
        );
        assert!(
            ahead.budget.available_permits() >= 12,
            "at most 4 ranges ahead per read"
        );
        drop(stream);
        // The aborted fetches drop their permits as their tasks end.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while ahead.budget.available_permits() < 16 {
            assert!(std::time::Instant::now() < deadline, "the budget came back");
            tokio::task::yield_now().await;
        }
    }

    /// An object replaced between two ranges fails the read rather than
    /// mix two versions, whether its later ranges stream on their own (no
    /// budget) or were being fetched ahead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_object_fails_the_read() {
        for budget in [0, 8 * RANGE] {
            let (objects, path, content) = object(4 * RANGE).await;
            // Opened before the change; later ranges are asked for (and
            // fetched ahead) only from the first poll, after it.
            let ahead = ReadAhead::new(RANGE, 3, budget);
            let mut stream = open(&ahead, &objects, &path, 0, None).await;
            objects
                .put(&path, PutPayload::from(vec![9u8; 4 * RANGE]))
                .await
                .unwrap();
            let (mut failed, mut at) = (false, 0);
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => {
                        assert!(
                            chunk[..] == content[at..at + chunk.len()],
                            "budget {budget}: bytes of the new version"
                        );
                        at += chunk.len();
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            assert!(failed, "budget {budget}: the read failed");
            assert!(at < content.len(), "budget {budget}: the read was cut");
        }
    }
}
