//! HTTP: the only module that knows about requests and responses.

use std::sync::Arc;

use crate::AppState;

pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new().with_state(state)
}
