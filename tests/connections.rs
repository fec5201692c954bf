//! Connection limits from outside, on raw sockets against a real server with
//! short configured timeouts: a silent connection and a head trickled a byte
//! a second are cut, an idle keep-alive connection is closed, at the
//! connection limit the longest-idle connection makes room for a new client
//! while a busy one is left alone, and a stalled upload body is cut while
//! its session stays resumable (a slow one that keeps moving is not cut).

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestServer, random_bytes, sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than any configured timeout here by a wide margin: a connection
/// still open by then was not cut.
const DEADLINE: Duration = Duration::from_secs(20);

async fn server(configure: impl FnOnce(&mut portcullis::config::Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    TestServer::start_configured(dir, |config| {
        config.auth.enabled = false;
        configure(config);
    })
    .await
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (EOF or reset), failing if
/// it has not within `DEADLINE`; returns what was read before.
async fn until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, socket.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {DEADLINE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one keep-alive `GET /v2/` and reads its whole (empty-bodied or
/// `Content-Length`-framed) response.
async fn request(socket: &mut TcpStream) -> String {
    socket
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, socket.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(n > 0, "closed before the response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// A connection with a monolithic push of `blob` to `repo` whose body is
/// only half sent: busy. Returns once the server has the request (its
/// session exists on disk).
async fn half_sent_push(server: &TestServer, repo: &str, blob: &[u8]) -> TcpStream {
    let mut busy = connect(server).await;
    let head = format!(
        "POST /v2/{repo}/blobs/uploads/?digest={} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        sha256(blob),
        blob.len()
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.write_all(&blob[..blob.len() / 2]).await.unwrap();
    let uploads = server.dir.path().join("data/uploads");
    let start = Instant::now();
    while !std::fs::read_dir(&uploads).is_ok_and(|mut d| d.next().is_some()) {
        assert!(
            start.elapsed() < DEADLINE,
            "the push never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    busy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let server = server(|c| c.server.header_timeout_secs = 2).await;
    let mut socket = connect(&server).await;
    let start = Instant::now();
    let got = until_closed(&mut socket).await;
    assert!(got.is_empty(), "nothing is answered to silence");
    // The property is about time: not cut at once, cut about on time.
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_a_byte_a_second_is_cut() {
    let server = server(|c| c.server.header_timeout_secs = 3).await;
    let mut socket = connect(&server).await;
    let head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nUser-Agent: one-byte-at-a-time\r\n\r\n";
    let start = Instant::now();
    let mut sent = 0;
    let mut cut = false;
    for byte in head {
        if socket.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        sent += 1;
        // Pacing the attack, not waiting for the server.
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(1), socket.read(&mut probe)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => panic!("answered a head that was never finished"),
        }
        assert!(
            start.elapsed() < DEADLINE,
            "still reading the head after {DEADLINE:?}"
        );
    }
    assert!(
        cut && sent < head.len(),
        "the trickled head was read whole ({sent} bytes)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = server(|c| c.server.idle_timeout_secs = 2).await;
    let mut socket = connect(&server).await;
    let first = request(&mut socket).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let second = request(&mut socket).await;
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "keep-alive works: {second}"
    );
    let start = Instant::now();
    assert!(until_closed(&mut socket).await.is_empty());
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

/// At the limit (two), a new client is served because the idle connection
/// is closed for it; the connection in the middle of an upload is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_the_idle_connection_makes_room_not_the_busy_one() {
    let server = server(|c| c.server.max_connections = Some(2)).await;
    let blob = random_bytes(100_000);
    let digest = sha256(&blob);

    let mut idle = connect(&server).await;
    assert!(request(&mut idle).await.starts_with("HTTP/1.1 200"));

    let mut busy = half_sent_push(&server, "limit/busy", &blob).await;

    let response = tokio::time::timeout(DEADLINE, server.client.get(server.at("/v2/")).send())
        .await
        .expect("the new client was not served")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        until_closed(&mut idle).await.is_empty(),
        "the idle connection was shed"
    );

    busy.write_all(&blob[50_000..]).await.unwrap();
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(DEADLINE, busy.read_exact(&mut answer))
        .await
        .expect("the busy push got no answer")
        .expect("the busy connection was cut");
    assert_eq!(&answer, b"HTTP/1.1 201", "the busy push completes");
    server
        .assert_serves_blob("limit/busy", &digest, &blob)
        .await;
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers()[name].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_cut_and_its_session_resumes() {
    let server = server(|c| c.server.body_timeout_secs = 2).await;
    let blob = random_bytes(300_000);
    let digest = sha256(&blob);
    let started = server
        .client
        .post(server.at("/v2/stall/repo/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = server.at(&header(&started, "location"));

    // A slow chunk that keeps moving (a part every half timeout) is fine.
    let (tx, body) = common::channel_body();
    let patch = tokio::spawn(
        server
            .client
            .patch(&location)
            .header("content-range", "0-99999")
            .header("content-length", "100000")
            .body(body)
            .send(),
    );
    for part in blob[..100_000].chunks(25_000) {
        tx.send(Bytes::copy_from_slice(part)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(tx);
    let slow = patch.await.unwrap().unwrap();
    assert_eq!(slow.status(), 202, "a slow upload that keeps moving");
    assert_eq!(header(&slow, "range"), "0-99999");

    // The next chunk stalls half-way: the server cuts it.
    let (tx, body) = common::channel_body();
    let patch = tokio::spawn(
        server
            .client
            .patch(&location)
            .header("content-range", "100000-199999")
            .header("content-length", "100000")
            .body(body)
            .send(),
    );
    tx.send(Bytes::copy_from_slice(&blob[100_000..150_000]))
        .await
        .unwrap();
    let cut = tokio::time::timeout(DEADLINE, patch)
        .await
        .expect("the stalled upload was not cut")
        .unwrap();
    if let Ok(response) = cut {
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    drop(tx);

    // The session still reports what it had, and resumes from there.
    let status = server.client.get(&location).send().await.unwrap();
    assert_eq!(status.status(), 204);
    let range = header(&status, "range");
    let offset: usize = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
    assert_eq!(offset, 100_000, "{range}");
    let rest = server
        .client
        .patch(&location)
        .header("content-range", format!("{offset}-{}", blob.len() - 1))
        .body(blob[offset..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 202);
    let location = server.at(&header(&rest, "location"));
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = server
        .client
        .put(format!("{location}{sep}digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201);
    server
        .assert_serves_blob("stall/repo", &digest, &blob)
        .await;
}

/// With every connection busy, a new client is neither refused nor served:
/// it waits (in the listen backlog) until a connection frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_with_none_idle_a_new_client_waits_its_turn() {
    let server = server(|c| c.server.max_connections = Some(1)).await;
    let blob = random_bytes(10_000);
    let mut busy = half_sent_push(&server, "limit/wait", &blob).await;

    let waiting = tokio::spawn(server.client.get(server.at("/v2/")).send());
    // The property is that it waits: a second of not being served.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "served past the connection limit");

    busy.write_all(&blob[5_000..]).await.unwrap();
    let mut answer = vec![0u8; 12];
    busy.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 201");
    drop(busy);
    let response = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the waiting client was never served")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
}
