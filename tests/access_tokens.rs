//! Personal access tokens and robot accounts, from outside: tokens made
//! with `portcullis token create`, used as the password at `/token` of the
//! real binary and by skopeo, revoked with `portcullis token revoke`.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::process::ServerProcess;
use serde_json::Value;

use crate::logs::Log;

const POLICY: &str = r#"
[[rule]]
description = "developers push team images"
groups = ["devs"]
repositories = ["team/**"]
actions = ["pull", "push", "delete"]
catalog = true

[[rule]]
description = "deployers pull team images"
groups = ["deployers"]
repositories = ["team/**"]
actions = ["pull"]

[[rule]]
description = "users push in their own namespace"
users = ["*"]
repositories = ["${user}/**"]
actions = ["pull", "push"]
"#;

struct World {
    dir: tempfile::TempDir,
    server: ServerProcess,
    log: Log,
    client: reqwest::Client,
}

/// `portcullis ARGS` in `dir`, its output kept.
fn portcullis(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis")
}

fn start() -> World {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("policies")).unwrap();
    fs::write(dir.path().join("policies/team.toml"), POLICY).unwrap();
    fs::write(
        dir.path().join("portcullis.toml"),
        "[storage]\nroot = \"data\"\n[users]\nfile = \"users.toml\"\n",
    )
    .unwrap();
    let run = |args: &[&str], stdin: &str| common::process::run_in(dir.path(), args, stdin);
    run(&["user", "add", "alice", "-g", "devs"], "alice-password\n");
    run(&["user", "add", "--robot", "deploy", "-g", "deployers"], "");
    let (server, log) = crate::logs::serve(dir.path(), Some("info"));
    World {
        dir,
        server,
        log,
        client: reqwest::Client::new(),
    }
}

