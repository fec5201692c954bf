//! A pull client that costs the machine next to nothing: a plain HTTP/1.1
//! `GET` whose body is moved from the socket into a pipe and from the pipe
//! into `/dev/null` with `splice(2)`, so no byte of it is copied into user
//! space.
//!
//! Why the blob pulls use it: on two shared cores, a client that copies
//! the body out of the socket (as reqwest does, as every registry client
//! does before hashing) spends about a core on that copy alone, and both
//! servers then run at the client's speed, whatever each costs per byte.
//! With the body discarded in the kernel, what a pull measures is how fast
//! the server delivers. The copying client is still measured beside it, as
//! an informational figure.
//!
//! Only what the benchmark's servers answer is understood: a `200` with a
//! `Content-Length` body. Anything else fails the run loudly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes asked of one `splice` call, and the pipe's capacity.
const PIPE: usize = 1 << 20;

/// GETs `url` (`http://host:port/path`), discards the body in the kernel,
/// and checks that exactly `Content-Length` bytes came. Blocking: run it on
/// a thread of its own.
pub fn get(url: &str, token: Option<&str>) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut socket = TcpStream::connect(authority).expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    socket.write_all(request.as_bytes()).expect("send request");

    let (length, early) = read_head(&mut socket, url);
    let mut received = early;
    let (pipe_out, pipe_in) = pipe();
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null");
    while received < length {
        let want = PIPE.min((length - received) as usize);
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

/// Reads the response head; returns the body's `Content-Length` and how
/// many body bytes were read along with the head (they are dropped).
fn read_head(socket: &mut TcpStream, url: &str) -> (u64, u64) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = socket.read(&mut buf).expect("read response head");
        assert!(n > 0, "GET {url}: connection closed before the head");
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        assert!(head.len() < 64 << 10, "GET {url}: response head too long");
    };
    let text = String::from_utf8_lossy(&head[..end]);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    assert!(
        status.split_whitespace().nth(1) == Some("200"),
        "GET {url}: {status}"
    );
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("GET {url}: no Content-Length"));
    (length, (head.len() - end) as u64)
}

/// A pipe as (read end, write end), made as large as the kernel allows up
/// to [`PIPE`] so that one `splice` moves a megabyte.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by no one else.
    let (out, into) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A smaller pipe (pipe-max-size) only means more calls: not an error.
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this function owns.
    unsafe { libc::fcntl(into.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE as libc::c_int) };
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
