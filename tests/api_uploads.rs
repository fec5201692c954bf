//! Blob uploads over HTTP, against a real in-process server: sessions,
//! monolithic and chunked pushes, streamed chunks, cancel, the error answers
//! (out-of-order chunks, bad digests, unknown sessions), cross-repository
//! mounts, SHA-512, a session surviving a restart, and concurrent pushes.

use crate::common;

use std::sync::Arc;

use common::{TestServer, error_code, header_str, random_bytes, sha256};
use reqwest::{Response, StatusCode, header};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---- helpers (kept local: each test file is its own crate) ----

fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// A header's value as text; panics (failing the test) when it is missing.
/// The `Range` an upload of `size` bytes reports: `0-<last byte>`, and `0-0`
/// when empty.
fn upload_range(size: usize) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// `<location>` with `?digest=` (or `&digest=`) appended.
fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// Starts an upload session in `repo`; returns its `Location` (a path).
async fn start(server: &TestServer, repo: &str) -> String {
    let response = server
        .client
        .post(server.at(&format!("/v2/{repo}/blobs/uploads/")))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    header_str(&response, "location").to_owned()
}

/// Sends one chunk with an explicit `Content-Range` starting at `at`.
async fn patch_at(server: &TestServer, location: &str, at: usize, chunk: &[u8]) -> Response {
    server
        .client
        .patch(server.at(location))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            header::CONTENT_RANGE,
            format!("{at}-{}", at + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap()
}

/// Closes a session with no body.
async fn put_close(server: &TestServer, location: &str, digest: &str) -> Response {
    server
        .client
        .put(server.at(&with_digest(location, digest)))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap()
}

async fn status(server: &TestServer, location: &str) -> Response {
    server.client.get(server.at(location)).send().await.unwrap()
}

/// Asserts `repo` does not see `digest`.
async fn assert_no_blob(server: &TestServer, repo: &str, digest: &str) {
    let response = server
        .client
        .get(server.at(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "{repo} {digest}");
    assert_eq!(error_code(response).await, "BLOB_UNKNOWN");
}

/// A successful finish: 201, the blob's `Location` and digest.
fn assert_created(response: &Response, repo: &str, digest: &str) {
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header_str(response, "location"),
        format!("/v2/{repo}/blobs/{digest}")
    );
    assert_eq!(header_str(response, "docker-content-digest"), digest);
}

/// A refused chunk: 416 `RANGE_INVALID`, with what a client needs to resume
/// (docker registry API, "Chunked Upload"): the session's `Location`,
/// `Docker-Upload-UUID` and the `Range` received so far.
async fn assert_refused_chunk(response: Response, location: &str, range: &str) {
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header_str(&response, "range"), range);
    assert_eq!(header_str(&response, "location"), location);
    assert!(location.ends_with(header_str(&response, "docker-upload-uuid")));
    assert_eq!(error_code(response).await, "RANGE_INVALID");
}

/// A body of unknown length (chunked transfer encoding) in `piece`-byte parts.
fn streamed(data: &[u8], piece: usize) -> reqwest::Body {
    let parts: Vec<bytes::Bytes> = data
        .chunks(piece)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(
        parts.into_iter().map(Ok::<_, std::io::Error>),
    ))
}

// ---- sessions ----

#[tokio::test]
async fn post_starts_a_session() {
    let server = TestServer::start().await;
    let response = server
        .client
        .post(server.at("/v2/lib/app/blobs/uploads/"))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = header_str(&response, "location");
    let uuid = header_str(&response, "docker-upload-uuid");
    assert_eq!(location, format!("/v2/lib/app/blobs/uploads/{uuid}"));
    assert_eq!(header_str(&response, "range"), "0-0");
    assert_eq!(header_str(&response, "content-length"), "0");

    // The session is there to be asked about.
    let response = status(&server, location).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_str(&response, "range"), "0-0");
    assert_eq!(header_str(&response, "location"), location);
    assert_eq!(header_str(&response, "docker-upload-uuid"), uuid);

    // Two sessions are two different uploads.
    let other = start(&server, "lib/app").await;
    assert_ne!(other, location);
}

