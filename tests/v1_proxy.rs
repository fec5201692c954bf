//! The v1 proxy at the edges of the legacy backend: a layer larger than one
//! window pulled through Portcullis arrives whole and byte-identical by the
//! `splice` path (and the connection carries on after it), a backend that
//! dies mid-body fails the client's read rather than end it short, and a
//! backend that accepts and never answers is unavailable after the
//! configured wait, in words that name no backend address.
//!
//! The failing backends are plain listeners on `127.0.0.1:0`: not a model
//! of the legacy registry, but the failure itself (a process that stopped
//! answering, a connection cut mid-body).

use crate::common;

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestServer;
use common::legacy_v1::LegacyV1;
use common::oci::random_bytes;
use common::process::{ServerProcess, config_in, copy_project_policies};
use common::v1_client::{self, Auth, Engine};
use data_encoding::BASE64;
use portcullis::auth::users::hash_password;
use reqwest::StatusCode;

/// Larger than the 4 MiB window a marker frame covers at most, and not a
/// multiple of it.
const LAYER: usize = 9 << 20;

/// How long a test waits for an answer that must come before it fails
/// instead of hanging: well over the 1 s backend timeout the tests set.
const PATIENCE: Duration = Duration::from_secs(30);

fn alice() -> String {
    format!("Basic {}", BASE64.encode(b"alice:alice-pw"))
}

/// `dir` set up for a `portcullis serve --config` routing v1 to `backend`
/// (waiting `timeout_secs` for its answers when given): alice in the users
/// file, the project's policies.
fn configure(dir: &std::path::Path, backend: &str, timeout_secs: Option<u64>) -> String {
    let users = format!(
        "[users.alice]\npassword = {:?}\n",
        hash_password("alice-pw").unwrap()
    );
    std::fs::write(dir.join("users.toml"), users).unwrap();
    copy_project_policies(dir);
    let config = config_in(dir);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[v1]\nbackend = {backend:?}\n"));
    if let Some(secs) = timeout_secs {
        text.push_str(&format!("backend_timeout_secs = {secs}\n"));
    }
    std::fs::write(&config, text).unwrap();
    config.to_str().unwrap().to_owned()
}

/// The server of `config`, its log at `debug` for `serve` (where the path a
/// layer took is logged) and `warn` elsewhere.
fn serve(config: &str) -> (ServerProcess, crate::logs::Log) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--config", config])
        .env("PORTCULLIS_LOG", "warn,portcullis::serve=debug")
        .stderr(Stdio::piped());
    let mut server = ServerProcess::spawn(command);
    let log = crate::logs::Log::of(&mut server);
    (server, log)
}

/// One image whose layer is a tar of [`LAYER`] random bytes, pushed to
/// `alice/big` through the server at `url` as an engine does.
async fn push_big(url: &str) -> v1_client::Image {
    let mut images = v1_client::images(1);
    images[0].layer = v1_client::tar("big.bin", &random_bytes(LAYER));
    let mut engine = Engine::new(url, &alice(), Auth::BasicEverywhere);
    let mut pushed = engine.push("alice/big", "latest", images).await;
    pushed.images.pop().unwrap()
}

/// A backend that accepts connections and never writes a byte, holding
/// them open for as long as the test runs; its port.
async fn silent_backend() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

/// A backend that answers each request `200` with a `Content-Length` of
/// `len` and then closes the connection after half of it; its port.
fn dying_backend(len: usize) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            // The request's head, then the answer cut short.
            read_request_head(&mut socket);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {len}\r\n\r\n"
            );
            let _ = socket.write_all(answer.as_bytes());
            let _ = socket.write_all(&vec![7u8; len / 2]);
        }
    });
    port
}

/// Reads a request's head from `socket`, byte by byte, up to its blank
/// line (or the connection's end).
fn read_request_head(socket: &mut std::net::TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
}

/// A backend that answers each request `200` with a quarter of a `len`
/// bytes body (announced by `Content-Length`, or chunked) and then sends
/// nothing more, the connection held open; its port.
fn stalling_backend(len: usize, chunked: bool) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            read_request_head(&mut socket);
            let part = vec![7u8; len / 4];
            let answer = match chunked {
                false => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {len}\r\n\r\n"
                ),
                true => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                    part.len()
                ),
            };
            let _ = socket.write_all(answer.as_bytes());
            let _ = socket.write_all(&part);
            held.push(socket);
        }
    });
    port
}

/// A temporary directory set up with an image pushed through Portcullis
/// to the real backend, which binds it to alice/big in Portcullis' storage
/// (the same storage then serves in front of failing backends), and the
/// path of its layer.
async fn pushed_through_the_real_backend() -> (tempfile::TempDir, String) {
    let legacy = LegacyV1::start();
    let dir = tempfile::tempdir().unwrap();
    let config = configure(dir.path(), &legacy.url(), None);
    let (server, _log) = serve(&config);
    let image = push_big(&server.url).await;
    (dir, format!("/v1/images/{}/layer", image.id))
}

