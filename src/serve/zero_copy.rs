//! Zero-copy blob downloads: file pages go from the page cache to the socket
//! with `sendfile(2)`, never through a user-space buffer.
//!
//! hyper cannot be handed a file, only body frames of bytes. So every plain
//! TCP connection's socket is wrapped in a [`Stream`], and a body that should
//! come from a file is made of *marker* frames: slices of one static,
//! zero-filled [`MARKER`] buffer, as long in total as the file range. hyper
//! queues body frames without copying them when its transport writes
//! vectored (which [`Stream`] says it does) and passes them on as `IoSlice`s
//! to [`Stream::poll_write_vectored`]. There a slice that points into
//! [`MARKER`] is not written: as many bytes of the file as the socket takes
//! are sent with `sendfile`, and that count is returned as written, so hyper
//! advances through its frame exactly as if it had written it.
//!
//! Which file, and where in it: the body registers its [`FileRange`] with
//! the connection's [`Sender`] when hyper first polls it, and hyper writes a
//! connection's bytes in order, so the front range is the one the next
//! marker byte belongs to. That is not taken on trust, because a marker byte
//! sent from the wrong range would arrive as the right length of wrong bytes:
//! each range's frames are slices of its own *slot* of [`MARKER`]
//! (consecutive ranges of a connection alternate), and the frame's address
//! says at which byte of its window hyper is. A marker write is sent only
//! when that address is exactly where the front range expects its next byte;
//! anything else (a range left unfinished, a frame hyper cut short) fails the
//! connection instead of sending one byte from the wrong place. A body
//! dropped before its end withdraws the bytes it never yielded.
//!
//! The same frames carry a body relayed from another socket ([`relay`]): a
//! v1 layer pulled from the legacy backend, a blob from an upstream
//! registry or from an S3 store on plain HTTP ([`ranges`]) goes from the
//! other server's socket into a pipe and from the pipe to the client's
//! socket with `splice(2)`.
//! A queued range's source is then that pipe, and a frame is sent from it
//! by the same rule: only at the address where its range expects its next
//! byte.
//!
//! Only HTTP/1 over plain TCP uses this: HTTP/2 and TLS frame or
//! encrypt the body, so they get the copied stream
//! ([`FileRange::into_stream`]). Should hyper (or a wrapper between hyper
//! and [`Stream`]) copy a marker frame instead of passing it through, it
//! would write ordinary bytes while a range waits for its marker: [`Stream`]
//! refuses that write, so the connection fails rather than send zeros.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::storage::{ByteStream, Content, FileRange};

mod fetch;
mod ranges;
mod relay;

pub use fetch::{CONNECT_TIMEOUT, Fetched, fetch};
pub use ranges::ranges;
pub use relay::relay;

/// The target of the log line that says which path a body took, for the
/// relays logged by their callers too: one filter shows them all.
pub const LOG_TARGET: &str = "portcullis::serve::zero_copy";

/// Bytes a body hands to hyper per frame, and sends with one `sendfile`
/// call at most. Each window is in the page cache before its frame is
/// yielded (see [`load`]), so `sendfile` on a runtime thread does not wait
/// for the disk.
const WINDOW: usize = 4 << 20;

/// Ranges shorter than this are streamed: for a small blob (a config, a
/// manifest-sized layer) the residency check costs more than the copy.
const MIN_LEN: u64 = 64 << 10;

/// Slots of [`MARKER`], one window each; a connection's consecutive ranges
/// take turns, so a frame of one range can never sit at the address the
/// range before it expects.
const SLOTS: usize = 2;

/// Never read (it stays untouched, zero pages the process never faults in):
/// the address range identifies a frame as "send from the file", the slot
/// and the offset within it say from which range and where.
static MARKER: [u8; SLOTS * WINDOW] = [0; SLOTS * WINDOW];

fn is_marker(slice: &[u8]) -> bool {
    !slice.is_empty() && MARKER.as_ptr_range().contains(&slice.as_ptr())
}

/// Where a queued range's bytes come from.
enum Source {
    /// A file, its bytes at the range's offsets.
    File(Arc<File>),
    /// A pipe that a relayed body fills (offsets count the body's bytes).
    Pipe(Arc<relay::Pipe>),
}

