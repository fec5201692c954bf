//! Graceful shutdown of the real binary: SIGTERM stops new connections but
//! lets an in-flight upload finish, then the process exits with success.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::ServerProcess;
use tokio::sync::mpsc;

/// How long a test waits for something the server does on its own (its exit,
/// its reaction to a signal) before failing instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

fn random(len: usize) -> Bytes {
    Bytes::from(common::random_bytes(len))
}

async fn feed(tx: &mpsc::Sender<Bytes>, bytes: &Bytes) {
    for part in bytes.chunks(64 << 10) {
        tx.send(bytes.slice_ref(part))
            .await
            .expect("the server hung up on the body");
    }
}

/// Waits until some upload session under `data` has its `info` record: the
/// server has then accepted the request and is inside its handler. The server
/// offers no event for that, so this polls the data directory, bounded.
async fn wait_for_session(data: &Path) {
    let start = Instant::now();
    loop {
        let started = std::fs::read_dir(data.join("uploads"))
            .map(|entries| entries.flatten().any(|e| e.path().join("info").is_file()))
            .unwrap_or(false);
        if started {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the upload never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the process to exit, failing instead of hanging.
async fn exit_status(server: ServerProcess) -> std::process::ExitStatus {
    tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(move || server.wait()))
        .await
        .expect("the server did not exit")
        .expect("wait task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_inflight_upload_finish() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let blob = random(3 << 20);
    let digest = common::sha256(&blob);

    let (tx, body) = common::channel_body();
    let upload = tokio::spawn(
        reqwest::Client::new()
            .post(server.at(&format!("/v2/slow/push/blobs/uploads/?digest={digest}")))
            .body(body)
            .send(),
    );
    let (first, rest) = blob.split_at(1 << 20);
    feed(&tx, &blob.slice_ref(first)).await;
    wait_for_session(&data).await;

    server.signal(libc::SIGTERM);

    // The listener closes while the upload is still open (its body is not
    // finished). When exactly the server handles the signal is not
    // observable from outside, so poll connecting until it is refused.
    let start = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(&server.host).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            Err(e) if e.kind() != std::io::ErrorKind::ConnectionReset => {
                panic!("connecting after SIGTERM: {e}")
            }
            // Accepted by the kernel before the listener closed (and reset
            // when it did): the signal was not handled yet, try again.
            _ => {
                assert!(
                    start.elapsed() < DEADLINE,
                    "still accepting connections long after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(
        !upload.is_finished(),
        "the upload ended before its body did"
    );

    feed(&tx, &blob.slice_ref(rest)).await;
    drop(tx);
    let response = upload.await.unwrap().expect("the in-flight upload failed");
    assert_eq!(response.status(), 201, "the in-flight upload after SIGTERM");
    assert_eq!(response.headers()["docker-content-digest"], digest.as_str());

    let status = exit_status(server).await;
    assert!(status.success(), "exit after SIGTERM: {status}");

    // What was accepted is really stored: a new server over the same data serves it.
    let server = ServerProcess::start(&data, &[]);
    let got = reqwest::get(server.at(&format!("/v2/slow/push/blobs/{digest}")))
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == blob, "stored blob differs");
}

/// A SIGTERM sent the moment the address is announced must already be the
/// graceful one (not the default action, which kills the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_start_exits_cleanly() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), &[]);
        server.signal(libc::SIGTERM);
        let status = exit_status(server).await;
        assert!(status.success(), "exit after an early SIGTERM: {status}");
    }
}

/// `--data-dir` puts the storage where it says, creating missing directories
/// (tests never rely on the default `./data` beside the working directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_flag_creates_the_storage_there() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("not/yet/there");
    let server = ServerProcess::start(&data, &[]);
    assert!(data.is_dir(), "--data-dir was not created");

    let blob = random(10_000);
    let digest = common::sha256(&blob);
    let response = reqwest::Client::new()
        .post(server.at(&format!("/v2/placed/repo/blobs/uploads/?digest={digest}")))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let hex = digest.trim_start_matches("sha256:");
    let stored = data.join("blobs/sha256").join(&hex[..2]).join(hex);
    assert_eq!(
        std::fs::read(&stored).expect("blob file under --data-dir"),
        blob
    );
    assert!(
        data.join("repositories/placed/repo/_layers/sha256")
            .join(hex)
            .is_file(),
        "repository link under --data-dir"
    );

    server.signal(libc::SIGTERM);
    assert!(exit_status(server).await.success());
}
