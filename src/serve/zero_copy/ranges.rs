//! A blob read from an object store on plain HTTP, relayed in ranges: the
//! store's answers go from their sockets to the client's with `splice(2)`
//! ([`super::relay`]), never through a user-space buffer.
//!
//! Why: the driver's own read ([`crate::storage::s3`]) copies every byte
//! from the store's socket into memory and again into the client's. On two
//! cores shared with Garage that was 0.6 CPU-seconds per GiB pulled
//! (2026-12-08), taken from the store, which needs more than a core itself
//! for that GiB.
//!
//! How: the read is cut as the driver cuts its own ([`RelayPlan`]): ranged
//! `GET`s of a part's size, each signed by the driver ([`PlainGets`]) and
//! sent on a connection of its own, `ahead` of them at once. A range asked
//! for ahead waits in its socket (the kernel's buffer and the store's flow
//! control bound it) until the ranges before it are relayed; the store
//! meanwhile works on all of them. The first range is asked for before the
//! response is built, so a store that declines (an error, an answer a relay
//! cannot carry) leaves the read to the driver, which answers whatever the
//! store said. Every range after the first is asked for with the first
//! answer's `ETag` (`If-Match`), so all come from one version of the
//! object, and each answer must be `206` for exactly its range: anything
//! else, later, fails the body, and hyper closes the client's connection
//! rather than end a body short. An answer that waited for its turn longer
//! than a quarter of the store's idle time (a slow client) is dropped and
//! asked for again.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use super::fetch::{CONNECT_TIMEOUT, Fetched, fetch};
use super::{LOG_TARGET, Sender, relay};
use crate::storage::{ByteStream, PlainGets, RelayPlan, RelayedRead};

/// Reads shorter than this are left to the driver: a connection of their
/// own costs more than copying a config or a small layer.
pub const RELAY_MIN: u64 = 1 << 20;

/// `read` relayed onto the client connection of `sender`, or `None` when it
/// is left to the driver (too small, or the store declined its first
/// range, which is logged).
pub async fn ranges(sender: Sender, read: RelayedRead) -> Option<ByteStream> {
    // The driver's read logs the copy it makes; this says why.
    let copy = |why: &str| {
        tracing::debug!(target: LOG_TARGET, why, "the store's answer is not relayed");
        None
    };
    if read.len < RELAY_MIN {
        return None;
    }
    let end = read.offset.saturating_add(read.len);
    let gets = Arc::new(Gets {
        gets: read.gets,
        key: read.key,
    });
    let first = read.offset..end.min(read.offset.saturating_add(gets.plan().range));
    let answer = match gets.get(first.clone(), None).await {
        Ok(Got::Answer(answer)) => answer,
        Ok(Got::Declined(why)) => return copy(why),
        Err(e) => {
            tracing::debug!(target: LOG_TARGET, error = %e, "the store's first range failed");
            return copy("store");
        }
    };
    let etag = answer.etag.clone();
    let current = match gets.relay(&sender, &first, answer) {
        Ok(relay) => relay,
        Err(e) => {
            tracing::warn!(error = %e, "cannot relay a blob from the store");
            return copy("pipe");
        }
    };
    tracing::debug!(target: LOG_TARGET, path = "splice", bytes = read.len, "blob sent");
    let mut ranges = Ranges {
        sender,
        gets,
        etag,
        current: Some(current),
        ahead: VecDeque::new(),
        next: first.end,
        end,
        done: false,
    };
    ranges.top_up();
    Some(ranges.boxed())
}

/// The signed GETs of one object, and how its read is split.
struct Gets {
    gets: Arc<dyn PlainGets>,
    key: String,
}

/// A range's answer: its socket at the body's start, the body bytes that
/// came with the head, and the version it is of.
struct Answer {
    socket: TcpStream,
    early: Vec<u8>,
    etag: Option<HeaderValue>,
    /// When its head came: see [`Ranges::stale`].
    at: Instant,
}

enum Got {
    Answer(Answer),
    Declined(&'static str),
}

impl Gets {
    fn plan(&self) -> &RelayPlan {
        self.gets.plan()
    }

