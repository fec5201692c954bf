//! Manifest pushes, pulls and deletes over HTTP against the in-process server:
//! the four accepted media types, `Accept` negotiation, validation with the
//! spec's error codes, `subject` handling and concurrent pushes.

use crate::common;

use common::{TestServer, sha256};
use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};
use sha2::Digest as _;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Pushes a blob in one monolithic `POST …/blobs/uploads/?digest=` and
/// returns its descriptor.
async fn push_blob(server: &TestServer, repo: &str, media_type: &str, data: &[u8]) -> Value {
    let digest = server.push_blob(repo, data).await;
    json!({"mediaType": media_type, "digest": digest, "size": data.len()})
}

/// An image manifest (OCI or Docker) whose config and one layer are pushed
/// into `repo` first. `seed` makes each call's blobs and bytes distinct.
async fn image(server: &TestServer, repo: &str, media_type: &str, seed: &str) -> Vec<u8> {
    let (config_type, layer_type) = if media_type == DOCKER_MANIFEST {
        (DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_CONFIG, OCI_LAYER)
    };
    let config = push_blob(
        server,
        repo,
        config_type,
        format!("{{\"c\":\"{seed}\"}}").as_bytes(),
    )
    .await;
    let layer = push_blob(server, repo, layer_type, format!("layer {seed}").as_bytes()).await;
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config,
        "layers": [layer],
    }))
    .unwrap()
}

