//! Accepting connections: the listener, what a handler learns about its
//! peer, and the zero-copy path for blob downloads ([`zero_copy`]).

pub mod zero_copy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;

use crate::AppState;

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

/// A plain TCP listener whose connections can send files without copying.
struct Plain(tokio::net::TcpListener);

impl axum::serve::Listener for Plain {
    type Io = zero_copy::Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop: it retries (and backs off on) errors such
        // as running out of file descriptors.
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (zero_copy::Stream::new(tcp), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, Plain>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Plain>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            zero_copy: Some(stream.io().sender()),
        }
    }
}

/// Serves on an already bound listener until `shutdown` resolves, then lets
/// in-flight requests finish. Tests bind `127.0.0.1:0` and hand the listener
/// here, so there is no window in which another process could take the port.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = crate::build_router(state).into_make_service_with_connect_info::<Peer>();
    axum::serve(Plain(listener), app)
        .with_graceful_shutdown(shutdown)
        .await
}
