//! Upload sessions across crashes and time, from outside: a finish that died
//! after moving the bytes into place, the leftovers crashes leave, sessions
//! idle past their age, and the per-account limit on open sessions.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{TestServer, error_code, header_str, random_bytes, sha256};
use portcullis::auth::users::hash_password;
use reqwest::{Response, StatusCode, header};
use serde_json::Value;

/// How long a test waits for the server to reach a state it does not
/// announce (a sweep) before failing instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);

async fn start(server: &TestServer, token: Option<&str>, repo: &str) -> Response {
    let mut request = server
        .client
        .post(server.at(&format!("/v2/{repo}/blobs/uploads/")))
        .header(header::CONTENT_LENGTH, "0");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn start_session(server: &TestServer, repo: &str) -> String {
    let response = start(server, None, repo).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    header_str(&response, "location").to_owned()
}

async fn patch(server: &TestServer, location: &str, at: usize, chunk: &[u8]) -> Response {
    server
        .client
        .patch(server.at(location))
        .header(
            header::CONTENT_RANGE,
            format!("{at}-{}", at + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap()
}

async fn put_close(
    server: &TestServer,
    token: Option<&str>,
    location: &str,
    digest: &str,
) -> Response {
    let mut request = server
        .client
        .put(server.at(&format!("{location}?digest={digest}")))
        .header(header::CONTENT_LENGTH, "0");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn status(server: &TestServer, location: &str) -> Response {
    server.client.get(server.at(location)).send().await.unwrap()
}

fn uuid_of(location: &str) -> &str {
    location.rsplit('/').next().unwrap()
}

fn uploads_dir(root: &Path) -> PathBuf {
    root.join("data").join("uploads")
}

fn upload_dirs(root: &Path) -> Vec<String> {
    match std::fs::read_dir(uploads_dir(root)) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn blob_path(root: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    root.join("data")
        .join("blobs")
        .join(alg)
        .join(&hex[..2])
        .join(hex)
}

/// Leaves a session's on-disk state as a finish killed after its rename
/// into `blobs/` left it: the data in place, the session still recorded.
fn move_into_place(root: &Path, location: &str, digest: &str) {
    let data = uploads_dir(root).join(uuid_of(location)).join("data");
    let blob = blob_path(root, digest);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::rename(data, blob).unwrap();
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_finish_interrupted_after_its_rename_completes_when_retried() {
    let server = TestServer::start().await;
    let blob = random_bytes(200_000);
    let digest = sha256(&blob);
    let location = start_session(&server, "r/a").await;
    assert_eq!(
        patch(&server, &location, 0, &blob).await.status(),
        StatusCode::ACCEPTED
    );
    // A second session, of other bytes, whose data was moved as well.
    let other = random_bytes(1000);
    let other_digest = sha256(&other);
    let other_location = start_session(&server, "r/a").await;
    assert_eq!(
        patch(&server, &other_location, 0, &other).await.status(),
        StatusCode::ACCEPTED
    );

    let dir = server.stop().await;
    move_into_place(dir.path(), &location, &digest);
    move_into_place(dir.path(), &other_location, &other_digest);
    let server = TestServer::start_in(dir).await;

    // The client asks where it stands, and is told the whole blob arrived.
    let response = status(&server, &location).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header_str(&response, "range"),
        format!("0-{}", blob.len() - 1)
    );
    // More bytes cannot be added to data already in place: refused, not a 500.
    let refused = patch(&server, &location, blob.len(), b"more").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(refused).await, "BLOB_UPLOAD_INVALID");
    // Another session's blob (it exists, under its own digest) is not this
    // session's content: nothing is linked.
    let wrong = put_close(&server, None, &location, &other_digest).await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(wrong).await, "DIGEST_INVALID");
    let unlinked = server
        .client
        .head(server.at(&format!("/v2/r/a/blobs/{other_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(unlinked.status(), StatusCode::NOT_FOUND);

    // The retried finish completes: 201, linked, session gone.
    let finished = put_close(&server, None, &location, &digest).await;
    assert_eq!(finished.status(), StatusCode::CREATED);
    assert_eq!(header_str(&finished, "docker-content-digest"), digest);
    server.assert_serves_blob("r/a", &digest, &blob).await;
    assert_eq!(
        status(&server, &location).await.status(),
        StatusCode::NOT_FOUND
    );
    let finished = put_close(&server, None, &other_location, &other_digest).await;
    assert_eq!(finished.status(), StatusCode::CREATED);
    server
        .assert_serves_blob("r/a", &other_digest, &other)
        .await;
    assert!(
        upload_dirs(server.dir.path()).is_empty(),
        "sessions left behind"
    );
}

#[tokio::test]
async fn a_sha512_finish_interrupted_after_its_rename_completes_when_retried() {
    use sha2::Digest as _;
    let server = TestServer::start().await;
    let blob = random_bytes(70_000);
    let digest = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&blob)));
    let location = start_session(&server, "r/b").await;
    assert_eq!(
        patch(&server, &location, 0, &blob).await.status(),
        StatusCode::ACCEPTED
    );
    let dir = server.stop().await;
    move_into_place(dir.path(), &location, &digest);
    let server = TestServer::start_in(dir).await;
    let finished = put_close(&server, None, &location, &digest).await;
    assert_eq!(finished.status(), StatusCode::CREATED);
    server.assert_serves_blob("r/b", &digest, &blob).await;
}

fn set_age(path: &Path, age: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[tokio::test]
async fn crash_leftovers_are_swept_at_start_and_periodically() {
    let server = TestServer::start().await;
    let kept = start_session(&server, "r/kept").await;
    assert_eq!(
        patch(&server, &kept, 0, b"resumable").await.status(),
        StatusCode::ACCEPTED
    );
    let dir = server.stop().await;
    let root = dir.path().join("data");

    // What kills leave: a session dir with data and no info, one whose info
    // is garbage, temporaries of interrupted writes (one the only thing in
    // an emptied repository's `_layers/`), and a fresh temporary.
    let uploads = uploads_dir(dir.path());
    let no_info = uploads.join("0b5cfc4e-2d4c-4c4e-8a0e-6f3e8f6d1a01");
    std::fs::create_dir_all(&no_info).unwrap();
    std::fs::write(no_info.join("data"), random_bytes(100_000)).unwrap();
    let bad_info = uploads.join("1c6dfd5f-3e5d-4d5f-9b1f-7f4f9f7e2b02");
    std::fs::create_dir_all(&bad_info).unwrap();
    std::fs::write(bad_info.join("info"), b"{not json").unwrap();
    std::fs::write(bad_info.join("hashstate"), b"{}").unwrap();
    let layers = root.join("repositories/r/emptied/_layers/sha256");
    std::fs::create_dir_all(&layers).unwrap();
    let stale_in_layers = layers.join(".tmp-5b0f0d0e-1111-4222-8333-944455556666");
    std::fs::write(&stale_in_layers, b"").unwrap();
    set_age(&stale_in_layers, Duration::from_secs(2 * 3600));
    let stale_in_uploads = uploads
        .join(uuid_of(&kept))
        .join(".tmp-6c1f0d0e-1111-4222-8333-944455556666");
    std::fs::write(&stale_in_uploads, random_bytes(1000)).unwrap();
    set_age(&stale_in_uploads, Duration::from_secs(2 * 3600));
    let fresh = root.join("blobs/.tmp-7d2f0d0e-1111-4222-8333-944455556666");
    std::fs::create_dir_all(fresh.parent().unwrap()).unwrap();
    std::fs::write(&fresh, b"being written").unwrap();

    let server = TestServer::start_configured(dir, |config| {
        config.auth.enabled = false;
        config.storage.sweep_interval_secs = 1;
    })
    .await;
    // Broken sessions go before the server answers.
    assert_eq!(
        upload_dirs(server.dir.path()),
        vec![uuid_of(&kept).to_owned()]
    );
    until("stale temporaries removed", async || {
        !stale_in_layers.exists() && !stale_in_uploads.exists()
    })
    .await;
    assert!(
        !root.join("repositories/r/emptied").exists(),
        "emptied repository left"
    );
    let catalog: Value = server
        .client
        .get(server.at("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!([]), "{catalog}");
    assert!(fresh.exists(), "a temporary being written was removed");
    // The valid session carries on.
    let response = status(&server, &kept).await;
    assert_eq!(header_str(&response, "range"), "0-8");

    // Leftovers appearing later go at the next periodic sweep.
    let later = uploads.join("2d7efe60-4f6e-4e60-ac20-8f50af8f3c03");
    std::fs::create_dir_all(&later).unwrap();
    std::fs::write(later.join("data"), b"x").unwrap();
    set_age(&fresh, Duration::from_secs(2 * 3600));
    until("later leftovers removed", async || {
        !later.exists() && !fresh.exists()
    })
    .await;
    assert_eq!(
        status(&server, &kept).await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn sessions_idle_past_their_age_are_purged_and_active_ones_are_not() {
    // The property is about time: sessions idle 3 s go, a session that gets
    // a chunk every second stays for twice that.
    let server = TestServer::start_configured(tempfile::tempdir().unwrap(), |config| {
        config.auth.enabled = false;
        config.storage.upload_max_idle_secs = 3;
        config.storage.sweep_interval_secs = 1;
    })
    .await;
    let idle = start_session(&server, "r/idle").await;
    let active = start_session(&server, "r/active").await;
    let begun = Instant::now();
    let mut sent = 0;
    while begun.elapsed() < Duration::from_secs(7) {
        let chunk = [sent as u8; 100];
        let response = patch(&server, &active, sent, &chunk).await;
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "an active session was purged after {:?}",
            begun.elapsed()
        );
        sent += chunk.len();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(status(&server, &idle).await.status(), StatusCode::NOT_FOUND);
    until("the idle session's directory removed", async || {
        !uploads_dir(server.dir.path()).join(uuid_of(&idle)).exists()
    })
    .await;
    // Once nothing comes, the active one goes too.
    until("the session purged once idle", async || {
        status(&server, &active).await.status() == StatusCode::NOT_FOUND
    })
    .await;
}

async fn limited_server(dir: tempfile::TempDir) -> TestServer {
    TestServer::start_configured(dir, |config| {
        config.storage.max_uploads_per_account = 2;
    })
    .await
}

#[tokio::test]
async fn open_sessions_are_limited_per_account() {
    let dir = tempfile::tempdir().unwrap();
    let users = format!(
        "[users.alice]\npassword = {:?}\n\n[users.bob]\npassword = {:?}\n",
        hash_password("alice-pw").unwrap(),
        hash_password("bob-pw").unwrap(),
    );
    std::fs::write(dir.path().join("users.toml"), users).unwrap();
    common::process::copy_project_policies(dir.path());
    let server = limited_server(dir).await;
    let alice = server
        .token("alice", "repository:alice/app:pull,push")
        .await;
    let bob = server.token("bob", "repository:bob/app:pull,push").await;

    let mut open = Vec::new();
    for _ in 0..2 {
        let response = start(&server, Some(&alice), "alice/app").await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        open.push(header_str(&response, "location").to_owned());
    }
    let refused = start(&server, Some(&alice), "alice/app").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(refused).await, "TOOMANYREQUESTS");
    // A single-request push opens a session too.
    let blob = random_bytes(1000);
    let monolithic = server
        .client
        .post(server.at(&format!(
            "/v2/alice/app/blobs/uploads/?digest={}",
            sha256(&blob)
        )))
        .bearer_auth(&alice)
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(monolithic.status(), StatusCode::TOO_MANY_REQUESTS);
    // The limit is per account.
    assert_eq!(
        start(&server, Some(&bob), "bob/app").await.status(),
        StatusCode::ACCEPTED
    );

    // The count survives a restart: sessions live in storage.
    let dir = server.stop().await;
    let server = limited_server(dir).await;
    let refused = start(&server, Some(&alice), "alice/app").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);

    // A finished session frees a slot.
    let data = b"layer bytes";
    let response = server
        .client
        .patch(server.at(&open[0]))
        .bearer_auth(&alice)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let finished = put_close(&server, Some(&alice), &open[0], &sha256(data)).await;
    assert_eq!(finished.status(), StatusCode::CREATED);
    let response = start(&server, Some(&alice), "alice/app").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    open[0] = header_str(&response, "location").to_owned();
    assert_eq!(
        start(&server, Some(&alice), "alice/app").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // So does a cancelled one.
    let cancelled = server
        .client
        .delete(server.at(&open[1]))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        start(&server, Some(&alice), "alice/app").await.status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn the_real_server_killed_in_a_finish_completes_it_after_a_restart() {
    use common::process::ServerProcess;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = reqwest::Client::new();
    let blob = random_bytes(64 << 10);
    let digest = sha256(&blob);

    let server = ServerProcess::start(&data_dir, &[]);
    let response = client
        .post(server.at("/v2/crash/finish/blobs/uploads/"))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap();
    let location = header_str(&response, "location").to_owned();
    let response = client
        .patch(server.at(&location))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // Killed between the finish's rename into `blobs/` and the session's
    // removal: that moment's files, as the kill leaves them.
    server.kill();
    move_into_place(dir.path(), &location, &digest);

    let server = ServerProcess::start(&data_dir, &[]);
    let response = client.get(server.at(&location)).send().await.unwrap();
    assert_eq!(
        header_str(&response, "range"),
        format!("0-{}", blob.len() - 1)
    );
    let response = client
        .put(server.at(&format!("{location}?digest={digest}")))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let pulled = client
        .get(server.at(&format!("/v2/crash/finish/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.status(), StatusCode::OK);
    assert!(pulled.bytes().await.unwrap() == blob, "wrong bytes");
    assert!(upload_dirs(dir.path()).is_empty(), "the session stayed");
}