impl World {
    /// A new token of `user` from `portcullis token create`.
    fn create(&self, user: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--user", user];
        args.extend(extra);
        let out = portcullis(self.dir.path(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(token.starts_with("pcat_"), "{token}");
        token
    }

    async fn token(&self, user: &str, password: &str, scope: &str) -> (u16, Value) {
        let extra = [("offline_token", "true")];
        let creds = (user, password);
        common::basic_token(&self.client, &self.server.url, creds, scope, &extra).await
    }

    /// The actions granted on `repository`, asking for all of them.
    async fn granted(&self, password: &str, repository: &str) -> Vec<String> {
        let scope = format!("repository:{repository}:pull,push,delete");
        let (status, body) = self.token("anyone", password, &scope).await;
        assert_eq!(status, 200, "{body}");
        common::granted_actions(&common::token_claims(&body), repository)
    }

    /// The record of the one token kept, as a file of the storage.
    fn record_file(&self) -> std::path::PathBuf {
        let tokens = self.dir.path().join("data/auth/access-tokens");
        let mut ids: Vec<_> = fs::read_dir(&tokens)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        ids.pop().unwrap().join("record.json")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_grants_within_its_scopes_and_its_owners_policy_and_says_so() {
    let mut w = start();
    let token = w.create("alice", &["--scope", "team/app:pull,push", "--name", "ci"]);
    // The scope narrows the policy (which allows delete too) …
    assert_eq!(w.granted(&token, "team/app").await, ["pull", "push"]);
    // … and never widens it: alice's own namespace is hers by policy, not
    // by this token; a repository no rule gives her stays closed.
    assert!(w.granted(&token, "alice/x").await.is_empty());
    assert!(w.granted(&token, "team/other").await.is_empty());

    let (status, body) = w
        .token(
            "alice",
            &token,
            "repository:team/app:pull registry:catalog:*",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token for a token login: {body}"
    );
    let claims = common::token_claims(&body);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["credential"], "pat");
    assert!(
        !claims["access"].to_string().contains("catalog"),
        "a scoped token lists no catalog: {claims}"
    );
    let line = w
        .log
        .wait_for(&["token issued", "user=\"alice\"", "credential=\"pat\""]);
    assert!(
        !line.contains(&token[5..]),
        "the token is never logged: {line}"
    );

    // An unscoped token does what alice may.
    let all = w.create("alice", &["--name", "laptop"]);
    assert_eq!(w.granted(&all, "alice/x").await, ["pull", "push"]);
    assert_eq!(
        w.granted(&all, "team/app").await,
        ["pull", "push", "delete"]
    );

    // Names are unique per owner; scopes and lifetimes are checked.
    for bad in [
        &["--name", "ci"][..],
        &["--scope", "team/**"],
        &["--scope", "team/**:fly"],
        &["--expires", "soon"],
    ] {
        let mut args = vec!["token", "create", "--user", "alice"];
        args.extend(bad);
        let out = portcullis(w.dir.path(), &args);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(out.stdout.is_empty(), "no token printed for {bad:?}");
    }
    let out = portcullis(w.dir.path(), &["token", "create", "--user", "nobody"]);
    assert!(!out.status.success(), "a token for an unknown user");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_expired_and_forged_tokens_are_refused_at_once() {
    let w = start();
    let token = w.create("alice", &["--name", "ci"]);
    assert_eq!(w.granted(&token, "team/app").await.len(), 3);

    // Last use is recorded and listed.
    let out = portcullis(w.dir.path(), &["token", "list", "--user", "alice"]);
    let listed = String::from_utf8(out.stdout).unwrap();
    let row = listed
        .lines()
        .find(|l| l.starts_with("alice\tci\t"))
        .expect(&listed);
    assert!(!row.ends_with("\tnever"), "last use recorded: {row}");
    assert!(
        !listed.contains(&token[5..]),
        "list never shows a secret: {listed}"
    );

    // The same id with another secret is not the token.
    let forged = format!("{}{}", &token[..token.len() - 4], "0000");
    let (status, body) = w.token("alice", &forged, "repository:team/app:pull").await;
    assert_eq!(status, 401, "{body}");

    // Expired: the record says so (made in the past by hand, as a month's
    // wait would).
    let file = w.record_file();
    let mut record: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    let now = portcullis::auth::token::now();
    record["expires"] = (now - 1).into();
    fs::write(&file, serde_json::to_vec(&record).unwrap()).unwrap();
    let (status, body) = w.token("alice", &token, "repository:team/app:pull").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["errors"][0]["message"],
        "access token invalid, expired or revoked"
    );
    record["expires"] = (now + 3600).into();
    fs::write(&file, serde_json::to_vec(&record).unwrap()).unwrap();
    assert_eq!(w.granted(&token, "team/app").await.len(), 3);

    // Revoked: the very next request is refused.
    let out = portcullis(
        w.dir.path(),
        &["token", "revoke", "--user", "alice", "--name", "ci"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = w.token("alice", &token, "repository:team/app:pull").await;
    assert_eq!(status, 401, "{body}");
    let out = portcullis(
        w.dir.path(),
        &["token", "revoke", "--user", "alice", "--name", "ci"],
    );
    assert!(!out.status.success(), "a second revocation finds nothing");
    let out = portcullis(w.dir.path(), &["token", "list"]);
    assert!(!String::from_utf8(out.stdout).unwrap().contains("\tci\t"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_robot_logs_in_only_with_its_token() {
    let w = start();
    for password in ["", "deploy", "anything at all"] {
        let (status, body) = w
            .token("deploy", password, "repository:team/app:pull")
            .await;
        assert_eq!(
            status, 401,
            "robot logged in with a password `{password}`: {body}"
        );
    }
    let out = portcullis(w.dir.path(), &["user", "passwd", "deploy"]);
    assert!(!out.status.success(), "a robot gets no password");
    let token = w.create("deploy", &["--name", "prod"]);
    assert_eq!(w.granted(&token, "team/app").await, ["pull"]);
    let users = fs::read_to_string(w.dir.path().join("users.toml")).unwrap();
    assert!(users.contains("robot = true") && !users.contains("[users.deploy]\npassword"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_follows_its_owners_policy_and_account_as_they_are_now() {
    let mut w = start();
    let token = w.create("alice", &["--name", "ci"]);
    assert_eq!(
        w.granted(&token, "team/app").await,
        ["pull", "push", "delete"]
    );
    // The policy takes push away from developers: the token loses it.
    let narrower = POLICY.replacen(
        "actions = [\"pull\", \"push\", \"delete\"]",
        "actions = [\"pull\"]",
        1,
    );
    fs::write(w.dir.path().join("policies/team.toml"), narrower).unwrap();
    w.log.wait_for(&["policy reloaded"]);
    assert_eq!(w.granted(&token, "team/app").await, ["pull"]);
    // alice removed and someone else made alice: not her token any more.
    let dir = w.dir.path();
    common::process::run_in(dir, &["user", "del", "alice"], "");
    common::process::run_in(dir, &["user", "add", "alice"], "another-password\n");
    w.log.wait_for(&["users reloaded"]);
    let (status, body) = w.token("alice", &token, "repository:team/app:pull").await;
    assert_eq!(status, 401, "{body}");
    w.log.wait_for(&[
        "token refused",
        "access token's account changed or was removed",
    ]);
}

#[test]
fn skopeo_pushes_with_a_personal_access_token() {
    common::clients::require("skopeo");
    let w = start();
    let token = w.create("alice", &["--scope", "team/**:pull,push"]);
    let env = common::clients::ClientEnv::new(&w.server.host);
    let src = env.path("src");
    common::oci::write_layout(&src, "v1", &[10_000, 40_000]);
    env.login("skopeo", "alice", &token)
        .expect("skopeo login with the access token");
    env.skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--authfile",
        env.auth_file().to_str().unwrap(),
        &common::oci::oci_ref(&src, "v1"),
        &env.docker_ref("team/app:v1"),
    ]);
    // Outside its scope, alice's own namespace is closed to the token.
    let out = env.skopeo_fails(&[
        "copy",
        "--dest-tls-verify=false",
        "--authfile",
        env.auth_file().to_str().unwrap(),
        &common::oci::oci_ref(&src, "v1"),
        &env.docker_ref("alice/app:v1"),
    ]);
    let said = common::clients::stderr_of(&out);
    assert!(
        said.contains("denied") || said.contains("authorization") || said.contains("401"),
        "{said}"
    );
    drop(w.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_a_tokens_secret_in_a_concurrent_burst_is_throttled() {
    let w = start();
    let token = w.create("alice", &["--name", "ci"]);
    // 32 guesses at once for the token's id, each with another secret.
    let guesses = (0..32).map(|i| {
        let forged = format!("{}{i:04}", &token[..token.len() - 4]);
        let w = &w;
        async move {
            w.token("alice", &forged, "repository:team/app:pull")
                .await
                .0
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    let checked = statuses.iter().filter(|s| **s == 401).count();
    // No more guesses checked than the per-account threshold (5), however
    // many came at once.
    assert!(
        checked <= 5,
        "{checked} of 32 guesses were checked: {statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
}
