//! A body relayed from another socket with `splice(2)`: the bytes go from
//! that socket into a pipe and from the pipe to the client's socket, moved
//! as page references in the kernel and never through a user-space buffer.
//! What uses it: a v1 layer pulled from the legacy backend and a blob pulled
//! from an upstream registry over plain HTTP/1 ([`super::fetch`]), whose
//! answer's length is known from its `Content-Length` before the body starts.
//!
//! The marker frames of [`super`] carry it: the body (a [`Relay`]) fills the
//! pipe from the source socket and yields a marker frame for exactly the
//! bytes it put in the pipe, so a frame's bytes are always waiting in the
//! pipe when hyper writes it; the connection's [`super::Stream`] then
//! splices them from the pipe to the client, checked against the queue by
//! address as a file range's are. The pipe is the only buffer, and it is
//! bounded: the body waits (for a drain of the pipe by the connection) when
//! it is full, so a slow client slows the backend down instead of filling
//! memory.
//!
//! Wake-ups: the source socket's receive low-water mark (`SO_RCVLOWAT`) is
//! raised to half the pipe (at most [`LOW_WATER`]), so the kernel wakes the
//! relay once that much is queued rather than at every segment: measured
//! on two cores (2026-12-07), in one sweep of marks, a 1 GiB layer from the
//! legacy backend took Portcullis 0.26 CPU-seconds at the kernel's mark of
//! one byte, 0.22 at 256 KiB, 0.15 at 512 KiB (the builds before and after,
//! side by side: 0.30 and 0.20). The mark never asks for more than the body
//! has left, and a source slower than the mark per [`TRICKLE`] gets it
//! lowered again, so a trickle is relayed as it comes.
//!
//! A source that ends before its length fails the body, and so the
//! response: hyper then closes the client's connection rather than end a
//! body that announced more, so a client never takes a cut layer for a
//! whole one.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::{Sender, Source, WINDOW, out_of_step};
use crate::storage::ByteStream;

/// The pipe's capacity asked for: the most a body holds between the two
/// sockets. A pipe's default (64 KiB) made a splice per 64 KiB on each
/// side; 1 MiB is also the largest an unprivileged process may ask for
/// (`/proc/sys/fs/pipe-max-size`). Refused, the default is used.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// The highest receive low-water mark asked of the source socket while
/// bytes come fast, and half of [`PIPE_SIZE`]: a pipe half drained has room
/// for what one wake-up brings.
const LOW_WATER: usize = 512 << 10;

/// How long the relay waits for its mark's worth of bytes before it takes
/// what there is: a source slower than that (50 MB/s at [`LOW_WATER`]) is
/// relayed as it comes, at the kernel's own mark of one byte, until it is
/// fast again.
const TRICKLE: Duration = Duration::from_millis(10);

/// A pipe between the source socket and the client's, shared by the body
/// that fills it and the connection that drains it.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// In bytes, as the kernel reports it.
    capacity: usize,
    state: Mutex<PipeState>,
}

