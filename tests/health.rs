//! `/healthz` (liveness) and `/readyz` (readiness): answered without a
//! token, to `GET` and `HEAD`; readiness follows the storage root.

use crate::common;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    // The default configuration: authentication on.
    let server = TestServer::start_configured(tempfile::tempdir().unwrap(), |_| {}).await;
    let client = &server.client;
    let probe = client.get(server.at("/v2/")).send().await.unwrap();
    assert_eq!(probe.status(), StatusCode::UNAUTHORIZED, "auth is on");

    for path in ["/healthz", "/readyz"] {
        let res = client.get(server.at(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "GET {path}");
        assert_eq!(common::header_str(&res, "cache-control"), "no-store");
        let body: Value = res.json().await.unwrap();
        assert!(body["status"].is_string(), "GET {path}: {body}");

        let res = client.head(server.at(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "HEAD {path}");
        assert!(res.bytes().await.unwrap().is_empty(), "HEAD {path} body");
    }
}

#[tokio::test]
async fn readiness_fails_while_the_storage_root_is_gone() {
    let server = TestServer::start().await;
    let client = &server.client;
    let ready = client.get(server.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    std::fs::remove_dir_all(server.dir.path().join("data")).unwrap();
    let res = client.get(server.at("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "not ready", "{body}");
    let problems = body["problems"].to_string();
    assert!(problems.contains("storage: the root is missing"), "{body}");
    assert!(
        !problems.contains(server.dir.path().to_str().unwrap()),
        "no path in the answer: {body}"
    );
    let res = client.head(server.at("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "HEAD");

    // Alive all the same: restarting would not bring the storage back.
    let res = client.get(server.at("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // A root that is back (an NFS mount returning) makes it ready again.
    std::fs::create_dir(server.dir.path().join("data")).unwrap();
    let res = client.get(server.at("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
