//! Blob downloads over the zero-copy path (`serve::zero_copy`): HTTP/1
//! responses whose body is sent from the file with `sendfile`. Every test
//! compares the bytes received with the bytes pushed: a frame sent as its
//! placeholder instead of from the file would arrive as zeros. Whole bytes
//! alone would also pass if the server silently streamed a copy instead, so
//! `downloads_log_the_path_they_took` reads the server's debug line naming
//! the path of each download.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use common::process::ServerProcess;
use common::{TestServer, random_bytes, sha256};
use reqwest::StatusCode;

/// Spans three of the path's 4 MiB windows, the last one partial.
const LARGE: usize = (9 << 20) + 12_345;

fn blob_file(server: &TestServer, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    server
        .dir
        .path()
        .join("data/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

/// A whole blob several windows long arrives byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_arrives_whole() {
    let server = TestServer::start().await;
    let data = random_bytes(LARGE);
    let digest = server.push_blob("zc/whole", &data).await;
    server.assert_serves_blob("zc/whole", &digest, &data).await;
}

/// Ranges that start and end inside windows and cross their boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_across_windows() {
    let server = TestServer::start().await;
    let data = random_bytes(LARGE);
    let digest = server.push_blob("zc/ranges", &data).await;
    let window = 4 << 20;
    for (start, end) in [
        (0, 65_535),
        (window - 100_000, window + 100_000),
        (1, 2 * window + 1),
        (LARGE - 70_000, LARGE - 1),
    ] {
        let response = server
            .client
            .get(server.at(&format!("/v2/zc/ranges/blobs/{digest}")))
            .header("Range", format!("bytes={start}-{end}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        let body = response.bytes().await.unwrap();
        assert!(
            body[..] == data[start..=end],
            "bytes {start}-{end}: {} bytes that are not that slice",
            body.len()
        );
    }
}

/// A blob whose pages are not in the page cache (evicted after the push) is
/// read in before it is sent, and arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_blob_arrives_whole() {
    let server = TestServer::start().await;
    let data = random_bytes(LARGE);
    let digest = server.push_blob("zc/cold", &data).await;
    let file = std::fs::File::open(blob_file(&server, &digest)).unwrap();
    // The blob was synced when committed, so its pages are clean and this
    // drops them (advice, but Linux acts on it for clean pages).
    // SAFETY: a plain syscall on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
    server.assert_serves_blob("zc/cold", &digest, &data).await;
}

/// Pipelined requests on one connection, mixing sent-from-file bodies,
/// a HEAD and a small streamed blob, are answered in order, each with its
/// own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_keep_their_bodies_apart() {
    let server = TestServer::start().await;
    let large = random_bytes(LARGE);
    let small = random_bytes(1_000);
    let other = random_bytes(300_000);
    let large_digest = server.push_blob("zc/pipe", &large).await;
    let small_digest = server.push_blob("zc/pipe", &small).await;
    let other_digest = server.push_blob("zc/pipe", &other).await;
    let addr = server.url.strip_prefix("http://").unwrap().to_owned();

    let requests: Vec<(&str, String, Option<&str>, Vec<u8>)> = vec![
        ("GET", large_digest.clone(), None, large.clone()),
        ("HEAD", large_digest.clone(), None, Vec::new()),
        ("GET", small_digest, None, small),
        ("GET", other_digest, None, other),
        (
            "GET",
            large_digest,
            Some("bytes=5000000-5099999"),
            large[5_000_000..5_100_000].to_vec(),
        ),
    ];
    let results = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut all = String::new();
        for (method, digest, range, _) in &requests {
            all.push_str(&format!(
                "{method} /v2/zc/pipe/blobs/{digest} HTTP/1.1\r\nHost: test\r\n"
            ));
            if let Some(range) = range {
                all.push_str(&format!("Range: {range}\r\n"));
            }
            all.push_str("\r\n");
        }
        // All requests in one write: the server has the next request before
        // it finished the previous response.
        stream.write_all(all.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        requests
            .into_iter()
            .map(|(method, _, _, want)| {
                let (status, length) = read_head(&mut reader);
                let body = if method == "HEAD" {
                    Vec::new()
                } else {
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    body
                };
                (status, body == want)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 206]);
    for (i, (_, same)) in results.iter().enumerate() {
        assert!(same, "response {i} carried other bytes than its blob's");
    }
}

/// A client that hangs up halfway through leaves the server serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hanging_up_mid_download_harms_nothing() {
    let server = TestServer::start().await;
    let data = random_bytes(LARGE);
    let digest = server.push_blob("zc/hangup", &data).await;
    let addr = server.url.strip_prefix("http://").unwrap().to_owned();
    let path = format!("/v2/zc/hangup/blobs/{digest}");
    tokio::task::spawn_blocking(move || {
        for _ in 0..3 {
            let mut stream = TcpStream::connect(&addr).unwrap();
            write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
            let mut reader = BufReader::new(stream);
            let (status, _) = read_head(&mut reader);
            assert_eq!(status, 200);
            let mut some = vec![0; 100_000];
            reader.read_exact(&mut some).unwrap();
            // Dropped here, with most of the blob unsent.
        }
    })
    .await
    .unwrap();
    server.assert_serves_blob("zc/hangup", &digest, &data).await;
}

