//! Repository globs are matched in time linear in the name: a policy with
//! many `**` and a client's longest name still answer a token request at once.

use crate::common;

use std::time::Duration;

use common::process::ServerProcess;
use reqwest::StatusCode;
use serde_json::Value;

// The server is a child process, so a stalled match fails this test at the
// client's timeout instead of hanging the test's own runtime.
#[tokio::test]
async fn many_double_stars_do_not_stall_a_token_request() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("10-globs.toml"),
        r#"
[[rule]]
description = "a pattern that needs a `b` after many `a`s"
anonymous = true
repositories = ["**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/b"]
actions = ["pull"]
"#,
    )
    .unwrap();
    let config = dir.path().join("portcullis.toml");
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(
        &config,
        format!(
            "[storage]\nroot = {:?}\n[token]\nkey_dir = {:?}\n[users]\nfile = {:?}\n[policy]\ndir = {:?}\n",
            path("data"),
            path("certs"),
            path("users.toml"),
            path("policies"),
        ),
    )
    .unwrap();
    let server = ServerProcess::start_with(&["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    // The longest name there is, and one the pattern matches.
    let refused = vec!["a"; 128].join("/");
    assert_eq!(refused.len(), 255);
    let granted = format!("{}/b", vec!["a"; 126].join("/"));
    for (name, actions) in [(refused, vec![]), (granted, vec!["pull"])] {
        let response = client
            .get(server.at(&format!(
                "/token?service=portcullis&scope=repository:{name}:pull"
            )))
            // The property is about time: trying every split of the name
            // takes hours, the matcher microseconds.
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the token request is answered promptly");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        let claims = common::token_claims(&body);
        let granted: Vec<&str> = claims["access"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["name"] == name.as_str())
            .flat_map(|a| a["actions"].as_array().unwrap())
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(granted, actions, "{name}");
    }
}
