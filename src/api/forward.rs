//! What crosses a proxy hop: the headers of a request or an answer copied
//! to the other side but those that describe one connection, and an
//! answer's body that may not go silent for longer than the hop allows (the
//! v1 backend and upstream registries both forward through it).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, header};
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Hop-by-hop headers (RFC 9110 §7.6.1), which describe one connection and
/// are never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Copies `from` into `to` but the hop-by-hop headers, those the
/// `Connection` header names, `Host`, and `drop`. `X-Request-Id` crosses
/// as the id of the request being served, so that the other side's log
/// names it as ours does (a client's own is not passed off as ours).
pub fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, drop: &[HeaderName]) {
    use super::request_id::{X_REQUEST_ID, current};
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        let skip = HOP_BY_HOP.contains(name)
            || *name == header::HOST
            || *name == X_REQUEST_ID
            || drop.contains(name)
            || named.iter().any(|n| n == name.as_str());
        if !skip {
            to.append(name.clone(), value.clone());
        }
    }
    if let Some(id) = current() {
        if let Ok(value) = axum::http::HeaderValue::from_str(id.as_str()) {
            to.insert(X_REQUEST_ID, value);
        }
    }
}

/// An answer's body that fails when, waited on, it brings nothing for
/// `idle`: a backend that stops sending mid-body must not hold a client
/// forever. The clock runs only while the body is waited on, from the first
/// wait after a frame, so a slow client (which leaves the body unpolled) is
/// never taken for a silent backend. It may hold something until it ends
/// (`held`: an upstream request's turn).
pub struct IdleLimited<B, H = ()> {
    inner: B,
    idle: Duration,
    stall: Pin<Box<Sleep>>,
    /// Set while the clock runs.
    waiting: bool,
    _held: H,
}

impl<B> IdleLimited<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            stall: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            _held: (),
        }
    }

    /// The same body, holding `held` until it is dropped.
    pub fn holding<H>(self, held: H) -> IdleLimited<B, H> {
        IdleLimited {
            inner: self.inner,
            idle: self.idle,
            stall: self.stall,
            waiting: self.waiting,
            _held: held,
        }
    }
}

impl<B, H: Unpin> Body for IdleLimited<B, H>
where
    B: Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(std::io::Error::other)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.stall.as_mut().reset(Instant::now() + this.idle);
                }
                match this.stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the other side stopped sending",
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1::proxy::X_DOCKER_TOKEN;
    use axum::http::HeaderValue;

    #[test]
    fn hop_by_hop_credentials_and_connection_named_headers_stay_behind() {
        let mut from = HeaderMap::new();
        from.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDp5"),
        );
        from.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        from.insert("x-secret", HeaderValue::from_static("1"));
        from.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        from.insert(header::HOST, HeaderValue::from_static("portcullis:5000"));
        from.insert(X_DOCKER_TOKEN, HeaderValue::from_static("true"));
        from.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        from.append("x-multi", HeaderValue::from_static("a"));
        from.append("x-multi", HeaderValue::from_static("b"));
        // Outside a request: a client's id is not forwarded, and there is
        // no id of ours to send.
        from.insert("x-request-id", HeaderValue::from_static("the-clients"));
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to, &[header::AUTHORIZATION, X_DOCKER_TOKEN]);
        let mut names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "x-multi"]);
        assert_eq!(to.get_all("x-multi").iter().count(), 2);
    }
}
