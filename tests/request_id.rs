//! The request id from outside: the real binary, its stderr read line by
//! line and its audit file read back. A refused request's id is the same in
//! the `X-Request-Id` header, the error body's `detail`, the log line (JSON
//! parsed, and text) and the audit line; no secret is in any of them; an
//! incoming `X-Request-Id` is taken only from a configured proxy and only
//! when it is safe.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::process::ServerProcess;
use crate::logs::{Log, PASSWORD, serve_with, setup};

const WRONG: &str = "wr0ng-Pa55word-for-request-ids";

/// `portcullis serve` with alice and the shipped policies, `config` as its
/// `portcullis.toml`, at `info`, with `PORTCULLIS_LOG_FORMAT` set to
/// `format` when given.
fn serve(config: &str, format: Option<&str>) -> (TempDir, ServerProcess, Log) {
    let dir = setup();
    std::fs::write(dir.path().join("portcullis.toml"), config).unwrap();
    let (server, log) = serve_with(dir.path(), &[("PORTCULLIS_LOG_FORMAT", format)]);
    (dir, server, log)
}

/// The answer's `X-Request-Id`, checked to be one of ours or a taken one.
fn header_id(res: &reqwest::Response) -> String {
    let id = res
        .headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id on {res:?}"))
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        "{id:?}"
    );
    id
}

/// The request id in an error body's detail: its key when the detail is an
/// object, the last entry's when it is a list (a 401's access entries).
fn detail_id(body: &Value) -> String {
    let detail = &body["errors"][0]["detail"];
    let holder = match detail.as_array() {
        Some(entries) => entries.last().unwrap(),
        None => detail,
    };
    holder["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_id in {body}"))
        .to_owned()
}

/// The audit file's lines once one has `request_id`; panics after a while.
fn audit_line(path: &Path, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .find(|l| l["request_id"] == request_id);
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no audit line for {request_id}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JSON log line that says `message`, parsed, with the request id of
/// the request span it is in.
fn json_line(log: &mut Log, message: &str) -> (Value, String) {
    let line = log.wait_for(&[&format!("\"message\":\"{message}\"")]);
    let parsed: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(parsed["message"], message, "{parsed}");
    let span = &parsed["spans"][0];
    assert_eq!(span["name"], "request", "{parsed}");
    let id = span["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_id in {parsed}"))
        .to_owned();
    (parsed, id)
}