    /// Asks for `range` (of the version `etag`, when set) and reads the
    /// answer's head, within the idle time.
    async fn get(&self, range: Range<u64>, etag: Option<HeaderValue>) -> io::Result<Got> {
        let signed = self
            .gets
            .signed_get(&self.key)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut headers = HeaderMap::new();
        let asked = format!("bytes={}-{}", range.start, range.end - 1);
        headers.insert(
            header::RANGE,
            HeaderValue::from_str(&asked).map_err(io::Error::other)?,
        );
        if let Some(etag) = etag {
            headers.insert(header::IF_MATCH, etag);
        }
        let wait = CONNECT_TIMEOUT + self.plan().idle;
        let fetched = tokio::time::timeout(
            wait,
            fetch(
                &signed.authority,
                &signed.target,
                &headers,
                StatusCode::PARTIAL_CONTENT,
            ),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the store did not answer"))??;
        let (head, socket, early, len) = match fetched {
            Fetched::Relay(relay) => *relay,
            Fetched::Declined(why) => return Ok(Got::Declined(why)),
        };
        let covers = head
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(content_range)
            .is_some_and(|covered| covered == range);
        if !covers || len != range.end - range.start {
            return Ok(Got::Declined("range"));
        }
        Ok(Got::Answer(Answer {
            socket,
            early,
            etag: head.headers.get(header::ETAG).cloned(),
            at: Instant::now(),
        }))
    }

    /// `answer`'s body (the bytes of `range`) relayed onto the client
    /// connection of `sender`.
    fn relay(&self, sender: &Sender, range: &Range<u64>, answer: Answer) -> io::Result<ByteStream> {
        relay(
            sender.clone(),
            answer.socket,
            range.end - range.start,
            &answer.early,
            Some(self.plan().idle),
        )
    }
}

/// The bytes a `Content-Range: bytes first-last/size` covers.
fn content_range(value: &str) -> Option<Range<u64>> {
    let (span, _size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then(|| first..last + 1)
}

/// A range asked for ahead: its fetch on a task of its own (so that it
/// progresses while the ranges before it are relayed), aborted if the
/// body goes first.
struct Ahead {
    range: Range<u64>,
    task: JoinHandle<io::Result<Got>>,
    /// Its share of the driver's budget, while it waits.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ranges {
    sender: Sender,
    gets: Arc<Gets>,
    /// The first answer's: later ranges must be of the same version.
    etag: Option<HeaderValue>,
    /// The relay of the range being sent.
    current: Option<ByteStream>,
    ahead: VecDeque<Ahead>,
    /// Where the next range to ask for starts, and where the read ends.
    next: u64,
    end: u64,
    done: bool,
}

impl Ranges {
    /// Asks for the next ranges, up to the plan's count ahead as far as the
    /// budget allows; the range to be sent next is asked for regardless.
    fn top_up(&mut self) {
        while self.next < self.end && self.ahead.len() < self.gets.plan().ahead.max(1) {
            let needed_now = self.current.is_none() && self.ahead.is_empty();
            let permit = match Arc::clone(&self.gets.plan().budget).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) if needed_now => None,
                Err(_) => break,
            };
            let range = self.next
                ..self
                    .end
                    .min(self.next.saturating_add(self.gets.plan().range));
            self.next = range.end;
            let ahead = self.ask(range, permit);
            self.ahead.push_back(ahead);
        }
    }

    /// `range` asked for on a task of its own.
    fn ask(&self, range: Range<u64>, permit: Option<OwnedSemaphorePermit>) -> Ahead {
        let (gets, etag, asked) = (Arc::clone(&self.gets), self.etag.clone(), range.clone());
        Ahead {
            range,
            task: tokio::spawn(async move { gets.get(asked, etag).await }),
            _permit: permit,
        }
    }

    /// How long an answer may wait in its socket for its turn before it is
    /// asked for again: a quarter of the store's idle time. A store may
    /// close a connection whose reader stalls, and a client slow enough to
    /// leave an answer waiting that long gains nothing from reading ahead.
    fn stale(&self) -> Duration {
        self.gets.plan().idle / 4
    }

    /// The relay of the front range, once its answer came.
    fn poll_next_range(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<ByteStream>>> {
        self.top_up();
        let (range, answer) = loop {
            let Some(front) = self.ahead.front_mut() else {
                return Poll::Ready(Ok(None));
            };
            let got = match Pin::new(&mut front.task).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(got) => got,
            };
            let range = front.range.clone();
            self.ahead.pop_front();
            match got {
                Ok(Ok(Got::Answer(answer))) if answer.at.elapsed() > self.stale() => {
                    tracing::debug!(
                        target: LOG_TARGET,
                        ?range,
                        "a range waited too long for its turn; asked again"
                    );
                    let again = self.ask(range, None);
                    self.ahead.push_front(again);
                }
                Ok(Ok(Got::Answer(answer))) => break (range, answer),
                Ok(Ok(Got::Declined(why))) => {
                    return Poll::Ready(Err(io::Error::other(format!(
                        "the store declined bytes {range:?} of a relayed blob ({why})"
                    ))));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(e) => return Poll::Ready(Err(io::Error::other(e))),
            }
        };
        Poll::Ready(self.gets.relay(&self.sender, &range, answer).map(Some))
    }
}

impl Stream for Ranges {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(current) = &mut this.current {
                match current.poll_next_unpin(cx) {
                    Poll::Ready(None) => this.current = None,
                    Poll::Ready(Some(Err(e))) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    other => return other,
                }
            }
            match this.poll_next_range(cx) {
                Poll::Ready(Ok(Some(relay))) => {
                    this.current = Some(relay);
                    // The ranges after it are asked for ahead, as the
                    // budget allows.
                    this.top_up();
                }
                Poll::Ready(Ok(None)) => return Poll::Ready(None),
                Poll::Ready(Err(e)) => {
                    this.done = true;
                    this.ahead.clear();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::content_range;

    #[test]
    fn content_ranges_read_as_the_bytes_they_cover() {
        assert_eq!(content_range("bytes 0-1023/4096"), Some(0..1024));
        assert_eq!(
            content_range("bytes 8388608-16777215/*"),
            Some(8388608..16777216)
        );
        assert_eq!(content_range("bytes 5-4/10"), None);
        assert_eq!(content_range("bytes */10"), None);
        assert_eq!(content_range("items 0-1/2"), None);
    }
}
