//! The legacy v1 protocol through Portcullis, in front of the real legacy
//! registry (docker-registry 0.9.1, `common::legacy_v1`): the ping and the
//! login answered by Portcullis, repository calls authorized from the path
//! with Basic credentials or a v1 token of Portcullis' own, and nothing of
//! the backend's address or tokens in what reaches the client.

use crate::common;

use common::TestServer;
use common::legacy_v1::LegacyV1;
use common::v1_client::{self, Auth, Engine};
use data_encoding::BASE64;
use portcullis::auth::users::hash_password;
use reqwest::StatusCode;

/// alice and bob in `dir`'s users file.
fn two_users(dir: &std::path::Path) {
    let users = format!(
        "[users.alice]\npassword = {:?}\n\n[users.bob]\npassword = {:?}\n",
        hash_password("alice-pw").unwrap(),
        hash_password("bob-pw").unwrap(),
    );
    std::fs::write(dir.join("users.toml"), users).unwrap();
}

/// Portcullis with the project's policies, alice and bob, routing v1 to
/// `backend`.
async fn gateway(backend: &LegacyV1) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    two_users(dir.path());
    common::process::copy_project_policies(dir.path());
    let url = backend.url();
    TestServer::start_configured(dir, |c| c.v1.backend = Some(url)).await
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        BASE64.encode(format!("{user}:{password}").as_bytes())
    )
}

/// Fails when any header or the body of `response` names the backend.
async fn assert_names_no_backend(backend: &LegacyV1, response: reqwest::Response) -> String {
    let port = backend
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    for (name, value) in response.headers() {
        let value = value.to_str().unwrap_or("");
        assert!(
            !value.contains(&port) && !value.contains("gunicorn"),
            "{name}: {value} names the backend"
        );
        assert!(
            !(name == "www-authenticate" && value.starts_with("Token ")),
            "the backend's own token reached the client: {value}"
        );
    }
    let body = response.text().await.unwrap();
    assert!(!body.contains(&port), "the body names the backend: {body}");
    body
}