#[derive(Default)]
struct PipeState {
    /// Bytes in the pipe: put in by the body, not yet sent by the
    /// connection.
    held: usize,
    /// Bytes the connection has sent from the pipe: a body that saw the
    /// pipe full waits for this to move.
    drained: u64,
    /// The body, when it waits for the pipe to drain.
    waker: Option<Waker>,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor `write` keeps open; plain integers.
        let capacity = unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let capacity = usize::try_from(capacity).map_err(|_| io::Error::last_os_error())?;
        Ok(Self {
            read,
            write,
            capacity,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends up to `count` bytes of the pipe to `socket` (the connection's,
    /// for a frame whose bytes the body put in the pipe before yielding it).
    pub(super) fn send(&self, socket: RawFd, count: usize) -> io::Result<usize> {
        let count = count.min(self.state().held);
        if count == 0 {
            // A frame is yielded only for bytes already in the pipe.
            return Err(out_of_step("a relayed frame with no bytes in its pipe"));
        }
        match splice(self.read.as_raw_fd(), socket, count)? {
            0 => Err(out_of_step("a relayed frame's pipe was empty")),
            n => {
                let waker = {
                    let mut state = self.state();
                    state.held -= n;
                    state.drained += n as u64;
                    state.waker.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
                Ok(n)
            }
        }
    }
}

/// `splice(2)` of up to `count` bytes from `from` to `to`, without waiting
/// (the pipe end is non-blocking, and so are the sockets).
fn splice(from: RawFd, to: RawFd, count: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors (kept open by their owners for the call),
    // no offsets (both ends are a pipe or a socket), flags only.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            count,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// The body relaying `len` bytes from `socket` to the client connection of
/// `sender`: `early` first (body bytes already read with the head, fewer
/// than a page), then the rest of the socket. With `idle`, a source that
/// sends nothing for that long while the relay has room for its bytes fails
/// the body (a slow client is not a stalled source).
pub fn relay(
    sender: Sender,
    socket: TcpStream,
    len: u64,
    early: &[u8],
    idle: Option<Duration>,
) -> io::Result<ByteStream> {
    let pipe = Arc::new(Pipe::new()?);
    let early = &early[..early.len().min(usize::try_from(len).unwrap_or(usize::MAX))];
    if !early.is_empty() {
        // SAFETY: a write of a live slice to a descriptor `pipe` holds.
        let n = unsafe { libc::write(pipe.write.as_raw_fd(), early.as_ptr().cast(), early.len()) };
        if usize::try_from(n).ok() != Some(early.len()) {
            return Err(io::Error::other(
                "the pipe did not take the body's first bytes",
            ));
        }
        pipe.state().held = early.len();
    }
    let marks = Marks::new(pipe.capacity);
    let mut relay = Relay {
        sender,
        id: None,
        pipe,
        socket,
        len,
        filled: early.len() as u64,
        yielded: 0,
        done: false,
        marks,
        stall: idle.map(Deadline::after),
    };
    relay.set_mark();
    Ok(relay.boxed())
}

/// The source socket's low-water mark, and what decides it: whether the
/// source keeps up the high mark's worth per [`TRICKLE`].
struct Marks {
    /// The mark while the source is fast: half the pipe, at most
    /// [`LOW_WATER`].
    high: usize,
    /// The mark in force on the socket (1: the kernel's default).
    current: usize,
    /// Set while the source trickles: since when, and the bytes moved
    /// since then. `high` of them within [`TRICKLE`] ends it.
    trickle: Option<(Instant, usize)>,
    /// The end of a wait for the socket at the raised mark.
    wait: Deadline,
}

impl Marks {
    fn new(pipe: usize) -> Self {
        Self {
            high: LOW_WATER.min(pipe / 2).max(1),
            current: 1,
            trickle: None,
            wait: Deadline::after(TRICKLE),
        }
    }

    /// Bytes moved from the socket: the wait is over, and a trickle that
    /// came fast enough ends.
    fn moved(&mut self, n: usize) {
        self.wait.clear();
        if let Some((since, bytes)) = &mut self.trickle {
            if since.elapsed() > TRICKLE {
                (*since, *bytes) = (Instant::now(), n);
            } else {
                *bytes += n;
                if *bytes >= self.high {
                    self.trickle = None;
                }
            }
        }
    }

    /// The socket has nothing for the relay: true when the raised mark was
    /// waited on for longer than [`TRICKLE`], and the source is taken for
    /// a trickle from now on.
    fn waited_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        if self.current <= 1 || !self.wait.expired(cx) {
            return false;
        }
        self.wait.clear();
        self.trickle = Some((Instant::now(), 0));
        true
    }
}

/// The end of a wait that started at the first look after the last
/// [`Deadline::clear`]: how the relay tells a source below its mark (after
/// [`TRICKLE`]) and a stalled source (after the idle time).
struct Deadline {
    after: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl Deadline {
    fn after(after: Duration) -> Self {
        Self {
            after,
            timer: Box::pin(tokio::time::sleep(after)),
            armed: false,
        }
    }

    /// True once `after` has passed since the wait started (this call
    /// starts one when none runs); the task is woken then otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(Instant::now() + self.after);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// The wait is over.
    fn clear(&mut self) {
        self.armed = false;
    }
}

struct Relay {
    sender: Sender,
    /// Set once the relay is queued on the connection (its first frame).
    id: Option<u64>,
    pipe: Arc<Pipe>,
    socket: TcpStream,
    len: u64,
    /// Bytes put in the pipe.
    filled: u64,
    /// Bytes yielded as frames.
    yielded: u64,
    /// Ended by an error: nothing more is yielded.
    done: bool,
    marks: Marks,
    /// With an idle time: armed while the relay waits for the source with
    /// room for its bytes, cleared by any byte and by a wait for the client.
    stall: Option<Deadline>,
}

impl Relay {
    /// Sets the socket's low-water mark to what the source's pace and the
    /// body's rest call for: never more than the socket has left to give,
    /// so the last bytes wake the relay too.
    fn set_mark(&mut self) {
        let left = usize::try_from(self.len - self.filled).unwrap_or(usize::MAX);
        let mark = match self.marks.trickle {
            Some(_) => 1,
            None => self.marks.high.min(left).max(1),
        };
        if mark == self.marks.current {
            return;
        }
        let value = libc::c_int::try_from(mark).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt on a descriptor `socket` keeps open, with a
        // pointer to a live c_int and its size.
        let set = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // Refused, the kernel's mark stays: the relay works as before, with
        // more wake-ups. The kernel signals readiness at once when a lowered
        // mark is already met.
        if set == 0 {
            self.marks.current = mark;
        }
    }

    /// Moves what the socket has into the pipe, as far as the pipe takes
    /// it; ready once some bytes went in. Pending with a waker registered:
    /// the socket's readiness, or the connection's next drain of the pipe.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut added = false;
        while self.filled < self.len {
            let (held, drained) = {
                let state = self.pipe.state();
                (state.held, state.drained)
            };
            let room = self.pipe.capacity.saturating_sub(held);
            if room == 0 {
                if added {
                    break;
                }
                if self.wait_for_drain(cx, drained) {
                    return Poll::Pending;
                }
                continue;
            }
            match self.socket.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if !added && self.stall.as_mut().is_some_and(|s| s.expired(cx)) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the source stopped sending",
                        )));
                    }
                    if !added && self.marks.waited_too_long(cx) {
                        // Woken by the kernel once the lowered mark is met.
                        self.set_mark();
                    }
                    break;
                }
            }
            let want = room.min(usize::try_from(self.len - self.filled).unwrap_or(usize::MAX));
            let (socket, pipe) = (&self.socket, &self.pipe);
            let moved = socket.try_io(Interest::READABLE, || {
                match splice(socket.as_raw_fd(), pipe.write.as_raw_fd(), want) {
                    // A pipe holds a number of buffers, not of bytes: one
                    // already holding some may be full of small ones while
                    // the count says there is room. Only an empty pipe says
                    // for sure that the socket had nothing: anything else
                    // keeps the socket's readiness and waits for a drain.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && held > 0 => Ok(None),
                    other => other.map(Some),
                }
            });
            match moved {
                // What came before the end (or an error) goes out first: the
                // next poll meets the end again and fails the body.
                Ok(Some(0)) | Err(_) if added => break,
                Ok(Some(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the source closed before the end of the body",
                    )));
                }
                Ok(Some(n)) => {
                    self.pipe.state().held += n;
                    self.filled += n as u64;
                    added = true;
                    self.marks.moved(n);
                    if let Some(stall) = &mut self.stall {
                        stall.clear();
                    }
                    self.set_mark();
                }
                Ok(None) => {
                    if added {
                        break;
                    }
                    if self.wait_for_drain(cx, drained) {
                        return Poll::Pending;
                    }
                }
                // The socket's readiness was cleared: the next poll of it
                // registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        match added {
            true => Poll::Ready(Ok(())),
            false if self.filled >= self.len => Poll::Ready(Ok(())),
            false => Poll::Pending,
        }
    }

    /// Registers the body to be woken by the connection's next drain of the
    /// pipe; false when one happened since `drained` was read (try again).
    fn wait_for_drain(&mut self, cx: &mut Context<'_>, drained: u64) -> bool {
        let mut state = self.pipe.state();
        if state.drained != drained {
            return false;
        }
        state.waker = Some(cx.waker().clone());
        // Waiting for the client: the source is not stalled.
        if let Some(stall) = &mut self.stall {
            stall.clear();
        }
        true
    }
}

