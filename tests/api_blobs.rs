//! Blob reads and deletes over HTTP, against a real in-process server: the
//! `/v2/` version check, whole and ranged reads, per-repository visibility,
//! deletes, and a large blob streamed both ways.

use crate::common;

use common::{TestServer, error_code, header_str, random_bytes, sha256};
use futures_util::StreamExt;
use reqwest::{Response, StatusCode, header};
use sha2::Digest as _;

// ---- helpers (kept local: each test file is its own crate) ----

/// A header's value as text; panics (failing the test) when it is missing.
fn blob_url(server: &TestServer, repo: &str, digest: &str) -> String {
    server.at(&format!("/v2/{repo}/blobs/{digest}"))
}

async fn get_range(server: &TestServer, url: &str, range: &str) -> Response {
    server
        .client
        .get(url)
        .header(header::RANGE, range)
        .send()
        .await
        .unwrap()
}

// ---- tests ----

#[tokio::test]
async fn base_answers_with_the_api_version() {
    let server = TestServer::start().await;
    for path in ["/v2/", "/v2"] {
        let response = server.client.get(server.at(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            header_str(&response, "docker-distribution-api-version"),
            "registry/2.0"
        );
    }
    // The version header is on every answer, errors included: clients use it
    // to recognise a v2 registry whatever the status.
    let response = server
        .client
        .get(server.at("/v2/nothing/here/blobs/uploads/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        header_str(&response, "docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[tokio::test]
async fn get_and_head_return_size_digest_and_content() {
    let server = TestServer::start().await;
    let data = random_bytes(1000);
    let digest = server.push_blob("lib/app", &data).await;
    let url = blob_url(&server, "lib/app", &digest);

    let response = server.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_str(&response, "content-length"), "1000");
    assert_eq!(header_str(&response, "docker-content-digest"), digest);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &data[..]);

    let response = server.client.head(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // HEAD announces the size of the body a GET would send.
    assert_eq!(header_str(&response, "content-length"), "1000");
    assert_eq!(header_str(&response, "docker-content-digest"), digest);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn range_reads_return_partial_content() {
    let server = TestServer::start().await;
    let data: Vec<u8> = (0u8..100).collect();
    let digest = server.push_blob("ranges", &data).await;
    let url = blob_url(&server, "ranges", &digest);

    // (Range header, expected Content-Range, expected bytes)
    let cases: [(&str, &str, &[u8]); 5] = [
        ("bytes=0-3", "bytes 0-3/100", &data[0..4]),
        ("bytes=5-", "bytes 5-99/100", &data[5..]),
        ("bytes=-4", "bytes 96-99/100", &data[96..]),
        // An end past the blob is clamped to its last byte (RFC 9110 §14.1.2).
        ("bytes=90-500", "bytes 90-99/100", &data[90..]),
        ("bytes=99-99", "bytes 99-99/100", &data[99..]),
    ];
    for (range, content_range, expected) in cases {
        let response = get_range(&server, &url, range).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header_str(&response, "content-range"), content_range);
        assert_eq!(
            header_str(&response, "content-length"),
            expected.len().to_string()
        );
        assert_eq!(header_str(&response, "docker-content-digest"), digest);
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            expected,
            "{range}"
        );
    }
}

#[tokio::test]
async fn unsatisfiable_range_is_416_with_the_size() {
    let server = TestServer::start().await;
    let data = random_bytes(10);
    let digest = server.push_blob("ranges", &data).await;
    let url = blob_url(&server, "ranges", &digest);

    for range in ["bytes=10-", "bytes=10-20", "bytes=-0"] {
        let response = get_range(&server, &url, range).await;
        assert_eq!(
            response.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}"
        );
        // RFC 9110 §15.5.17: a 416 names the current length.
        assert_eq!(header_str(&response, "content-range"), "bytes */10");
        assert_eq!(error_code(response).await, "RANGE_INVALID");
    }

    // A range the server does not understand is ignored: the whole blob.
    let response = get_range(&server, &url, "bytes=0-1,4-5").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &data[..]);
}

