//! Accepting connections: the accept loop and each connection's task, what a
//! handler learns about its peer, the connection limits and timeouts
//! ([`connections`]), the zero-copy path for blob downloads on plain TCP
//! ([`zero_copy`]), HTTPS ([`tls`], with the redirect listener of
//! [`redirect`] and the trial pair of [`selfsigned`]).

mod connections;
mod redirect;
pub mod selfsigned;
pub mod tls;
pub mod zero_copy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use crate::AppState;
use connections::{Limits, Next, Registry, Tracked, Watched};

/// What a handler knows of the connection it answers on, from the request's
/// `ConnectInfo<Peer>` extension.
#[derive(Clone)]
pub struct Peer {
    /// The client address, for policy `from` conditions and the failed-login
    /// limiter.
    pub addr: SocketAddr,
    /// Set on plain TCP connections: file ranges may be sent with `sendfile`
    /// (over HTTP/1 only; the handler checks the request's version).
    pub zero_copy: Option<zero_copy::Sender>,
    /// The client certificate the TLS handshake verified, if one was asked
    /// for and given (`server.tls.client_ca`).
    pub client_cert: Option<Arc<tls::ClientCert>>,
}

/// How long a connection asked to close (idle past its time, shed for
/// room, or at shutdown while idle) may take to flush what it still has
/// before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves on an already bound listener until `shutdown` resolves, then lets
/// in-flight requests finish. Tests bind `127.0.0.1:0` and hand the listener
/// here, so there is no window in which another process could take the port.
///
/// HTTP/1 and HTTP/2 (prior knowledge) are served, with the limits of
/// `[server]`: a request head must arrive within the header timeout, a
/// keep-alive connection idle past the idle timeout is closed, a request
/// body that stalls past the body timeout is cut, and at most
/// `max_connections` are served at once. With `[server.tls]`, HTTPS (see
/// [`serve_with`]; the redirect listener is not opened here).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let https = match &state.config.server.tls {
        Some(files) => Some(Https {
            tls: tls::Tls::new(files).map_err(std::io::Error::other)?,
            redirect: None,
        }),
        None => None,
    };
    serve_with(listener, state, https, None, shutdown).await
}

/// What a listener serving HTTPS needs beyond the plain one.
pub struct Https {
    /// The acceptor and the certificate pair it reloads.
    pub tls: tls::Tls,
    /// A bound plain-HTTP listener answering with redirects to HTTPS
    /// (`server.tls.redirect_http`).
    pub redirect: Option<tokio::net::TcpListener>,
}

/// As [`serve`], with HTTPS set up by the caller (who loads the pair and
/// binds the redirect listener before announcing the address, so that a bad
/// certificate or a taken port fails the start). TLS connections get the
/// same limits as plain ones: the handshake counts as the wait for the
/// first request head, and a handshaking connection holds a slot and can be
/// shed for room. `metrics` is the bound listener of `metrics.listen`,
/// which serves `/metrics` alone, in plain HTTP, under the same limits.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    https: Option<Https>,
    metrics: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = Limits::new(&state.config.server);
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout = ?limits.header,
        idle_timeout = ?limits.idle,
        body_timeout = ?limits.body,
        "connection limits"
    );
    let (stop, stopping) = watch::channel(());
    let listening = Listening {
        registry: Registry::new(limits.max_connections),
        tasks: tokio_util::task::TaskTracker::new(),
        limits,
        stopping: stopping.clone(),
    };
    let https_port = listener.local_addr()?.port();
    let (tls, redirect) = match https {
        Some(Https { tls, redirect }) => {
            tokio::spawn(tls.clone().watch(stopping.clone()));
            let redirect = redirect.map(|listener| {
                let router = redirect::router(&state.config.server, https_port);
                (listener, router)
            });
            (Some(tls), redirect)
        }
        None => (None, None),
    };
    let scrapes =
        metrics.map(|listener| (listener, crate::api::metrics_router(Arc::clone(&state))));
    let app = crate::build_router(Arc::clone(&state));
    let main = listening.accept_loop(listener, app, tls);
    let redirect = async {
        if let Some((listener, router)) = redirect {
            listening.accept_loop(listener, router, None).await;
        }
    };
    let scrapes = async {
        if let Some((listener, router)) = scrapes {
            listening.accept_loop(listener, router, None).await;
        }
    };
    let stopper = async move {
        shutdown.await;
        // New connections are refused from here on (the loops end and drop
        // their listeners); open ones finish what they are doing (idle ones
        // close at once).
        let _ = stop.send(());
    };
    tokio::join!(main, redirect, scrapes, stopper);
    listening.tasks.close();
    listening.tasks.wait().await;
    // No request is in flight any more: every event made is written to
    // its queue before the process may exit.
    state.notifier.flush().await;
    Ok(())
}

