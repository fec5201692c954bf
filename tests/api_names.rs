//! Repository names over HTTP: deep names and names spelled like route words
//! work end to end; every invalid spelling is refused with `NAME_INVALID`
//! before anything touches the data directory.
//!
//! reqwest (through the `url` crate) normalizes dot segments and some
//! escapes, so the bad paths are written by hand over a plain TCP stream.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{TestServer, sha256};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Sends one HTTP/1.1 request with `path` exactly as given and returns the
/// status code and the body.
async fn raw(server: &TestServer, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let addr = server.url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    // `Connection: close`: the server closes after its answer, so reading to
    // the end yields exactly one response.
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {:?}", String::from_utf8_lossy(&response)));
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let status_line = head.lines().next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut body = response[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

/// Decodes a chunked body (no trailers expected).
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_field = std::str::from_utf8(&data[..line_end]).unwrap();
        let size = usize::from_str_radix(size_field.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            found.insert(path.strip_prefix(root).unwrap().to_owned());
            if path.is_dir() {
                pending.push(path);
            }
        }
    }
    found
}

async fn push_blob(server: &TestServer, repo: &str, data: &[u8]) -> Value {
    let digest = server.push_blob(repo, data).await;
    json!({"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": data.len()})
}

/// Pushes a one-layer image into `repo` under `tag` and pulls it back every
/// way: manifest by tag and digest, blob, tag list, referrers.
async fn round_trip(server: &TestServer, repo: &str, tag: &str) -> String {
    let config = push_blob(server, repo, format!("{{\"repo\":\"{repo}\"}}").as_bytes()).await;
    let layer_bytes = format!("layer of {repo}").into_bytes();
    let mut layer = push_blob(server, repo, &layer_bytes).await;
    layer["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer],
    }))
    .unwrap();
    let digest = sha256(&manifest);
    let r = server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/{tag}")))
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{repo}:{tag}");
    assert_eq!(
        r.headers().get(header::LOCATION).unwrap(),
        format!("/v2/{repo}/manifests/{digest}").as_str()
    );

    for reference in [tag, digest.as_str()] {
        let r = server
            .client
            .get(server.at(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{repo}@{reference}");
        assert_eq!(r.bytes().await.unwrap(), manifest);
    }
    let r = server
        .client
        .get(server.at(&format!(
            "/v2/{repo}/blobs/{}",
            layer["digest"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), layer_bytes);
    let r = server
        .client
        .get(server.at(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"name": repo, "tags": [tag]})
    );
    let r = server
        .client
        .get(server.at(&format!("/v2/{repo}/referrers/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    digest
}

#[tokio::test]
async fn deep_names_and_route_words_work() {
    let server = TestServer::start().await;
    // Eight components deep; names containing the words routes end with;
    // the longest name allowed (255 characters); separators of every kind.
    let longest = format!("{}abcde", "abcdefghi/".repeat(25));
    assert_eq!(longest.len(), 255);
    let repos = [
        "a/b/c/d/e/f/g/h",
        "a/b/c/d/e/f/g",
        "x/blobs/y",
        "x/manifests/y",
        "x/tags/list",
        "x/blobs/uploads",
        "x/referrers/y",
        "v2/catalog",
        "a.b_c__d---e/0",
        longest.as_str(),
    ];
    for repo in repos {
        round_trip(&server, repo, "latest").await;
    }

    // Each sees only its own tags, and the catalog lists every one of them.
    let r = server
        .client
        .get(server.at("/v2/_catalog"))
        .send()
        .await
        .unwrap();
    let mut want: Vec<&str> = repos.to_vec();
    want.sort();
    assert_eq!(
        r.json::<Value>().await.unwrap()["repositories"],
        json!(want)
    );

    // Chunked uploads under a deep name: the session URL carries the name.
    let repo = "a/b/c/d/e/f/g/h";
    let r = server
        .client
        .post(server.at(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r
        .headers()
        .get(header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        location.starts_with(&format!("/v2/{repo}/blobs/uploads/")),
        "{location}"
    );
    let data = b"deep chunked blob";
    let target = if location.starts_with('/') {
        server.at(&location)
    } else {
        location
    };
    let sep = if target.contains('?') { '&' } else { '?' };
    let r = server
        .client
        .put(format!("{target}{sep}digest={}", sha256(data)))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = server
        .client
        .get(server.at(&format!("/v2/{repo}/blobs/{}", sha256(data))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data);
}

#[tokio::test]
async fn invalid_names_are_refused_and_touch_nothing() {
    if crate::STORAGE_ON_S3 {
        // It compares the data directory's files before and after.
        return;
    }
    let server = TestServer::start().await;
    // Valid traffic first, so the tree has something to compare against.
    let digest = round_trip(&server, "good/repo", "v1").await;
    let blob = sha256(b"layer of good/repo");
    let before = tree(server.dir.path());
    assert!(
        before.contains(Path::new("data/repositories/good/repo/_manifests/tags/v1")),
        "the snapshot sees the storage tree: {before:?}"
    );

    let too_long = "a".repeat(256);
    let too_long_nested = format!("{}abcdef", "abcdefghi/".repeat(25));
    let bad_names = [
        "Upper",
        "good/Repo",
        "..",
        "a/..",
        "good/../good/repo",
        "good/repo/..",
        ".",
        "a/./b",
        "%2e%2e",
        "%2E%2E/x",
        "good/%2e%2e/good/repo",
        "good%2Frepo",
        "good%2frepo",
        "a//b",
        "good//repo",
        "good/repo/",
        "/good/repo",
        "-a",
        "a/-b",
        "a-",
        "_a",
        "good/repo/_manifests",
        "good/repo/_layers",
        "a%20b",
        "a%00b",
        "caf%C3%A9",
        too_long.as_str(),
        too_long_nested.as_str(),
    ];
    let body = b"{\"schemaVersion\":2}";
    for name in bad_names {
        let requests = [
            ("GET", format!("/v2/{name}/tags/list"), &b""[..]),
            ("GET", format!("/v2/{name}/manifests/v1"), &b""[..]),
            ("HEAD", format!("/v2/{name}/manifests/{digest}"), &b""[..]),
            ("PUT", format!("/v2/{name}/manifests/v1"), &body[..]),
            ("DELETE", format!("/v2/{name}/manifests/{digest}"), &b""[..]),
            ("GET", format!("/v2/{name}/blobs/{blob}"), &b""[..]),
            ("DELETE", format!("/v2/{name}/blobs/{blob}"), &b""[..]),
            ("POST", format!("/v2/{name}/blobs/uploads/"), &b""[..]),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?digest={}", sha256(body)),
                &body[..],
            ),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?mount={blob}&from=good/repo"),
                &b""[..],
            ),
            ("GET", format!("/v2/{name}/referrers/{digest}"), &b""[..]),
        ];
        let mut requests = requests.to_vec();
        // A valid target mounting from an invalid source. In a query `%2F`
        // is just `/`, so those names are valid there and left out.
        if !name.to_ascii_lowercase().contains("%2f") {
            requests.push((
                "POST",
                format!("/v2/good/other/blobs/uploads/?mount={blob}&from={name}"),
                &b""[..],
            ));
        }
        for (method, path, body) in requests {
            let (status, response) = raw(&server, method, &path, body).await;
            assert_eq!(
                status,
                400,
                "{method} {path}: {}",
                String::from_utf8_lossy(&response)
            );
            if method != "HEAD" {
                let v: Value = serde_json::from_slice(&response).unwrap_or_else(|_| {
                    panic!("{method} {path}: {}", String::from_utf8_lossy(&response))
                });
                assert_eq!(v["errors"][0]["code"], "NAME_INVALID", "{method} {path}");
            }
        }
    }

    let after = tree(server.dir.path());
    let added: Vec<_> = after.difference(&before).collect();
    let removed: Vec<_> = before.difference(&after).collect();
    assert!(added.is_empty(), "invalid names created {added:?}");
    assert!(removed.is_empty(), "invalid names removed {removed:?}");

    // And the valid repository is intact.
    let r = server
        .client
        .get(server.at("/v2/good/repo/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = server
        .client
        .get(server.at("/v2/_catalog"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"repositories": ["good/repo"]})
    );
}

#[tokio::test]
async fn raw_requests_with_valid_names_succeed() {
    // The hand-written client itself works: the same requests with valid
    // names succeed, so the refusals above are about the names.
    let server = TestServer::start().await;
    let digest = round_trip(&server, "good/repo", "v1").await;
    let (status, body) = raw(&server, "GET", "/v2/good/repo/tags/list", b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"name": "good/repo", "tags": ["v1"]})
    );
    let (status, _) = raw(
        &server,
        "HEAD",
        &format!("/v2/good/repo/manifests/{digest}"),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = raw(&server, "GET", "/v2/good/other/tags/list", b"").await;
    assert_eq!(status, 404);
}
