//! HTTP: the only module that knows about requests and responses.
//!
//! Every request goes through [`dispatch`]: parse it into a [`Route`]
//! (`/token`, JWKS, the probes, or an [`Endpoint`] of `/v2/`), authorize it
//! once from the route's credentials and required access, then one `match`
//! hands it to its handler.

mod audit;
pub mod authorize;
mod blobs;
pub mod endpoint;
mod forward;
mod health;
mod lists;
pub mod login;
mod manifests;
mod metrics;
mod notify;
mod referrers;
pub mod request_id;
pub mod route;
mod token;
mod uploads;
pub mod upstream;
pub mod v1;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

pub use endpoint::{Access, Action, Endpoint};
pub use route::Route;

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
        .fallback(dispatch)
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
        // The probes are routes like any other ([`Route::Live`],
        // [`Route::Ready`]); only registered here, after the trace layer,
        // so that requests every few seconds stay out of the request log.
        .route("/healthz", axum::routing::any(dispatch))
        .route("/readyz", axum::routing::any(dispatch))
        .route("/metrics", axum::routing::any(dispatch))
        // Outermost, so that every answer (the probes' too) carries the
        // request id and every log line of the request, the trace layer's
        // included, is in its span.
        .layer(request_id::AssignLayer(state.clone()))
        .with_state(state)
}

/// The router of `metrics.listen`, the listener of its own: `/metrics` and
/// nothing else, out of the request log and the request metrics (a scrape
/// every few seconds is not traffic).
pub fn metrics_router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(state): axum::extract::State<Arc<AppState>>,
                 headers: axum::http::HeaderMap| async move {
                    metrics::serve(&state, &headers)
                },
            ),
        )
        .fallback(|| async { ApiError::from(ErrorCode::NotFound).into_response() })
        .with_state(state)
}

/// The span of one request (tower-http's fields, and which backend served
/// it, recorded once the request is authorized): at `debug` and with the
/// target of tower-http's own, so that the filter that showed the request
/// log before (`tower_http=debug`) still does, and at `info` it costs
/// nothing.
fn request_span(request: &Request) -> tracing::Span {
    tracing::debug_span!(
        target: "tower_http::trace::make_span",
        "request",
        method = %request.method(),
        uri = %request.uri(),
        version = ?request.version(),
        backend = tracing::field::Empty,
    )
}

async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = std::time::Instant::now();
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
    let path = parts.uri.path();
    // Registry answers (errors too) say which API they speak: engines look
    // for it on `/v2/` before they use v2 at all.
    let registry = path == "/v2" || path.starts_with("/v2/");
    let (version, body_sent) = (parts.version, has_body(&parts.headers));
    let keep_on_v1 = registry && v1_only(&state, &parts.headers);
    let parsed = Route::parse(&parts.method, path, parts.uri.query()).and_then(|route| {
        // Without a backend there is no v1 to authorize for.
        match route {
            Route::V1(_) if state.v1.is_none() => Err(ErrorCode::NotFound.into()),
            Route::Registry(_) if keep_on_v1 => {
                Err(ApiError::new(ErrorCode::NotFound).message("this engine is served over v1"))
            }
            Route::Registry(endpoint) => match endpoint
                .name()
                .and_then(|n| state.upstreams.get().route(n))
            {
                None => Ok(Route::Registry(endpoint)),
                // Refused before any credential is looked at: no caller
                // may push here, whatever the policy says.
                Some(upstream) if endpoint.writes() && !upstream.config.push => {
                    Err(ApiError::new(ErrorCode::Unsupported).message(format!(
                        "{} is served by the upstream registry `{}`, which takes no pushes here",
                        endpoint.name().map_or("", |n| n.as_str()),
                        upstream.config.name
                    )))
                }
                Some(upstream) => Ok(Route::Upstream(endpoint, upstream)),
            },
            route => Ok(route),
        }
    });
    let (label, backend) = match &parsed {
        Ok(route) => (route.label(), route.backend()),
        Err(_) => ("unknown", std::borrow::Cow::Borrowed("self")),
    };
    let method = method_label(&parts.method);
    let body_in = content_length(&parts.headers);
    let mut audited = audit::Audited::default();
    let mut notified = None;
    let mut result = match parsed {
        // The one authorization check, from the route's credentials and
        // `route.required_access()`.
        Ok(route) => match authorize::authorize(&state, &route, &parts, conn.addr).await {
            Ok(grant) => {
                if state.audit.enabled() {
                    audited = audit::Audited::of(&route, Some(&grant), &parts);
                }
                if state.notifier.enabled() {
                    notified = notify::Notified::of(&state, &route, &grant, &parts, conn.addr);
                }
                // A cache says itself whether it answered (hit or miss).
                if !matches!(&route, Route::Upstream(_, u) if u.caches()) {
                    tracing::Span::current().record("backend", route.backend().as_ref());
                }
                handle(&state, route, parts, body, &grant, &conn).await
            }
            Err(e) => {
                if state.audit.enabled() {
                    audited = audit::Audited::of(&route, None, &parts);
                }
                Err(e)
            }
        },
        Err(e) => Err(e),
    };
    let code = result.as_ref().err().map(|e| e.code.code());
    // Taken, not cloned: the answer never shows it.
    let refused = result.as_mut().err().and_then(|e| e.refused.take());
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if state.audit.enabled() {
        audited.record(&state.audit, &response, code, refused.as_deref(), conn.addr);
    }
    if let Some(notified) = notified {
        notified.record(&state, &response);
    }
    // Not on the 404 that keeps an old engine on v1: it would read as "v2
    // spoken here".
    if registry && !keep_on_v1 {
        response
            .headers_mut()
            .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    }
    // An error is often answered before the request body was read (a chunk
    // at the wrong offset, an unknown session); hyper then closes the
    // connection rather than read the rest. Say so, or a keep-alive client
    // puts the connection back in its pool and its next request fails.
    let status = response.status();
    if (status.is_client_error() || status.is_server_error())
        && version <= Version::HTTP_11
        && body_sent
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let labels = crate::metrics::RequestLabels {
        route: label,
        method,
        status: status.as_u16(),
        backend,
    };
    // A streamed body (a blob) declares its length in the head; a HEAD
    // answer declares one and sends nothing.
    let body_out = match method {
        "HEAD" => None,
        _ => axum::body::HttpBody::size_hint(response.body())
            .exact()
            .or_else(|| content_length(response.headers())),
    };
    state
        .metrics
        .request(labels, started.elapsed(), body_in, body_out);
    response
}

