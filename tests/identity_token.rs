//! What the README says about `docker login`'s identity token and the
//! containers/* clients, checked against real podman and skopeo: with the
//! refresh token Portcullis issued stored in `~/.docker/config.json` (as
//! docker writes it), they use it for pulls but refuse to log in to the
//! same host, `--authfile` does not help, and hiding docker's file
//! (`DOCKER_CONFIG`) or removing its entry does.
//!
//! Never skipped: a missing client is a failure (scripts/install-test-deps.sh).

use crate::common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::clients::{ClientEnv, output, require, stderr_of};
use common::process::{self, ServerProcess};
use serde_json::{Value, json};

const ALICE: (&str, &str) = ("alice", "alice-secret-pw");

const POLICY: &str = r#"
[[rule]]
description = "users own their namespace"
users = ["*"]
repositories = ["${user}/**"]
actions = ["pull", "push"]
"#;

/// Portcullis with alice as its only user, nothing for anonymous callers.
fn start_portcullis(dir: &Path) -> ServerProcess {
    let config = process::config_in(dir);
    fs::write(dir.join("policies/10-users.toml"), POLICY).unwrap();
    let hash = portcullis::auth::users::hash_password(ALICE.1).unwrap();
    fs::write(
        dir.join("users.toml"),
        format!("[users.{}]\npassword = {hash:?}\n", ALICE.0),
    )
    .unwrap();
    ServerProcess::start_with(&["--config", config.to_str().unwrap()])
}

/// A refresh token for alice, by the OAuth2 password grant docker uses.
fn refresh_token(server: &ServerProcess) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply: Value = runtime.block_on(async {
        let reply = reqwest::Client::new()
            .post(server.at("/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", ALICE.0),
                ("password", ALICE.1),
                ("service", "portcullis"),
                ("client_id", "docker"),
                ("access_type", "offline"),
            ])
            .send()
            .await
            .expect("token request");
        assert_eq!(reply.status(), 200);
        reply.json().await.expect("JSON")
    });
    reply["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned()
}

/// `~/.docker/config.json` as `docker login` leaves it: the user `<token>`
/// and the identity token.
fn write_docker_config(env: &ClientEnv, identity_token: &str) {
    let docker = env.path("home/.docker");
    fs::create_dir_all(&docker).unwrap();
    let auth = data_encoding::BASE64.encode(b"<token>:");
    let config = json!({"auths": {&env.host: {"auth": auth, "identitytoken": identity_token}}});
    fs::write(docker.join("config.json"), config.to_string()).unwrap();
}

const REFUSAL: &str = "currently logged in, auth file contains an Identity token";

#[track_caller]
fn refused_for_the_identity_token(result: Result<Output, Output>) -> Output {
    let out = result.expect_err("login must be refused");
    assert!(stderr_of(&out).contains(REFUSAL), "{}", stderr_of(&out));
    out
}

#[test]
fn a_docker_identity_token_blocks_podman_and_skopeo_logins_until_hidden_or_removed() {
    require("podman");
    require("skopeo");
    let dir = tempfile::tempdir().unwrap();
    let server = start_portcullis(dir.path());
    let env = ClientEnv::new(&server.host);
    write_docker_config(&env, &refresh_token(&server));

    // The identity token is used: a listing in alice's (empty) namespace is
    // not refused (401) but not found.
    let out = env.skopeo_fails(&[
        "list-tags",
        "--tls-verify=false",
        &env.docker_ref("alice/app"),
    ]);
    let stderr = stderr_of(&out).to_lowercase();
    assert!(stderr.contains("404"), "{stderr}");
    assert!(!stderr.contains("unauthorized"), "{stderr}");

    // Logins are refused, with the private --authfile the helper passes:
    // docker's file is read all the same.
    let out = refused_for_the_identity_token(env.login("podman", ALICE.0, ALICE.1));
    assert_eq!(out.status.code(), Some(125));
    let out = refused_for_the_identity_token(env.login("skopeo", ALICE.0, ALICE.1));
    assert_eq!(out.status.code(), Some(1));

    // Hiding docker's file for the one login works, and leaves it alone.
    let empty = env.path("no-docker-config");
    fs::create_dir_all(&empty).unwrap();
    let mut login = env.podman_cmd(&[
        "login",
        "--tls-verify=false",
        "--username",
        ALICE.0,
        "--password-stdin",
        &env.host,
    ]);
    login.env("DOCKER_CONFIG", &empty);
    let out = output(login, Some(&format!("{}\n", ALICE.1)));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        env.stored_credentials().as_deref(),
        Some("alice:alice-secret-pw")
    );
    let docker_config = env.path("home/.docker/config.json");
    assert!(
        fs::read_to_string(&docker_config)
            .unwrap()
            .contains("identitytoken")
    );

    // Removing docker's entry (what `docker logout HOST` does) ends the
    // refusal for good.
    fs::write(env.auth_file(), r#"{"auths":{}}"#).unwrap();
    env.podman(&[
        "logout",
        "--authfile",
        docker_config.to_str().unwrap(),
        &env.host,
    ]);
    assert!(
        !fs::read_to_string(&docker_config)
            .unwrap()
            .contains("identitytoken")
    );
    env.login("skopeo", ALICE.0, ALICE.1)
        .unwrap_or_else(|out| panic!("{}", stderr_of(&out)));
}
