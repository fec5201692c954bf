//! Bare HTTP/1.1 requests whose bodies never pass through the client's user
//! space: a `GET` whose body is moved from the socket into a pipe and from
//! the pipe into `/dev/null` with `splice(2)`, and a `PUT`/`PATCH` whose
//! body goes from the blob file to the socket with `sendfile(2)`.
//!
//! Why the blob transfers use them: on two shared cores, every cycle the
//! client spends is taken from the server under test. A client that copies
//! a pulled body out of the socket (as reqwest does, as every registry
//! client does before hashing) spends about a core on that copy alone, and
//! both servers then run at the client's speed, whatever each costs per
//! byte. With the client's bytes handled in the kernel, a transfer measures
//! the server. The copying pull is still measured beside it, as an
//! informational figure.
//!
//! Only what the benchmark's servers answer is understood: a response head
//! with a `Content-Length` body. Anything else fails the run loudly.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes asked of one `splice` or `sendfile` call, and the pipe's capacity.
const STEP: usize = 1 << 20;

/// A response's status and the headers the benchmark reads.
pub struct Response {
    pub status: u16,
    /// `Location`, if any.
    pub location: Option<String>,
    content_length: Option<u64>,
}

/// GETs `url` (`http://host:port/path`), discards the body in the kernel,
/// and checks that it is `200` with exactly `Content-Length` bytes.
/// Blocking: run it on a thread of its own.
pub fn get(url: &str, token: Option<&str>) {
    let (mut socket, request) = connect("GET", url, token, &[]);
    socket.write_all(request.as_bytes()).expect("send request");
    let (head, early) = read_head(&mut socket, url);
    assert_eq!(head.status, 200, "GET {url}");
    let length = head
        .content_length
        .unwrap_or_else(|| panic!("GET {url}: no Content-Length"));
    let mut received = early;
    let (pipe_out, pipe_in) = pipe();
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null");
    while received < length {
        let want = STEP.min((length - received) as usize);
        let moved = splice(socket.as_raw_fd(), pipe_in.as_raw_fd(), want);
        assert!(moved > 0, "GET {url}: short body ({received} of {length})");
        let mut drained = 0;
        while drained < moved {
            let n = splice(pipe_out.as_raw_fd(), null.as_raw_fd(), moved - drained);
            assert!(n > 0, "splice into /dev/null moved nothing");
            drained += n;
        }
        received += moved as u64;
    }
    assert_eq!(received, length, "GET {url}: body longer than announced");
}

/// Sends `len` bytes of `file` from `offset` as the body of a `method`
/// request to `url`, with `sendfile`, and returns the response's head.
/// `headers` are extra `(name, value)` pairs. Blocking, like [`get`].
pub fn send_file(
    method: &str,
    url: &str,
    token: &str,
    headers: &[(&str, String)],
    file: &File,
    offset: u64,
    len: u64,
) -> Response {
    let mut headers = headers.to_vec();
    headers.push(("Content-Type", "application/octet-stream".to_owned()));
    headers.push(("Content-Length", len.to_string()));
    let (mut socket, request) = connect(method, url, Some(token), &headers);
    socket.write_all(request.as_bytes()).expect("send request");
    let mut at = libc::off_t::try_from(offset).expect("offset");
    let end = offset + len;
    while (at as u64) < end {
        let want = STEP.min((end - at as u64) as usize);
        // SAFETY: both descriptors are open for the call (`socket` and
        // `file` are borrowed) and `at` is a valid, exclusively borrowed
        // off_t that sendfile advances.
        let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut at, want) };
        match sent {
            n if n > 0 => {}
            0 => panic!("{method} {url}: the file ended early"),
            _ => {
                let e = std::io::Error::last_os_error();
                assert!(
                    e.kind() == std::io::ErrorKind::Interrupted,
                    "{method} {url}: sendfile: {e}"
                );
            }
        }
    }
    read_head(&mut socket, url).0
}

/// A connection to `url`'s authority and the request head for it.
fn connect(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
) -> (TcpStream, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let socket = TcpStream::connect(authority).expect("connect");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    // A bearer token, or a whole `Authorization` value when it names its
    // scheme (`Token …` for v1): a JWT holds no space.
    match token {
        Some(value) if value.contains(' ') => {
            request.push_str(&format!("Authorization: {value}\r\n"));
        }
        Some(token) => request.push_str(&format!("Authorization: Bearer {token}\r\n")),
        None => {}
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    (socket, request)
}

/// Reads a response head; returns it and how many body bytes were read
/// along with it (they are dropped).
fn read_head(socket: &mut TcpStream, url: &str) -> (Response, u64) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = socket.read(&mut buf).expect("read response head");
        assert!(n > 0, "{url}: connection closed before the response head");
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        assert!(head.len() < 64 << 10, "{url}: response head too long");
    };
    let text = String::from_utf8_lossy(&head[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{url}: bad status line {status_line:?}"));
    let mut response = Response {
        status,
        location: None,
        content_length: None,
    };
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            response.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("location") {
            response.location = Some(value.to_owned());
        }
    }
    (response, (head.len() - end) as u64)
}

/// A pipe as (read end, write end), made as large as the kernel allows up
/// to [`STEP`] so that one `splice` moves a megabyte.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by no one else.
    let (out, into) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A smaller pipe (pipe-max-size) only means more calls: not an error.
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this function owns.
    unsafe { libc::fcntl(into.as_raw_fd(), libc::F_SETPIPE_SZ, STEP as libc::c_int) };
    (out, into)
}

/// One `splice` of up to `len` bytes from `from` to `to`; returns the count.
fn splice(from: RawFd, to: RawFd, len: usize) -> usize {
    loop {
        // SAFETY: two open descriptors, no offsets (both are streams here).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return n as usize;
        }
        let e = std::io::Error::last_os_error();
        assert!(e.kind() == std::io::ErrorKind::Interrupted, "splice: {e}");
    }
}
