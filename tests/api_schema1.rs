//! Docker schema 1 manifests over HTTP, in the request shapes of engine 1.9:
//! signed pushes stored and served as pushed, named by their payload's
//! digest; refusals with nothing stored; and a schema-1-only client asking
//! for a schema 2 image.

use crate::common;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use common::{TestServer, error_code, sha256};
use data_encoding::BASE64URL_NOPAD;
use reqwest::{RequestBuilder, StatusCode, header};
use serde_json::{Value, json};

const SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ENGINE: &str = "docker/1.9.1 go/go1.4.3 git-commit/a34a1d5 kernel/4.2.0 os/linux arch/amd64";

/// Engine 1.9's headers: its User-Agent and the Accept it sends for manifests.
fn engine(req: RequestBuilder) -> RequestBuilder {
    req.header(header::USER_AGENT, ENGINE)
        .header(header::ACCEPT, SIGNED)
        .header(header::ACCEPT, "application/json")
}

/// A schema 1 manifest of `repo` over `layers` (blob digests).
fn manifest(repo: &str, tag: &str, layers: &[String]) -> Value {
    json!({
        "schemaVersion": 1,
        "name": repo,
        "tag": tag,
        "architecture": "amd64",
        "fsLayers": layers.iter().map(|d| json!({"blobSum": d})).collect::<Vec<_>>(),
        "history": layers.iter().map(|d| json!({"v1Compatibility": json!({"id": d}).to_string()})).collect::<Vec<_>>(),
    })
}

/// Signs `manifest` as libtrust does (ES256 with a fresh key): the pretty
/// payload with its `signatures` spliced in before the last brace. `alg` is
/// the header's claim. Returns the body and the payload.
fn sign(manifest: &Value, alg: &str) -> (Vec<u8>, Vec<u8>) {
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = key.public_key().as_ref();
    let payload = serde_json::to_string_pretty(manifest).unwrap();
    let format_length = payload[..payload.rfind('}').unwrap()].trim_end().len();
    let tail = &payload[format_length..];
    let protected = BASE64URL_NOPAD.encode(
        json!({"formatLength": format_length, "formatTail": BASE64URL_NOPAD.encode(tail.as_bytes()), "time": "2015-11-20T10:00:00Z"})
            .to_string()
            .as_bytes(),
    );
    let input = format!("{protected}.{}", BASE64URL_NOPAD.encode(payload.as_bytes()));
    let signature = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    let signatures = json!([{
        "header": {"jwk": {"kty": "EC", "crv": "P-256",
            "x": BASE64URL_NOPAD.encode(&point[1..33]), "y": BASE64URL_NOPAD.encode(&point[33..])},
            "alg": alg},
        "signature": BASE64URL_NOPAD.encode(signature.as_ref()),
        "protected": protected,
    }]);
    let body = format!(
        "{},\n   \"signatures\": {}{tail}",
        &payload[..format_length],
        serde_json::to_string_pretty(&signatures).unwrap()
    );
    (body.into_bytes(), payload.into_bytes())
}

/// Two layers pushed into `repo`, as the engine pushes them before the manifest.
async fn layers(server: &TestServer, repo: &str) -> Vec<String> {
    vec![
        server.push_blob(repo, b"layer one").await,
        server.push_blob(repo, b"layer two").await,
    ]
}

/// A manifest PUT as engine 1.9 makes it; `content_type` None as engines
/// before the schema 2 client sent none.
async fn put(
    server: &TestServer,
    repo: &str,
    reference: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = engine(
        server
            .client
            .put(server.at(&format!("/v2/{repo}/manifests/{reference}"))),
    );
    if let Some(t) = content_type {
        req = req.header(header::CONTENT_TYPE, t);
    }
    req.body(body).send().await.unwrap()
}

async fn get(server: &TestServer, repo: &str, reference: &str, head: bool) -> reqwest::Response {
    let url = server.at(&format!("/v2/{repo}/manifests/{reference}"));
    let req = if head {
        server.client.head(url)
    } else {
        server.client.get(url)
    };
    engine(req).send().await.unwrap()
}

fn header_str<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

/// Asserts a refused push: 400 with `code`, and neither the tag nor the
/// payload's digest names anything afterwards.
async fn assert_refused(
    server: &TestServer,
    repo: &str,
    body: Vec<u8>,
    payload: &[u8],
    code: &str,
) {
    let r = put(server, repo, "latest", Some(SIGNED), body).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, code);
    for reference in ["latest".to_owned(), sha256(payload)] {
        let r = get(server, repo, &reference, false).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{reference} stored");
    }
}