/// Ranges the grammar accepts but that cannot be served: a first position
/// too large for any integer, or a last position before the first (RFC 9110
/// §14.1.1 calls it invalid). Both are 416 naming the size, never the whole
/// blob with 200 (which clients read as "ranges unsupported"); a header the
/// grammar does not accept is still ignored.
#[tokio::test]
async fn overflowing_and_reversed_ranges_are_416() {
    let server = TestServer::start().await;
    let data = random_bytes(1000);
    let digest = server.push_blob("ranges", &data).await;
    let url = blob_url(&server, "ranges", &digest);

    for range in [
        "bytes=99999999999999999999-",
        "bytes=99999999999999999999-99999999999999999999",
        "bytes=500-0",
        "bytes=2-1",
    ] {
        for head in [false, true] {
            let request = if head {
                server.client.head(&url)
            } else {
                server.client.get(&url)
            };
            let response = request.header(header::RANGE, range).send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{range} (HEAD: {head})"
            );
            assert_eq!(header_str(&response, "content-range"), "bytes */1000");
            if !head {
                assert_eq!(error_code(response).await, "RANGE_INVALID");
            }
        }
    }

    // Positions too large for an integer at the end still mean "to the end".
    for range in [
        "bytes=990-99999999999999999999",
        "bytes=-99999999999999999999",
    ] {
        let response = get_range(&server, &url, range).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let expected = if range.contains("990") {
            &data[990..]
        } else {
            &data[..]
        };
        assert_eq!(response.bytes().await.unwrap().as_ref(), expected);
    }

    // Not the grammar (other units, signs, no digits): ignored, 200 whole.
    for range in ["items=0-1", "bytes=+1-2", "bytes=x-y", "bytes=-", "bytes="] {
        let response = get_range(&server, &url, range).await;
        assert_eq!(response.status(), StatusCode::OK, "{range}");
        assert_eq!(response.bytes().await.unwrap().as_ref(), &data[..]);
    }
}