#[tokio::test]
async fn single_post_with_digest_creates_the_blob() {
    let server = TestServer::start().await;
    let data = random_bytes(3000);
    let digest = sha256(&data);
    let response = server
        .client
        .post(server.at(&format!("/v2/mono/blobs/uploads/?digest={digest}")))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_created(&response, "mono", &digest);
    server.assert_serves_blob("mono", &digest, &data).await;
}

#[tokio::test]
async fn post_then_put_with_the_whole_body() {
    let server = TestServer::start().await;
    let data = random_bytes(5000);
    let digest = sha256(&data);
    let location = start(&server, "post/put").await;
    let response = server
        .client
        .put(server.at(&with_digest(&location, &digest)))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_created(&response, "post/put", &digest);
    server.assert_serves_blob("post/put", &digest, &data).await;

    // Clients that percent-encode the digest's colon are understood.
    let other = random_bytes(10);
    let other_digest = sha256(&other);
    let location = start(&server, "post/put").await;
    let response = server
        .client
        .put(server.at(&with_digest(&location, &other_digest.replace(':', "%3A"))))
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_created(&response, "post/put", &other_digest);
    server
        .assert_serves_blob("post/put", &other_digest, &other)
        .await;

    // A finished session is gone.
    let response = status(&server, &location).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn chunked_patches_then_put_without_body() {
    let server = TestServer::start().await;
    let data = random_bytes(10_000);
    let digest = sha256(&data);
    let mut location = start(&server, "chunked").await;

    let mut sent = 0;
    for size in [1, 4095, 4096, 1808] {
        let response = patch_at(&server, &location, sent, &data[sent..sent + size]).await;
        sent += size;
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "chunk ending {sent}"
        );
        assert_eq!(header_str(&response, "range"), upload_range(sent));
        assert!(response.headers().contains_key("docker-upload-uuid"));
        // Clients follow the latest Location.
        location = header_str(&response, "location").to_owned();

        let response = status(&server, &location).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(header_str(&response, "range"), upload_range(sent));
        assert_eq!(header_str(&response, "location"), location);
    }
    assert_eq!(sent, data.len());
    // Nothing is visible before the session is closed.
    assert_no_blob(&server, "chunked", &digest).await;

    let response = put_close(&server, &location, &digest).await;
    assert_created(&response, "chunked", &digest);
    server.assert_serves_blob("chunked", &digest, &data).await;
}

#[tokio::test]
async fn streamed_patch_without_content_range() {
    let server = TestServer::start().await;
    let data = random_bytes(300_000);
    let digest = sha256(&data);
    let location = start(&server, "streamed").await;

    // Two streamed PATCHes (no Content-Range, no Content-Length): each is
    // appended where the previous one ended.
    let half = 123_457;
    for (part, end) in [(&data[..half], half), (&data[half..], data.len())] {
        let response = server
            .client
            .patch(server.at(&location))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(streamed(part, 10_000))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(header_str(&response, "range"), upload_range(end));
    }

    let response = put_close(&server, &location, &digest).await;
    assert_created(&response, "streamed", &digest);
    server.assert_serves_blob("streamed", &digest, &data).await;
}

