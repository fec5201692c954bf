//! The metadata cache's rules, seen from outside: each replica is the real
//! binary in a process of its own. A replica serves its own tag moves and
//! deletes at once; another replica's change (a second server over the
//! same storage) may be served stale, but only while the entry is cached:
//! not past the cache's size, and not after a restart.
//! The staleness is set far beyond the tests' length, so every "still
//! stale" below is the cache at work and never a race with the clock.

use crate::common;

use common::process::ServerProcess;
use common::sha256;
use reqwest::StatusCode;
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const REPO: &str = "team/app";
const STALENESS_SECS: u64 = 3600;

/// A replica: the real server over `data` (its configuration and keys in a
/// temp dir of their own), its metadata cache holding `cache_mib`.
struct Replica {
    process: ServerProcess,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn at(&self, path: &str) -> String {
        self.process.at(path)
    }

    /// Pushes `data` in one request and returns its digest.
    async fn push_blob(&self, data: &[u8]) -> String {
        let digest = sha256(data);
        let response = self
            .client
            .post(self.at(&format!("/v2/{REPO}/blobs/uploads/?digest={digest}")))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "push a blob");
        digest
    }
}

fn replica(data: &std::path::Path, cache_mib: usize) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nroot = {:?}\nstaleness_secs = {STALENESS_SECS}\nmetadata_cache_mib = {cache_mib}\n\
             [token]\nkey_dir = {:?}\n",
            data.to_str().unwrap(),
            dir.path().join("certs").to_str().unwrap(),
        ),
    )
    .unwrap();
    let process = ServerProcess::start_with(&["--no-auth", "--config", config.to_str().unwrap()]);
    Replica {
        process,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

/// Pushes an image whose manifest carries `padding` bytes of annotation
/// (distinct per `seed`) and returns the manifest's bytes.
async fn image(server: &Replica, seed: &str, padding: usize) -> Vec<u8> {
    let config = server
        .push_blob(format!("{{\"seed\":\"{seed}\"}}").as_bytes())
        .await;
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": seed.len() + 11,
        },
        "layers": [],
        "annotations": { "padding": "p".repeat(padding), "seed": seed },
    }))
    .unwrap()
}

async fn put(server: &Replica, reference: &str, manifest: &[u8]) {
    let response = server
        .client
        .put(server.at(&format!("/v2/{REPO}/manifests/{reference}")))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "put {reference}");
}