#[tokio::test]
async fn unknown_blob_is_blob_unknown() {
    let server = TestServer::start().await;
    server.push_blob("present", b"something").await;
    let missing = sha256(b"never pushed");

    for repo in ["present", "absent"] {
        let url = blob_url(&server, repo, &missing);
        let response = server.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{repo}");
        assert_eq!(error_code(response).await, "BLOB_UNKNOWN");

        let response = server.client.head(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{repo}");
    }
}

#[tokio::test]
async fn malformed_digest_is_digest_invalid() {
    let server = TestServer::start().await;
    for digest in [
        "sha256:abc",
        "sha256:ZZ",
        // Upper-case hex is not canonical: the spec's grammar is lower case.
        &sha256(b"x").to_uppercase().replace("SHA256", "sha256"),
        "nocolon",
    ] {
        let response = server
            .client
            .get(blob_url(&server, "repo", digest))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{digest}");
        assert_eq!(error_code(response).await, "DIGEST_INVALID", "{digest}");
    }
}

/// A well-formed digest of an algorithm the registry does not hash names no
/// blob it could hold: reading or deleting it is not found, not invalid.
#[tokio::test]
async fn digest_of_an_unknown_algorithm_is_not_found() {
    let server = TestServer::start().await;
    let url = blob_url(&server, "repo", "md5:d41d8cd98f00b204e9800998ecf8427e");
    let response = server.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UNKNOWN");
    let response = server.client.head(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = server.client.delete(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn a_blob_is_visible_only_in_repositories_it_is_linked_to() {
    let server = TestServer::start().await;
    let data = random_bytes(64);
    let digest = server.push_blob("team-a/private", &data).await;

    // The bytes exist in the registry, but `team-b/app` never received them:
    // knowing the digest must not be enough to read another repository's layer.
    for repo in ["team-b/app", "team-a", "team-a/private/sub"] {
        let url = blob_url(&server, repo, &digest);
        let response = server.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{repo}");
        assert_eq!(error_code(response).await, "BLOB_UNKNOWN");
        let response = server.client.head(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{repo}");
        let response = get_range(&server, &url, "bytes=0-3").await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{repo}");
    }

    // Pushing the same bytes into the second repository links them there.
    assert_eq!(server.push_blob("team-b/app", &data).await, digest);
    let response = server
        .client
        .get(blob_url(&server, "team-b/app", &digest))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &data[..]);
}

#[tokio::test]
async fn delete_unlinks_the_blob_from_that_repository_only() {
    let server = TestServer::start().await;
    let data = random_bytes(256);
    let digest = server.push_blob("one", &data).await;
    server.push_blob("two", &data).await;
    let url = blob_url(&server, "one", &digest);

    let response = server.client.delete(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header_str(&response, "docker-content-digest"), digest);

    let response = server.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UNKNOWN");
    let response = server.client.head(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Deleting again: nothing is linked any more.
    let response = server.client.delete(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UNKNOWN");

    // The other repository still has its link and the shared content.
    let response = server
        .client
        .get(blob_url(&server, "two", &digest))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &data[..]);

    // Pushing it again into the first repository makes it readable there again.
    server.push_blob("one", &data).await;
    let response = server.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn delete_of_unknown_blob_is_blob_unknown() {
    let server = TestServer::start().await;
    let response = server
        .client
        .delete(blob_url(&server, "repo", &sha256(b"never pushed")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn empty_blob_round_trips() {
    let server = TestServer::start().await;
    let digest = server.push_blob("empty", b"").await;
    let url = blob_url(&server, "empty", &digest);
    let response = server.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_str(&response, "content-length"), "0");
    assert!(response.bytes().await.unwrap().is_empty());
    // No byte of an empty blob can be asked for.
    let response = get_range(&server, &url, "bytes=0-").await;
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header_str(&response, "content-range"), "bytes */0");
}

#[tokio::test]
async fn large_blob_is_streamed_up_and_down() {
    const SIZE: usize = 20 * 1024 * 1024;
    const PIECE: usize = 256 * 1024;
    let server = TestServer::start().await;
    let data = bytes::Bytes::from(random_bytes(SIZE));
    let digest = sha256(&data);

    // A body of unknown length (chunked transfer encoding), handed over in
    // pieces: the server must take it as a stream, not as one buffer.
    let pieces: Vec<bytes::Bytes> = (0..SIZE)
        .step_by(PIECE)
        .map(|at| data.slice(at..(at + PIECE).min(SIZE)))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        pieces.into_iter().map(Ok::<_, std::io::Error>),
    ));
    let response = server
        .client
        .post(server.at(&format!("/v2/big/blob/blobs/uploads/?digest={digest}")))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header_str(&response, "docker-content-digest"), digest);
    let location = header_str(&response, "location").to_owned();

    let response = server
        .client
        .get(server.at(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_str(&response, "content-length"), SIZE.to_string());
    // Hash the download as it arrives instead of collecting it.
    let mut hasher = sha2::Sha256::new();
    let mut received = 0usize;
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.unwrap();
        received += piece.len();
        hasher.update(&piece);
    }
    assert_eq!(received, SIZE);
    assert_eq!(format!("sha256:{}", hex::encode(hasher.finalize())), digest);

    // A range deep inside the large blob comes from the right offset.
    let start = 13 * 1024 * 1024 + 7;
    let response = get_range(
        &server,
        &server.at(&location),
        &format!("bytes={start}-{}", start + 99),
    )
    .await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &data[start..start + 100]
    );
}

#[tokio::test]
async fn bad_names_and_methods_get_their_codes() {
    let server = TestServer::start().await;
    let digest = sha256(b"x");
    // (`a/_layers` would collide with the storage tree's metadata directory.)
    for name in ["Upper/case", "a//b", "-lead", "a/_layers", "a/b."] {
        let response = server
            .client
            .get(blob_url(&server, name, &digest))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(error_code(response).await, "NAME_INVALID", "{name}");
    }
    // Blobs are written through uploads only.
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::POST,
    ] {
        let response = server
            .client
            .request(method.clone(), blob_url(&server, "repo", &digest))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        assert_eq!(error_code(response).await, "UNSUPPORTED", "{method}");
    }
}
