//! Logs a person can follow: the real binary at the default level (`info`),
//! its stderr read line by line as it is written. A token request, a refused
//! `/v2/` request and an edit of the watched files each give one line that
//! says who, from where, what and why; a bad log filter is reported.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::process::{ServerProcess, copy_project_policies, run_in};

pub(crate) const PASSWORD: &str = "alice-Pa55word-for-logs";

/// How long a line may take to appear: a reload is looked for every second.
const PATIENCE: Duration = Duration::from_secs(15);

/// The stderr of a server, line by line, with every line read so far.
pub(crate) struct Log {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Log {
    pub(crate) fn of(server: &mut ServerProcess) -> Self {
        let stderr = server.child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line (after those already waited for) that contains every
    /// one of `parts`; panics with the log so far after [`PATIENCE`].
    pub(crate) fn wait_for(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if parts.iter().all(|p| line.contains(p)) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {parts:?} within {PATIENCE:?}; the log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every line read so far.
    pub(crate) fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Lines read so far that contain `part`.
    pub(crate) fn count(&self, part: &str) -> usize {
        self.seen.iter().filter(|l| l.contains(part)).count()
    }
}

/// A directory with the project's policies and the user alice.
pub(crate) fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_project_policies(dir.path());
    run_in(
        dir.path(),
        &["user", "add", "alice"],
        &format!("{PASSWORD}\n"),
    );
    dir
}

/// `portcullis serve` in `dir` (its `portcullis.toml`, else the embedded
/// default), logging at the default level unless `log` says otherwise.
pub(crate) fn serve(dir: &Path, log: Option<&str>) -> (ServerProcess, Log) {
    serve_with(dir, &[("PORTCULLIS_LOG", log)])
}

/// As [`serve`], with the log's environment variables (`PORTCULLIS_LOG`,
/// `PORTCULLIS_LOG_FORMAT`) set or, for `None`, removed.
pub(crate) fn serve_with(dir: &Path, env: &[(&str, Option<&str>)]) -> (ServerProcess, Log) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("PORTCULLIS_LOG")
        .env_remove("PORTCULLIS_LOG_FORMAT")
        .stderr(Stdio::piped());
    for (name, value) in env {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    let mut server = ServerProcess::spawn(command);
    let log = Log::of(&mut server);
    (server, log)
}

async fn token(
    server: &ServerProcess,
    scope: &str,
    user: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut request =
        reqwest::Client::new().get(server.at(&format!("/token?service=portcullis&scope={scope}")));
    if let Some((name, password)) = user {
        request = request.basic_auth(name, Some(password));
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_token_request_says_who_from_where_what_and_the_rule_of_each_refusal() {
    let dir = setup();
    let (server, mut log) = serve(dir.path(), None);

    let res = token(
        &server,
        "repository:bob/app:pull,push",
        Some(("alice", PASSWORD)),
    )
    .await;
    assert_eq!(res.status(), 200);
    let line = log.wait_for(&["token issued"]);
    for part in [
        "user=\"alice\"",
        "addr=\"127.0.0.1\"",
        "service=\"portcullis\"",
        "asked=\"repository:bob/app:pull,push\"",
        "granted=\"repository:bob/app:pull\"",
        "refused=\"repository:bob/app:push by ./policies/50-users.toml:11 (rule #3) \\\"users pull everything and list the catalog\\\"\"",
    ] {
        assert!(line.contains(part), "{part} missing in: {line}");
    }

    // A failed login: one line with the name tried and why, never the password.
    let wrong = "not-alices-password";
    let res = token(&server, "repository:alice/app:pull", Some(("alice", wrong))).await;
    assert_eq!(res.status(), 401);
    let line = log.wait_for(&["token refused"]);
    for part in [
        "user=\"alice\"",
        "addr=\"127.0.0.1\"",
        "reason=\"wrong password\"",
    ] {
        assert!(line.contains(part), "{part} missing in: {line}");
    }
    let res = token(
        &server,
        "repository:alice/app:pull",
        Some(("nobody", wrong)),
    )
    .await;
    assert_eq!(res.status(), 401);
    let line = log.wait_for(&["token refused"]);
    assert!(line.contains("reason=\"unknown user\""), "{line}");
    assert!(
        !log.seen.join("\n").contains(wrong),
        "a password was logged"
    );
}

#[tokio::test]
async fn an_anonymous_token_request_is_logged_as_anonymous_with_no_rule_matched() {
    let dir = setup();
    let (server, mut log) = serve(dir.path(), None);

    let res = token(&server, "repository:alice/app:pull", None).await;
    assert_eq!(res.status(), 200);
    let line = log.wait_for(&["token issued"]);
    for part in [
        "user=\"anonymous\"",
        "addr=\"127.0.0.1\"",
        "granted=\"\"",
        "refused=\"repository:alice/app:pull by no rule matched\"",
    ] {
        assert!(line.contains(part), "{part} missing in: {line}");
    }
}

#[tokio::test]
async fn a_refused_push_is_logged_with_what_was_required_and_carried() {
    let dir = setup();
    let (server, mut log) = serve(dir.path(), None);
    let client = reqwest::Client::new();

    // The probe every client starts with: not worth a line at `info`.
    let res = client.get(server.at("/v2/")).send().await.unwrap();
    assert_eq!(res.status(), 401);

    let res = token(
        &server,
        "repository:bob/app:pull,push",
        Some(("alice", PASSWORD)),
    )
    .await;
    let body: serde_json::Value = res.json().await.unwrap();
    let access = body["token"].as_str().unwrap().to_owned();
    log.wait_for(&["token issued"]);
    let mount = common::sha256(b"a layer");
    let res = client
        .post(server.at(&format!(
            "/v2/bob/app/blobs/uploads/?mount={mount}&from=alice/app"
        )))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let line = log.wait_for(&["request refused"]);
    for part in [
        "method=\"POST\"",
        "path=\"/v2/bob/app/blobs/uploads/\"",
        "addr=\"127.0.0.1\"",
        "subject=\"alice\"",
        "required=\"repository:bob/app:pull,push",
        "carried=\"repository:bob/app:pull\"",
    ] {
        assert!(line.contains(part), "{part} missing in: {line}");
    }
    assert!(!line.contains("mount="), "no query string: {line}");
    assert_eq!(
        log.count("request refused"),
        1,
        "the unauthenticated `GET /v2/` probe is not logged at info:\n{}",
        log.seen.join("\n")
    );

    // No token, and a bad one, on a repository: one line each.
    let res = client
        .get(server.at("/v2/alice/app/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let line = log.wait_for(&["request refused", "path=\"/v2/alice/app/tags/list\""]);
    assert!(line.contains("reason=\"no token\""), "{line}");
    let res = client
        .get(server.at("/v2/alice/app/tags/list"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let line = log.wait_for(&["request refused", "path=\"/v2/alice/app/tags/list\""]);
    assert!(line.contains("reason=\"malformed token\""), "{line}");
    assert!(!line.contains("not.a.token"), "{line}");
}

#[tokio::test]
async fn a_bad_policy_edit_is_logged_when_made_and_once() {
    let dir = setup();
    let (_server, mut log) = serve(dir.path(), None);
    let bad = dir.path().join("policies/60-team.toml");

    // No request is made: the watcher alone sees the edits.
    std::fs::write(
        &bad,
        "[[rule]]\nusers = [\"*\"]\ncatalogue = true\nactions = []\n",
    )
    .unwrap();
    let line = log.wait_for(&["policy reload refused"]);
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("60-team.toml:3:1"),
        "file, line and column: {line}"
    );
    assert!(line.contains("unknown key `catalogue`"), "{line}");

    // Left as it is for a few checks, it is not reported again. (Waiting
    // here gives repetition its chance; nothing is synchronized by it.)
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::write(
        &bad,
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"team/**\"]\nactions = [\"pull\"]\n",
    )
    .unwrap();
    let line = log.wait_for(&["policy reloaded: 4 rules"]);
    assert!(line.contains("INFO"), "{line}");
    assert_eq!(
        log.count("policy reload refused"),
        1,
        "a bad version is reported once:\n{}",
        log.seen.join("\n")
    );

    // The users file is watched the same way.
    run_in(
        dir.path(),
        &["user", "add", "bob"],
        "bob-Pa55word-for-logs\n",
    );
    log.wait_for(&["users reloaded: 2 users"]);
}

#[tokio::test]
async fn an_invalid_log_filter_is_reported_and_the_default_used() {
    let dir = setup();
    let (server, mut log) = serve(dir.path(), Some("infoo"));
    let line = log.wait_for(&["PORTCULLIS_LOG"]);
    assert!(
        line.starts_with("PORTCULLIS_LOG: invalid filter \"infoo\"")
            && line.ends_with("using info"),
        "{line}"
    );
    // The default level is in force: a token request is logged.
    assert_eq!(
        token(&server, "repository:alice/app:pull", None)
            .await
            .status(),
        200
    );
    log.wait_for(&["token issued"]);
}

#[tokio::test]
async fn the_request_log_says_which_backend_served_each_request() {
    let backend = common::legacy_v1::LegacyV1::start();
    let dir = setup();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        format!("[v1]\nbackend = \"{}\"\n", backend.url()),
    )
    .unwrap();
    let (server, mut log) = serve(dir.path(), Some("info,tower_http=debug"));
    let client = reqwest::Client::new();

    let res = token(
        &server,
        "repository:alice/app:pull",
        Some(("alice", PASSWORD)),
    )
    .await;
    assert_eq!(res.status(), 200);
    let line = log.wait_for(&["finished processing request", "uri=/token"]);
    assert!(line.contains("backend=\"self\""), "{line}");

    let body: serde_json::Value = res.json().await.unwrap();
    let bearer = body["token"].as_str().unwrap().to_owned();
    let res = client
        .get(server.at("/v2/alice/app/tags/list"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let line = log.wait_for(&["finished processing request", "uri=/v2/alice/app/tags/list"]);
    assert!(line.contains("backend=\"storage\""), "{line}");

    let res = client
        .get(server.at("/v1/repositories/alice/app/tags"))
        .basic_auth("alice", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        404,
        "the backend's answer for an unknown repository"
    );
    let line = log.wait_for(&[
        "finished processing request",
        "uri=/v1/repositories/alice/app/tags",
    ]);
    assert!(line.contains("backend=\"legacy-v1\""), "{line}");

    // Refused before any backend: no backend named.
    let res = client
        .get(server.at("/v1/repositories/bob/app/tags"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let line = log.wait_for(&[
        "finished processing request",
        "uri=/v1/repositories/bob/app/tags",
    ]);
    assert!(!line.contains("backend="), "{line}");
}