/// HTTP/2 frames bodies itself, so it gets the copied stream: curl with
/// prior knowledge receives the blob whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_downloads_are_whole() {
    let server = TestServer::start().await;
    let data = random_bytes(LARGE);
    let digest = server.push_blob("zc/h2", &data).await;
    let out = server.dir.path().join("h2-body");
    let url = server.at(&format!("/v2/zc/h2/blobs/{digest}"));
    let curl = tokio::task::spawn_blocking({
        let out = out.clone();
        move || {
            Command::new("curl")
                .args(["-sS", "--http2-prior-knowledge", "-w", "%{http_version}"])
                .arg("-o")
                .arg(&out)
                .arg(&url)
                .output()
                .expect("run curl")
        }
    })
    .await
    .unwrap();
    assert!(
        curl.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "2", "HTTP version");
    let body = std::fs::read(&out).unwrap();
    assert!(body == data, "body differs from the pushed blob");
}

/// A plain-TCP HTTP/1 download of a large blob, whole or a range, goes by
/// `sendfile`, and the server says so for each one; a small blob and an
/// HTTP/2 download are copied. Each download's line is the next `blob sent`
/// line of the log, so a fallback to the copy fails the test even though
/// the bytes would arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_log_the_path_they_took() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--no-auth",
        "--data-dir",
        data_dir,
    ];
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command.arg("serve").args(args).stderr(Stdio::piped());
    // Debug for `serve` alone, where the path lines are.
    command.env("PORTCULLIS_LOG", "warn,portcullis::serve=debug");
    let mut server = ServerProcess::spawn(command);
    let mut log = crate::logs::Log::of(&mut server);
    let client = reqwest::Client::new();
    let large = random_bytes(LARGE);
    let small = random_bytes(1_000);
    let url = |digest: &str| server.at(&format!("/v2/zc/path/blobs/{digest}"));
    for data in [&large, &small] {
        let response = client
            .post(server.at(&format!(
                "/v2/zc/path/blobs/uploads/?digest={}",
                sha256(data)
            )))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let (large_digest, small_digest) = (sha256(&large), sha256(&small));

    let mut next_path = |what: &str| {
        let line = log.wait_for(&["blob sent"]);
        assert!(
            line.contains("portcullis::serve::zero_copy"),
            "{what}: {line}"
        );
        line
    };
    let body = client.get(url(&large_digest)).send().await.unwrap();
    assert!(body.bytes().await.unwrap() == large, "whole: bytes differ");
    let line = next_path("whole");
    assert!(line.contains(r#"path="sendfile""#), "whole: {line}");
    assert!(line.contains(&format!("bytes={LARGE}")), "whole: {line}");

    let (start, end) = (1_000_000, 5_999_999);
    let response = client
        .get(url(&large_digest))
        .header("Range", format!("bytes={start}-{end}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert!(response.bytes().await.unwrap()[..] == large[start..=end]);
    let line = next_path("range");
    assert!(line.contains(r#"path="sendfile""#), "range: {line}");
    assert!(line.contains("bytes=5000000"), "range: {line}");

    let body = client.get(url(&small_digest)).send().await.unwrap();
    assert!(body.bytes().await.unwrap() == small, "small: bytes differ");
    let line = next_path("small");
    assert!(line.contains(r#"path="copy""#), "small: {line}");
    assert!(line.contains(r#"why="small""#), "small: {line}");

    let url = url(&large_digest);
    let curl = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "-o", "/dev/null"])
            .args(["-w", "%{http_version} %{size_download}"])
            .arg(url)
            .output()
            .expect("run curl")
    })
    .await
    .unwrap();
    let shown = String::from_utf8_lossy(&curl.stdout);
    assert_eq!(shown, format!("2 {LARGE}"), "HTTP/2: {curl:?}");
    let line = next_path("HTTP/2");
    assert!(line.contains(r#"path="copy""#), "HTTP/2: {line}");
    assert!(line.contains(r#"why="connection""#), "HTTP/2: {line}");
}

/// Reads a response head; returns its status and Content-Length (0 when
/// absent).
fn read_head(reader: &mut impl BufRead) -> (u16, usize) {
    let mut status = 0;
    let mut length = 0;
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        let line = line.trim_end();
        if line.is_empty() {
            return (status, length);
        }
        if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
            status = rest[..3].parse().unwrap();
        } else if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
}
