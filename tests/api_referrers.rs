//! The referrers API over HTTP: manifests whose `subject` names a digest,
//! listed as an OCI image index, with `artifactType` filtering.

use crate::common;

use common::{TestServer, sha256};
use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};
use sha2::Digest as _;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const SBOM: &str = "application/vnd.example.sbom.v1";
const SIGNATURE: &str = "application/vnd.example.signature.v1";

fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

async fn push_blob(server: &TestServer, repo: &str, media_type: &str, data: &[u8]) -> Value {
    let digest = server.push_blob(repo, data).await;
    json!({"mediaType": media_type, "digest": digest, "size": data.len()})
}

/// Pushes `manifest` by its digest and returns that digest and the bytes.
async fn push(server: &TestServer, repo: &str, manifest: Value) -> (String, Vec<u8>) {
    let body = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256(&body);
    let media_type = manifest["mediaType"].as_str().unwrap();
    let r = server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/{digest}")))
        .header(header::CONTENT_TYPE, media_type)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "push into {repo}");
    if let Some(subject) = manifest.get("subject") {
        assert_eq!(
            r.headers().get("oci-subject").unwrap(),
            subject["digest"].as_str().unwrap()
        );
    }
    (digest, body)
}

/// An artifact manifest: the empty config, one small layer, optional fields.
async fn artifact(
    server: &TestServer,
    repo: &str,
    subject: Option<Value>,
    artifact_type: Option<&str>,
    annotations: Option<Value>,
    seed: &str,
) -> Value {
    let config = push_blob(server, repo, EMPTY_CONFIG, b"{}").await;
    let layer = push_blob(server, repo, "application/octet-stream", seed.as_bytes()).await;
    let mut m =
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]});
    if let Some(s) = subject {
        m["subject"] = s;
    }
    if let Some(t) = artifact_type {
        m["artifactType"] = json!(t);
    }
    if let Some(a) = annotations {
        m["annotations"] = a;
    }
    m
}

fn descriptor(media_type: &str, digest: &str, body: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": body.len()})
}

async fn referrers(server: &TestServer, repo: &str, subject: &str, query: &str) -> Response {
    server
        .client
        .get(server.at(&format!("/v2/{repo}/referrers/{subject}{query}")))
        .send()
        .await
        .unwrap()
}

/// Checks the response is the spec's index and returns its descriptors,
/// sorted by digest (the spec gives the list no order).
async fn index_entries(r: Response) -> Vec<Value> {
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers().get(header::CONTENT_TYPE).unwrap(),
        OCI_INDEX,
        "referrers are an OCI index"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["schemaVersion"], 2);
    assert_eq!(body["mediaType"], OCI_INDEX);
    let mut entries = body["manifests"]
        .as_array()
        .expect("manifests array")
        .clone();
    entries.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    entries
}

fn sorted(mut entries: Vec<Value>) -> Vec<Value> {
    entries.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    entries
}

#[tokio::test]
async fn unknown_subjects_have_an_empty_list() {
    let server = TestServer::start().await;
    let repo = "ref/empty";
    let subject = artifact(&server, repo, None, None, None, "s").await;
    let (digest, _) = push(&server, repo, subject).await;

    // A pushed manifest with no referrers, a digest never seen, a sha512
    // digest, and a repository that does not exist: all an empty index.
    for (repo, subject) in [
        (repo, digest.clone()),
        (repo, sha256(b"never pushed")),
        (repo, sha512(b"never pushed")),
        ("ref/nowhere", digest.clone()),
    ] {
        let r = referrers(&server, repo, &subject, "").await;
        assert!(r.headers().get("oci-filters-applied").is_none());
        assert_eq!(
            index_entries(r).await,
            Vec::<Value>::new(),
            "{repo} {subject}"
        );
    }
}