/// alice's pull of `path` from `server` is answered `200` and its body's
/// read ends (within [`PATIENCE`]) in an error, by the `way` the log names.
async fn assert_read_fails(
    client: &reqwest::Client,
    server: &ServerProcess,
    path: &str,
    log: &mut crate::logs::Log,
    way: &str,
) {
    let res = tokio::time::timeout(PATIENCE, async {
        let res = client
            .get(server.at(path))
            .header("authorization", alice())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{way}");
        res.bytes().await
    })
    .await
    .unwrap_or_else(|_| panic!("{way}: the read did not end"));
    assert!(
        res.is_err(),
        "{way}: a body cut short read as complete ({} bytes)",
        res.map_or(0, |b| b.len())
    );
    let line = log.wait_for(&["v1 layer sent"]);
    assert!(line.contains(&format!("path=\"{way}\"")), "{line}");
}

/// Fails when a header or the body of `response` names `port`; the body.
async fn assert_names_no_port(port: u16, response: reqwest::Response) -> String {
    let port = port.to_string();
    for (name, value) in response.headers() {
        let value = value.to_str().unwrap_or("");
        assert!(!value.contains(&port), "{name}: {value} names the backend");
    }
    let body = response.text().await.unwrap();
    assert!(!body.contains(&port), "the body names the backend: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_larger_than_a_window_is_pulled_whole_by_splice() {
    let legacy = LegacyV1::start();
    let dir = tempfile::tempdir().unwrap();
    let config = configure(dir.path(), &legacy.url(), None);
    let (server, mut log) = serve(&config);
    let image = push_big(&server.url).await;
    // One client, so that the second pull and the tag list reuse the
    // connection the first pull's bytes were spliced onto.
    let client = reqwest::Client::new();
    let url = server.at(&format!("/v1/images/{}/layer", image.id));
    for round in ["first", "second"] {
        let res = client
            .get(&url)
            .header("authorization", alice())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{round}");
        assert_eq!(
            res.headers()["content-length"],
            image.layer.len().to_string().as_str(),
            "{round}"
        );
        let body = res.bytes().await.unwrap();
        assert!(body[..] == image.layer[..], "{round}: the bytes differ");
        let line = log.wait_for(&["v1 layer sent"]);
        assert!(line.contains(r#"path="splice""#), "{round}: {line}");
        assert!(
            line.contains(&format!("bytes={}", image.layer.len())),
            "{round}: {line}"
        );
    }
    let res = client
        .get(server.at("/v1/repositories/alice/big/tags"))
        .header("authorization", alice())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let tags: serde_json::Value = res.json().await.unwrap();
    assert_eq!(tags["latest"], image.id.as_str());
    // An image declared by a push (so bound here) whose layer never
    // reached the backend: the backend's own 404, by the copied path.
    let missing = "f".repeat(64);
    let res = client
        .put(server.at("/v1/repositories/alice/empty/"))
        .header("authorization", alice())
        .json(&serde_json::json!([{ "id": missing }]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = client
        .get(server.at(&format!("/v1/images/{missing}/layer")))
        .header("authorization", alice())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_from_a_backend_that_dies_mid_body_or_never_answers_fails_visibly() {
    // The image is pushed through Portcullis to the real backend, which
    // binds it to alice/big in Portcullis' storage; the same storage then
    // serves in front of the failing backends.
    let (dir, path) = pushed_through_the_real_backend().await;
    let client = reqwest::Client::new();

    let config = configure(
        dir.path(),
        &format!("http://127.0.0.1:{}", dying_backend(LAYER)),
        None,
    );
    let (server, mut log) = serve(&config);
    assert_read_fails(&client, &server, &path, &mut log, "splice").await;
    drop(server);

    let port = silent_backend().await;
    let config = configure(dir.path(), &format!("http://127.0.0.1:{port}"), Some(1));
    let (server, _log) = serve(&config);
    let res = tokio::time::timeout(PATIENCE, async {
        client
            .get(server.at(&path))
            .header("authorization", alice())
            .send()
            .await
            .unwrap()
    })
    .await
    .expect("an answer within the backend timeout");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = assert_names_no_port(port, res).await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
}

/// A backend that stops sending mid-layer, on the `splice` path (a
/// `Content-Length` answer) and on the copying one (a chunked answer, which
/// a relay does not carry), fails the client's read once it was silent for
/// the backend timeout (1 s here), rather than hold the client forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_from_a_backend_that_stalls_mid_body_fails_after_the_timeout() {
    let (dir, path) = pushed_through_the_real_backend().await;
    let client = reqwest::Client::new();
    for (chunked, way) in [(false, "splice"), (true, "copy")] {
        let port = stalling_backend(LAYER, chunked);
        let config = configure(dir.path(), &format!("http://127.0.0.1:{port}"), Some(1));
        let (server, mut log) = serve(&config);
        assert_read_fails(&client, &server, &path, &mut log, way).await;
    }
}

/// The head wait of proxied calls and of Portcullis' own lookups (a pull
/// start reads the tags' ancestries) is bounded by `backend_timeout_secs`.
#[tokio::test]
async fn a_backend_that_never_answers_is_unavailable_after_the_timeout() {
    let port = silent_backend().await;
    let url = format!("http://127.0.0.1:{port}");
    let s = TestServer::start_configured(tempfile::tempdir().unwrap(), |c| {
        c.auth.enabled = false;
        c.v1.backend = Some(url);
        c.v1.backend_timeout_secs = 1;
    })
    .await;
    let client = reqwest::Client::new();
    for path in [
        "/v1/repositories/library/app/tags",
        "/v1/repositories/library/app/images",
    ] {
        let res = tokio::time::timeout(PATIENCE, client.get(s.at(path)).send())
            .await
            .expect("an answer within the backend timeout")
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let body = assert_names_no_port(port, res).await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{path}: {body}");
    }
}