impl Stream for Relay {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.filled > this.yielded {
                // Queued on the first frame, not when the response was
                // built, so that the connection's queue is in the order
                // hyper writes the bodies (see the module comment of
                // `zero_copy`).
                let id = match this.id {
                    Some(id) => id,
                    None => *this.id.insert(this.sender.push_source(
                        Source::Pipe(Arc::clone(&this.pipe)),
                        0,
                        this.len,
                    )),
                };
                // A frame never crosses a window of its slot, as a file
                // range's frames do not.
                let in_window = (this.yielded % WINDOW as u64) as usize;
                let count = usize::try_from(this.filled - this.yielded)
                    .unwrap_or(usize::MAX)
                    .min(WINDOW - in_window);
                this.yielded += count as u64;
                return Poll::Ready(Some(Ok(Sender::frame_at(id, in_window, count))));
            }
            if this.filled >= this.len {
                return Poll::Ready(None);
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Frames yielded may still be in hyper's buffer (their bytes are in
        // the pipe, which the queue keeps); the rest never will be.
        if let Some(id) = self.id {
            self.sender.yielded_up_to(id, self.yielded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::zero_copy::Stream;
    use crate::serve::zero_copy::tests::socket_pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `source` (written by the test) relayed onto a connection as hyper
    /// would write the frames; what the connection's peer read, and the
    /// body's error if it ended with one.
    async fn relayed(early: &[u8], rest: Vec<u8>, len: u64) -> (Vec<u8>, Option<io::Error>) {
        let (mut source, relayed_from) = socket_pair().await;
        let (socket, mut peer) = socket_pair().await;
        let mut stream = Stream::new(socket);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        // Written by another task, and closed once written, so that the
        // relay waits for bytes that have not come yet.
        tokio::spawn(async move {
            source.write_all(&rest).await.unwrap();
        });
        let mut body = relay(stream.sender(), relayed_from, len, early, None).unwrap();
        let mut error = None;
        while let Some(frame) = body.next().await {
            match frame {
                Ok(frame) => stream.write_all(&frame).await.unwrap(),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        drop(body);
        stream.shutdown().await.unwrap();
        drop(stream);
        (reader.await.unwrap(), error)
    }

    /// More than a window and more than the pipe holds, with body bytes
    /// read with the head: every byte arrives, in order.
    #[tokio::test]
    async fn a_relayed_body_arrives_whole_and_in_order() {
        let data: Vec<u8> = (0..(WINDOW + WINDOW / 2 + 7) as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        let (early, rest) = data.split_at(1000);
        let (got, error) = relayed(early, rest.to_vec(), data.len() as u64).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the relayed bytes differ");
    }

    /// A source that sends less than the relay's raised mark and then waits
    /// for the client to have it (a backend trickling, or answering a
    /// client's progress) gets it relayed all the same, once the relay has
    /// waited [`TRICKLE`]: the mark is lowered, never waited on for good.
    #[tokio::test]
    async fn a_trickle_below_the_mark_is_relayed_as_it_comes() {
        let (mut source, relayed_from) = socket_pair().await;
        let (socket, mut peer) = socket_pair().await;
        let mut stream = Stream::new(socket);
        let (first_seen, seen) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 1000];
            peer.read_exact(&mut got).await.unwrap();
            first_seen.send(()).unwrap();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        tokio::spawn(async move {
            source.write_all(&[7; 1000]).await.unwrap();
            // The rest only once the first bytes reached the client.
            seen.await.unwrap();
            source.write_all(&[7; 9000]).await.unwrap();
        });
        let mut body = relay(stream.sender(), relayed_from, 10_000, b"", None).unwrap();
        let relayed = async {
            while let Some(frame) = body.next().await {
                stream.write_all(&frame.unwrap()).await.unwrap();
                stream.flush().await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), relayed)
            .await
            .expect("the first bytes were held back for the mark");
        drop(body);
        stream.shutdown().await.unwrap();
        drop(stream);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), 10_000);
        assert!(got.iter().all(|&b| b == 7));
    }

    /// A source that stops sending, its connection open, fails the body
    /// once it has sent nothing for the idle time: what it sent before is
    /// relayed, and the client is not held for good.
    #[tokio::test]
    async fn a_source_that_stalls_fails_the_body_after_the_idle_time() {
        let (mut source, relayed_from) = socket_pair().await;
        let (socket, mut peer) = socket_pair().await;
        let mut stream = Stream::new(socket);
        source.write_all(&[3; 1000]).await.unwrap();
        let idle = std::time::Duration::from_millis(300);
        let mut body = relay(stream.sender(), relayed_from, 10_000, b"", Some(idle)).unwrap();
        let started = std::time::Instant::now();
        let mut error = None;
        let mut sent = 0;
        while let Some(frame) = body.next().await {
            match frame {
                Ok(frame) => {
                    stream.write_all(&frame).await.unwrap();
                    stream.flush().await.unwrap();
                    sent += frame.len();
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let error = error.expect("the stalled source failed the body");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= idle, "{:?}", started.elapsed());
        assert_eq!(sent, 1000);
        let mut got = vec![0; 1000];
        peer.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 3));
        drop(source);
    }

    /// A source that ends early fails the body: never a short body that
    /// ends as if it were whole.
    #[tokio::test]
    async fn a_source_that_ends_early_fails_the_body() {
        let (got, error) = relayed(b"", vec![5; 300_000], 1_000_000).await;
        let error = error.expect("the body failed");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got.len(), 300_000, "what came before the end is sent");
        assert!(got.iter().all(|&b| b == 5));
    }
}