#[tokio::test]
async fn the_ping_and_the_login_are_answered_by_portcullis() {
    let backend = LegacyV1::start();
    let s = gateway(&backend).await;
    let client = reqwest::Client::new();
    for path in ["/v1/_ping", "/_ping"] {
        let res = client.get(s.at(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-docker-registry-standalone"], "True");
        // The backend's own ping lists its host and command line.
        let body = assert_names_no_backend(&backend, res).await;
        assert_eq!(body, "true");
    }
    // `docker login` (v1): the account creation is refused as existing,
    // then the password is checked.
    let res = client
        .post(s.at("/v1/users/"))
        .json(&serde_json::json!({"username": "alice", "password": "x", "email": "a@b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("already exists"));
    let login = |authorization: Option<String>| {
        let mut request = client.get(s.at("/v1/users/"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send()
    };
    assert_eq!(
        login(Some(basic("alice", "alice-pw")))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    for refused in [
        Some(basic("alice", "wrong")),
        Some(basic("nobody", "x")),
        None,
    ] {
        let res = login(refused).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(
            res.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic ")
        );
    }
}

#[tokio::test]
async fn repository_calls_are_authorized_from_the_path_and_tokens_are_portcullis_own() {
    let backend = LegacyV1::start();
    let s = gateway(&backend).await;
    let client = reqwest::Client::new();
    let alice = basic("alice", "alice-pw");

    // Allowed, so forwarded: the backend's own answer comes back.
    let res = client
        .get(s.at("/v1/repositories/alice/app/tags"))
        .header("authorization", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body = assert_names_no_backend(&backend, res).await;
    assert!(body.contains("Repository not found"), "{body}");

    // Refused here, never forwarded.
    let res = client
        .get(s.at("/v1/repositories/alice/app/tags"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "anonymous");
    let res = client
        .get(s.at("/v1/repositories/alice/app/tags"))
        .header("authorization", basic("alice", "wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "wrong password");
    let res = client
        .put(s.at("/v1/repositories/bob/app/"))
        .header("authorization", &alice)
        .json(&serde_json::json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "alice pushing to bob/");

    // The first call of a push asks for a token: Portcullis' own, and
    // image calls are to come back to Portcullis.
    let res = client
        .put(s.at("/v1/repositories/alice/app/"))
        .header("authorization", &alice)
        .header("x-docker-token", "true")
        .json(&serde_json::json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let token = res.headers()["x-docker-token"].to_str().unwrap().to_owned();
    let endpoints = res.headers()["x-docker-endpoints"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(endpoints, s.url.trim_start_matches("http://"));
    let claims = common::jwt_claims(&token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        common::granted_actions(&claims, "alice/app"),
        ["pull", "push", "delete"]
    );
    assert_names_no_backend(&backend, res).await;

    // The token opens alice/app and nothing else, and is no v2 token.
    let with_token = |path: &str| {
        client
            .get(s.at(path))
            .header("authorization", format!("Token {token}"))
            .send()
    };
    let res = with_token("/v1/repositories/alice/app/tags").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the token on its repository");
    let res = with_token("/v1/repositories/bob/app/tags").await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "the token on bob/");
    let res = client
        .get(s.at("/v2/alice/app/tags/list"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "a v1 token on /v2/");
    let res = client
        .get(s.at("/v1/repositories/alice/app/tags"))
        .header("authorization", "Token forged.token.value")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "a forged token");
}

#[tokio::test]
async fn without_a_backend_v1_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    common::process::copy_project_policies(dir.path());
    let s = TestServer::start_configured(dir, |_| {}).await;
    let client = reqwest::Client::new();
    for path in ["/v1/_ping", "/v1/repositories/alice/app/tags", "/v1/users/"] {
        let res = client.get(s.at(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

/// Users manage their own namespace and nothing else: no one reads another's
/// repository until a rule says so.
const OWN_NAMESPACE: &str = r#"
[[rule]]
description = "users manage their own namespace"
users = ["*"]
repositories = ["${user}/**"]
actions = ["pull", "push", "delete"]
"#;

const BOB_PULLS_ALICE: &str = r#"
[[rule]]
description = "bob pulls alice/app"
users = ["bob"]
repositories = ["alice/app"]
actions = ["pull"]
"#;

/// Portcullis over `dir` with alice and bob and the [`OWN_NAMESPACE`]
/// policy (written when missing), routing v1 to `backend`.
async fn own_namespaces(backend: &LegacyV1, dir: tempfile::TempDir) -> TestServer {
    let policies = dir.path().join("policies");
    if !policies.exists() {
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("10-own.toml"), OWN_NAMESPACE).unwrap();
        two_users(dir.path());
    }
    let url = backend.url();
    TestServer::start_configured(dir, |c| c.v1.backend = Some(url)).await
}

async fn get_layer(
    client: &reqwest::Client,
    s: &TestServer,
    auth: &str,
    id: &str,
) -> (StatusCode, Vec<u8>) {
    let res = client
        .get(s.at(&format!("/v1/images/{id}/layer")))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    (res.status(), res.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_read_token_for_one_repository_reads_no_layer_of_another_until_granted() {
    let backend = LegacyV1::start();
    let s = own_namespaces(&backend, tempfile::tempdir().unwrap()).await;
    let client = reqwest::Client::new();
    let (alice, bob) = (basic("alice", "alice-pw"), basic("bob", "bob-pw"));
    let image = v1_client::push_one(&s.url, &alice, "alice/app").await;
    assert_eq!(
        get_layer(&client, &s, &alice, &image.id).await,
        (StatusCode::OK, image.layer.clone())
    );

    // bob holds a token for his own repository: it reads nothing of alice's.
    let res = client
        .get(s.at("/v1/repositories/bob/app/images"))
        .header("authorization", &bob)
        .header("x-docker-token", "true")
        .send()
        .await
        .unwrap();
    let bobs = format!(
        "Token {}",
        res.headers()["x-docker-token"].to_str().unwrap()
    );
    for auth in [&bobs, &bob] {
        let (status, _) = get_layer(&client, &s, auth, &image.id).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "bob read alice's layer");
    }
    // Declaring alice's image in a push of his own binds nothing, and no tag
    // of his may name it.
    let res = client
        .put(s.at("/v1/repositories/bob/app/"))
        .header("authorization", &bob)
        .json(&serde_json::json!([{"id": image.id}]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        get_layer(&client, &s, &bob, &image.id).await.0,
        StatusCode::NOT_FOUND
    );
    let res = client
        .put(s.at("/v1/repositories/bob/app/tags/stolen"))
        .header("authorization", &bob)
        .json(&image.id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "a tag naming alice's image"
    );
    let res = client
        .put(s.at(&format!("/v1/images/{}/json", image.id)))
        .header("authorization", &bob)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "bob overwriting alice's image"
    );

    // Granted pull on alice/app, bob reads the layer through it.
    std::fs::write(s.dir.path().join("policies/20-bob.toml"), BOB_PULLS_ALICE).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let res = client
            .get(s.at("/v1/repositories/alice/app/images"))
            .header("authorization", &bob)
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the grant never took");
        // The policy is reloaded every second: asked again, bounded.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        get_layer(&client, &s, &bob, &image.id).await,
        (StatusCode::OK, image.layer.clone())
    );

    // The bindings are in Portcullis' storage: a restart keeps them.
    let dir = s.stop().await;
    let s = own_namespaces(&backend, dir).await;
    assert_eq!(
        get_layer(&client, &s, &alice, &image.id).await,
        (StatusCode::OK, image.layer)
    );
}

#[tokio::test]
async fn search_lists_only_what_the_caller_may_pull() {
    let backend = LegacyV1::start();
    let s = own_namespaces(&backend, tempfile::tempdir().unwrap()).await;
    let client = reqwest::Client::new();
    let (alice, bob) = (basic("alice", "alice-pw"), basic("bob", "bob-pw"));
    v1_client::push_one(&s.url, &alice, "alice/app").await;
    v1_client::push_one(&s.url, &bob, "bob/app").await;
    let names = |auth: Option<String>| {
        let mut request = client.get(s.at("/v1/search?q=app"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move {
            let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            let mut names: Vec<String> = body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            (names, body["num_results"].clone())
        }
    };
    assert_eq!(
        names(Some(alice)).await,
        (vec!["alice/app".to_owned()], 1.into())
    );
    assert_eq!(
        names(Some(bob)).await,
        (vec!["bob/app".to_owned()], 1.into())
    );
    assert_eq!(names(None).await, (vec![], 0.into()));
}

#[tokio::test]
async fn a_backend_restart_costs_no_request_and_a_stopped_one_is_unavailable() {
    let mut backend = LegacyV1::start();
    let s = own_namespaces(&backend, tempfile::tempdir().unwrap()).await;
    let client = reqwest::Client::new();
    let alice = basic("alice", "alice-pw");
    let image = v1_client::push_one(&s.url, &alice, "alice/app").await;
    let tags = || {
        client
            .get(s.at("/v1/repositories/alice/app/tags"))
            .header("authorization", &alice)
            .send()
    };
    assert_eq!(tags().await.unwrap().status(), StatusCode::OK);
    // Portcullis' pooled connections die with the old process.
    backend.restart();
    assert_eq!(tags().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        get_layer(&client, &s, &alice, &image.id).await,
        (StatusCode::OK, image.layer)
    );
    backend.stop();
    let res = tags().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = assert_names_no_backend(&backend, res).await;
    assert!(body.contains("UNAVAILABLE"), "{body}");
}

#[tokio::test]
async fn old_engines_push_and_pull_in_both_ways_of_authenticating_and_refusals_hold() {
    let backend = LegacyV1::start();
    let s = own_namespaces(&backend, tempfile::tempdir().unwrap()).await;
    let alice = basic("alice", "alice-pw");
    for (auth, repo) in [
        (Auth::TokenFlow, "alice/tokens"),
        (Auth::BasicEverywhere, "alice/basic"),
    ] {
        let mut engine = Engine::new(&s.url, &alice, auth);
        let pushed = engine.push(repo, "latest", v1_client::images(3)).await;
        let sent: Vec<Vec<u8>> = pushed.images.iter().map(|i| i.layer.clone()).collect();
        for pull_auth in [Auth::TokenFlow, Auth::BasicEverywhere] {
            let mut puller = Engine::new(&s.url, &alice, pull_auth);
            assert_eq!(
                puller.pull(repo, "latest").await,
                sent,
                "{auth:?} push, {pull_auth:?} pull"
            );
        }
    }
    // bob may neither push into alice/ nor pull from it, either way.
    let bob = basic("bob", "bob-pw");
    for auth in [Auth::TokenFlow, Auth::BasicEverywhere] {
        let mut engine = Engine::new(&s.url, &bob, auth);
        assert_eq!(
            engine.start_push("alice/tokens", &[]).await,
            StatusCode::FORBIDDEN,
            "{auth:?} push"
        );
        let res = engine
            .client
            .get(s.at("/v1/repositories/alice/tokens/images"))
            .header("authorization", &bob)
            .header("x-docker-token", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{auth:?} pull");
    }
}

/// `tests/v1-client/pull.js` (the npm docker-registry-client) pulling
/// `name:latest` through `s` as `user`/`password`: its JSON answer and
/// whether it succeeded.
async fn npm_pull(
    s: &TestServer,
    name: &str,
    user: &str,
    password: &str,
) -> (bool, serde_json::Value) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/v1-client/pull.js");
    let modules = common::legacy_v1::home().join("node/node_modules");
    assert!(
        modules.join("docker-registry-client").is_dir(),
        "{} is missing: install it with scripts/install-legacy-v1.sh",
        modules.display()
    );
    let mut cmd = std::process::Command::new("node");
    cmd.arg(&script)
        .arg(format!("{}/{name}", s.url.trim_start_matches("http://")))
        .env("NODE_PATH", &modules)
        .env("U", user)
        .env("P", password);
    // Off the test's thread, which also serves Portcullis.
    let out = tokio::task::spawn_blocking(move || {
        common::clients::output_within(cmd, None, std::time::Duration::from_secs(60))
    })
    .await
    .unwrap();
    let answer = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", common::clients::describe("node pull.js", &out)));
    (out.status.success(), answer)
}

#[tokio::test]
async fn the_npm_v1_client_pulls_through_portcullis_and_is_refused_a_wrong_password() {
    let backend = LegacyV1::start();
    let s = own_namespaces(&backend, tempfile::tempdir().unwrap()).await;
    let alice = basic("alice", "alice-pw");
    let mut engine = Engine::new(&s.url, &alice, Auth::TokenFlow);
    let pushed = engine
        .push("alice/app", "latest", v1_client::images(2))
        .await;
    let (ok, answer) = npm_pull(&s, "alice/app", "alice", "alice-pw").await;
    assert!(ok, "{answer}");
    let got: Vec<&str> = answer["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["sha256"].as_str().unwrap())
        .collect();
    let sent: Vec<String> = pushed
        .images
        .iter()
        .map(|i| common::sha256(&i.layer)["sha256:".len()..].to_owned())
        .collect();
    assert_eq!(got, sent);
    let (ok, answer) = npm_pull(&s, "alice/app", "alice", "wrong").await;
    assert!(!ok, "{answer}");
    assert_eq!(answer["status"], 401, "{answer}");
    let (ok, answer) = npm_pull(&s, "alice/app", "bob", "bob-pw").await;
    assert!(
        !ok && answer["status"] == 403,
        "bob pulled alice/app: {answer}"
    );
}

#[tokio::test]
async fn a_tag_body_that_is_no_image_id_or_too_long_is_refused_and_not_forwarded() {
    let backend = LegacyV1::start();
    let s = own_namespaces(&backend, tempfile::tempdir().unwrap()).await;
    let client = reqwest::Client::new();
    let alice = basic("alice", "alice-pw");
    let image = v1_client::push_one(&s.url, &alice, "alice/app").await;
    for (body, code) in [
        ("not json".to_owned(), "TAG_INVALID"),
        ("\"short\"".to_owned(), "TAG_INVALID"),
        (format!("\"{}\"", "a".repeat(2048)), "SIZE_INVALID"),
    ] {
        let res = client
            .put(s.at("/v1/repositories/alice/app/tags/bad"))
            .header("authorization", &alice)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{code}");
        assert_eq!(common::error_code(res).await, code);
    }
    // The backend never saw them: only the pushed tag is there.
    let tags: serde_json::Value = client
        .get(format!("{}/v1/repositories/alice/app/tags", backend.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags, serde_json::json!({"latest": image.id}));
}
