//! Forwarding an authorized v1 request to the legacy backend: the request
//! body streamed up, the answer streamed down (a layer is never held), on a
//! pool of keep-alive connections.
//!
//! What crosses is filtered both ways. Up: never the client's
//! `Authorization` (the backend never sees credentials; Portcullis
//! authorized the request already) nor its `X-Docker-Token` request (tokens
//! are Portcullis' own), nor hop-by-hop headers; `Host` is the backend's.
//! Down: hop-by-hop headers and the backend's own tokens dropped, and every
//! header that names the backend's address (`Location`,
//! `X-Docker-Endpoints`) rewritten to Portcullis' public address, so that
//! clients come back here and the backend's address never leaks.
//!
//! The backend's answer is waited for a bounded time (`[v1]
//! backend_timeout_secs`): a backend that accepts and never answers gets a
//! `503 UNAVAILABLE`, not a client hung forever. A body then takes as long
//! as it takes, but one whose backend sends nothing for as long while it is
//! waited on fails (the client's read ends in an error, not a hang).
//!
//! A layer pull (`GET /v1/images/<id>/layer`) from a plain-TCP HTTP/1
//! client goes on a connection of its own to the backend, so that the body
//! can be moved from that socket to the client's with `splice`
//! ([`zero_copy::relay`]), never copied through Portcullis: only when the
//! backend answers `200` with a `Content-Length` (what else it answers, the
//! request is sent again on the pooled path and the answer copied).

use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};
use axum::response::Response;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::super::forward::{IdleLimited, copy_headers};
use crate::error::{ApiError, ErrorCode};
use crate::serve::zero_copy;

pub const X_DOCKER_TOKEN: HeaderName = HeaderName::from_static("x-docker-token");
pub const X_DOCKER_ENDPOINTS: HeaderName = HeaderName::from_static("x-docker-endpoints");

/// How long the backend may take to answer a request's head by default
/// (`[v1] backend_timeout_secs`). docker-registry answers from its storage
/// within milliseconds, except for a layer PUT, which it answers once the
/// whole upload is written and checksummed; 30 s covers a slow storage
/// without leaving an engine (whose own timeouts are minutes long) hanging
/// on a backend that stopped answering.
pub const DEFAULT_HEAD_TIMEOUT_SECS: u64 = 30;

/// Largest answer read from the backend for Portcullis' own lookups (tag
/// lists, ancestries, image JSON).
const MAX_LOOKUP: usize = 4 << 20;

/// The legacy registry, and the connections to it.
pub struct Backend {
    authority: Authority,
    client: Client<HttpConnector, Body>,
    /// How long an answer's head may take.
    head_timeout: Duration,
}

