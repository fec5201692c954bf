//! Routing by engine version (`v1.v1_only_engines_below`), against the real
//! server: an old engine is told there is no v2, so it stays on v1, and
//! every other client is served v2 as before. The backend is never asked
//! here (the ping is answered by Portcullis), so none runs.

use crate::common;

use common::TestServer;
use reqwest::StatusCode;

const ENGINE_1_9: &str =
    "docker/1.9.1 go/go1.4.3 git-commit/a34a1d5 kernel/4.19.0 os/linux arch/amd64";
const ENGINE_1_10: &str =
    "docker/1.10.3 go/go1.5.3 git-commit/20f81dd kernel/4.19.0 os/linux arch/amd64";

#[tokio::test]
async fn engines_below_the_bound_are_kept_on_v1_and_the_others_get_v2() {
    let dir = tempfile::tempdir().unwrap();
    common::process::copy_project_policies(dir.path());
    let s = TestServer::start_configured(dir, |c| {
        // A port nothing listens on: nothing here may reach the backend.
        c.v1.backend = Some("http://127.0.0.1:9".to_owned());
        c.v1.v1_only_engines_below = Some("1.10".to_owned());
    })
    .await;
    let client = reqwest::Client::new();
    let probe = |agent: Option<&'static str>| {
        let mut request = client.get(s.at("/v2/"));
        if let Some(agent) = agent {
            request = request.header("user-agent", agent);
        }
        request.send()
    };
    let old = probe(Some(ENGINE_1_9)).await.unwrap();
    assert_eq!(old.status(), StatusCode::NOT_FOUND);
    assert!(
        old.headers()
            .get("docker-distribution-api-version")
            .is_none(),
        "an old engine must not read this 404 as v2"
    );
    for agent in [Some(ENGINE_1_10), Some("skopeo/1.9.3"), None] {
        let res = probe(agent).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{agent:?}");
        assert_eq!(
            res.headers()["docker-distribution-api-version"],
            "registry/2.0"
        );
    }
    // Kept on v1 everywhere under /v2/, not only the probe.
    let res = client
        .get(s.at("/v2/library/busybox/manifests/latest"))
        .header("user-agent", ENGINE_1_9)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = client
        .get(s.at("/v1/_ping"))
        .header("user-agent", ENGINE_1_9)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-docker-registry-standalone"], "True");
}
