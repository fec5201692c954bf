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
    assert_eq!(all.len(), 6, "reads are not audited: {all:#?}");
}