async fn put_manifest(
    server: &TestServer,
    repo: &str,
    reference: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Response {
    server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/{reference}")))
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn get_manifest(
    server: &TestServer,
    repo: &str,
    reference: &str,
    accept: &[&str],
) -> Response {
    let mut req = server
        .client
        .get(server.at(&format!("/v2/{repo}/manifests/{reference}")));
    for a in accept {
        req = req.header(header::ACCEPT, *a);
    }
    req.send().await.unwrap()
}

fn header_str<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

/// Asserts an error response's status and its first (and only) spec error code.
async fn assert_error(r: Response, status: StatusCode, code: &str) {
    assert_eq!(r.status(), status, "status for expected {code}");
    assert_eq!(
        header_str(&r, "content-type"),
        Some("application/json"),
        "error body type"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    assert_eq!(body["errors"].as_array().unwrap().len(), 1, "{body}");
}

/// Asserts a successful push: 201, `Location` naming the manifest by digest,
/// `Docker-Content-Digest` being the body's digest. Returns that digest.
fn assert_pushed(r: &Response, repo: &str, body: &[u8]) -> String {
    let digest = sha256(body);
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header_str(r, "docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(
        header_str(r, "location"),
        Some(format!("/v2/{repo}/manifests/{digest}").as_str())
    );
    digest
}

/// GET and HEAD by `reference` answer the exact bytes with the stored type.
async fn assert_served(
    server: &TestServer,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) {
    let digest = sha256(body);
    let r = get_manifest(server, repo, reference, &[]).await;
    assert_eq!(r.status(), StatusCode::OK, "GET {repo}:{reference}");
    assert_eq!(header_str(&r, "content-type"), Some(media_type));
    assert_eq!(
        header_str(&r, "docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), body);

    let r = server
        .client
        .head(server.at(&format!("/v2/{repo}/manifests/{reference}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "HEAD {repo}:{reference}");
    assert_eq!(header_str(&r, "content-type"), Some(media_type));
    assert_eq!(
        header_str(&r, "docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(
        header_str(&r, "content-length"),
        Some(body.len().to_string().as_str())
    );
    assert!(r.bytes().await.unwrap().is_empty(), "HEAD has no body");
}

#[tokio::test]
async fn all_four_media_types_round_trip_by_tag_and_digest() {
    let server = TestServer::start().await;
    let repo = "library/round";

    let oci = image(&server, repo, OCI_MANIFEST, "oci").await;
    let docker = image(&server, repo, DOCKER_MANIFEST, "docker").await;
    let oci_digest = assert_pushed(
        &put_manifest(&server, repo, "oci", OCI_MANIFEST, oci.clone()).await,
        repo,
        &oci,
    );
    let docker_digest = assert_pushed(
        &put_manifest(&server, repo, "docker", DOCKER_MANIFEST, docker.clone()).await,
        repo,
        &docker,
    );

    // The two lists point at the two images just pushed.
    let child = |media_type: &str, body: &[u8], arch: &str| {
        json!({
            "mediaType": media_type,
            "digest": sha256(body),
            "size": body.len(),
            "platform": {"architecture": arch, "os": "linux"}
        })
    };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [child(OCI_MANIFEST, &oci, "amd64"), child(DOCKER_MANIFEST, &docker, "arm64")],
    }))
    .unwrap();
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [child(DOCKER_MANIFEST, &docker, "arm64")],
    }))
    .unwrap();
    // The lists are pushed by digest, the images were pushed by tag.
    let index_digest = sha256(&index);
    let list_digest = sha256(&list);
    assert_pushed(
        &put_manifest(&server, repo, &index_digest, OCI_INDEX, index.clone()).await,
        repo,
        &index,
    );
    assert_pushed(
        &put_manifest(&server, repo, &list_digest, DOCKER_LIST, list.clone()).await,
        repo,
        &list,
    );
    // …and tagged afterwards by pushing the same bytes under a tag.
    assert_pushed(
        &put_manifest(&server, repo, "index", OCI_INDEX, index.clone()).await,
        repo,
        &index,
    );
    assert_pushed(
        &put_manifest(&server, repo, "list", DOCKER_LIST, list.clone()).await,
        repo,
        &list,
    );

    for (tag, digest, media_type, body) in [
        ("oci", &oci_digest, OCI_MANIFEST, &oci),
        ("docker", &docker_digest, DOCKER_MANIFEST, &docker),
        ("index", &index_digest, OCI_INDEX, &index),
        ("list", &list_digest, DOCKER_LIST, &list),
    ] {
        assert_served(&server, repo, tag, media_type, body).await;
        assert_served(&server, repo, digest, media_type, body).await;
    }
}

#[tokio::test]
async fn bytes_are_kept_exactly_as_pushed() {
    // Whitespace and key order are part of the digest: the registry must not
    // re-serialize what it stores.
    let server = TestServer::start().await;
    let repo = "exact";
    let config = push_blob(&server, repo, OCI_CONFIG, b"{}").await;
    let body = format!(
        "{{\n   \"schemaVersion\" : 2,\n\t\"layers\": [],\n \"config\": {config},  \"mediaType\": \"{OCI_MANIFEST}\"\n}}\n\n"
    )
    .into_bytes();
    assert_pushed(
        &put_manifest(&server, repo, "v1", OCI_MANIFEST, body.clone()).await,
        repo,
        &body,
    );
    assert_served(&server, repo, "v1", OCI_MANIFEST, &body).await;
}

#[tokio::test]
async fn media_type_is_taken_from_the_body_when_content_type_is_generic() {
    let server = TestServer::start().await;
    let repo = "generic";
    let body = image(&server, repo, DOCKER_MANIFEST, "g").await;
    // Some clients push with a generic type; the stored type is the body's.
    let r = put_manifest(&server, repo, "g", "application/json", body.clone()).await;
    assert_pushed(&r, repo, &body);
    assert_served(&server, repo, "g", DOCKER_MANIFEST, &body).await;

    // A Content-Type with parameters is read by its essence.
    let body = image(&server, repo, OCI_MANIFEST, "p").await;
    let r = put_manifest(
        &server,
        repo,
        "p",
        &format!("{OCI_MANIFEST}; charset=utf-8"),
        body.clone(),
    )
    .await;
    assert_pushed(&r, repo, &body);
    assert_served(&server, repo, "p", OCI_MANIFEST, &body).await;

    // No Content-Type at all: the body's mediaType decides too.
    let body = image(&server, repo, DOCKER_MANIFEST, "none").await;
    let r = server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/none")))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_pushed(&r, repo, &body);
    assert_served(&server, repo, "none", DOCKER_MANIFEST, &body).await;
}

#[tokio::test]
async fn accept_negotiation() {
    let server = TestServer::start().await;
    let repo = "negotiate";
    let body = image(&server, repo, OCI_MANIFEST, "n").await;
    let digest = assert_pushed(
        &put_manifest(&server, repo, "t", OCI_MANIFEST, body.clone()).await,
        repo,
        &body,
    );

    // Admitted: no Accept, the exact type among others (one header or
    // several, with parameters), and wildcards.
    for accept in [
        &[][..],
        &[OCI_MANIFEST][..],
        &[DOCKER_MANIFEST, OCI_MANIFEST][..],
        &[
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json;q=0.5",
        ][..],
        &["*/*"][..],
        &["application/*"][..],
    ] {
        let r = get_manifest(&server, repo, "t", accept).await;
        assert_eq!(r.status(), StatusCode::OK, "Accept {accept:?}");
        assert_eq!(header_str(&r, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
    }

    // A client that says it reads only other types is not sent this one,
    // by tag or by digest, GET or HEAD (ARCHITECTURE.md: MANIFEST_UNKNOWN).
    for reference in ["t", digest.as_str()] {
        let r = get_manifest(&server, repo, reference, &[DOCKER_MANIFEST, DOCKER_LIST]).await;
        assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        let r = server
            .client
            .head(server.at(&format!("/v2/{repo}/manifests/{reference}")))
            .header(header::ACCEPT, OCI_INDEX)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn unknown_manifests_are_404_manifest_unknown() {
    let server = TestServer::start().await;
    let repo = "unknown";
    let r = get_manifest(&server, repo, "nope", &[]).await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = get_manifest(&server, repo, &sha256(b"nothing"), &[]).await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = server
        .client
        .head(server.at(&format!("/v2/{repo}/manifests/nope")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A manifest of another repository is not visible here, even by digest.
    let body = image(&server, "other", OCI_MANIFEST, "o").await;
    let digest = assert_pushed(
        &put_manifest(&server, "other", "t", OCI_MANIFEST, body.clone()).await,
        "other",
        &body,
    );
    let r = get_manifest(&server, repo, &digest, &[]).await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_the_spec_codes() {
    let server = TestServer::start().await;
    let repo = "invalid";
    let config = push_blob(&server, repo, OCI_CONFIG, b"{\"c\":1}").await;
    let layer = push_blob(&server, repo, OCI_LAYER, b"some layer").await;
    let bad = |body: Value| serde_json::to_vec(&body).unwrap();

    for (what, content_type, body) in [
        ("not JSON", OCI_MANIFEST, b"{not json".to_vec()),
        ("empty body", OCI_MANIFEST, Vec::new()),
        ("JSON array", OCI_MANIFEST, b"[]".to_vec()),
        (
            "schemaVersion 1",
            OCI_MANIFEST,
            bad(
                json!({"schemaVersion": 1, "mediaType": OCI_MANIFEST, "config": config, "layers": []}),
            ),
        ),
        (
            "no config",
            OCI_MANIFEST,
            bad(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [layer]})),
        ),
        (
            "Content-Type differs from mediaType",
            DOCKER_MANIFEST,
            bad(
                json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": []}),
            ),
        ),
        (
            "unsupported media type (schema 1)",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            bad(json!({"schemaVersion": 2, "config": config, "layers": []})),
        ),
        (
            "descriptor digest not a digest",
            OCI_MANIFEST,
            bad(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": "sha256:xyz", "size": 1}, "layers": []})),
        ),
        (
            "index with layers",
            OCI_INDEX,
            bad(json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "layers": []})),
        ),
    ] {
        let r = put_manifest(&server, repo, "t", content_type, body).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID", "{what}: {text}");
    }
    // Nothing was tagged by any of those.
    let r = get_manifest(&server, repo, "t", &[]).await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn oversized_manifests_are_413() {
    let server = TestServer::start().await;
    let repo = "big";
    let config = push_blob(&server, repo, OCI_CONFIG, b"{}").await;
    // A valid manifest padded by a huge annotation to just over 4 MiB.
    let limit = 4 * 1024 * 1024;
    let mut m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [],
        "annotations": {"pad": ""}});
    let base = serde_json::to_vec(&m).unwrap().len();
    m["annotations"]["pad"] = json!("x".repeat(limit + 1 - base));
    let body = serde_json::to_vec(&m).unwrap();
    assert_eq!(body.len(), limit + 1);

    // Announced by Content-Length…
    let r = put_manifest(&server, repo, "big", OCI_MANIFEST, body.clone()).await;
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID").await;

    // …and streamed without a length (chunked), so the limit applies while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/big")))
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID").await;

    // Exactly at the limit is accepted.
    m["annotations"]["pad"] = json!("x".repeat(limit - base));
    let body = serde_json::to_vec(&m).unwrap();
    assert_eq!(body.len(), limit);
    let r = put_manifest(&server, repo, "max", OCI_MANIFEST, body.clone()).await;
    assert_pushed(&r, repo, &body);
    let r = get_manifest(&server, repo, "big", &[]).await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn missing_blobs_are_manifest_blob_unknown() {
    let server = TestServer::start().await;
    let repo = "missing";
    let config = push_blob(&server, repo, OCI_CONFIG, b"{\"cfg\":true}").await;
    let layer = push_blob(&server, repo, OCI_LAYER, b"present layer").await;
    let absent = |media_type: &str, seed: &[u8]| json!({"mediaType": media_type, "digest": sha256(seed), "size": seed.len()});

    let cases = [
        (
            "config missing",
            json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": absent(OCI_CONFIG, b"no config"), "layers": [layer]}),
        ),
        (
            "layer missing",
            json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": config, "layers": [layer, absent(OCI_LAYER, b"no layer")]}),
        ),
        (
            "docker layer missing",
            json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": config, "layers": [absent(DOCKER_LAYER, b"no docker layer")]}),
        ),
        (
            "index child missing",
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [absent(OCI_MANIFEST, b"no child")]}),
        ),
        (
            "list child missing",
            json!({"schemaVersion": 2, "mediaType": DOCKER_LIST,
            "manifests": [absent(DOCKER_MANIFEST, b"no child")]}),
        ),
    ];
    for (what, m) in cases {
        let media_type = m["mediaType"].as_str().unwrap().to_owned();
        let r = put_manifest(
            &server,
            repo,
            "t",
            &media_type,
            serde_json::to_vec(&m).unwrap(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN",
            "{what}: {v}"
        );
    }

    // An index child that exists only as a blob (not pushed as a manifest)
    // is not a manifest of this repository.
    let r = put_manifest(
        &server,
        repo,
        "t",
        OCI_INDEX,
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": layer["digest"], "size": layer["size"]}]}))
        .unwrap(),
    )
    .await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    let r = get_manifest(&server, repo, "t", &[]).await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn blobs_of_another_repository_are_not_enough() {
    let server = TestServer::start().await;
    // The blobs exist in the registry, but only linked to `source`.
    let body = image(&server, "source", OCI_MANIFEST, "shared").await;
    let r = put_manifest(&server, "target", "t", OCI_MANIFEST, body.clone()).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    // Mounting them links them, after which the same push succeeds.
    let m: Value = serde_json::from_slice(&body).unwrap();
    for d in [&m["config"]["digest"], &m["layers"][0]["digest"]] {
        let d = d.as_str().unwrap();
        let r = server
            .client
            .post(server.at(&format!("/v2/target/blobs/uploads/?mount={d}&from=source")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    assert_pushed(
        &put_manifest(&server, "target", "t", OCI_MANIFEST, body.clone()).await,
        "target",
        &body,
    );

    // Likewise an index may only point at manifests of its own repository.
    let only_in_source = image(&server, "source", OCI_MANIFEST, "source only").await;
    assert_pushed(
        &put_manifest(&server, "source", "s", OCI_MANIFEST, only_in_source.clone()).await,
        "source",
        &only_in_source,
    );
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(&only_in_source), "size": only_in_source.len()}],
    }))
    .unwrap();
    let r = put_manifest(&server, "target", "i", OCI_INDEX, index.clone()).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert_pushed(
        &put_manifest(&server, "source", "i", OCI_INDEX, index.clone()).await,
        "source",
        &index,
    );
}

#[tokio::test]
async fn non_distributable_layers_need_not_be_pushed() {
    let server = TestServer::start().await;
    let repo = "foreign";
    let config = push_blob(&server, repo, OCI_CONFIG, b"{\"os\":\"windows\"}").await;
    let foreign = |media_type: &str, seed: &[u8]| {
        json!({"mediaType": media_type, "digest": sha256(seed), "size": 1_000_000,
            "urls": ["https://example.invalid/layer"]})
    };
    let oci = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
        "layers": [foreign("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", b"base")],
    }))
    .unwrap();
    assert_pushed(
        &put_manifest(&server, repo, "oci", OCI_MANIFEST, oci.clone()).await,
        repo,
        &oci,
    );

    let docker = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config,
        "layers": [foreign("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", b"base")],
    }))
    .unwrap();
    assert_pushed(
        &put_manifest(&server, repo, "docker", DOCKER_MANIFEST, docker.clone()).await,
        repo,
        &docker,
    );
    assert_served(&server, repo, "docker", DOCKER_MANIFEST, &docker).await;

    // The exemption is only for those types: the same digest as an ordinary
    // layer must be present.
    let ordinary = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
        "layers": [foreign(OCI_LAYER, b"base")],
    }))
    .unwrap();
    let r = put_manifest(&server, repo, "ordinary", OCI_MANIFEST, ordinary).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn put_by_digest_must_match_the_body() {
    let server = TestServer::start().await;
    let repo = "bydigest";
    let body = image(&server, repo, OCI_MANIFEST, "d").await;
    let wrong = sha256(b"something else");
    let r = put_manifest(&server, repo, &wrong, OCI_MANIFEST, body.clone()).await;
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r = get_manifest(&server, repo, &wrong, &[]).await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = get_manifest(&server, repo, &sha256(&body), &[]).await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // A sha512 reference is checked (and stored) under sha512.
    let d512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&body)));
    let r = put_manifest(&server, repo, &d512, OCI_MANIFEST, body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header_str(&r, "docker-content-digest"), Some(d512.as_str()));
    assert_served_sha512(&server, repo, &d512, &body).await;

    // Malformed digests in the reference are DIGEST_INVALID.
    for reference in ["sha256:abc", "sha256:XYZ", "md5:00"] {
        let r = put_manifest(&server, repo, reference, OCI_MANIFEST, body.clone()).await;
        assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
}