#[tokio::test]
async fn signed_push_is_served_as_pushed_by_tag_and_by_payload_digest() {
    let server = TestServer::start().await;
    let repo = "legacy/app";
    let layers = layers(&server, repo).await;
    let (body, payload) = sign(&manifest(repo, "latest", &layers), "ES256");
    let digest = sha256(&payload);
    assert_ne!(digest, sha256(&body));

    let r = put(&server, repo, "latest", Some(SIGNED), body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header_str(&r, "docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(
        header_str(&r, "location"),
        Some(format!("/v2/{repo}/manifests/{digest}").as_str())
    );

    for reference in ["latest", digest.as_str()] {
        let r = get(&server, repo, reference, true).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header_str(&r, "content-type"), Some(SIGNED));
        assert_eq!(
            header_str(&r, "docker-content-digest"),
            Some(digest.as_str())
        );
        assert_eq!(
            header_str(&r, "content-length"),
            Some(body.len().to_string().as_str())
        );
        let r = get(&server, repo, reference, false).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header_str(&r, "content-type"), Some(SIGNED));
        assert_eq!(
            header_str(&r, "docker-content-digest"),
            Some(digest.as_str())
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    }

    // Tags list it; a schema 1 manifest has no subject, so no referrers.
    let tags: Value = server.get_json(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(tags["tags"], json!(["latest"]));
    let referrers: Value = server
        .get_json(&format!("/v2/{repo}/referrers/{digest}"))
        .await;
    assert_eq!(referrers["manifests"], json!([]));

    // A PUT by digest must name the payload, not the signed bytes.
    let r = put(&server, repo, &sha256(&body), Some(SIGNED), body.clone()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = put(&server, repo, &digest, Some(SIGNED), body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // Deleting by digest removes it and its tag.
    let r = server
        .client
        .delete(server.at(&format!("/v2/{repo}/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for reference in ["latest", digest.as_str()] {
        assert_eq!(
            get(&server, repo, reference, false).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn push_without_content_type_is_schema_1_by_its_shape() {
    let server = TestServer::start().await;
    let repo = "legacy/plain";
    let layers = layers(&server, repo).await;
    let (body, payload) = sign(&manifest(repo, "v1", &layers), "ES256");
    let r = put(&server, repo, "v1", None, body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header_str(&r, "docker-content-digest"),
        Some(sha256(&payload).as_str())
    );
    let r = get(&server, repo, "v1", false).await;
    assert_eq!(header_str(&r, "content-type"), Some(SIGNED));
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test]
async fn refusals_store_nothing() {
    let server = TestServer::start().await;
    let repo = "legacy/refused";
    let layers = layers(&server, repo).await;
    let good = manifest(repo, "latest", &layers);

    // Altered after signing.
    let (body, payload) = sign(&good, "ES256");
    let tampered = String::from_utf8(body)
        .unwrap()
        .replacen("\"amd64\"", "\"arm64\"", 1)
        .into_bytes();
    assert_refused(&server, repo, tampered, &payload, "MANIFEST_INVALID").await;

    // alg none.
    let (body, payload) = sign(&good, "none");
    assert_refused(&server, repo, body, &payload, "MANIFEST_INVALID").await;

    // No fsLayers.
    let mut empty = good.clone();
    empty["fsLayers"] = json!([]);
    empty["history"] = json!([]);
    let (body, payload) = sign(&empty, "ES256");
    assert_refused(&server, repo, body, &payload, "MANIFEST_INVALID").await;

    // A layer never pushed.
    let mut unknown = layers.clone();
    unknown.push(sha256(b"never pushed"));
    let (body, payload) = sign(&manifest(repo, "latest", &unknown), "ES256");
    assert_refused(&server, repo, body, &payload, "MANIFEST_BLOB_UNKNOWN").await;

    // Named for another repository.
    let (body, payload) = sign(&manifest("legacy/other", "latest", &layers), "ES256");
    assert_refused(&server, repo, body, &payload, "MANIFEST_INVALID").await;
}

#[tokio::test]
async fn schema_1_only_client_is_told_the_image_is_schema_2() {
    let server = TestServer::start().await;
    let repo = "modern/app";
    let config = server.push_blob(repo, b"{}").await;
    let layer = server.push_blob(repo, b"layer").await;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer, "size": 5}],
    }))
    .unwrap();
    let r = server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/latest")))
        .header(header::CONTENT_TYPE, DOCKER_MANIFEST)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = get(&server, repo, "latest", false).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let message = error["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("schema 2 / OCI") && message.contains("accepts only Docker schema 1"),
        "{message}"
    );
    assert_eq!(error["errors"][0]["detail"]["mediaType"], DOCKER_MANIFEST);
}
