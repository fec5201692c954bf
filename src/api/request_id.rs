//! The request id: one short name per request, so that the message a user
//! reports can be found in the logs. It is
//!
//! - the `request_id` of the `request` span every log line of the request is
//!   written in (text: `request{request_id=…}:`, JSON: under `spans`),
//! - the `X-Request-Id` header of every answer,
//! - the `request_id` of the request's audit line, and
//! - in every error body's `detail` (`{"request_id": …}`, see
//!   [`crate::error`]).
//!
//! Ours are 12 characters of URL-safe base64 from 72 random bits: short to
//! read out, and no two requests of a registry's lifetime share one. An
//! incoming `X-Request-Id` is taken only from a peer in `log.request_id_from`
//! (the proxies in front, which made it) and only when it is 1–64 characters
//! of `A-Z a-z 0-9 . _ -`: a client's own would let anyone name their
//! requests after someone else's, and a value with a newline or quote would
//! forge log lines. Anything else gets an id of our own, silently: the
//! header's value is not logged either.
//!
//! [`current`] gives the id of the request being served to any code that
//! runs in it (webhook events, audit lines); a task spawned for the request
//! takes the id with it by value.

use std::fmt;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use tracing::Instrument;

use crate::AppState;
use crate::serve::Peer;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id taken from a proxy.
const MAX_LEN: usize = 64;

/// Random bytes of an id of ours: 9 bytes are 12 base64 characters, no
/// padding.
const RANDOM_BYTES: usize = 9;

/// A request's id: ASCII of the safe charset, at most [`MAX_LEN`] bytes,
/// held inline so that reading it never allocates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_LEN],
}

impl RequestId {
    /// A new id of our own.
    pub fn generate() -> Self {
        let random = next_random();
        let random = &random[..RANDOM_BYTES];
        let mut encoded = [0u8; 12];
        data_encoding::BASE64URL_NOPAD.encode_mut(random, &mut encoded);
        Self::parse(&encoded).unwrap_or(Self {
            len: 0,
            bytes: [0; MAX_LEN],
        })
    }

    /// `value` as an id, when it is one: 1–64 bytes of `A-Z a-z 0-9 . _ -`.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let safe = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        if value.is_empty() || value.len() > MAX_LEN || !value.iter().all(safe) {
            return None;
        }
        let mut bytes = [0; MAX_LEN];
        bytes[..value.len()].copy_from_slice(value);
        Some(Self {
            len: value.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (`parse`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

tokio::task_local! {
    static CURRENT: RequestId;
}

thread_local! {
    /// A splitmix64 state per thread, seeded from the system's generator.
    /// An id names a request and is no secret (guessing one gains nothing),
    /// so it needs uniqueness, not a DRBG call per request, which cost the
    /// small requests a measurable share of their time.
    static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
        let mut seed = [0u8; 8];
        // The system's generator failing leaves a fixed seed: ids repeat
        // across processes, requests are still served.
        let _ = aws_lc_rs::rand::fill(&mut seed);
        u64::from_le_bytes(seed)
    });
}

/// 16 bytes from this thread's generator.
fn next_random() -> [u8; 16] {
    STATE.with(|state| {
        let mut out = [0u8; 16];
        for half in out.chunks_exact_mut(8) {
            let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            half.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out
    })
}

/// The id of the request this code runs for; `None` outside one (a
/// background task, a command).
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(|id| *id).ok()
}

/// The outermost layer of the router ([`Assign`] around it): names the
/// request, serves it inside its span and with [`current`] set, and says
/// the name in the answer. A layer of its own rather than
/// `axum::middleware::from_fn`, which clones the boxed router for every
/// request.
#[derive(Clone)]
pub struct AssignLayer(pub Arc<AppState>);

impl<S> tower::Layer<S> for AssignLayer {
    type Service = Assign<S>;

    fn layer(&self, inner: S) -> Assign<S> {
        Assign {
            inner,
            state: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
pub struct Assign<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S> tower::Service<Request> for Assign<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let id = of(&self.state, &request);
        // At `error`, so that whatever the level, any line the request logs
        // is in it: a span's level only decides whether it exists, and a
        // level that shows a request's warnings must show which request it
        // was.
        let span = tracing::error_span!(target: "portcullis::request", "request", request_id = %id);
        let answer = CURRENT.scope(id, self.inner.call(request)).instrument(span);
        Box::pin(async move {
            let mut response = answer.await?;
            if let Ok(value) = HeaderValue::from_str(id.as_str()) {
                response.headers_mut().insert(X_REQUEST_ID, value);
            }
            Ok(response)
        })
    }
}

/// The id `request` is served under: its proxy's, when the peer is one of
/// `log.request_id_from` and the value is safe, else a new one.
fn of(state: &AppState, request: &Request) -> RequestId {
    let trusted = &state.config.log.request_id_from;
    if trusted.is_empty() {
        return RequestId::generate();
    }
    let from_proxy = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .is_some_and(|peer| {
            let addr = crate::policy::canonical(peer.0.addr.ip());
            trusted.iter().any(|net| net.contains(&addr))
        });
    from_proxy
        .then(|| request.headers().get(X_REQUEST_ID))
        .flatten()
        .and_then(|value| RequestId::parse(value.as_bytes()))
        .unwrap_or_else(RequestId::generate)
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn ours_are_twelve_url_safe_characters_and_differ() {
        let (a, b) = (RequestId::generate(), RequestId::generate());
        assert_eq!(a.as_str().len(), 12, "{a}");
        assert!(RequestId::parse(a.as_str().as_bytes()).is_some(), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn only_short_values_of_the_safe_charset_are_ids() {
        for good in ["a", "0f3c-9d2e_11.x", &"7".repeat(64)] {
            assert_eq!(
                RequestId::parse(good.as_bytes()).map(|id| id.to_string()),
                Some(good.to_owned())
            );
        }
        for bad in [
            "",
            &"7".repeat(65),
            "a b",
            "a\nINFO forged line",
            "a\"b",
            "a=b",
            "é",
            "a\0",
        ] {
            assert!(RequestId::parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }
}