/// The method as a metrics label: the registry's methods, else `other`
/// (a client's made-up method must not make a label of its own).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Whether the request comes from a Docker engine that
/// `v1.v1_only_engines_below` keeps on v1.
fn v1_only(state: &AppState, headers: &HeaderMap) -> bool {
    state.v1_only_below.as_ref().is_some_and(|below| {
        v1::engine::docker_version(headers).is_some_and(|version| version < *below)
    })
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

/// The authorized `route`'s answer.
async fn handle(
    state: &Arc<AppState>,
    route: Route,
    parts: Parts,
    body: Body,
    grant: &authorize::Grant,
    conn: &Conn,
) -> Result<Response, ApiError> {
    Ok(match route {
        Route::Token { post: false } => {
            token::get(state.clone(), Request::from_parts(parts, body)).await
        }
        Route::Token { post: true } => {
            token::post(state.clone(), Request::from_parts(parts, body)).await
        }
        Route::Jwks => token::jwks(state),
        Route::Login(page) => login::serve(state, page, parts, body).await,
        // Served on a listener of its own when one is configured.
        Route::Metrics if state.config.metrics.listen.is_some() => {
            return Err(ErrorCode::NotFound.into());
        }
        Route::Metrics => metrics::serve(state, &parts.headers),
        Route::Live => health::live(),
        Route::Ready => health::ready(state).await,
        Route::Registry(endpoint) => {
            return registry(state, endpoint, &parts.headers, body, grant, conn).await;
        }
        Route::V1(endpoint) => {
            let zero_copy = conn.zero_copy.clone();
            return v1::serve(state, endpoint, &parts, body, grant, conn.addr, zero_copy).await;
        }
        Route::Upstream(endpoint, upstream) if upstream.caches() => {
            return upstream::serve_cached(state, &upstream, endpoint, parts, body, grant, conn)
                .await;
        }
        Route::Upstream(endpoint, upstream) => {
            let public = authorize::public_base(state, &parts);
            return upstream
                .forward(&endpoint, &parts, body, &public, conn.zero_copy.clone())
                .await;
        }
    })
}

/// An authorized `/v2/` request on the built-in storage.
async fn registry(
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
            let upstream = state.upstreams.get().catalog().await;
            lists::catalog(storage, page, visible, upstream).await
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
                authorize::Grant::Open | authorize::Grant::Public | authorize::Grant::Login(_) => {
                    None
                }
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