/// A range queued on a connection: the bytes `[at, end)` still to send
/// (`at` advances as they go) and where its frames are.
struct Entry {
    /// The connection's count of ranges when this one was registered.
    id: u64,
    source: Source,
    /// Where the range started: its frames cover `[start, end)` window by
    /// window.
    start: u64,
    at: u64,
    end: u64,
}

impl Entry {
    fn slot(&self) -> usize {
        (self.id % SLOTS as u64) as usize
    }

    fn is_empty(&self) -> bool {
        self.at >= self.end
    }

    /// Where in its window the next byte to send is.
    fn in_window(&self) -> usize {
        ((self.at - self.start) % WINDOW as u64) as usize
    }

    /// The marker address hyper must be at for the next byte of this range.
    fn expected(&self) -> *const u8 {
        MARKER[self.slot() * WINDOW..]
            .as_ptr()
            .wrapping_add(self.in_window())
    }
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    registered: u64,
}

/// The connection's queue of file ranges still to send, shared by its socket
/// and the bodies of its responses.
#[derive(Clone, Default)]
pub struct Sender(Arc<Mutex<Queue>>);

impl Sender {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `range`; returns its id, which picks the slot its frames use.
    fn push(&self, range: FileRange) -> u64 {
        self.push_source(Source::File(range.file), range.offset, range.end)
    }

    /// Queues the bytes `[start, end)` of `source`; returns their id, which
    /// picks the slot their frames use.
    fn push_source(&self, source: Source, start: u64, end: u64) -> u64 {
        let mut queue = self.queue();
        let id = queue.registered;
        queue.registered += 1;
        queue.entries.push_back(Entry {
            id,
            source,
            start,
            at: start,
            end: end.max(start),
        });
        id
    }

    /// The frame for `len` bytes of range `id`, which start a window.
    fn frame(id: u64, len: usize) -> Bytes {
        Self::frame_at(id, 0, len)
    }

    /// The frame for `len` bytes of range `id` from byte `in_window` of a
    /// window (`in_window + len` at most a window).
    fn frame_at(id: u64, in_window: usize, len: usize) -> Bytes {
        let at = (id % SLOTS as u64) as usize * WINDOW + in_window;
        Bytes::from_static(&MARKER[at..at + len])
    }

    /// A body of range `id` ended having yielded its bytes up to `at`: the
    /// bytes after it will never be asked for, and must not be left for the
    /// next response's frames to meet.
    fn yielded_up_to(&self, id: u64, at: u64) {
        let mut queue = self.queue();
        if let Some(i) = queue.entries.iter().position(|e| e.id == id) {
            let entry = &mut queue.entries[i];
            entry.end = entry.end.min(at.max(entry.at));
            if entry.is_empty() {
                queue.entries.remove(i);
            }
        }
    }

    /// Whether a range is waiting for its marker bytes.
    fn is_waiting(&self) -> bool {
        !self.queue().entries.is_empty()
    }

    /// Sends from the front range to `socket` as many of `frame`'s bytes as
    /// it takes, once `frame` is shown to be where that range is: from its
    /// file with `sendfile`, or from its pipe with `splice`.
    fn send(&self, socket: &TcpStream, frame: &[u8]) -> io::Result<usize> {
        let mut queue = self.queue();
        let Some(front) = queue.entries.front_mut() else {
            return Err(out_of_step("a zero-copy frame without a file range"));
        };
        if frame.as_ptr() != front.expected() {
            return Err(out_of_step(
                "a zero-copy frame out of step with the connection's file range",
            ));
        }
        let count = frame
            .len()
            .min(WINDOW - front.in_window())
            .min(usize::try_from(front.end - front.at).unwrap_or(usize::MAX));
        let sent = match &front.source {
            Source::File(file) => send_file(socket, file, front.at, count)?,
            Source::Pipe(pipe) => pipe.send(socket.as_raw_fd(), count)?,
        };
        front.at += sent as u64;
        if front.is_empty() {
            queue.entries.pop_front();
        }
        Ok(sent)
    }
}

/// `sendfile(2)` of up to `count` bytes of `file` from `offset` to `socket`.
fn send_file(socket: &TcpStream, file: &File, offset: u64, count: usize) -> io::Result<usize> {
    let mut offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: both descriptors are open for the duration of the call
    // (`socket` and `file` are borrowed), and `offset` is a valid,
    // exclusively borrowed off_t.
    let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut offset, count) };
    match sent {
        -1 => Err(io::Error::last_os_error()),
        // The file ends before the length recorded for it: fail the
        // response (hyper then closes the connection) rather than pad.
        0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shorter than its recorded size",
        )),
        n => Ok(n as usize),
    }
}