impl Backend {
    /// `url` is `http://host:port` (checked by the configuration);
    /// `head_timeout` bounds the wait for each answer's head.
    pub fn new(url: &str, head_timeout: Duration) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("v1.backend: {e}"))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or("v1.backend: no host in the URL")?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(zero_copy::CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            authority,
            client,
            head_timeout,
        })
    }

    /// The answer when the backend sent no head within the timeout: the
    /// client is told the registry is unavailable, without the address.
    fn timed_out(&self, what: &str) -> ApiError {
        tracing::warn!(
            timeout_secs = self.head_timeout.as_secs_f64(),
            what,
            "legacy v1 backend did not answer in time"
        );
        ApiError::new(ErrorCode::Unavailable).message("the v1 registry did not answer in time")
    }

    /// `GET /v1/images/<id>/layer`, for a client whose connection can take
    /// a relayed body (`sender`): the backend's answer, its body spliced
    /// from a connection of its own; on the pooled path when the backend
    /// answers anything but `200` with a `Content-Length`, or the client
    /// asks for a range.
    pub async fn forward_layer(
        &self,
        parts: &Parts,
        public: &str,
        sender: zero_copy::Sender,
    ) -> Result<Response, ApiError> {
        let why = match parts.headers.contains_key(header::RANGE) {
            true => "range",
            false => match tokio::time::timeout(self.head_timeout, self.layer_head(parts)).await {
                Err(_) => return Err(self.timed_out("layer")),
                Ok(Err(e)) => {
                    // The cause names the backend: for the log only.
                    tracing::warn!(error = %e, "legacy v1 backend unreachable");
                    return Err(ApiError::new(ErrorCode::Unavailable)
                        .message("the v1 registry is unavailable"));
                }
                Ok(Ok(zero_copy::Fetched::Declined(why))) => why,
                Ok(Ok(zero_copy::Fetched::Relay(relay))) => {
                    let (head, socket, early, len) = *relay;
                    tracing::debug!(
                        target: zero_copy::LOG_TARGET,
                        path = "splice",
                        bytes = len,
                        "v1 layer sent"
                    );
                    let body =
                        zero_copy::relay(sender, socket, len, &early, Some(self.head_timeout))
                            .map_err(|e| {
                                tracing::warn!(error = %e, "cannot relay a v1 layer");
                                ApiError::new(ErrorCode::Internal)
                            })?;
                    let mut response = Response::new(Body::from_stream(body));
                    *response.status_mut() = head.status;
                    self.answer_headers(&head.headers, response.headers_mut(), public);
                    return Ok(response);
                }
            },
        };
        tracing::debug!(target: zero_copy::LOG_TARGET, path = "copy", why, "v1 layer sent");
        self.forward(parts, Body::empty(), public).await
    }

    /// Sends `parts` (a `GET`) on a new connection and reads the answer's
    /// head.
    async fn layer_head(&self, parts: &Parts) -> std::io::Result<zero_copy::Fetched> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = HeaderMap::new();
        copy_headers(
            &parts.headers,
            &mut headers,
            &[header::AUTHORIZATION, X_DOCKER_TOKEN],
        );
        zero_copy::fetch(
            self.authority.as_str(),
            path,
            &headers,
            axum::http::StatusCode::OK,
        )
        .await
    }

    /// The headers of the backend's answer `from` that reach the client, in
    /// `to`: both paths filter them here, alike.
    fn answer_headers(&self, from: &HeaderMap, to: &mut HeaderMap, public: &str) {
        // `Server` names the backend's software, `WWW-Authenticate` its own
        // tokens: the answer is Portcullis', and so are the tokens.
        copy_headers(
            from,
            to,
            &[
                X_DOCKER_TOKEN,
                header::SET_COOKIE,
                header::SERVER,
                header::WWW_AUTHENTICATE,
            ],
        );
        self.rewrite_addresses(to, public);
    }

    /// The backend's answer to the request `parts` + `body`; `public` is
    /// Portcullis' own base URL (`http://host:port`), which replaces the
    /// backend's address in the answer's headers.
    pub async fn forward(
        &self,
        parts: &Parts,
        body: Body,
        public: &str,
    ) -> Result<Response, ApiError> {
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| ApiError::new(ErrorCode::Internal))?;
        let build = |body: Body| {
            let mut request = Request::builder()
                .method(parts.method.clone())
                .uri(uri.clone())
                .body(body)
                .map_err(|_| ApiError::new(ErrorCode::Internal))?;
            let headers = request.headers_mut();
            copy_headers(
                &parts.headers,
                headers,
                &[header::AUTHORIZATION, X_DOCKER_TOKEN],
            );
            if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
                headers.insert(header::HOST, host);
            }
            Ok::<_, ApiError>(request)
        };
        let unavailable = |e: hyper_util::client::legacy::Error| {
            // The cause names the backend: for the log, not the client.
            tracing::warn!(error = %e, "legacy v1 backend unreachable");
            ApiError::new(ErrorCode::Unavailable).message("the v1 registry is unavailable")
        };
        // A read has no body to lose, so it is sent again once when the
        // first attempt fails: a pooled connection the backend closed (a
        // restart) fails a request sent on it before the close is seen.
        let read = matches!(parts.method, Method::GET | Method::HEAD);
        // The wait for the head is bounded, not what comes around it: the
        // answer's body streams for as long as it needs (a layer of
        // gigabytes to a slow client), and so does the request's (a layer
        // pushed by one): the clock starts once the request was sent whole.
        let answer = match read {
            true => {
                let answer = async {
                    match self.client.request(build(Body::empty())?).await {
                        Ok(answer) => Ok(answer),
                        Err(_) => self
                            .client
                            .request(build(Body::empty())?)
                            .await
                            .map_err(unavailable),
                    }
                };
                tokio::time::timeout(self.head_timeout, answer)
                    .await
                    .map_err(|_| self.timed_out("request"))??
            }
            false => {
                let (body, sent) = SentWhole::new(body);
                let answer = self.client.request(build(Body::new(body))?);
                tokio::pin!(answer);
                let early = tokio::select! {
                    // Answered before the body's end (a refusal).
                    answer = &mut answer => Some(answer),
                    // Sent whole, or failed: the head is waited for.
                    _ = sent => None,
                };
                let answer = match early {
                    Some(answer) => answer,
                    None => tokio::time::timeout(self.head_timeout, answer)
                        .await
                        .map_err(|_| self.timed_out("request"))?,
                };
                answer.map_err(unavailable)?
            }
        };
        let (answer, incoming) = answer.into_parts();
        let incoming = IdleLimited::new(incoming, self.head_timeout);
        let mut response = Response::new(Body::new(incoming));
        *response.status_mut() = answer.status;
        self.answer_headers(&answer.headers, response.headers_mut(), public);
        Ok(response)
    }

    /// The JSON the backend answers to `GET path` (a path of its own API),
    /// asked as Portcullis, not for a client; `None` when it answers 404.
    pub async fn get_json(&self, path: &str) -> Result<Option<serde_json::Value>, ApiError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, path, "legacy v1 backend lookup failed");
            ApiError::new(ErrorCode::Unavailable).message("the v1 registry is unavailable")
        };
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| unavailable(&e))?;
        let request = || {
            Request::get(uri.clone())
                .header(header::ACCEPT, "application/json")
                .body(Body::empty())
                .map_err(|e| unavailable(&e))
        };
        let lookup = async {
            // Once more on failure, as for a client's read (`forward`).
            let answer = match self.client.request(request()?).await {
                Ok(answer) => answer,
                Err(_) => self
                    .client
                    .request(request()?)
                    .await
                    .map_err(|e| unavailable(&e))?,
            };
            let status = answer.status();
            if status == axum::http::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(unavailable(&format!("status {status}")));
            }
            axum::body::to_bytes(Body::new(answer.into_body()), MAX_LOOKUP)
                .await
                .map(Some)
                .map_err(|e| unavailable(&e))
        };
        // A lookup is small: the whole of it is bounded, not only its head.
        let body = tokio::time::timeout(self.head_timeout, lookup)
            .await
            .map_err(|_| self.timed_out("lookup"))??;
        let Some(body) = body else {
            return Ok(None);
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| unavailable(&e))
    }

    /// Replaces the backend's address by `public` in the headers that carry
    /// addresses.
    fn rewrite_addresses(&self, headers: &mut HeaderMap, public: &str) {
        let backend_host = self.authority.as_str();
        let public_host = public
            .split_once("://")
            .map_or(public, |(_, host)| host)
            .to_owned();
        if let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
            let rewritten = location
                .strip_prefix("http://")
                .and_then(|rest| rest.strip_prefix(backend_host))
                .map(|path| format!("{public}{path}"));
            if let Some(value) = rewritten.and_then(|r| HeaderValue::from_str(&r).ok()) {
                headers.insert(header::LOCATION, value);
            }
        }
        if headers.contains_key(X_DOCKER_ENDPOINTS) {
            // Image calls must come back through Portcullis, which
            // authorizes them: the one endpoint is this server.
            if let Ok(value) = HeaderValue::from_str(&public_host) {
                headers.insert(X_DOCKER_ENDPOINTS, value);
            }
        }
    }
}

