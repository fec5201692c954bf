//! The server's open connections: what each is doing (idle, receiving a
//! request head, serving requests), the deadlines that follow from that,
//! and the limit on how many are served at once.
//!
//! hyper only sees bytes and requests, so the state is kept here from two
//! sides: [`Watched`] notes the first byte that arrives on an idle
//! connection (a request head has begun), and [`Conn::begin`] /
//! [`InFlight`] count the requests between hyper handing one over and its
//! response body being done.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::ServerConfig;

/// The limits of [`ServerConfig`], as durations and a count.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
    pub body: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            header: Duration::from_secs(config.header_timeout_secs),
            idle: Duration::from_secs(config.idle_timeout_secs),
            body: Duration::from_secs(config.body_timeout_secs),
            max_connections: config
                .max_connections
                .unwrap_or_else(default_max_connections),
        }
    }
}

/// Half the open-file limit, leaving the other half for what connections
/// open (a blob being read, an upload's files) and the server's own files.
fn default_max_connections() -> usize {
    const RESERVED: u64 = 32;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let soft = if rc == 0 { limit.rlim_cur } else { 1024 };
    let usable = soft.min(1 << 21).saturating_sub(RESERVED) / 2;
    usize::try_from(usable).unwrap_or(1 << 20).max(1)
}

/// Every open connection, and the slots that bound their number.
pub struct Registry {
    slots: Arc<Semaphore>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// A connection went idle or ended: a waiting accept may find room.
    changed: Notify,
}

impl Registry {
    pub fn new(max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max_connections)),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    /// Waits for room for one more connection. At the limit the connection
    /// idle the longest is asked to close; a connection serving a request
    /// is never cut for room, so with none idle this waits until one ends
    /// or goes idle (meanwhile new clients wait in the listen backlog).
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
                return permit;
            }
            self.shed_longest_idle();
            tokio::select! {
                permit = Arc::clone(&self.slots).acquire_owned() => {
                    // The semaphore is never closed.
                    if let Ok(permit) = permit {
                        return permit;
                    }
                }
                () = self.changed.notified() => {}
            }
        }
    }

    fn shed_longest_idle(&self) {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        // One at a time: a connection asked to close frees its slot soon.
        if conns.values().any(|c| c.shed.load(Ordering::Acquire)) {
            return;
        }
        let oldest = conns
            .values()
            .filter(|c| c.is_idle())
            .min_by_key(|c| c.idle_since());
        if let Some(conn) = oldest {
            tracing::debug!(peer = %conn.peer, "connection limit reached: closing the longest-idle connection");
            conn.shed.store(true, Ordering::Release);
            conn.changed.notify_one();
        }
    }

    /// Registers a new connection; it leaves the registry when the returned
    /// handle's [`Registered`] guard is dropped.
    pub fn add(self: &Arc<Self>, peer: std::net::SocketAddr) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            peer,
            registry: Arc::downgrade(self),
            in_flight: AtomicUsize::new(0),
            head_started: Mutex::new(None),
            idle_since: Mutex::new(Instant::now()),
            served: AtomicBool::new(false),
            shed: AtomicBool::new(false),
            changed: Notify::new(),
        });
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&conn));
        Registered {
            registry: Arc::clone(self),
            id,
            conn,
        }
    }
}

/// A connection's entry in the registry, removed on drop.
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
    pub conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.registry.changed.notify_one();
    }
}

/// What one connection is doing.
pub struct Conn {
    peer: std::net::SocketAddr,
    registry: std::sync::Weak<Registry>,
    /// Requests handed to the application whose response is not done.
    in_flight: AtomicUsize,
    /// When the first byte of the next request arrived, while idle.
    head_started: Mutex<Option<Instant>>,
    /// When the connection last became idle (accepted, or a response done).
    idle_since: Mutex<Instant>,
    /// A response was completed: the next wait is keep-alive idleness.
    served: AtomicBool,
    /// Asked to close to make room for a new connection.
    shed: AtomicBool,
    /// Wakes the connection's task to look at its state again.
    pub changed: Notify,
}

/// What the connection's task should do next.
pub enum Next {
    /// Nothing before this moment (or ever, with `None`).
    WaitUntil(Option<Instant>),
    /// Idle past its time, or shed: close it (no request is in progress).
    CloseIdle,
    /// A request head did not arrive in time: drop the connection.
    HeadTimedOut,
}

impl Conn {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.lock_head().is_none()
    }

    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_head(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.head_started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection's state against its deadlines, at `now`.
    pub fn next(&self, limits: &Limits, now: Instant) -> Next {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // A request is being served: its body has its own inactivity
            // timeout, and a connection serving is never cut for room.
            return Next::WaitUntil(None);
        }
        if let Some(started) = *self.lock_head() {
            let deadline = started + limits.header;
            return if now >= deadline {
                Next::HeadTimedOut
            } else {
                Next::WaitUntil(Some(deadline))
            };
        }
        if self.shed.load(Ordering::Acquire) {
            return Next::CloseIdle;
        }
        // Before its first request a connection gets the header timeout:
        // a client that connects and says nothing is treated like one whose
        // head is late.
        let wait = if self.served.load(Ordering::Acquire) {
            limits.idle
        } else {
            limits.header
        };
        let deadline = self.idle_since() + wait;
        if now >= deadline {
            Next::CloseIdle
        } else {
            Next::WaitUntil(Some(deadline))
        }
    }

    /// hyper handed a request to the application.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        *self.lock_head() = None;
        // Busy now, so no longer the one making room: the next accept at
        // the limit picks another.
        if self.shed.swap(false, Ordering::AcqRel)
            && let Some(registry) = self.registry.upgrade()
        {
            registry.changed.notify_one();
        }
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    /// Bytes arrived: on an idle connection they begin a request head.
    fn received(&self) {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return;
        }
        let mut head = self.lock_head();
        if head.is_none() {
            *head = Some(Instant::now());
            drop(head);
            self.changed.notify_one();
        }
    }
}

/// One request in progress; dropped with its response body (sent, failed
/// or abandoned), which makes the connection idle again when it was the last.
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        if conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *conn.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            conn.served.store(true, Ordering::Release);
            conn.changed.notify_one();
            if let Some(registry) = conn.registry.upgrade() {
                registry.changed.notify_one();
            }
        }
    }
}

/// A connection's transport, noting when bytes arrive. Writes pass through
/// untouched (vectored, as the inner stream does them: the zero-copy marker
/// frames depend on it).
pub struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, conn: Arc<Conn>) -> Self {
        Self { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as in flight until hyper
/// is done with it.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
