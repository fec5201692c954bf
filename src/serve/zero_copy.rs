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
//! the connection's [`Sender`] when hyper first polls it; hyper writes a
//! connection's bytes in order, so the front range is always the one the
//! next marker byte belongs to.
//!
//! Only HTTP/1 over plain TCP uses this: HTTP/2 (and, later, TLS) frame or
//! encrypt the body, so they get the copied stream
//! ([`FileRange::into_stream`]). Should hyper ever copy a marker frame
//! instead of passing it through, zeros would be sent in place of the blob;
//! every pull in the test suite compares the bytes it received, so a hyper
//! upgrade that did so would fail the tests, and every registry client checks
//! a blob's digest.

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

/// Bytes a body hands to hyper per frame, and sends with one `sendfile`
/// call at most. Each window is in the page cache before its frame is
/// yielded (see [`load`]), so `sendfile` on a runtime thread does not wait
/// for the disk.
const WINDOW: usize = 4 << 20;

/// Ranges shorter than this are streamed: for a small blob (a config, a
/// manifest-sized layer) the residency check costs more than the copy.
const MIN_LEN: u64 = 64 << 10;

/// Never read: the address range identifies a frame as "send from the file".
static MARKER: [u8; WINDOW] = [0; WINDOW];

fn is_marker(slice: &[u8]) -> bool {
    !slice.is_empty() && MARKER.as_ptr_range().contains(&slice.as_ptr())
}

/// The connection's queue of file ranges still to send (each range's
/// `offset` advances as it goes), shared by its socket and the bodies of its
/// responses.
#[derive(Clone, Default)]
pub struct Sender(Arc<Mutex<VecDeque<FileRange>>>);

impl Sender {
    fn push(&self, range: FileRange) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(range);
    }

    /// Sends up to `want` bytes of the front range to `socket`.
    fn send(&self, socket: &TcpStream, want: usize) -> io::Result<usize> {
        let mut ranges = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(front) = ranges.front_mut() else {
            return Err(io::Error::other("zero-copy frame without a file"));
        };
        let count = want.min(front.len() as usize).min(WINDOW);
        let mut offset = libc::off_t::try_from(front.offset).map_err(io::Error::other)?;
        // SAFETY: both descriptors are open for the duration of the call
        // (`socket` is borrowed, the file is held by the range), and
        // `offset` is a valid, exclusively borrowed off_t.
        let sent = unsafe {
            libc::sendfile(
                socket.as_raw_fd(),
                front.file.as_raw_fd(),
                &mut offset,
                count,
            )
        };
        match sent {
            -1 => Err(io::Error::last_os_error()),
            // The file ends before the length recorded for it: fail the
            // response (hyper then closes the connection) rather than pad.
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than its recorded size",
            )),
            n => {
                front.offset += n as u64;
                if front.is_empty() {
                    ranges.pop_front();
                }
                Ok(n as usize)
            }
        }
    }
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

    fn poll_sendfile(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let (tcp, sender) = (&self.tcp, &self.sender);
            match tcp.try_io(Interest::WRITABLE, || sender.send(tcp, want)) {
                // `try_io` cleared the readiness: wait for the next edge.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
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
            return self.poll_sendfile(cx, buf.len());
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Ordinary bytes before a marker (the response head) go out first;
        // hyper calls again with the rest.
        match bufs.iter().position(|b| is_marker(b)) {
            Some(0) => self.poll_sendfile(cx, bufs[0].len()),
            Some(n) => Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..n]),
            None => Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs),
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
pub fn body(content: Content, sender: Option<Sender>) -> ByteStream {
    match (content, sender) {
        (Content::File(range), Some(sender)) if range.len() >= MIN_LEN => markers(sender, range),
        (content, _) => content.into_stream(),
    }
}

/// Marker frames covering `range`, sent over the connection of `sender`,
/// each yielded once its window of the file is in the page cache.
fn markers(sender: Sender, range: FileRange) -> ByteStream {
    struct State {
        sender: Option<Sender>,
        range: FileRange,
        at: u64,
        /// The window at `at` being read into the page cache, when it was
        /// not there already.
        loading: Option<tokio::task::JoinHandle<io::Result<()>>>,
    }
    let loading = load(&range, range.offset);
    let state = State {
        sender: Some(sender),
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
                state.at = state.range.end;
                return Some((Err(e), state));
            }
        }
        // Registered on the first poll, not when the response was built, so
        // that the connection's file ranges are queued in the order hyper
        // writes their bytes.
        if let Some(sender) = state.sender.take() {
            sender.push(state.range.clone());
        }
        let len = (state.range.end - state.at).min(WINDOW as u64);
        state.at += len;
        // The next window loads (if it must) while this one is sent.
        state.loading = load(&state.range, state.at);
        Some((Ok(Bytes::from_static(&MARKER[..len as usize])), state))
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
        assert!(is_marker(&MARKER[WINDOW - 1..]));
        assert!(!is_marker(&MARKER[..0]));
        let zeros = vec![0u8; 16];
        assert!(!is_marker(&zeros));
    }

    /// A file that shrank below its range ends the response with an
    /// error rather than padding it; a marker with no range is an error.
    #[tokio::test]
    async fn a_file_shorter_than_its_range_fails_the_send() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, b"0123456789").unwrap();
        let sender = Sender::default();
        sender.push(FileRange::new(file, 0, 20));
        assert_eq!(sender.send(&socket, 20).unwrap(), 10);
        let e = sender.send(&socket, 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(Sender::default().send(&socket, 1).is_err());
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
