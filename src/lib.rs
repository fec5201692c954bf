//! Portcullis: a registry front door. See ARCHITECTURE.md for the map.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod manifest;
pub mod policy;
pub mod reference;
pub mod state;
pub mod storage;

use std::future::Future;
use std::sync::Arc;

pub use state::AppState;

/// The whole HTTP application.
pub fn build_router(state: Arc<AppState>) -> axum::Router {
    api::router(state)
}

/// Serves on an already bound listener until `shutdown` resolves, then lets
/// in-flight requests finish. Tests bind `127.0.0.1:0` and hand the listener
/// here, so there is no window in which another process could take the port.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The client address reaches handlers for policy `from` conditions and
    // the failed-login limiter.
    let app = build_router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
