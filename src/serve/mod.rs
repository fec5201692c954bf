//! Accepting connections: the accept loop and each connection's task, what a
//! handler learns about its peer, the connection limits and timeouts
//! ([`connections`]), and the zero-copy path for blob downloads
//! ([`zero_copy`]).

mod connections;
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
/// `max_connections` are served at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
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
    let app = crate::build_router(state);
    let registry = Registry::new(limits.max_connections);
    let tasks = tokio_util::task::TaskTracker::new();
    let (stop, stopping) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        // Accepted first, so that an idle connection is shed only when a
        // client is really waiting; this one waits for its slot unserved.
        let slot = tokio::select! {
            slot = registry.slot() => slot,
            () = &mut shutdown => break,
        };
        let registered = registry.add(addr);
        let app = app.clone();
        let stopping = stopping.clone();
        tasks.spawn(async move {
            connection(tcp, addr, app, registered, limits, stopping).await;
            drop(slot);
        });
    }
    // New connections are refused from here on; open ones finish what they
    // are doing (idle ones close at once).
    drop(listener);
    drop(stop);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// The next connection; errors such as running out of file descriptors are
/// logged and retried after a pause instead of ending the server.
async fn accept(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
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

/// Serves one connection until it ends, closing it when it is idle past its
/// time, shed for room or the server stops, and dropping it when a request
/// head is late.
async fn connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    app: axum::Router,
    registered: connections::Registered,
    limits: Limits,
    mut stopping: watch::Receiver<()>,
) {
    let conn = Arc::clone(&registered.conn);
    let stream = zero_copy::Stream::new(tcp);
    let peer = Peer {
        addr,
        zero_copy: Some(stream.sender()),
    };
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
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                }
                return;
            }
            () = sleep => {}
            () = conn.changed.notified() => {}
            _ = stopping.changed(), if !stopped => {
                // In-flight requests finish and an idle connection closes
                // now; a head still arriving keeps its deadline.
                stopped = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
}
