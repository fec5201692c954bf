//! The legacy v1 registry harness (`common::legacy_v1`) against the real
//! docker-registry 0.9.1, without Portcullis: what it is and the quirks a
//! gateway in front of it must make up for.

use crate::common;

use common::legacy_v1::LegacyV1;
use common::v1_client;
use reqwest::StatusCode;

#[tokio::test]
async fn it_serves_a_push_keeps_it_across_a_restart_and_binds_no_image_to_a_repository() {
    let mut legacy = LegacyV1::start();
    let client = reqwest::Client::new();
    let ping = client
        .get(format!("{}/v1/_ping", legacy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), StatusCode::OK);
    assert_eq!(ping.headers()["x-docker-registry-standalone"], "True");
    // What Portcullis must not pass on: the ping names the backend's
    // address (its command line) and software.
    let body = ping.text().await.unwrap();
    assert!(
        body.contains(&format!("127.0.0.1:{}", legacy.port())),
        "{body}"
    );

    // Standalone: no credentials are checked at all.
    let image = v1_client::push_one(&legacy.url(), "Basic eDp5", "alice/app").await;
    let layer_url = format!("/v1/images/{}/layer", image.id);
    let layer = async |base: String| {
        let res = client
            .get(format!("{base}{layer_url}"))
            .send()
            .await
            .unwrap();
        (res.status(), res.bytes().await.unwrap().to_vec())
    };
    // No image belongs to a repository: anyone reads any layer by its id,
    // which is why the gateway keeps bindings.
    assert_eq!(
        layer(legacy.url()).await,
        (StatusCode::OK, image.layer.clone())
    );

    legacy.restart();
    // A new client: the old one's pooled connection died with the process.
    let client = reqwest::Client::new();
    let res = client
        .get(format!("{}{layer_url}", legacy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().to_vec(), image.layer);
    let tags: serde_json::Value = client
        .get(format!("{}/v1/repositories/alice/app/tags", legacy.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["latest"], image.id.as_str());
}