async fn delete(server: &Replica, reference: &str) {
    let response = server
        .client
        .delete(server.at(&format!("/v2/{REPO}/manifests/{reference}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "delete {reference}"
    );
}

/// The digest `reference` resolves to by GET (checked against the body)
/// and by HEAD, or the status when it does not resolve.
async fn resolve(server: &Replica, reference: &str) -> Result<String, StatusCode> {
    let url = server.at(&format!("/v2/{REPO}/manifests/{reference}"));
    let head = server
        .client
        .head(&url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let response = server
        .client
        .get(&url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), response.status(), "HEAD and GET {reference}");
    if response.status() != StatusCode::OK {
        return Err(response.status());
    }
    let digest = |r: &reqwest::Response| {
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let (by_head, by_get) = (digest(&head), digest(&response));
    let body = response.bytes().await.unwrap();
    assert_eq!(
        sha256(&body),
        by_get,
        "{reference}: the body is the digest's"
    );
    assert_eq!(by_head, by_get, "HEAD and GET {reference}");
    Ok(by_get)
}

#[tokio::test]
async fn a_replica_serves_its_own_tag_moves_and_deletes_at_once() {
    let data = tempfile::tempdir().unwrap();
    let server = replica(data.path(), 64);
    let first = image(&server, "first", 0).await;
    let second = image(&server, "second", 0).await;
    put(&server, "v1", &first).await;
    assert_eq!(resolve(&server, "v1").await, Ok(sha256(&first)));

    put(&server, "v1", &second).await;
    assert_eq!(resolve(&server, "v1").await, Ok(sha256(&second)));
    // The first image is still there by digest, and still cached.
    assert_eq!(resolve(&server, &sha256(&first)).await, Ok(sha256(&first)));

    // Deleting the manifest by digest takes its tag with it.
    delete(&server, &sha256(&second)).await;
    assert_eq!(
        resolve(&server, &sha256(&second)).await,
        Err(StatusCode::NOT_FOUND)
    );
    assert_eq!(resolve(&server, "v1").await, Err(StatusCode::NOT_FOUND));

    // A tag deleted on its own, and pushed again.
    put(&server, "v2", &first).await;
    assert_eq!(resolve(&server, "v2").await, Ok(sha256(&first)));
    delete(&server, "v2").await;
    assert_eq!(resolve(&server, "v2").await, Err(StatusCode::NOT_FOUND));
    put(&server, "v2", &first).await;
    assert_eq!(resolve(&server, "v2").await, Ok(sha256(&first)));
}

#[tokio::test]
async fn another_replica_s_move_shows_once_the_entry_left_the_cache() {
    let data = tempfile::tempdir().unwrap();
    // `reader` only reads; `writer` moves the tag behind its back.
    let (reader, writer) = (replica(data.path(), 1), replica(data.path(), 1));
    let first = image(&writer, "first", 0).await;
    let second = image(&writer, "second", 0).await;
    put(&writer, "v1", &first).await;
    assert_eq!(resolve(&reader, "v1").await, Ok(sha256(&first)));

    put(&writer, "v1", &second).await;
    assert_eq!(resolve(&writer, "v1").await, Ok(sha256(&second)));
    // Cached, and within its staleness: the reader still serves the first.
    assert_eq!(resolve(&reader, "v1").await, Ok(sha256(&first)));

    // Two manifests of 600 KiB do not fit in the reader's 1 MiB together:
    // reading them empties the cache, and the tag is read again.
    let big = [
        image(&writer, "big-a", 600 << 10).await,
        image(&writer, "big-b", 600 << 10).await,
    ];
    for manifest in &big {
        put(&writer, &sha256(manifest), manifest).await;
        assert_eq!(
            resolve(&reader, &sha256(manifest)).await,
            Ok(sha256(manifest))
        );
    }
    assert_eq!(resolve(&reader, "v1").await, Ok(sha256(&second)));

    // A manifest larger than the whole cache is served, and never kept.
    let huge = image(&writer, "huge", 1100 << 10).await;
    put(&writer, "huge", &huge).await;
    assert_eq!(resolve(&reader, "huge").await, Ok(sha256(&huge)));
    put(&writer, "v1", &first).await;
    assert_eq!(resolve(&reader, "v1").await, Ok(sha256(&second)), "cached");
    assert_eq!(resolve(&reader, "huge").await, Ok(sha256(&huge)));
    assert_eq!(resolve(&reader, "v1").await, Ok(sha256(&second)), "still");
}

#[tokio::test]
async fn a_restarted_replica_starts_cold() {
    let data = tempfile::tempdir().unwrap();
    let writer = replica(data.path(), 64);
    let reader = replica(data.path(), 64);
    let first = image(&writer, "first", 0).await;
    let second = image(&writer, "second", 0).await;
    put(&writer, "v1", &first).await;
    assert_eq!(resolve(&reader, "v1").await, Ok(sha256(&first)));
    put(&writer, "v1", &second).await;
    assert_eq!(resolve(&reader, "v1").await, Ok(sha256(&first)), "cached");

    // Deleted behind the reader's back: it still serves what it cached.
    delete(&writer, &sha256(&first)).await;
    assert_eq!(resolve(&reader, &sha256(&first)).await, Ok(sha256(&first)));

    reader.process.kill();
    let reader = replica(data.path(), 64);
    assert_eq!(resolve(&reader, "v1").await, Ok(sha256(&second)));
    assert_eq!(
        resolve(&reader, &sha256(&first)).await,
        Err(StatusCode::NOT_FOUND)
    );
}
