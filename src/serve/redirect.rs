//! The plain-HTTP listener of `server.tls.redirect_http`: every request gets
//! a permanent redirect to the same path and query over HTTPS, and nothing
//! else (no registry, no token endpoint), so that no credential or content
//! ever travels in clear on it.

use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::config::ServerConfig;

/// The redirecting application: to `server.public_url` when it is an
/// `https://` URL, else to the request's host on `https_port`.
pub fn router(server: &ServerConfig, https_port: u16) -> axum::Router {
    let base = server
        .public_url
        .as_deref()
        .filter(|url| url.starts_with("https://"))
        .map(|url| url.trim_end_matches('/').to_owned());
    axum::Router::new().fallback(move |headers: HeaderMap, uri: Uri| {
        let base = base.clone();
        async move { redirect(base.as_deref(), https_port, &headers, &uri) }
    })
}

fn redirect(base: Option<&str>, https_port: u16, headers: &HeaderMap, uri: &Uri) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let base = match base {
        Some(base) => base.to_owned(),
        None => {
            let Some(host) = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
            else {
                return (StatusCode::BAD_REQUEST, "a Host header is required\n").into_response();
            };
            match https_port {
                443 => format!("https://{}", host.host()),
                port => format!("https://{}:{port}", host.host()),
            }
        }
    };
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, format!("{base}{path}"))],
    )
        .into_response()
}
