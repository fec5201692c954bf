//! The v1 proxy at the edges of the legacy backend: a backend that accepts
//! and never answers is unavailable after the configured wait, in words
//! that name no backend address.
//!
//! The failing backend is a plain listener on `127.0.0.1:0`: not a model of
//! the legacy registry, but the failure itself (a process that stopped
//! answering).

use crate::common;

use std::time::Duration;

use common::TestServer;
use reqwest::StatusCode;

/// How long a test waits for an answer that must come before it fails
/// instead of hanging: well over the 1 s backend timeout the tests set.
const PATIENCE: Duration = Duration::from_secs(30);

/// A backend that accepts connections and never writes a byte, holding
/// them open for as long as the test runs; its port.
async fn silent_backend() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

/// Fails when a header or the body of `response` names `port`; the body.
async fn assert_names_no_port(port: u16, response: reqwest::Response) -> String {
    let port = port.to_string();
    for (name, value) in response.headers() {
        let value = value.to_str().unwrap_or("");
        assert!(!value.contains(&port), "{name}: {value} names the backend");
    }
    let body = response.text().await.unwrap();
    assert!(!body.contains(&port), "the body names the backend: {body}");
    body
}

/// The head wait of proxied calls and of Portcullis' own lookups (a pull
/// start reads the tags' ancestries) is bounded by `backend_timeout_secs`.
#[tokio::test]
async fn a_backend_that_never_answers_is_unavailable_after_the_timeout() {
    let port = silent_backend().await;
    let url = format!("http://127.0.0.1:{port}");
    let s = TestServer::start_configured(tempfile::tempdir().unwrap(), |c| {
        c.auth.enabled = false;
        c.v1.backend = Some(url);
        c.v1.backend_timeout_secs = 1;
    })
    .await;
    let client = reqwest::Client::new();
    for path in [
        "/v1/repositories/library/app/tags",
        "/v1/repositories/library/app/images",
    ] {
        let res = tokio::time::timeout(PATIENCE, client.get(s.at(path)).send())
            .await
            .expect("an answer within the backend timeout")
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let body = assert_names_no_port(port, res).await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{path}: {body}");
    }
}