/// A request body that says when it was sent whole (or failed), so that the
/// wait for the answer's head starts then, however long the upload took.
struct SentWhole {
    inner: Body,
    sent: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SentWhole {
    fn new(inner: Body) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut body = Self {
            inner,
            sent: Some(tx),
        };
        // An empty body is never polled.
        if hyper::body::Body::is_end_stream(&body.inner) {
            body.done();
        }
        (body, rx)
    }

    fn done(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }
}

impl hyper::body::Body for SentWhole {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_frame(cx));
        // hyper stops polling a body of known length once it says it has
        // ended, so its last frame may be the last call.
        if !matches!(frame, Some(Ok(_))) || self.inner.is_end_stream() {
            self.done();
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backends_address_is_replaced_by_the_public_one() {
        let backend = Backend::new("http://10.0.0.5:5001", Duration::from_secs(1)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_static("http://10.0.0.5:5001/v1/images/abc/json"),
        );
        headers.insert(
            X_DOCKER_ENDPOINTS,
            HeaderValue::from_static("10.0.0.5:5001"),
        );
        backend.rewrite_addresses(&mut headers, "https://registry.example.org");
        assert_eq!(
            headers[header::LOCATION],
            "https://registry.example.org/v1/images/abc/json"
        );
        assert_eq!(headers[X_DOCKER_ENDPOINTS], "registry.example.org");
        // A Location elsewhere is left as it is.
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, HeaderValue::from_static("/v1/ping"));
        backend.rewrite_addresses(&mut headers, "http://p:1");
        assert_eq!(headers[header::LOCATION], "/v1/ping");
    }
}