#[tokio::test]
async fn invalid_subject_digests_are_400() {
    let server = TestServer::start().await;
    for subject in [
        "sha256:abc",
        "latest",
        "sha256:ZZZZ",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ] {
        let r = referrers(&server, "ref/bad", subject, "").await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{subject}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DIGEST_INVALID", "{subject}");
    }
    let r = server
        .client
        .delete(server.at(&format!("/v2/ref/bad/referrers/{}", sha256(b"x"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn entries_carry_artifact_type_and_annotations() {
    let server = TestServer::start().await;
    let repo = "ref/entries";
    let (subject_digest, subject_body) = push(
        &server,
        repo,
        artifact(&server, repo, None, None, None, "subject").await,
    )
    .await;
    let subject = descriptor(OCI_MANIFEST, &subject_digest, &subject_body);

    // 1. An artifact with its own artifactType and annotations.
    let sbom_annotations = json!({"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "org.example.format": "json"});
    let m = artifact(
        &server,
        repo,
        Some(subject.clone()),
        Some(SBOM),
        Some(sbom_annotations.clone()),
        "sbom",
    )
    .await;
    let (sbom_digest, sbom_body) = push(&server, repo, m).await;

    // 2. An image manifest without artifactType: the config's media type stands in.
    let config = push_blob(
        &server,
        repo,
        "application/vnd.example.sig.config.v1+json",
        b"sig",
    )
    .await;
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [], "subject": subject});
    let (sig_digest, sig_body) = push(&server, repo, m).await;

    // 3. An index with an artifactType and 4. one without (which then has none).
    let m = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": SIGNATURE,
        "manifests": [descriptor(OCI_MANIFEST, &sig_digest, &sig_body)], "subject": subject,
        "annotations": {"k": "v"}});
    let (typed_index_digest, typed_index_body) = push(&server, repo, m).await;
    let m =
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "subject": subject});
    let (plain_index_digest, plain_index_body) = push(&server, repo, m).await;

    // A manifest referring to something else is not listed.
    let other = json!({"mediaType": OCI_MANIFEST, "digest": sha256(b"other"), "size": 5});
    let m = artifact(&server, repo, Some(other), Some(SBOM), None, "other").await;
    push(&server, repo, m).await;

    let entries = index_entries(referrers(&server, repo, &subject_digest, "").await).await;
    let want = sorted(vec![
        json!({"mediaType": OCI_MANIFEST, "digest": sbom_digest, "size": sbom_body.len(),
            "artifactType": SBOM, "annotations": sbom_annotations}),
        json!({"mediaType": OCI_MANIFEST, "digest": sig_digest, "size": sig_body.len(),
            "artifactType": "application/vnd.example.sig.config.v1+json"}),
        json!({"mediaType": OCI_INDEX, "digest": typed_index_digest, "size": typed_index_body.len(),
            "artifactType": SIGNATURE, "annotations": {"k": "v"}}),
        json!({"mediaType": OCI_INDEX, "digest": plain_index_digest, "size": plain_index_body.len()}),
    ]);
    assert_eq!(entries, want);
}

#[tokio::test]
async fn empty_artifact_type_is_treated_as_missing() {
    // Spec: "If the artifactType is empty or missing in the image manifest,
    // the value of artifactType MUST be set to the config descriptor
    // mediaType value. If the artifactType is empty or missing in an index,
    // the artifactType MUST be omitted."
    let server = TestServer::start().await;
    let repo = "ref/emptytype";
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": sha256(b"subject"), "size": 7});
    let config = push_blob(&server, repo, OCI_CONFIG, b"{\"a\":1}").await;
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "",
        "config": config, "layers": [], "subject": subject});
    let (image_digest, _) = push(&server, repo, m).await;
    let m = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "",
        "manifests": [], "subject": subject});
    let (index_digest, _) = push(&server, repo, m).await;

    let entries = index_entries(referrers(&server, repo, &sha256(b"subject"), "").await).await;
    let by_digest = |d: &str| entries.iter().find(|e| e["digest"] == d).unwrap().clone();
    assert_eq!(by_digest(&image_digest)["artifactType"], OCI_CONFIG);
    assert!(
        by_digest(&index_digest).get("artifactType").is_none(),
        "{entries:?}"
    );
}

