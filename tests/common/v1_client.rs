//! An old engine's v1 calls, for the tests: a push in the request order of
//! Docker engines 1.5–1.9 (`registry/session.go` of those releases), each
//! step asserting the status an engine needs to go on.

use reqwest::StatusCode;

use super::sha256;

/// An image pushed over v1 to `base` as engines 1.5–1.9 do: `auth` on the
/// first call (`X-Docker-Token: true`), the token it returned after: the
/// image JSON, its layer, its checksum, then the tag `latest`.
pub struct Pushed {
    pub id: String,
    pub layer: Vec<u8>,
}

pub async fn push(client: &reqwest::Client, base: &str, auth: &str, repo: &str) -> Pushed {
    // A v1 image id is 64 hex digits, random as engines make them.
    let id = sha256(uuid::Uuid::new_v4().as_bytes())["sha256:".len()..].to_owned();
    let json = serde_json::json!({"id": id, "created": "2015-02-10T00:00:00Z", "os": "linux"});
    let json = serde_json::to_vec(&json).unwrap();
    let layer: Vec<u8> = format!("layer of {id}").into_bytes().repeat(100);
    let res = client
        .put(format!("{base}/v1/repositories/{repo}/"))
        .header("authorization", auth)
        .header("x-docker-token", "true")
        .json(&serde_json::json!([{"id": id}]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "push start");
    let token = format!(
        "Token {}",
        res.headers()["x-docker-token"].to_str().unwrap()
    );
    let payload = {
        let mut bytes = json.clone();
        bytes.push(b'\n');
        bytes.extend_from_slice(&layer);
        sha256(&bytes)
    };
    for (part, body, extra) in [
        ("json", json.clone(), None),
        ("layer", layer.clone(), None),
        ("checksum", Vec::new(), Some(payload)),
    ] {
        let mut request = client
            .put(format!("{base}/v1/images/{id}/{part}"))
            .header("authorization", &token)
            .body(body);
        if let Some(payload) = extra {
            request = request
                .header("x-docker-checksum", "tarsum+sha256:unused")
                .header("x-docker-checksum-payload", payload);
        }
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "PUT {part}");
    }
    let res = client
        .put(format!("{base}/v1/repositories/{repo}/tags/latest"))
        .header("authorization", &token)
        .json(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "PUT tag");
    Pushed { id, layer }
}
