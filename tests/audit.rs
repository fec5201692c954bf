//! The audit trail from outside: a server with `[audit] file` answers
//! token requests, pushes, a tag move, deletes and refusals, and every line
//! of the file parses as JSON with the documented fields and no secret.

use crate::common;

use std::time::{Duration, Instant};

use common::{TestServer, sha256};
use portcullis::auth::users::hash_password;
use serde_json::Value;

const PASSWORD: &str = "alice-pw";

/// The file's lines once it holds at least `n` (the writer is a task of
/// its own); panics with what it holds after a while.
fn lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} lines:\n{text}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn find<'a>(lines: &'a [Value], event: &str, result: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["event"] == event && l["result"] == result)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn decisions_and_changes_are_audited_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        format!(
            "[users.alice]\npassword = {:?}\n",
            hash_password(PASSWORD).unwrap()
        ),
    )
    .unwrap();
    common::process::copy_project_policies(dir.path());
    let file = dir.path().join("audit.jsonl");
    let audit_file = file.clone();
    let s = TestServer::start_configured(dir, move |config| {
        config.audit.file = Some(audit_file);
    })
    .await;
    let token = s
        .token("alice", "repository:alice/app:pull,push,delete")
        .await;
    let wrong = s
        .client
        .get(s.at("/token?service=portcullis&scope=repository:alice/app:pull"))
        .basic_auth("alice", Some("not-the-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // A blob and a manifest pushed (the tag `v1` moved to it), then deleted.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let digest = sha256(config);
    let pushed = s
        .client
        .post(s.at(&format!("/v2/alice/app/blobs/uploads/?digest={digest}")))
        .bearer_auth(&token)
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 201);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest, "size": config.len()},
        "layers": [],
    })
    .to_string();
    let put = s
        .client
        .put(s.at("/v2/alice/app/manifests/v1"))
        .bearer_auth(&token)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let manifest_digest = sha256(manifest.as_bytes());
    let deleted = s
        .client
        .delete(s.at(&format!("/v2/alice/app/manifests/{manifest_digest}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202);
    // Refused at enforcement: a token for alice/app does not cover bob/app.
    let refused = s
        .client
        .get(s.at("/v2/bob/app/tags/list"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // Reads say nothing.
    let read = s
        .client
        .get(s.at(&format!("/v2/alice/app/blobs/{digest}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);

    let all = lines(&file, 6);
    let text = std::fs::read_to_string(&file).unwrap();
    for secret in [PASSWORD, "not-the-password", &token[..]] {
        assert!(
            !text.contains(secret),
            "a secret in the audit trail:\n{text}"
        );
    }
    for line in &all {
        assert!(
            line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
    }
    let granted = find(&all, "token", "granted");
    assert_eq!(granted.len(), 1, "{all:#?}");
    assert_eq!(granted[0]["user"], "alice");
    assert_eq!(granted[0]["source"], "file");
    assert_eq!(granted[0]["credential"], "password");
    assert_eq!(granted[0]["addr"], "127.0.0.1");
    assert_eq!(granted[0]["asked"], "repository:alice/app:pull,push,delete");
    assert_eq!(
        granted[0]["granted"],
        "repository:alice/app:pull,push,delete"
    );
    let refusal = find(&all, "token", "refused");
    assert_eq!(refusal.len(), 1, "{all:#?}");
    assert_eq!(refusal[0]["status"], 401);
    assert_eq!(refusal[0]["reason"], "wrong password");

    let blob = find(&all, "blob_push", "ok");
    assert_eq!(blob.len(), 1, "{all:#?}");
    assert_eq!(blob[0]["repository"], "alice/app");
    assert_eq!(blob[0]["digest"], digest.as_str());
    assert_eq!(blob[0]["user"], "alice");
    let push = find(&all, "push", "ok");
    assert_eq!(push.len(), 1, "{all:#?}");
    assert_eq!(push[0]["tag"], "v1");
    assert_eq!(push[0]["digest"], manifest_digest.as_str());
    let delete = find(&all, "delete", "ok");
    assert_eq!(delete.len(), 1, "{all:#?}");
    assert_eq!(delete[0]["reference"], manifest_digest.as_str());
    let enforced = find(&all, "refused", "refused");
    assert_eq!(enforced.len(), 1, "{all:#?}");
    assert_eq!(enforced[0]["repository"], "bob/app");
    assert_eq!(enforced[0]["route"], "v2_tags");
    assert_eq!(enforced[0]["reason"], "UNAUTHORIZED");
    // Whom it refused: the token's subject.
    assert_eq!(enforced[0]["user"], "alice");
    assert_eq!(all.len(), 6, "reads are not audited: {all:#?}");
}

/// The legacy v1 protocol's changes are in the trail too (the real legacy
/// registry behind Portcullis): a push (its layers and its tag), a tag
/// deleted, and a push refused.
#[tokio::test(flavor = "multi_thread")]
async fn v1_pushes_and_deletes_are_audited() {
    use common::legacy_v1::LegacyV1;
    use common::v1_client;
    let backend = LegacyV1::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        format!(
            "[users.alice]\npassword = {:?}\n\n[users.bob]\npassword = {:?}\n",
            hash_password(PASSWORD).unwrap(),
            hash_password("bob-pw").unwrap(),
        ),
    )
    .unwrap();
    common::process::copy_project_policies(dir.path());
    let file = dir.path().join("audit.jsonl");
    let (audit_file, url) = (file.clone(), backend.url());
    let s = TestServer::start_configured(dir, move |config| {
        config.audit.file = Some(audit_file);
        config.v1.backend = Some(url);
    })
    .await;
    let basic = |user: &str, password: &str| {
        use data_encoding::BASE64;
        format!(
            "Basic {}",
            BASE64.encode(format!("{user}:{password}").as_bytes())
        )
    };
    let alice = basic("alice", PASSWORD);
    let image = v1_client::push_one(&s.url, &alice, "alice/legacy").await;
    let deleted = s
        .client
        .delete(s.at("/v1/repositories/alice/legacy/tags/latest"))
        .header("authorization", &alice)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let mut bob = v1_client::Engine::new(
        &s.url,
        &basic("bob", "bob-pw"),
        v1_client::Auth::BasicEverywhere,
    );
    assert_eq!(
        bob.start_push("alice/legacy", &[]).await,
        reqwest::StatusCode::FORBIDDEN
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let found = lines(&file, 1);
        if find(&found, "refused", "refused")
            .iter()
            .any(|l| l["route"] == "v1" && l["user"] == "bob")
        {
            break found;
        }
        assert!(Instant::now() < deadline, "no refusal of bob: {found:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let v1 = |event: &str| -> Vec<&Value> {
        find(&lines, event, "ok")
            .into_iter()
            .filter(|l| l["route"] == "v1")
            .collect()
    };
    let pushed = v1("push");
    assert_eq!(pushed.len(), 1, "{lines:?}");
    assert_eq!(pushed[0]["repository"], "alice/legacy");
    assert_eq!(pushed[0]["tag"], "latest");
    assert_eq!(pushed[0]["user"], "alice");
    let layers = v1("blob_push");
    assert!(
        layers.iter().any(|l| l["reference"] == image.id.as_str()),
        "the layer of {}: {layers:?}",
        image.id
    );
    let deleted = v1("delete");
    assert_eq!(deleted.len(), 1, "{lines:?}");
    assert_eq!(deleted[0]["repository"], "alice/legacy");
    assert_eq!(deleted[0]["reference"], "latest");
    let text = std::fs::read_to_string(&file).unwrap();
    for secret in [PASSWORD, "bob-pw", alice.as_str()] {
        assert!(!text.contains(secret), "{secret} in the trail");
    }
}
