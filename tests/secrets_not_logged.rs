//! The server's log never holds a credential: the real binary, logging at
//! `trace`, goes through every way a secret reaches it (Basic credentials
//! on `GET /token`, a password and a refresh token in `POST /token` forms,
//! bearer tokens on `/v2/`, a wrong password, a forged bearer and refresh
//! token), and its whole log is then searched for each secret and its
//! encodings. The lines that tell each request (`token issued`, `token
//! refused`, `request refused`) are among those searched.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::process::{ServerProcess, copy_project_policies, run_in};

use data_encoding::BASE64;
use serde_json::Value;

const PASSWORD: &str = "s3cret-Pa55word-never-logged";
const WRONG: &str = "wr0ng-Pa55word-never-logged";

/// `portcullis serve` in `dir` on the embedded default (users, policies,
/// keys and data relative to it), everything logged to `log`.
fn serve(dir: &Path, log: &Path) -> ServerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("PORTCULLIS_LOG", "trace")
        .stderr(std::fs::File::create(log).expect("log file"));
    ServerProcess::spawn(command)
}

#[tokio::test]
async fn no_credential_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    copy_project_policies(root);
    run_in(root, &["user", "add", "alice"], &format!("{PASSWORD}\n"));
    let log = root.join("server.log");
    let server = serve(root, &log);
    let url = server.url.clone();
    let client = reqwest::Client::new();

    // docker login: Basic credentials on GET /token, a refresh token back.
    let res = client
        .get(format!(
            "{url}/token?service=portcullis&offline_token=true&scope=repository:alice/app:pull,push"
        ))
        .basic_auth("alice", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let access = body["token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    // The token opens /v2/ and a push; a refused request logs its refusal.
    let data = b"a layer";
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data))
    );
    let res = client
        .post(format!("{url}/v2/alice/app/blobs/uploads/?digest={digest}"))
        .bearer_auth(&access)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // A forged bearer token is refused too, and logged without it.
    let forged = forge(&access);
    for (request, why) in [
        (
            client
                .delete(format!("{url}/v2/alice/app/blobs/{digest}"))
                .bearer_auth(&access),
            "no delete in that token",
        ),
        (
            client
                .get(format!("{url}/v2/alice/app/tags/list"))
                .bearer_auth(&forged),
            "a forged token",
        ),
    ] {
        assert_eq!(request.send().await.unwrap().status(), 401, "{why}");
    }

    // OAuth2 forms: the password grant and the refresh grant, then a wrong
    // password and a forged refresh token.
    let forged_refresh = forge(&refresh);
    for (form, status) in [
        (
            vec![
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
            200,
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
            ],
            200,
        ),
        (
            vec![
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", WRONG),
            ],
            401,
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", forged_refresh.as_str()),
            ],
            401,
        ),
    ] {
        let form = [form, vec![("service", "portcullis"), ("client_id", "test")]].concat();
        let res = client
            .post(format!("{url}/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{:?}", form[0]);
    }

    // A wrong password by Basic.
    let res = client
        .get(format!("{url}/token?service=portcullis"))
        .basic_auth("alice", Some(WRONG))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    server.kill();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("/token"),
        "the log at trace shows requests:\n{log}"
    );
    for line in ["token issued", "token refused", "request refused"] {
        assert!(
            log.contains(line),
            "the log tells each request ({line}):\n{log}"
        );
    }
    let basic = |password: &str| BASE64.encode(format!("alice:{password}").as_bytes());
    // A JWT's signature alone is enough to replay nothing, but its header
    // and payload are public: look for the whole token and its signature.
    let signature = |jwt: &str| jwt.rsplit('.').next().unwrap().to_owned();
    let secrets = [
        ("the password", PASSWORD.to_owned()),
        ("the wrong password", WRONG.to_owned()),
        ("the Basic credentials", basic(PASSWORD)),
        ("the wrong Basic credentials", basic(WRONG)),
        ("the access token's signature", signature(&access)),
        ("the refresh token's signature", signature(&refresh)),
        ("the forged token's signature", signature(&forged)),
        (
            "the forged refresh token's signature",
            signature(&forged_refresh),
        ),
    ];
    for (what, secret) in secrets {
        assert!(!log.contains(&secret), "{what} reached the log");
    }
}

/// `jwt` with another signature of the same length.
fn forge(jwt: &str) -> String {
    let (signed, signature) = jwt.rsplit_once('.').unwrap();
    let forged: String = signature
        .chars()
        .map(|c| if c == 'A' { 'B' } else { 'A' })
        .collect();
    format!("{signed}.{forged}")
}