async fn assert_served_sha512(server: &TestServer, repo: &str, d512: &str, body: &[u8]) {
    let r = get_manifest(server, repo, d512, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header_str(&r, "docker-content-digest"), Some(d512));
    assert_eq!(r.bytes().await.unwrap().as_ref(), body);
}

/// Storing under an invalid tag is the client's mistake (400); reading or
/// deleting one finds nothing (404), as distribution answers and as the
/// conformance suite's `.INVALID_MANIFEST_NAME` expects.
#[tokio::test]
async fn invalid_tags_are_refused_for_put_and_not_found_otherwise() {
    let server = TestServer::start().await;
    let repo = "tags";
    let body = image(&server, repo, OCI_MANIFEST, "t").await;
    let long = "t".repeat(129);
    // (A `%2e%2e` tag cannot be sent through reqwest: the URL parser turns it
    // into a dot segment. tests/api_names.rs sends such paths raw.)
    for tag in [
        "-lead",
        ".dot",
        ".INVALID_MANIFEST_NAME",
        long.as_str(),
        "a%20b",
        "a%2Fb",
        "md5:00",
    ] {
        let r = put_manifest(&server, repo, tag, OCI_MANIFEST, body.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "PUT {tag}");
        let url = server.at(&format!("/v2/{repo}/manifests/{tag}"));
        let r = get_manifest(&server, repo, tag, &[]).await;
        assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        let r = server.client.head(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "HEAD {tag}");
        let r = server.client.delete(&url).send().await.unwrap();
        assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
    // The grammar's edges are accepted.
    let max = "T".repeat(128);
    for tag in ["_under", "V1.0-rc_2", max.as_str()] {
        assert_pushed(
            &put_manifest(&server, repo, tag, OCI_MANIFEST, body.clone()).await,
            repo,
            &body,
        );
        assert_served(&server, repo, tag, OCI_MANIFEST, &body).await;
    }
}

#[tokio::test]
async fn subject_may_point_at_a_manifest_not_pushed_yet() {
    let server = TestServer::start().await;
    let repo = "subject";
    // The subject is pushed after its referrer.
    let subject_body = image(&server, repo, OCI_MANIFEST, "subject").await;
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": sha256(&subject_body), "size": subject_body.len()});
    let config = push_blob(
        &server,
        repo,
        "application/vnd.example.sig.config",
        b"sig config",
    )
    .await;
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [],
        "subject": subject, "annotations": {"org.example.kind": "signature"},
    }))
    .unwrap();
    let r = put_manifest(
        &server,
        repo,
        &sha256(&referrer),
        OCI_MANIFEST,
        referrer.clone(),
    )
    .await;
    assert_pushed(&r, repo, &referrer);
    assert_eq!(
        header_str(&r, "oci-subject"),
        Some(sha256(&subject_body).as_str())
    );

    // A push without a subject carries no OCI-Subject.
    let r = put_manifest(&server, repo, "v1", OCI_MANIFEST, subject_body.clone()).await;
    assert_pushed(&r, repo, &subject_body);
    assert!(r.headers().get("oci-subject").is_none());

    let r = server
        .client
        .get(server.at(&format!("/v2/{repo}/referrers/{}", sha256(&subject_body))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = r.json().await.unwrap();
    assert_eq!(
        list["manifests"],
        json!([{
            "mediaType": OCI_MANIFEST,
            "digest": sha256(&referrer),
            "size": referrer.len(),
            "artifactType": "application/vnd.example.sig.config",
            "annotations": {"org.example.kind": "signature"},
        }])
    );
}

#[tokio::test]
async fn delete_by_tag_removes_only_the_tag() {
    let server = TestServer::start().await;
    let repo = "deltag";
    let body = image(&server, repo, OCI_MANIFEST, "dt").await;
    let digest = assert_pushed(
        &put_manifest(&server, repo, "a", OCI_MANIFEST, body.clone()).await,
        repo,
        &body,
    );
    assert_pushed(
        &put_manifest(&server, repo, "b", OCI_MANIFEST, body.clone()).await,
        repo,
        &body,
    );

    let r = server
        .client
        .delete(server.at(&format!("/v2/{repo}/manifests/a")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = get_manifest(&server, repo, "a", &[]).await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_served(&server, repo, &digest, OCI_MANIFEST, &body).await;
    assert_served(&server, repo, "b", OCI_MANIFEST, &body).await;
    let tags: Value = server
        .client
        .get(server.at(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["b"]));

    // Deleting it again is a 404.
    let r = server
        .client
        .delete(server.at(&format!("/v2/{repo}/manifests/a")))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn delete_by_digest_removes_the_manifest_and_its_tags() {
    let server = TestServer::start().await;
    let repo = "deldigest";
    let body = image(&server, repo, OCI_MANIFEST, "dd").await;
    let other = image(&server, repo, OCI_MANIFEST, "kept").await;
    let digest = assert_pushed(
        &put_manifest(&server, repo, "a", OCI_MANIFEST, body.clone()).await,
        repo,
        &body,
    );
    assert_pushed(
        &put_manifest(&server, repo, "b", OCI_MANIFEST, body.clone()).await,
        repo,
        &body,
    );
    assert_pushed(
        &put_manifest(&server, repo, "c", OCI_MANIFEST, other.clone()).await,
        repo,
        &other,
    );

    let r = server
        .client
        .delete(server.at(&format!("/v2/{repo}/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for reference in [digest.as_str(), "a", "b"] {
        let r = get_manifest(&server, repo, reference, &[]).await;
        assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        let r = server
            .client
            .head(server.at(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // The other manifest is untouched.
    assert_served(&server, repo, "c", OCI_MANIFEST, &other).await;
    let tags: Value = server
        .client
        .get(server.at(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["c"]));

    // Unknown digests and tags are 404 MANIFEST_UNKNOWN.
    for reference in [digest.clone(), sha256(b"never"), "never".to_owned()] {
        let r = server
            .client
            .delete(server.at(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }

    // The deleted manifest can be pushed again.
    assert_pushed(
        &put_manifest(&server, repo, "a", OCI_MANIFEST, body.clone()).await,
        repo,
        &body,
    );
    assert_served(&server, repo, &digest, OCI_MANIFEST, &body).await;
}

#[tokio::test]
async fn retagging_moves_the_tag() {
    let server = TestServer::start().await;
    let repo = "retag";
    let first = image(&server, repo, OCI_MANIFEST, "first").await;
    let second = image(&server, repo, DOCKER_MANIFEST, "second").await;
    let first_digest = assert_pushed(
        &put_manifest(&server, repo, "latest", OCI_MANIFEST, first.clone()).await,
        repo,
        &first,
    );
    assert_pushed(
        &put_manifest(&server, repo, "latest", DOCKER_MANIFEST, second.clone()).await,
        repo,
        &second,
    );
    assert_served(&server, repo, "latest", DOCKER_MANIFEST, &second).await;
    // The old manifest stays reachable by digest.
    assert_served(&server, repo, &first_digest, OCI_MANIFEST, &first).await;
}

#[tokio::test]
async fn manifests_survive_a_restart() {
    let server = TestServer::start().await;
    let repo = "persist/me";
    let body = image(&server, repo, OCI_MANIFEST, "p").await;
    let digest = assert_pushed(
        &put_manifest(&server, repo, "v1", OCI_MANIFEST, body.clone()).await,
        repo,
        &body,
    );
    let dir = server.stop().await;
    let server = TestServer::start_in(dir).await;
    assert_served(&server, repo, "v1", OCI_MANIFEST, &body).await;
    assert_served(&server, repo, &digest, OCI_MANIFEST, &body).await;
}

// Several worker threads, so the server really handles the pushes in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_of_one_manifest_under_many_tags() {
    let server = TestServer::start().await;
    let repo = "concurrent";
    let body = image(&server, repo, OCI_MANIFEST, "c").await;
    let tags: Vec<String> = (0..48).map(|i| format!("t{i:02}")).collect();

    let pushes = tags.iter().map(|tag| {
        let client = server.client.clone();
        let url = server.at(&format!("/v2/{repo}/manifests/{tag}"));
        let body = body.clone();
        async move {
            client
                .put(url)
                .header(header::CONTENT_TYPE, OCI_MANIFEST)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    });
    // Each push on its own task, all in flight at once.
    let handles: Vec<_> = pushes.map(tokio::spawn).collect();
    for h in handles {
        let r = h.await.unwrap();
        assert_pushed(&r, repo, &body);
    }

    for tag in &tags {
        assert_served(&server, repo, tag, OCI_MANIFEST, &body).await;
    }
    let list: Value = server
        .client
        .get(server.at(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["tags"], json!(tags));
}

// Several worker threads, so the server really handles the pushes in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_of_different_manifests_to_one_tag_leave_one_winner() {
    let server = TestServer::start().await;
    let repo = "race";
    let mut bodies = Vec::new();
    for i in 0..8 {
        bodies.push(image(&server, repo, OCI_MANIFEST, &format!("r{i}")).await);
    }
    let handles: Vec<_> = bodies
        .iter()
        .map(|body| {
            let client = server.client.clone();
            let url = server.at(&format!("/v2/{repo}/manifests/latest"));
            let body = body.clone();
            tokio::spawn(async move {
                client
                    .put(url)
                    .header(header::CONTENT_TYPE, OCI_MANIFEST)
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap(), StatusCode::CREATED);
    }
    // The tag names exactly one of the pushed manifests, whole.
    let r = get_manifest(&server, repo, "latest", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let got = r.bytes().await.unwrap();
    assert!(
        bodies.iter().any(|b| b[..] == got[..]),
        "tag names a pushed manifest"
    );
    // Every one of them is a manifest of the repository by digest.
    for body in &bodies {
        assert_served(&server, repo, &sha256(body), OCI_MANIFEST, body).await;
    }
}
