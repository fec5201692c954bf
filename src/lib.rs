//! Portcullis: a registry front door. See ARCHITECTURE.md for the map.

pub mod api;
pub mod audit;
pub mod auth;
pub mod client_tls;
pub mod config;
pub mod error;
pub mod manifest;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod policy;
pub mod reconfigure;
pub mod reference;
pub mod serve;
pub mod state;
pub mod storage;

use std::sync::Arc;

pub use serve::serve;
pub use state::AppState;

/// The whole HTTP application.
pub fn build_router(state: Arc<AppState>) -> axum::Router {
    api::router(state)
}