async fn token_for(server: &ServerProcess, password: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(server.at("/token?service=portcullis&scope=repository:alice/app:pull"))
        .basic_auth("alice", Some(password))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_refused_request_has_one_id_in_its_answer_json_log_line_and_audit_line() {
    let (dir, server, mut log) = serve(
        "[log]\nformat = \"json\"\n[audit]\nfile = \"audit.jsonl\"\n",
        None,
    );
    let audit = dir.path().join("audit.jsonl");
    let client = reqwest::Client::new();

    // A wrong password at the token endpoint: no detail of its own.
    let res = token_for(&server, WRONG).await;
    assert_eq!(res.status(), 401);
    let id = header_id(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED", "{body}");
    assert_eq!(
        body["errors"][0]["detail"],
        serde_json::json!({ "request_id": id }),
        "the detail is the id alone"
    );
    assert_eq!(body["error"], "invalid_grant", "the OAuth2 error stays");
    let (line, logged) = json_line(&mut log, "token refused");
    assert_eq!(logged, id, "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(
        line["user"], "alice",
        "the event's fields, flattened: {line}"
    );
    assert_eq!(line["reason"], "wrong password", "{line}");
    let audited = audit_line(&audit, &id);
    assert_eq!(audited["event"], "token", "{audited}");
    assert_eq!(audited["result"], "refused", "{audited}");

    // A token that does not cover the request: a 401 whose detail lists
    // the access needed, the id after the entries.
    let res = token_for(&server, PASSWORD).await;
    assert_eq!(res.status(), 200);
    let granted_id = header_id(&res);
    assert_ne!(granted_id, id, "each request its own id");
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = client
        .get(server.at("/v2/bob/app/tags/list"))
        .bearer_auth(&token)
        // A client's own id is not taken without `log.request_id_from`.
        .header("x-request-id", "chosen-by-the-client")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let id = header_id(&res);
    assert_ne!(id, "chosen-by-the-client");
    let body: Value = res.json().await.unwrap();
    let detail = body["errors"][0]["detail"].as_array().unwrap();
    assert_eq!(
        detail[0]["Name"], "bob/app",
        "the access entries first: {body}"
    );
    assert_eq!(detail_id(&body), id);
    let (line, logged) = json_line(&mut log, "request refused");
    assert_eq!(logged, id, "{line}");
    assert_eq!(line["subject"], "alice", "{line}");
    let audited = audit_line(&audit, &id);
    assert_eq!(audited["event"], "refused", "{audited}");
    assert_eq!(audited["repository"], "bob/app", "{audited}");

    // A detail of its own (an unknown manifest) keeps its keys.
    let res = client
        .get(server.at("/v2/alice/app/manifests/missing"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let id = header_id(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["detail"]["reference"], "missing",
        "{body}"
    );
    assert_eq!(detail_id(&body), id);

    // Every answer has one, the probes' and a success's too.
    let res = client.get(server.at("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    header_id(&res);

    // Every line of the log is JSON, and no secret is in it or the trail.
    let text = log.seen().join("\n");
    for line in log.seen() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let trail = std::fs::read_to_string(&audit).unwrap();
    for secret in [PASSWORD, WRONG, token.as_str()] {
        assert!(!text.contains(secret), "a secret in the log:\n{text}");
        assert!(!trail.contains(secret), "a secret in the trail:\n{trail}");
    }
}

#[tokio::test]
async fn text_lines_name_the_request_and_the_environment_chooses_the_format() {
    // The configuration says json; PORTCULLIS_LOG_FORMAT wins.
    let (_dir, server, mut log) = serve("[log]\nformat = \"json\"\n", Some("text"));

    let res = token_for(&server, WRONG).await;
    assert_eq!(res.status(), 401);
    let id = header_id(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(detail_id(&body), id);
    let line = log.wait_for(&["token refused"]);
    assert!(
        line.contains(&format!("request{{request_id={id}}}")),
        "{line}"
    );
    assert!(line.contains("reason=\"wrong password\""), "{line}");
    assert!(!line.starts_with('{'), "text, not JSON: {line}");
    assert!(
        !log.seen().join("\n").contains(WRONG),
        "a password was logged"
    );
}

#[tokio::test]
async fn a_configured_proxy_names_requests_with_safe_ids_only() {
    let (_dir, server, mut log) = serve("[log]\nrequest_id_from = [\"127.0.0.0/8\"]\n", None);
    let client = reqwest::Client::new();
    let get = |id: &str| {
        client
            .get(server.at("/v2/alice/app/tags/list"))
            .header("x-request-id", id)
            .send()
    };

    let proxy_id = "9f1c2e7a-44b0-4e55-a1f3-0c2d9b8e7f61";
    let res = get(proxy_id).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(header_id(&res), proxy_id);
    let body: Value = res.json().await.unwrap();
    assert_eq!(detail_id(&body), proxy_id);
    let line = log.wait_for(&["request refused"]);
    assert!(line.contains(proxy_id), "{line}");

    // Too long, or with characters that could forge a log line or field:
    // an id of our own instead, and the value logged nowhere.
    for unsafe_id in [
        "x".repeat(65),
        "id with spaces".to_owned(),
        "a\"} INFO forged".to_owned(),
        "a=b".to_owned(),
    ] {
        let res = get(&unsafe_id).await.unwrap();
        assert_eq!(res.status(), 401);
        let id = header_id(&res);
        assert_ne!(id, unsafe_id);
        assert_eq!(id.len(), 12, "one of ours: {id}");
        log.wait_for(&["request refused", &id]);
        assert!(!log.seen().join("\n").contains(&unsafe_id));
    }
}

#[test]
fn check_config_says_how_serve_would_log() {
    let dir = tempfile::tempdir().unwrap();
    let check = |config: &str| {
        std::fs::write(dir.path().join("portcullis.toml"), config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check-config", "portcullis.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check("");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l == "log: text lines at `info` on stderr, its own request ids"),
        "{out}"
    );
    let (code, out, err) = check(
        "[log]\nformat = \"json\"\nlevel = \"debug\"\nrequest_id_from = [\"10.0.0.0/8\", \"192.0.2.7\"]\n",
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.lines().any(|l| l
            == "log: json lines at `debug` on stderr, X-Request-Id taken from 10.0.0.0/8, 192.0.2.7/32"),
        "{out}"
    );
    let (code, out, err) = check("[log]\nformat = \"xml\"\nrequest_id_from = [\"proxy\"]\n");
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("portcullis.toml:2:") && l.contains("xml")),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("portcullis.toml:3:")
            && l.contains("`proxy` is not an address or a CIDR network")),
        "{err}"
    );
}

#[tokio::test]
async fn a_backend_is_sent_our_id_not_the_clients() {
    // A v1 backend that answers 404 to everything and hands over each
    // request head it read.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_url = format!("http://{}", backend.local_addr().unwrap());
    let (heads, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = backend.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&head).to_lowercase());
                let _ = socket
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("portcullis.toml");
    std::fs::write(&config, format!("[v1]\nbackend = \"{backend_url}\"\n")).unwrap();
    let server = ServerProcess::start(data.path(), &["--config", config.to_str().unwrap()]);

    let res = reqwest::Client::new()
        .get(server.at("/v1/repositories/team/app/tags"))
        .header("x-request-id", "chosen-by-the-client")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "the backend's answer");
    let id = header_id(&res);
    assert_ne!(id, "chosen-by-the-client");
    let head = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("the backend was asked")
        .unwrap();
    assert!(
        head.contains(&format!("x-request-id: {}", id.to_lowercase())),
        "{head}"
    );
    assert!(!head.contains("chosen-by-the-client"), "{head}");
}
