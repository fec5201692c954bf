//! A `GET` sent on a connection of its own, for a body to relay: the
//! answer's head is read (bounded), and when the answer is one a relay can
//! carry — the status asked for (`200`, or `206` for a range) with one
//! `Content-Length` and no `Transfer-Encoding` — the socket is handed over
//! at the body's start with the body bytes that came with the head.
//! Anything else is declined, and its caller asks again on its own path
//! (pooled, or the storage driver's read), which handles every answer.
//!
//! Used by the v1 backend's layer pulls, by upstream registries' blob
//! pulls over plain HTTP/1, and by blob reads from an S3 store on plain
//! HTTP ([`super::ranges`]).

use std::io;
use std::time::Duration;

use axum::http::response::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the other end may take to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response head read: registries' are a few hundred bytes.
const MAX_HEAD: usize = 64 << 10;

/// Reads of the response head: the body bytes that come with the head are
/// put in the relay's pipe by a plain write, which must take them at once,
/// and a pipe holds a page at least.
const HEAD_READ: usize = 4 << 10;

/// What a `GET` on a connection of its own got.
pub enum Fetched {
    /// The status asked for, with a `Content-Length`: the head, the socket
    /// at the body, the body bytes read with the head, and the body's
    /// length.
    Relay(Box<(Parts, TcpStream, Vec<u8>, u64)>),
    /// Anything else, and why: the request goes the pooled way.
    Declined(&'static str),
}

/// Sends `GET path` with `headers` (and `Host: authority`,
/// `Connection: close`) to `authority` (`host:port`) on a new connection,
/// and reads the answer's head; a relay takes an answer of `status` only.
/// The caller bounds the whole wait.
pub async fn fetch(
    authority: &str,
    path: &str,
    headers: &HeaderMap,
    status: StatusCode,
) -> io::Result<Fetched> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut socket = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    socket.set_nodelay(true)?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(name.as_str().as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    // The connection is this body's alone.
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    socket.write_all(&request).await?;

    let mut buf = Vec::with_capacity(HEAD_READ);
    let (head, at) = loop {
        let mut chunk = [0u8; HEAD_READ];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Err(invalid("the connection closed before a response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut fields);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(at)) => break (head_of(&response)?, at),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(invalid("response head too large")),
            Err(e) => return Err(invalid(&format!("response head: {e}"))),
        }
    };
    if head.status != status {
        return Ok(Fetched::Declined("status"));
    }
    if head.headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(Fetched::Declined("transfer-encoding"));
    }
    let lengths: Vec<_> = head
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .collect();
    let len = match lengths.as_slice() {
        [one] => one.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()),
        _ => None,
    };
    let Some(len) = len else {
        return Ok(Fetched::Declined("length"));
    };
    let early = buf.split_off(at);
    Ok(Fetched::Relay(Box::new((head, socket, early, len))))
}

fn head_of(response: &httparse::Response<'_, '_>) -> io::Result<Parts> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| invalid("response status"))?;
    let mut head = Response::new(()).into_parts().0;
    head.status = status;
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| invalid("response header name"))?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| invalid("response header value"))?;
        head.headers.append(name, value);
    }
    Ok(head)
}
