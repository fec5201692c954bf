//! `GET /metrics`: the Prometheus exposition of [`crate::metrics`]. It
//! takes no registry token (a scraper is not a registry client); with
//! `metrics.token_file` it takes that token, compared in constant time.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::{ApiError, ErrorCode};

pub fn serve(state: &AppState, headers: &HeaderMap) -> Response {
    if !state.config.metrics.enabled {
        return ApiError::new(ErrorCode::NotFound).into_response();
    }
    if let Some(expected) = &state.metrics_token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !crate::auth::same_secret(sent.as_bytes(), expected.as_bytes()) {
            let mut refused =
                (StatusCode::UNAUTHORIZED, "metrics token required\n").into_response();
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"metrics\""),
            );
            return refused;
        }
    }
    let body = state.metrics.render(state.storage.upload_sessions());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}
