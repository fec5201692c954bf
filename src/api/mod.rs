//! HTTP: the only module that knows about requests and responses.
//!
//! Every `/v2/` request goes through [`dispatch`]: parse it into an
//! [`Endpoint`], authorize it once from the endpoint's required access, then
//! one `match` hands it to its handler.

pub mod authorize;
mod blobs;
pub mod endpoint;
mod health;
mod lists;
mod manifests;
mod referrers;
mod token;
mod uploads;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

pub use endpoint::{Access, Action, Endpoint};

use crate::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::serve::{Peer, zero_copy};
use crate::storage::ByteStream;

pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
pub const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
pub const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/v2", axum::routing::any(dispatch))
        .route("/v2/", axum::routing::any(dispatch))
        .route("/v2/{*rest}", axum::routing::any(dispatch))
        .route("/token", axum::routing::get(token::get).post(token::post))
        .route("/.well-known/jwks.json", axum::routing::get(token::jwks))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound) })
        .layer(tower_http::trace::TraceLayer::new_for_http())
        // Added after the trace layer, so probes every few seconds stay out
        // of the request log. `get` answers `HEAD` too.
        .route("/healthz", axum::routing::get(health::live))
        .route("/readyz", axum::routing::get(health::ready))
        .with_state(state)
}

async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map(|c| &c.0);
    let conn = Conn {
        addr: peer.map(|p| p.addr.ip()),
        // HTTP/2 frames the body itself: only HTTP/1 can send marker frames.
        zero_copy: peer
            .and_then(|p| p.zero_copy.clone())
            .filter(|_| parts.version <= Version::HTTP_11),
    };
    let result = match Endpoint::parse(&parts.method, parts.uri.path(), parts.uri.query()) {
        // The one authorization check, from `endpoint.required_access()`.
        Ok(endpoint) => match authorize::authorize(&state, &endpoint, &parts, conn.addr) {
            Ok(grant) => handle(&state, endpoint, &parts.headers, body, &grant, &conn).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    // An error is often answered before the request body was read (a chunk
    // at the wrong offset, an unknown session); hyper then closes the
    // connection rather than read the rest. Say so, or a keep-alive client
    // puts the connection back in its pool and its next request fails.
    let status = response.status();
    if (status.is_client_error() || status.is_server_error())
        && parts.version <= Version::HTTP_11
        && has_body(&parts.headers)
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Whether a request announced a body (HTTP/1 framing).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || content_length(headers).is_some_and(|n| n > 0)
}

/// What the handlers need to know about the connection a request came on.
struct Conn {
    addr: Option<std::net::IpAddr>,
    zero_copy: Option<zero_copy::Sender>,
}

async fn handle(
    state: &AppState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
    grant: &authorize::Grant,
    conn: &Conn,
) -> Result<Response, ApiError> {
    let storage = &state.storage;
    let addr = conn.addr;
    match endpoint {
        Endpoint::Base => Ok(json_response(
            StatusCode::OK,
            "application/json",
            "{}".into(),
        )),
        Endpoint::Catalog(page) => {
            // The catalog lists only what the caller may pull.
            let visible = catalog_filter(state, grant, addr).await?;
            lists::catalog(storage, page, visible).await
        }
        Endpoint::Tags { name, page } => lists::tags(storage, &name, page).await,
        Endpoint::GetManifest {
            name,
            reference,
            head,
        } => manifests::get(storage, &name, &reference, head, headers).await,
        Endpoint::PutManifest { name, reference } => {
            manifests::put(storage, &name, &reference, headers, body).await
        }
        Endpoint::DeleteManifest { name, reference } => {
            manifests::delete(storage, &name, &reference).await
        }
        Endpoint::GetBlob { name, digest, head } => {
            blobs::get(
                storage,
                &name,
                &digest,
                head,
                headers,
                conn.zero_copy.clone(),
            )
            .await
        }
        Endpoint::DeleteBlob { name, digest } => blobs::delete(storage, &name, &digest).await,
        Endpoint::StartUpload { name, start } => {
            // Sessions are counted against the account that opens them.
            let owner = match grant {
                authorize::Grant::Token(claims) => Some(claims.sub.as_str()),
                authorize::Grant::Open => None,
            };
            uploads::start(storage, &name, start, owner, headers, body).await
        }
        Endpoint::UploadStatus { name, id } => uploads::status(storage, &name, id).await,
        Endpoint::PatchUpload { name, id } => {
            uploads::patch(storage, &name, id, headers, body).await
        }
        Endpoint::FinishUpload { name, id, digest } => {
            uploads::finish(storage, &name, id, &digest, headers, body).await
        }
        Endpoint::CancelUpload { name, id } => uploads::cancel(storage, &name, id).await,
        Endpoint::Referrers {
            name,
            subject,
            artifact_type,
        } => referrers::list(storage, &name, &subject, artifact_type).await,
    }
}

/// Which repositories a catalog caller may see: those the policy lets them
/// pull now, with the groups the token's subject has now. `None` when
/// everything is visible (authentication disabled).
async fn catalog_filter(
    state: &AppState,
    grant: &authorize::Grant,
    addr: Option<std::net::IpAddr>,
) -> Result<Option<lists::Visible>, ApiError> {
    let (Some(authority), authorize::Grant::Token(claims)) = (state.auth.as_ref(), grant) else {
        return Ok(None);
    };
    let identity = match claims.sub.is_empty() {
        true => None,
        false => authority.lookup(&claims.sub).await?,
    };
    let caller = crate::auth::caller(identity.as_ref(), addr);
    let policy = authority.policy();
    Ok(Some(Box::new(move |name: &str| {
        !policy
            .decide(&caller, name, &[Action::Pull])
            .granted
            .is_empty()
    })))
}

/// A request body as the storage layer's byte stream.
fn byte_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

fn json_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// An empty response with the given status and headers (values we built
/// ourselves, so always valid).
fn empty(status: StatusCode, headers: &[(HeaderName, String)]) -> Response {
    let mut response = (status, Body::empty()).into_response();
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name.clone(), v);
        }
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// `Content-Length` as sent by the client, if any and valid.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