/// What every listener of one server shares: one connection limit over all
/// of them, and the tasks waited for at shutdown.
struct Listening {
    registry: Arc<Registry>,
    tasks: tokio_util::task::TaskTracker,
    limits: Limits,
    stopping: watch::Receiver<()>,
}

impl Listening {
    /// Accepts on `listener` until the server stops, serving `app` on each
    /// connection, over TLS when `tls` is given.
    async fn accept_loop(
        &self,
        listener: tokio::net::TcpListener,
        app: axum::Router,
        tls: Option<tls::Tls>,
    ) {
        let mut stopped = self.stopping.clone();
        loop {
            let (tcp, addr) = tokio::select! {
                accepted = accept(&listener) => accepted,
                _ = stopped.changed() => break,
            };
            // Accepted first, so that an idle connection is shed only when a
            // client is really waiting; this one waits for its slot unserved.
            let slot = tokio::select! {
                slot = self.registry.slot() => slot,
                _ = stopped.changed() => break,
            };
            let registered = self.registry.add(addr);
            let app = app.clone();
            let stopping = self.stopping.clone();
            let limits = self.limits;
            let tls = tls.clone();
            self.tasks.spawn(async move {
                match tls {
                    None => plain(tcp, addr, app, registered, limits, stopping).await,
                    Some(tls) => secure(tcp, addr, &tls, app, registered, limits, stopping).await,
                }
                drop(slot);
            });
        }
    }
}