/// Fails the connection, loudly: hyper's bytes and the file ranges no longer
/// agree, and sending anything more could put one blob's bytes in another's
/// response.
fn out_of_step(what: &'static str) -> io::Error {
    tracing::error!("{what}; closing the connection");
    io::Error::other(what)
}

/// A plain TCP connection that sends marker frames from their file.
pub struct Stream {
    tcp: TcpStream,
    sender: Sender,
}

impl Stream {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            sender: Sender::default(),
        }
    }

    /// The handle response bodies use to queue file ranges on this connection.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    fn poll_sendfile(&mut self, cx: &mut Context<'_>, frame: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let (tcp, sender) = (&self.tcp, &self.sender);
            match tcp.try_io(Interest::WRITABLE, || sender.send(tcp, frame)) {
                // `try_io` cleared the readiness: wait for the next edge.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    /// Ordinary bytes may go out unless a range is waiting for its marker:
    /// then they can only be a copy of its frame (see the module comment).
    fn check_not_copied(&self) -> io::Result<()> {
        if self.sender.is_waiting() {
            return Err(out_of_step(
                "a zero-copy frame was copied instead of passed through",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if is_marker(buf) {
            return self.poll_sendfile(cx, buf);
        }
        if !buf.is_empty() {
            self.check_not_copied()?;
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Empty slices say nothing: the first one with bytes decides.
        let bufs = match bufs.iter().position(|b| !b.is_empty()) {
            Some(first) => &bufs[first..],
            None => return Poll::Ready(Ok(0)),
        };
        // Ordinary bytes before a marker (the response head) go out first;
        // hyper calls again with the rest.
        match bufs.iter().position(|b| is_marker(b)) {
            Some(0) => self.poll_sendfile(cx, &bufs[0]),
            Some(n) => Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..n]),
            None => {
                self.check_not_copied()?;
                Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        // Also what makes hyper queue body frames rather than copy them into
        // its own buffer: the marker frames depend on it.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The body of a response carrying `content`: sent from its file when the
/// driver gave a file, the connection can take it (`sender`) and the range is
/// worth it; streamed otherwise.
///
/// Each choice is logged at `debug` (target `portcullis::serve::zero_copy`),
/// so a test can see which path a download took and a silent fallback to
/// the copy cannot pass for `sendfile`. A log line rather than counters: it
/// costs nothing unless that level is enabled, needs no place to expose it
/// (there is no metrics endpoint yet, and a response header would show
/// clients our internals), and it is per server process, so tests that run
/// servers side by side do not see each other's downloads. Logged when the
/// path is chosen, which is enough: once markers are chosen, the bytes go
/// out by `sendfile` or the connection fails (a copied marker is refused).
pub fn body(content: Content, sender: Option<Sender>) -> ByteStream {
    let (content, why) = match (content, sender) {
        (Content::File(range), Some(sender)) if range.len() >= MIN_LEN => {
            tracing::debug!(path = "sendfile", bytes = range.len(), "blob sent");
            return markers(sender, range);
        }
        (content @ Content::File(_), Some(_)) => (content, "small"),
        // TLS and HTTP/2 connections give no sender.
        (content @ Content::File(_), None) => (content, "connection"),
        (content @ Content::Stream(_), _) => (content, "driver"),
    };
    tracing::debug!(path = "copy", why, "blob sent");
    content.into_stream()
}

/// Marker frames covering `range`, sent over the connection of `sender`,
/// each yielded once its window of the file is in the page cache.
fn markers(sender: Sender, range: FileRange) -> ByteStream {
    struct State {
        sender: Sender,
        /// Set once the range is queued on the connection.
        id: Option<u64>,
        range: FileRange,
        at: u64,
        /// The window at `at` being read into the page cache, when it was
        /// not there already.
        loading: Option<tokio::task::JoinHandle<io::Result<()>>>,
    }
    impl Drop for State {
        fn drop(&mut self) {
            // Frames yielded may still be in hyper's buffer; the rest never
            // will be.
            if let Some(id) = self.id {
                self.sender.yielded_up_to(id, self.at);
            }
        }
    }
    let loading = load(&range, range.offset);
    let state = State {
        sender,
        id: None,
        at: range.offset,
        range,
        loading,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        if state.at >= state.range.end {
            return None;
        }
        if let Some(loading) = state.loading.take() {
            let loaded = loading.await.unwrap_or_else(|e| Err(io::Error::other(e)));
            if let Err(e) = loaded {
                if let Some(id) = state.id {
                    state.sender.yielded_up_to(id, state.at);
                }
                state.at = state.range.end;
                return Some((Err(e), state));
            }
        }
        // Registered on the first poll, not when the response was built, so
        // that the connection's file ranges are queued in the order hyper
        // writes their bytes.
        let id = match state.id {
            Some(id) => id,
            None => *state.id.insert(state.sender.push(state.range.clone())),
        };
        let len = (state.range.end - state.at).min(WINDOW as u64);
        state.at += len;
        // The next window loads (if it must) while this one is sent.
        state.loading = load(&state.range, state.at);
        Some((Ok(Sender::frame(id, len as usize)), state))
    })
    .boxed()
}

/// Makes sure the window of `range` at `at` is in the page cache before
/// `sendfile` (on a runtime thread) reaches it. Checking costs no I/O and
/// runs inline; only a window with pages missing is read, on the blocking
/// pool. `None` when there is nothing to wait for.
fn load(range: &FileRange, at: u64) -> Option<tokio::task::JoinHandle<io::Result<()>>> {
    let end = range.end.min(at.saturating_add(WINDOW as u64));
    let window = Window::page_aligned(at, end)?;
    // A failed check is not an error: reading the window decides.
    if window.resident(&range.file).unwrap_or(false) {
        return None;
    }
    let file = Arc::clone(&range.file);
    Some(tokio::task::spawn_blocking(move || window.populate(&file)))
}

/// A page-aligned stretch of a file, mapped only for as long as one call
/// takes and never read from user space: a disk error therefore surfaces as
/// an error of the later `sendfile`, never as a signal.
struct Window {
    offset: libc::off_t,
    len: usize,
}

impl Window {
    fn page_aligned(at: u64, end: u64) -> Option<Self> {
        let start = at / page_size() * page_size();
        let len = usize::try_from(end.checked_sub(start)?).ok()?;
        let offset = libc::off_t::try_from(start).ok()?;
        (len > 0 && at < end).then_some(Self { offset, len })
    }

    /// Whether every page of the window is in the page cache: one
    /// `cachestat` call where the kernel has it (Linux ≥ 6.5), which counts
    /// the cached pages of the range in the page cache's own index; a
    /// temporary mapping and `mincore`, a lookup per page, otherwise. For a
    /// pull served from the cache, `cachestat` took the server's CPU per
    /// GiB from 0.26–0.28 s to 0.21–0.23 s (pinned A/B, 12 rounds each).
    fn resident(&self, file: &File) -> io::Result<bool> {
        match self.cached_pages(file) {
            Some(cached) => Ok(cached >= self.pages()),
            None => self.resident_by_mincore(file),
        }
    }

    fn pages(&self) -> u64 {
        (self.len as u64).div_ceil(page_size())
    }

    /// The window's pages in the page cache, by `cachestat(2)`; `None` when
    /// the call is unavailable (an older kernel, or a seccomp filter that
    /// does not know it), which is remembered so it is tried only once.
    fn cached_pages(&self, file: &File) -> Option<u64> {
        use std::sync::atomic::{AtomicBool, Ordering};
        /// The syscall's number: one table for every architecture since
        /// Linux 6.5, but not yet in the libc crate for all targets.
        const SYS_CACHESTAT: libc::c_long = 451;
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Stat {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        static UNAVAILABLE: AtomicBool = AtomicBool::new(false);
        if UNAVAILABLE.load(Ordering::Relaxed) {
            return None;
        }
        let range = Range {
            off: self.offset as u64,
            len: self.len as u64,
        };
        let mut stat = Stat::default();
        // SAFETY: `range` and `stat` are valid for the call, laid out as
        // the kernel's `struct cachestat_range` and `struct cachestat`;
        // the descriptor is open (borrowed from `file`); flags must be 0.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const Range,
                &mut stat as *mut Stat,
                0 as libc::c_uint,
            )
        };
        if rc != 0 {
            UNAVAILABLE.store(true, Ordering::Relaxed);
            return None;
        }
        Some(stat.nr_cache)
    }

    /// Whether every page of the window is in the page cache, by `mincore`
    /// on a temporary mapping.
    fn resident_by_mincore(&self, file: &File) -> io::Result<bool> {
        let mut present = vec![0u8; self.pages() as usize];
        self.with_mapping(file, 0, |map| {
            // SAFETY: `map` is a live mapping of `self.len` bytes and
            // `present` has one byte per page of it.
            let rc = unsafe { libc::mincore(map, self.len, present.as_mut_ptr()) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })?;
        Ok(present.iter().all(|p| p & 1 == 1))
    }

    /// Reads the window into the page cache and waits until it is there:
    /// `MAP_POPULATE` faults every page in; unmapping leaves them cached.
    /// Piece by piece, because mapped pages count as the process's resident
    /// memory while they are mapped.
    fn populate(&self, file: &File) -> io::Result<()> {
        const PIECE: usize = 1 << 20;
        // First ask for this window and the next in one go: the kernel
        // queues large reads and returns, so the disk streams while pieces
        // are waited for and while this window is sent. Faulting pages in
        // alone reads a little around each fault, one wait at a time (a
        // cold pull ran at a quarter of the disk's speed). Advisory: the
        // populate below still decides.
        // SAFETY: plain integers and a descriptor `file` keeps open.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                self.offset,
                (self.len + WINDOW) as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            );
        }
        let mut done = 0;
        while done < self.len {
            let piece = Window {
                offset: self.offset + done as libc::off_t,
                len: PIECE.min(self.len - done),
            };
            piece.with_mapping(file, libc::MAP_POPULATE, |_| Ok(()))?;
            done += piece.len;
        }
        Ok(())
    }

    fn with_mapping(
        &self,
        file: &File,
        flags: libc::c_int,
        f: impl FnOnce(*mut libc::c_void) -> io::Result<()>,
    ) -> io::Result<()> {
        // SAFETY: a fresh shared read-only mapping of an open file at a
        // page-aligned offset. Nothing dereferences it, and it is unmapped
        // before this returns. (Pages past the end of the file are never
        // touched, so they cannot raise SIGBUS.)
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.len,
                libc::PROT_READ,
                libc::MAP_SHARED | flags,
                file.as_raw_fd(),
                self.offset,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let result = f(map);
        // SAFETY: `map` was returned by the mmap above with this length.
        unsafe { libc::munmap(map, self.len) };
        result
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096).max(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slices_of_the_marker_are_markers() {
        assert!(is_marker(&MARKER[..1]));
        assert!(is_marker(&MARKER[SLOTS * WINDOW - 1..]));
        assert!(!is_marker(&MARKER[..0]));
        let zeros = vec![0u8; 16];
        assert!(!is_marker(&zeros));
    }

    /// A connected pair: (the accepted socket, the client's).
    pub(super) async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        (socket, client)
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        file
    }

    /// A file that shrank below its range ends the response with an
    /// error rather than padding it; a marker with no range is an error.
    #[tokio::test]
    async fn a_file_shorter_than_its_range_fails_the_send() {
        let (socket, _client) = socket_pair().await;
        let sender = Sender::default();
        let id = sender.push(FileRange::new(file_of(b"0123456789"), 0, 20));
        let frame = Sender::frame(id, 20);
        assert_eq!(sender.send(&socket, &frame).unwrap(), 10);
        let e = sender.send(&socket, &frame[10..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(Sender::default().send(&socket, &frame).is_err());
    }

    /// A range left unfinished at the front of the queue never lends its
    /// bytes to the next response's frames: the frame is refused, nothing
    /// is sent. Before frames carried their range's slot, the next
    /// response's first bytes came from the unfinished range's file.
    #[tokio::test]
    async fn a_frame_of_another_range_is_refused() {
        let (socket, _client) = socket_pair().await;
        let sender = Sender::default();
        let first = sender.push(FileRange::new(file_of(&[1; 100]), 0, 100));
        let second = sender.push(FileRange::new(file_of(&[2; 100]), 0, 100));
        assert_eq!(
            sender
                .send(&socket, &Sender::frame(first, 100)[..40])
                .unwrap(),
            40
        );
        // The second range's frame while the first still has 60 bytes.
        assert!(sender.send(&socket, &Sender::frame(second, 100)).is_err());
        // A frame of the right range at the wrong byte (hyper skipped some).
        assert!(
            sender
                .send(&socket, &Sender::frame(first, 100)[50..])
                .is_err()
        );
        // At the right byte, it carries on.
        assert_eq!(
            sender
                .send(&socket, &Sender::frame(first, 100)[40..])
                .unwrap(),
            60
        );
        assert_eq!(
            sender.send(&socket, &Sender::frame(second, 100)).unwrap(),
            100
        );
        assert!(!sender.is_waiting());
    }

    /// A body dropped after yielding part of its range (hyper stopped
    /// asking) leaves only what it yielded queued: once that is sent, the
    /// next response's range is at the front.
    #[tokio::test]
    async fn a_body_dropped_midway_withdraws_what_it_never_yielded() {
        let (socket, mut client) = socket_pair().await;
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client, &mut tokio::io::sink()).await;
        });
        let sender = Sender::default();
        let len = 2 * WINDOW as u64 + 10;
        let file = file_of(&vec![3; len as usize]);
        let mut body = markers(sender.clone(), FileRange::new(file, 0, len));
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(frame.len(), WINDOW);
        drop(body);
        assert!(sender.is_waiting(), "the yielded frame is still owed");
        let mut sent = 0;
        while sent < frame.len() {
            socket.writable().await.unwrap();
            match socket.try_io(Interest::WRITABLE, || sender.send(&socket, &frame[sent..])) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            !sender.is_waiting(),
            "the bytes never yielded were withdrawn"
        );
    }

    /// Ordinary bytes while a range waits for its marker can only be a
    /// copy of its frame (a flattening write buffer, a copying wrapper):
    /// the write is refused instead of sending the marker's zeros.
    #[tokio::test]
    async fn a_copied_frame_is_refused() {
        let (socket, _client) = socket_pair().await;
        let mut stream = Stream::new(socket);
        let sender = stream.sender();
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"head")
            .await
            .unwrap();
        let id = sender.push(FileRange::new(file_of(&[4; 100]), 0, 100));
        let copy = Sender::frame(id, 100).to_vec();
        let written = tokio::io::AsyncWriteExt::write(&mut stream, &copy).await;
        assert!(written.is_err(), "a copied frame went out");
        let bufs = [IoSlice::new(b"more"), IoSlice::new(&copy)];
        let written = tokio::io::AsyncWriteExt::write_vectored(&mut stream, &bufs).await;
        assert!(written.is_err(), "a copied frame went out");
        // The head before a real frame is fine, and so is the frame.
        let frame = Sender::frame(id, 100);
        let bufs = [IoSlice::new(b"head"), IoSlice::new(&frame)];
        let written = tokio::io::AsyncWriteExt::write_vectored(&mut stream, &bufs).await;
        assert_eq!(written.unwrap(), 4);
        let written = tokio::io::AsyncWriteExt::write(&mut stream, &frame).await;
        assert_eq!(written.unwrap(), 100);
    }

    /// `cachestat` and the `mincore` fallback must tell the same story, or
    /// a window with pages missing would be sent from a runtime thread.
    #[test]
    fn cachestat_and_mincore_agree_on_what_is_cached() {
        const LEN: usize = 4 << 20;
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &vec![7u8; LEN]).unwrap();
        file.sync_all().unwrap();
        let window = Window::page_aligned(0, LEN as u64).unwrap();
        let agree = |file: &File| {
            let by_mincore = window.resident_by_mincore(file).unwrap();
            if let Some(cached) = window.cached_pages(file) {
                assert!(cached <= window.pages());
                assert_eq!(cached == window.pages(), by_mincore);
            }
            assert_eq!(window.resident(file).unwrap(), by_mincore);
            by_mincore
        };
        // Clean pages of a disk file are dropped (tmpfs keeps them; the
        // two must agree either way), then a little is read back.
        // SAFETY: advice on a descriptor the test owns.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        agree(&file);
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut [0u8; 4096], 0).unwrap();
        agree(&file);
        window.populate(&file).unwrap();
        assert!(agree(&file), "a populated window is resident");
    }
}
