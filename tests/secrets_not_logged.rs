//! The server's log never holds a credential: the real binary, logging at
//! `trace`, goes through every way a secret reaches it (Basic credentials
//! on `GET /token`, a password and a refresh token in `POST /token` forms,
//! bearer tokens on `/v2/`, a wrong password), and its whole log is then
//! searched for each secret and its encodings.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::process::ServerProcess;

use data_encoding::BASE64;
use serde_json::Value;

const PASSWORD: &str = "s3cret-Pa55word-never-logged";
const WRONG: &str = "wr0ng-Pa55word-never-logged";

/// `portcullis ARGS` in `dir`, `stdin` as one line of input.
fn run(dir: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn portcullis");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write password");
    assert!(child.wait().expect("wait").success(), "portcullis {args:?}");
}

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
    let policies = root.join("policies");
    std::fs::create_dir(&policies).unwrap();
    for name in ["10-admins.toml", "50-users.toml"] {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policies")
            .join(name);
        std::fs::copy(source, policies.join(name)).unwrap();
    }
    run(root, &["user", "add", "alice"], &format!("{PASSWORD}\n"));
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
    let res = client
        .delete(format!("{url}/v2/alice/app/blobs/{digest}"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no delete in that token");

    // OAuth2 forms: the password grant and the refresh grant.
    for form in [
        vec![
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", PASSWORD),
            ("service", "portcullis"),
            ("client_id", "test"),
        ],
        vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("service", "portcullis"),
            ("client_id", "test"),
        ],
    ] {
        let res = client
            .post(format!("{url}/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }

    // A wrong password, by Basic and by form.
    let res = client
        .get(format!("{url}/token?service=portcullis"))
        .basic_auth("alice", Some(WRONG))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .post(format!("{url}/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", WRONG),
            ("service", "portcullis"),
            ("client_id", "test"),
        ])
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
    ];
    for (what, secret) in secrets {
        assert!(!log.contains(&secret), "{what} reached the log");
    }
}