#[tokio::test]
async fn put_carries_the_last_chunk() {
    let server = TestServer::start().await;
    let data = random_bytes(7000);
    let digest = sha256(&data);
    let location = start(&server, "last/chunk").await;
    let response = patch_at(&server, &location, 0, &data[..4000]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // The digest names the whole blob, the body is only the rest.
    let response = server
        .client
        .put(server.at(&with_digest(&location, &digest)))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_RANGE, format!("4000-{}", data.len() - 1))
        .body(data[4000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_created(&response, "last/chunk", &digest);
    server
        .assert_serves_blob("last/chunk", &digest, &data)
        .await;

    // The same without a Content-Range on the last chunk.
    let location = start(&server, "last/chunk").await;
    let other = random_bytes(100);
    let other_digest = sha256(&other);
    let response = patch_at(&server, &location, 0, &other[..60]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = server
        .client
        .put(server.at(&with_digest(&location, &other_digest)))
        .body(other[60..].to_vec())
        .send()
        .await
        .unwrap();
    assert_created(&response, "last/chunk", &other_digest);
    server
        .assert_serves_blob("last/chunk", &other_digest, &other)
        .await;
}

#[tokio::test]
async fn empty_blob_through_a_session() {
    let server = TestServer::start().await;
    let digest = sha256(b"");
    let location = start(&server, "empty").await;
    let response = put_close(&server, &location, &digest).await;
    assert_created(&response, "empty", &digest);
    server.assert_serves_blob("empty", &digest, b"").await;
}

#[tokio::test]
async fn cancel_ends_the_session() {
    let server = TestServer::start().await;
    let data = random_bytes(100);
    let location = start(&server, "cancel").await;
    let response = patch_at(&server, &location, 0, &data).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let response = server
        .client
        .delete(server.at(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let response = status(&server, &location).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");
    let response = patch_at(&server, &location, 100, b"more").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");
    let response = put_close(&server, &location, &sha256(&data)).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");
    let response = server
        .client
        .delete(server.at(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");
    assert_no_blob(&server, "cancel", &sha256(&data)).await;
}

// ---- error answers ----

#[tokio::test]
async fn out_of_order_and_repeated_chunks_are_416_and_lose_nothing() {
    let server = TestServer::start().await;
    let data = random_bytes(3000);
    let digest = sha256(&data);
    let location = start(&server, "order").await;

    // A first chunk that does not start at 0.
    let response = patch_at(&server, &location, 10, &data[10..20]).await;
    assert_refused_chunk(response, &location, "0-0").await;

    let response = patch_at(&server, &location, 0, &data[..1000]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // The same chunk again (a retry after a lost answer) and a chunk past
    // the end (a gap) are both refused with the offset to continue from.
    for (at, chunk) in [
        (0, &data[..1000]),
        (500, &data[500..1500]),
        (1001, &data[1001..2000]),
    ] {
        let response = patch_at(&server, &location, at, chunk).await;
        assert_refused_chunk(response, &location, "0-999").await;
    }
    // A refused chunk on the closing PUT is refused the same way.
    let response = server
        .client
        .put(server.at(&with_digest(&location, &digest)))
        .header(header::CONTENT_RANGE, format!("1500-{}", data.len() - 1))
        .body(data[1500..].to_vec())
        .send()
        .await
        .unwrap();
    assert_refused_chunk(response, &location, "0-999").await;

    let response = status(&server, &location).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_str(&response, "range"), "0-999");

    // Continuing from the reported offset completes the right blob.
    let response = patch_at(&server, &location, 1000, &data[1000..]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header_str(&response, "range"), "0-2999");
    let response = put_close(&server, &location, &digest).await;
    assert_created(&response, "order", &digest);
    server.assert_serves_blob("order", &digest, &data).await;
}

#[tokio::test]
async fn wrong_digest_is_digest_invalid_and_nothing_becomes_visible() {
    let server = TestServer::start().await;
    let data = random_bytes(2048);
    let digest = sha256(&data);
    let wrong = sha256(b"something else");

    // Monolithic.
    let response = server
        .client
        .post(server.at(&format!("/v2/wrong/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "DIGEST_INVALID");
    assert_no_blob(&server, "wrong", &wrong).await;
    assert_no_blob(&server, "wrong", &digest).await;
    // The one-request session it used is not left behind to fill the disk
    // (the upload area is drawn in ARCHITECTURE.md).
    let left = server.upload_sessions().await;
    assert!(left.is_empty(), "sessions left: {left:?}");

    // Chunked, closed with the wrong digest.
    let location = start(&server, "wrong").await;
    // (Also shows the look above was at the right place.)
    assert_eq!(server.upload_sessions().await.len(), 1);
    let response = patch_at(&server, &location, 0, &data).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = put_close(&server, &location, &wrong).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "DIGEST_INVALID");
    assert_no_blob(&server, "wrong", &wrong).await;
    assert_no_blob(&server, "wrong", &digest).await;

    // The received bytes were kept: the session still reports them and can
    // be closed with the right digest.
    let response = status(&server, &location).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_str(&response, "range"), upload_range(data.len()));
    let response = put_close(&server, &location, &digest).await;
    assert_created(&response, "wrong", &digest);
    server.assert_serves_blob("wrong", &digest, &data).await;
}

#[tokio::test]
async fn malformed_digest_is_digest_invalid() {
    let server = TestServer::start().await;
    let location = start(&server, "bad/digest").await;
    for digest in [
        "sha256:abc",
        "sha256:",
        "nocolon",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ] {
        let response = server
            .client
            .post(server.at(&format!("/v2/bad/digest/blobs/uploads/?digest={digest}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "POST {digest}");
        assert_eq!(error_code(response).await, "DIGEST_INVALID");

        let response = put_close(&server, &location, digest).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "PUT {digest}");
        assert_eq!(error_code(response).await, "DIGEST_INVALID");
    }
    // A closing PUT must name the digest.
    let response = server
        .client
        .put(server.at(&location))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "DIGEST_INVALID");

    // None of that harmed the session.
    let response = put_close(&server, &location, &sha256(b"")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn unknown_upload_is_blob_upload_unknown() {
    let server = TestServer::start().await;
    let digest = sha256(b"x");
    let never = "/v2/repo/blobs/uploads/4b1f9a3c-5a0e-4d3b-9c1e-0f7a2b6c8d9e";
    let not_a_uuid = "/v2/repo/blobs/uploads/not-a-session";
    // A session belongs to its repository: it cannot be used from another.
    let real = start(&server, "owner").await;
    let foreign = real.replace("/v2/owner/", "/v2/repo/");

    for location in [never, not_a_uuid, foreign.as_str()] {
        let response = status(&server, location).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "GET {location}");
        assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");

        let response = patch_at(&server, location, 0, b"x").await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "PATCH {location}");
        assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");
        // An unknown session is the answer even when the range is bad too.
        let response = server
            .client
            .patch(server.at(location))
            .header(header::CONTENT_RANGE, "bad")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "PATCH {location}");
        assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");

        let response = server
            .client
            .put(server.at(&with_digest(location, &digest)))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "PUT {location}");
        assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");

        let response = server
            .client
            .delete(server.at(location))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "DELETE {location}"
        );
        assert_eq!(error_code(response).await, "BLOB_UPLOAD_UNKNOWN");
    }
    assert_no_blob(&server, "repo", &digest).await;

    // The owner's session was not touched by any of it.
    let response = status(&server, &real).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_str(&response, "range"), "0-0");
}

#[tokio::test]
async fn chunk_length_disagreeing_with_its_range_is_refused() {
    let server = TestServer::start().await;
    let data = random_bytes(20);
    let location = start(&server, "sizes").await;

    // Content-Range announces 10 bytes, the body (Content-Length) has 5.
    let response = server
        .client
        .patch(server.at(&location))
        .header(header::CONTENT_RANGE, "0-9")
        .body(data[..5].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "SIZE_INVALID");

    // A Content-Range that is not a range at all is refused like an
    // out-of-order one, with the offset to continue from.
    for range in ["five-ten", "9-0", "10"] {
        let response = server
            .client
            .patch(server.at(&location))
            .header(header::CONTENT_RANGE, range)
            .body(data[..5].to_vec())
            .send()
            .await
            .unwrap();
        assert_refused_chunk(response, &location, "0-0").await;
    }

    let response = status(&server, &location).await;
    assert_eq!(header_str(&response, "range"), "0-0");
    let response = patch_at(&server, &location, 0, &data).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = put_close(&server, &location, &sha256(&data)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    server
        .assert_serves_blob("sizes", &sha256(&data), &data)
        .await;
}

/// A chunk whose body ends before its declared `Content-Length` (the client
/// went away mid-request) is dropped whole: the session keeps its offset and
/// the next chunk continues from there. Raw TCP, because an HTTP client will
/// not send a body shorter than the length it declares.
#[tokio::test]
async fn truncated_chunk_is_not_kept() {
    let server = TestServer::start().await;
    let data = random_bytes(40);
    let digest = sha256(&data);
    let location = start(&server, "torn").await;
    let response = patch_at(&server, &location, 0, &data[..10]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Content-Range: 10-29\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&data[10..17]).await.unwrap();
    // End of our side: the server sees the body stop 13 bytes short.
    stream.shutdown().await.unwrap();
    // The server answers once it is done with the request (and then closes,
    // as asked): reading to the end is the synchronization.
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 "),
        "a truncated chunk is the client's error: {answer}"
    );
    assert!(answer.contains("\"BLOB_UPLOAD_INVALID\""), "{answer}");

    let response = status(&server, &location).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_str(&response, "range"), "0-9");
    let response = patch_at(&server, &location, 10, &data[10..]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = put_close(&server, &location, &digest).await;
    assert_created(&response, "torn", &digest);
    server.assert_serves_blob("torn", &digest, &data).await;
}

// ---- cross-repository mounts ----

#[tokio::test]
async fn mount_links_a_blob_of_another_repository() {
    let server = TestServer::start().await;
    let data = random_bytes(512);
    let digest = server.push_blob("base/image", &data).await;

    let response = server
        .client
        .post(server.at(&format!(
            "/v2/derived/blobs/uploads/?mount={digest}&from=base/image"
        )))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap();
    assert_created(&response, "derived", &digest);
    server.assert_serves_blob("derived", &digest, &data).await;

    // The mount is a link of its own: removing the source's link leaves it.
    let response = server
        .client
        .delete(server.at(&format!("/v2/base/image/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_no_blob(&server, "base/image", &digest).await;
    server.assert_serves_blob("derived", &digest, &data).await;
}

#[tokio::test]
async fn mount_of_a_blob_the_source_lacks_starts_a_session() {
    let server = TestServer::start().await;
    let data = random_bytes(512);
    // The blob exists in the registry, but not in `other`: mounting from
    // `other` must not reveal it.
    let digest = server.push_blob("holder", &data).await;

    for query in [
        format!("mount={digest}&from=other"),
        format!("mount={}&from=holder", sha256(b"unknown")),
        // Without `from` there is nothing this repository may mount from.
        format!("mount={digest}"),
    ] {
        let response = server
            .client
            .post(server.at(&format!("/v2/target/blobs/uploads/?{query}")))
            .header(header::CONTENT_LENGTH, "0")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{query}");
        let location = header_str(&response, "location").to_owned();
        let uuid = header_str(&response, "docker-upload-uuid");
        assert_eq!(location, format!("/v2/target/blobs/uploads/{uuid}"));
        assert_eq!(header_str(&response, "range"), "0-0");
        assert_no_blob(&server, "target", &digest).await;

        // The session is a real one: the client uploads the blob itself.
        let response = patch_at(&server, &location, 0, &data).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let response = put_close(&server, &location, &digest).await;
        assert_created(&response, "target", &digest);
        // Unlink again so the next case starts from a repository without it.
        let response = server
            .client
            .delete(server.at(&format!("/v2/target/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }

    // A malformed mount digest or source name is refused, not ignored.
    let response = server
        .client
        .post(server.at("/v2/target/blobs/uploads/?mount=sha256:zz&from=holder"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "DIGEST_INVALID");
    let response = server
        .client
        .post(server.at(&format!(
            "/v2/target/blobs/uploads/?mount={digest}&from=Not/Valid"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "NAME_INVALID");
}

// ---- SHA-512 ----

#[tokio::test]
async fn sha512_monolithic_and_chunked() {
    let server = TestServer::start().await;
    let data = random_bytes(70_000);
    let digest = sha512(&data);

    let response = server
        .client
        .post(server.at(&format!("/v2/five12/blobs/uploads/?digest={digest}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_created(&response, "five12", &digest);
    server.assert_serves_blob("five12", &digest, &data).await;

    let other = random_bytes(50_000);
    let other_digest = sha512(&other);
    let location = start(&server, "five12/chunked").await;
    let response = patch_at(&server, &location, 0, &other[..20_000]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = patch_at(&server, &location, 20_000, &other[20_000..]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // Wrong first: the SHA-256 of the same bytes is not their SHA-512.
    let response = put_close(&server, &location, &sha512(b"not it")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "DIGEST_INVALID");
    let response = put_close(&server, &location, &other_digest).await;
    assert_created(&response, "five12/chunked", &other_digest);
    server
        .assert_serves_blob("five12/chunked", &other_digest, &other)
        .await;
    // Only by the digest it was pushed under.
    assert_no_blob(&server, "five12/chunked", &sha256(&other)).await;

    // Ranged reads work the same on a SHA-512 blob.
    let response = server
        .client
        .get(server.at(&format!("/v2/five12/blobs/{digest}")))
        .header(header::RANGE, "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &data[100..200]);
}

// ---- restart, concurrency ----

#[tokio::test]
async fn chunked_upload_resumes_after_restart() {
    let server = TestServer::start().await;
    let data = random_bytes(100_000);
    let digest = sha256(&data);
    let location = start(&server, "resume/me").await;
    let response = patch_at(&server, &location, 0, &data[..40_000]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // A new server over the same data directory (and on a new port).
    let dir = server.stop().await;
    let server = TestServer::start_in(dir).await;

    let response = status(&server, &location).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_str(&response, "range"), "0-39999");
    let response = patch_at(&server, &location, 40_000, &data[40_000..]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header_str(&response, "range"), "0-99999");
    let response = put_close(&server, &location, &digest).await;
    assert_created(&response, "resume/me", &digest);
    server.assert_serves_blob("resume/me", &digest, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_of_the_same_blob_all_succeed() {
    const TASKS: usize = 12;
    let server = TestServer::start().await;
    let data = Arc::new(random_bytes(200_000));
    let digest = sha256(&data);
    // Every task waits here so that the pushes really overlap.
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));

    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (client, url) = (server.client.clone(), server.url.clone());
        let (data, digest, barrier) = (Arc::clone(&data), digest.clone(), Arc::clone(&barrier));
        // Half into one shared repository, half into one each; alternately
        // monolithic and in two chunks.
        let repo = if i % 2 == 0 {
            "shared/repo".to_owned()
        } else {
            format!("own/repo{i}")
        };
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = if i % 4 < 2 {
                client
                    .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}"))
                    .body(data.to_vec())
                    .send()
                    .await
                    .unwrap()
            } else {
                let response = client
                    .post(format!("{url}/v2/{repo}/blobs/uploads/"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                let location = response.headers()["location"].to_str().unwrap().to_owned();
                let half = data.len() / 2;
                let response = client
                    .patch(format!("{url}{location}"))
                    .header(header::CONTENT_RANGE, format!("0-{}", half - 1))
                    .body(data[..half].to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                client
                    .put(format!("{url}{location}?digest={digest}"))
                    .body(data[half..].to_vec())
                    .send()
                    .await
                    .unwrap()
            };
            assert_eq!(
                response.status(),
                StatusCode::CREATED,
                "task {i} into {repo}"
            );
            repo
        }));
    }
    let mut repos = Vec::new();
    for task in tasks {
        repos.push(task.await.expect("push task"));
    }
    for repo in repos {
        server.assert_serves_blob(&repo, &digest, &data).await;
    }
    // Every session was finished and cleared away, none lost in the race.
    let left = server.upload_sessions().await;
    assert!(left.is_empty(), "sessions left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_chunks_on_one_session_are_serialized() {
    const RACERS: usize = 6;
    let server = TestServer::start().await;
    let data = Arc::new(random_bytes(64 * 1024));
    let digest = sha256(&data);
    let location = start(&server, "race").await;
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));

    // Every racer sends the same first chunk (a client retrying on several
    // connections): exactly one may be appended, the rest see the new offset.
    let mut tasks = Vec::new();
    for _ in 0..RACERS {
        let (client, url) = (server.client.clone(), server.at(&location));
        let (data, barrier) = (Arc::clone(&data), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = client
                .patch(url)
                .header(header::CONTENT_RANGE, "0-32767")
                .body(data[..32768].to_vec())
                .send()
                .await
                .unwrap();
            let status = response.status();
            assert_eq!(header_str(&response, "range"), "0-32767");
            status
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("racer"));
    }
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::ACCEPTED || *s == StatusCode::RANGE_NOT_SATISFIABLE),
        "{statuses:?}"
    );

    let response = patch_at(&server, &location, 32768, &data[32768..]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = put_close(&server, &location, &digest).await;
    assert_created(&response, "race", &digest);
    server.assert_serves_blob("race", &digest, &data).await;
}

/// A chunk refused before its body was read leaves the rest of the body on
/// the connection, which the server then closes: the answer must say so,
/// or a keep-alive client reuses a dead connection for its next request
/// (the GET for the upload's status, typically). Raw TCP, to see exactly
/// what the connection carries.
#[tokio::test]
async fn early_refusal_closes_the_connection_openly() {
    let server = TestServer::start().await;
    let location = start(&server, "early").await;
    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Headers only: the server decides before any body byte arrives.
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Range: 5-65540\r\n\
         Content-Length: 65536\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // The server closes after answering, so reading to the end terminates.
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 416 "), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");

    // Through an ordinary pooled client the same refusal does not break the
    // next request.
    for _ in 0..20 {
        let response = patch_at(&server, &location, 5, &[1u8; 65536]).await;
        assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        let response = status(&server, &location).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn an_upload_past_the_memory_budget_is_refused_with_429_and_goes_through_once_there_is_room()
{
    let dir = tempfile::tempdir().unwrap();
    // Room for one upload's body at a time, and no waiting for more.
    let server = TestServer::start_configured(dir, |c| {
        c.auth.enabled = false;
        c.storage.upload_memory_mib = 24;
        c.storage.upload_memory_wait_ms = 0;
    })
    .await;
    let a = start(&server, "budget/a").await;
    let b = start(&server, "budget/b").await;
    let client = reqwest::Client::new();

    // A streams a body and does not end it yet; B is refused once A holds
    // the budget (until then B's bytes go in). With no waiting, A itself is
    // refused when it arrives while one of B's requests holds the budget:
    // then A starts again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (tx, streaming, refused) = 'attempt: loop {
        assert!(std::time::Instant::now() < deadline, "B was never refused");
        let (tx, body) = common::channel_body();
        let url = server.at(&a);
        let streaming = tokio::spawn({
            let client = client.clone();
            async move { client.patch(url).body(body).send().await.unwrap() }
        });
        tx.send(bytes::Bytes::from_static(b"the first bytes of A"))
            .await
            .unwrap();
        loop {
            let res = client.patch(server.at(&b)).body("b").send().await.unwrap();
            if res.status() == StatusCode::TOO_MANY_REQUESTS {
                break 'attempt (tx, streaming, res);
            }
            assert_eq!(res.status(), StatusCode::ACCEPTED);
            if streaming.is_finished() {
                let a_answer = streaming.await.unwrap();
                assert_eq!(a_answer.status(), StatusCode::TOO_MANY_REQUESTS);
                continue 'attempt;
            }
            assert!(std::time::Instant::now() < deadline, "B was never refused");
        }
    };
    assert_eq!(header_str(&refused, "retry-after"), "1");
    assert_eq!(error_code(refused).await, "TOOMANYREQUESTS");

    // A ends, whole; then B goes through.
    drop(tx);
    let finished = streaming.await.unwrap();
    assert_eq!(finished.status(), StatusCode::ACCEPTED);
    assert_eq!(header_str(&finished, "range"), "0-19");
    let res = client.patch(server.at(&b)).body("b").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
}