#[tokio::test]
async fn artifact_type_filter() {
    let server = TestServer::start().await;
    let repo = "ref/filter";
    let subject_digest = sha256(b"filtered subject");
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": 16});
    let (sbom1, _) = push(
        &server,
        repo,
        artifact(&server, repo, Some(subject.clone()), Some(SBOM), None, "s1").await,
    )
    .await;
    let (sbom2, _) = push(
        &server,
        repo,
        artifact(&server, repo, Some(subject.clone()), Some(SBOM), None, "s2").await,
    )
    .await;
    let (sig, _) = push(
        &server,
        repo,
        artifact(
            &server,
            repo,
            Some(subject.clone()),
            Some(SIGNATURE),
            None,
            "g",
        )
        .await,
    )
    .await;

    let digests = |entries: Vec<Value>| {
        let mut d: Vec<String> = entries
            .iter()
            .map(|e| e["digest"].as_str().unwrap().to_owned())
            .collect();
        d.sort();
        d
    };
    let mut want_sboms = vec![sbom1.clone(), sbom2.clone()];
    want_sboms.sort();

    // Unfiltered: all three, no OCI-Filters-Applied.
    let r = referrers(&server, repo, &subject_digest, "").await;
    assert!(r.headers().get("oci-filters-applied").is_none());
    assert_eq!(index_entries(r).await.len(), 3);

    // The filter value plain and percent-encoded.
    for query in [
        format!("?artifactType={SBOM}"),
        "?artifactType=application%2Fvnd.example.sbom.v1".to_owned(),
    ] {
        let r = referrers(&server, repo, &subject_digest, &query).await;
        assert_eq!(
            r.headers().get("oci-filters-applied").unwrap(),
            "artifactType"
        );
        assert_eq!(digests(index_entries(r).await), want_sboms, "{query}");
    }
    let r = referrers(
        &server,
        repo,
        &subject_digest,
        &format!("?artifactType={SIGNATURE}"),
    )
    .await;
    assert_eq!(
        r.headers().get("oci-filters-applied").unwrap(),
        "artifactType"
    );
    assert_eq!(digests(index_entries(r).await), vec![sig]);

    // A filter matching nothing is still an applied filter over an empty list.
    let r = referrers(
        &server,
        repo,
        &subject_digest,
        "?artifactType=application/x-none",
    )
    .await;
    assert_eq!(
        r.headers().get("oci-filters-applied").unwrap(),
        "artifactType"
    );
    assert_eq!(index_entries(r).await, Vec::<Value>::new());
}

#[tokio::test]
async fn sha512_subjects() {
    let server = TestServer::start().await;
    let repo = "ref/sha512";
    // The subject is pushed by its sha512 digest and referred to by it.
    let subject_manifest = artifact(&server, repo, None, None, None, "subject512").await;
    let subject_body = serde_json::to_vec(&subject_manifest).unwrap();
    let subject_digest = sha512(&subject_body);
    let r = server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/{subject_digest}")))
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .body(subject_body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let subject = descriptor(OCI_MANIFEST, &subject_digest, &subject_body);
    let (referrer, referrer_body) = push(
        &server,
        repo,
        artifact(&server, repo, Some(subject), Some(SBOM), None, "r").await,
    )
    .await;

    let entries = index_entries(referrers(&server, repo, &subject_digest, "").await).await;
    assert_eq!(
        entries,
        vec![
            json!({"mediaType": OCI_MANIFEST, "digest": referrer, "size": referrer_body.len(), "artifactType": SBOM})
        ]
    );
    // The same content under its sha256 digest has no referrers: subjects are
    // matched by the digest the referrer named.
    let entries = index_entries(referrers(&server, repo, &sha256(&subject_body), "").await).await;
    assert!(entries.is_empty());
}

#[tokio::test]
async fn referrers_belong_to_their_repository_and_follow_deletes() {
    let server = TestServer::start().await;
    let repo = "ref/owner";
    let subject_digest = sha256(b"shared subject");
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": 14});
    let (kept, _) = push(
        &server,
        repo,
        artifact(
            &server,
            repo,
            Some(subject.clone()),
            Some(SBOM),
            None,
            "kept",
        )
        .await,
    )
    .await;
    let m = artifact(
        &server,
        repo,
        Some(subject.clone()),
        Some(SIGNATURE),
        None,
        "gone",
    )
    .await;
    let body = serde_json::to_vec(&m).unwrap();
    let gone = sha256(&body);
    // Pushed by tag this time.
    let r = server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/sig")))
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers().get("oci-subject").unwrap(),
        subject_digest.as_str()
    );

    // Another repository referring to the same digest sees only its own.
    let (elsewhere, _) = push(
        &server,
        "ref/other",
        artifact(&server, "ref/other", Some(subject), Some(SBOM), None, "x").await,
    )
    .await;
    let entries = index_entries(referrers(&server, "ref/other", &subject_digest, "").await).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["digest"], elsewhere);
    assert_eq!(
        index_entries(referrers(&server, repo, &subject_digest, "").await)
            .await
            .len(),
        2
    );

    // Deleting the tag leaves the manifest, so it stays a referrer.
    let r = server
        .client
        .delete(server.at(&format!("/v2/{repo}/manifests/sig")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        index_entries(referrers(&server, repo, &subject_digest, "").await)
            .await
            .len(),
        2
    );

    // Deleting the manifest removes it from the list.
    let r = server
        .client
        .delete(server.at(&format!("/v2/{repo}/manifests/{gone}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let entries = index_entries(referrers(&server, repo, &subject_digest, "").await).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["digest"], kept);

    // And the list survives a restart.
    let dir = server.stop().await;
    let server = TestServer::start_in(dir).await;
    let entries = index_entries(referrers(&server, repo, &subject_digest, "").await).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["digest"], kept);
}