/// The next connection; errors such as running out of file descriptors are
/// logged and retried after a pause instead of ending the server.
async fn accept(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                // A streamed answer (a proxied v1 response, a blob) goes out
                // as its head, then its body: Nagle's algorithm would hold
                // the body until the client acknowledged the head, which a
                // client delaying its acknowledgements does 40 ms later.
                if let Err(e) = accepted.0.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
                return accepted;
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Errors that concern only the connection being accepted.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// A plain TCP connection: blob downloads may take the zero-copy path.
async fn plain(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    app: axum::Router,
    registered: connections::Registered,
    limits: Limits,
    stopping: watch::Receiver<()>,
) {
    let stream = zero_copy::Stream::new(tcp);
    let peer = Peer {
        addr,
        zero_copy: Some(stream.sender()),
        client_cert: None,
    };
    connection(stream, peer, app, registered, limits, stopping).await;
}

/// A TLS connection: the handshake, then the same serving as plain TCP.
/// Never the zero-copy path: `sendfile` would put the file's plaintext on
/// the wire past the TLS layer, so blob downloads are streamed copies
/// through rustls (`zero_copy: None`).
async fn secure(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    tls: &tls::Tls,
    app: axum::Router,
    registered: connections::Registered,
    limits: Limits,
    mut stopping: watch::Receiver<()>,
) {
    let conn = Arc::clone(&registered.conn);
    let mut handshake = std::pin::pin!(tls.acceptor().accept(tcp));
    // Until the handshake is done the connection is one that has not sent
    // its first request: the header timeout runs from the accept, and at the
    // connection limit it may be shed like an idle one.
    let stream = loop {
        let wake = match conn.next(&limits, tokio::time::Instant::now()) {
            Next::WaitUntil(at) => at,
            Next::CloseIdle | Next::HeadTimedOut => {
                tracing::debug!(peer = %addr, "TLS handshake not done in time or shed: connection dropped");
                return;
            }
        };
        tokio::select! {
            done = handshake.as_mut() => match done {
                Ok(stream) => break stream,
                Err(e) => {
                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
            },
            () = sleep_until(wake) => {}
            () = conn.changed.notified() => {}
            _ = stopping.changed() => return,
        }
    };
    // Verified in the handshake: only a certificate that chains to the
    // client CA gets here.
    let client_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| tls::ClientCert::from_der(cert))
        .map(Arc::new);
    let peer = Peer {
        addr,
        zero_copy: None,
        client_cert,
    };
    connection(stream, peer, app, registered, limits, stopping).await;
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Serves one connection until it ends, closing it when it is idle past its
/// time, shed for room or the server stops, and dropping it when a request
/// head is late.
async fn connection<S>(
    stream: S,
    peer: Peer,
    app: axum::Router,
    registered: connections::Registered,
    limits: Limits,
    mut stopping: watch::Receiver<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::clone(&registered.conn);
    let addr = peer.addr;
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&conn)));
    // The router as a hyper service: each call checks it is ready, then
    // calls a clone of it once.
    let app = TowerToHyperService::new(app);
    let service = {
        let conn = Arc::clone(&conn);
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let in_flight = conn.begin();
            let mut request = request
                .map(|body| Body::new(tower_http::timeout::TimeoutBody::new(limits.body, body)));
            request.extensions_mut().insert(ConnectInfo(peer.clone()));
            let response = hyper::service::Service::call(&app, request);
            async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Body::new(Tracked::new(body, in_flight))),
                )
            }
        })
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let served = builder.serve_connection(io, service);
    let mut served = std::pin::pin!(served);
    // Set once an idle connection was asked to close: the moment it is
    // dropped if it is still there (a client that does not read what hyper
    // still has to flush).
    let mut closing: Option<tokio::time::Instant> = None;
    let mut stopped = false;
    // One timer for the connection's life, re-armed only when a deadline
    // comes earlier than the one it holds: a request moves the deadline
    // two or three times (head begun, served, idle again), and re-arming a
    // timer on each move cost more than serving a small request's
    // manifest. A timer that fires early only makes the state be read
    // again.
    let timer = tokio::time::sleep(Duration::ZERO);
    let mut timer = std::pin::pin!(timer);
    let mut armed: Option<tokio::time::Instant> = None;
    loop {
        let now = tokio::time::Instant::now();
        let wake = match conn.next(&limits, now) {
            Next::WaitUntil(at) => at,
            Next::HeadTimedOut => {
                tracing::debug!(peer = %addr, "request head not received in time: connection dropped");
                return;
            }
            Next::CloseIdle => match closing {
                None => {
                    served.as_mut().graceful_shutdown();
                    closing = Some(now + CLOSE_GRACE);
                    closing
                }
                Some(at) if now >= at => {
                    tracing::debug!(peer = %addr, "idle connection did not close in time: dropped");
                    return;
                }
                Some(at) => Some(at),
            },
        };
        if let Some(at) = wake
            && armed.is_none_or(|armed| at < armed)
        {
            timer.as_mut().reset(at);
            armed = Some(at);
        }
        // `served` first: what it does (a request begun or done) notifies
        // `changed`, and a permit taken in the same poll costs no wake-up.
        tokio::select! {
            biased;
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                }
                return;
            }
            () = conn.changed.notified() => {}
            () = timer.as_mut(), if armed.is_some() => armed = None,
            _ = stopping.changed(), if !stopped => {
                // In-flight requests finish and an idle connection closes
                // now; a head still arriving keeps its deadline.
                stopped = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
}
