//! The token endpoint and enforcement over HTTP, against the real server:
//! `docker login`'s exact sequence, partial grants, refresh tokens and their
//! revocation, challenges on every kind of refusal, the catalog filter.

use crate::common;

use common::{TestServer, sha256};
use data_encoding::BASE64;
use portcullis::auth::users::hash_password;
use reqwest::StatusCode;
use serde_json::Value;

const SERVICE: &str = "portcullis";

/// A server with the repository's default policies and three users.
async fn server() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let users = format!(
        "[users.alice]\npassword = {:?}\n\n[users.bob]\npassword = {:?}\n\n[users.root]\npassword = {:?}\ngroups = [\"admins\"]\n",
        hash_password("alice-pw").unwrap(),
        hash_password("bob-pw").unwrap(),
        hash_password("root-pw").unwrap(),
    );
    std::fs::write(dir.path().join("users.toml"), users).unwrap();
    common::process::copy_project_policies(dir.path());
    TestServer::start_configured(dir, |_| {}).await
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        BASE64.encode(format!("{user}:{password}").as_bytes())
    )
}

/// `WWW-Authenticate: Bearer k="v",…` as pairs.
fn challenge(res: &reqwest::Response) -> Vec<(String, String)> {
    let value = res
        .headers()
        .get("www-authenticate")
        .expect("a challenge")
        .to_str()
        .unwrap()
        .to_owned();
    let rest = value.strip_prefix("Bearer ").expect("Bearer challenge");
    rest.split("\",")
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn token(s: &TestServer, auth: Option<&str>, query: &str) -> (StatusCode, Value) {
    let mut req = s.client.get(s.at(&format!("/token?{query}")));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The `access` claim of a token (the payload is not verified here: the
/// server's verification is what the other tests exercise).
fn access_of(token: &str) -> Value {
    common::jwt_claims(token)["access"].clone()
}

async fn bearer_get(s: &TestServer, token: &str, path: &str) -> reqwest::Response {
    s.client
        .get(s.at(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn push_blob(s: &TestServer, token: &str, repo: &str, data: &[u8]) -> reqwest::Response {
    let digest = sha256(data);
    s.client
        .post(s.at(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .bearer_auth(token)
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn docker_login_sequence() {
    let s = server().await;
    // 1. GET /v2/ without credentials: 401 and where to get a token.
    let res = s.client.get(s.at("/v2/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&res);
    assert_eq!(
        param(&c, "realm"),
        Some(format!("{}/token", s.url).as_str())
    );
    assert_eq!(param(&c, "service"), Some(SERVICE));
    assert_eq!(param(&c, "scope"), None, "/v2/ needs no scope");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");

    // 2. The token request docker makes, with Basic credentials and no scope.
    let (status, body) = token(
        &s,
        Some(&basic("alice", "alice-pw")),
        &format!("account=alice&client_id=docker&offline_token=true&service={SERVICE}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access_token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], body["token"]);
    assert!(body["expires_in"].as_u64().unwrap() >= 60);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    let refresh = body["refresh_token"]
        .as_str()
        .expect("identity token")
        .to_owned();

    // 3. That token opens /v2/.
    assert_eq!(bearer_get(&s, &access_token, "/v2/").await.status(), 200);

    // 4. Later: POST /token with the refresh token and the push scope.
    let res = s
        .client
        .post(s.at("/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("service", SERVICE),
            ("client_id", "docker"),
            (
                "scope",
                "repository:alice/app:pull,push repository:bob/app:pull,push",
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["refresh_token"],
        refresh.as_str(),
        "the same refresh token back"
    );
    assert_eq!(
        body["scope"],
        "repository:alice/app:pull,push repository:bob/app:pull"
    );
    let push_token = body["access_token"].as_str().unwrap();
    assert_eq!(
        push_blob(&s, push_token, "alice/app", b"layer")
            .await
            .status(),
        201
    );
    // A partial grant: bob/app is pull-only for alice.
    let res = push_blob(&s, push_token, "bob/app", b"layer").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&res);
    assert_eq!(param(&c, "error"), Some("insufficient_scope"));
    assert_eq!(param(&c, "scope"), Some("repository:bob/app:pull,push"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["detail"][1]["Action"], "push");
}

#[tokio::test]
async fn partial_grants_and_the_scope_grammar() {
    let s = server().await;
    let scopes = "scope=repository:alice/x:pull,push,delete&scope=repository:bob/y:*&scope=repository(plugin):bob/z:pull&scope=registry:catalog:*&scope=repository:localhost:5000/alice/x:pull&scope=thing:else:do";
    let (status, body) = token(&s, Some(&basic("alice", "alice-pw")), scopes).await;
    assert_eq!(status, 200, "{body}");
    let access = access_of(body["token"].as_str().unwrap());
    let expected = serde_json::json!([
        {"type": "repository", "name": "alice/x", "actions": ["pull", "push", "delete"]},
        {"type": "repository", "name": "bob/y", "actions": ["pull"]},
        {"type": "repository", "name": "bob/z", "actions": ["pull"]},
        // The policy sees a host-qualified name as written; such a grant
        // opens nothing here, whose names carry no host.
        {"type": "repository", "name": "localhost:5000/alice/x", "actions": ["pull"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]);
    assert_eq!(access, expected);
    // Admins get everything they ask for, the catalog included.
    let (_, body) = token(&s, Some(&basic("root", "root-pw")), scopes).await;
    let access = access_of(body["token"].as_str().unwrap());
    assert!(
        access
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "catalog")
    );
    assert_eq!(
        access[0]["actions"],
        serde_json::json!(["pull", "push", "delete"])
    );
    // A malformed scope is a bad request, not a silent empty grant.
    let (status, body) = token(&s, None, "scope=repository:UPPER/case:pull").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_scope");
}

#[tokio::test]
async fn bad_credentials_account_mismatch_and_service() {
    let s = server().await;
    let (status, body) = token(&s, Some(&basic("alice", "wrong")), "service=portcullis").await;
    assert_eq!(status, 401);
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    assert_eq!(body["error"], "invalid_grant");
    let (status, _) = token(&s, Some(&basic("nobody", "x")), "service=portcullis").await;
    assert_eq!(status, 401);
    let (status, _) = token(&s, Some("Basic !!!"), "service=portcullis").await;
    assert_eq!(status, 401);
    let (status, body) = token(&s, Some(&basic("alice", "alice-pw")), "account=bob").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = token(&s, None, "service=elsewhere").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
    // POST: grant types and required fields.
    for (form, expected) in [
        (
            vec![
                ("grant_type", "password"),
                ("service", SERVICE),
                ("client_id", "t"),
                ("username", "alice"),
                ("password", "nope"),
            ],
            401,
        ),
        (
            vec![
                ("grant_type", "password"),
                ("service", SERVICE),
                ("client_id", "t"),
                ("username", "alice"),
            ],
            400,
        ),
        (
            vec![
                ("grant_type", "password"),
                ("service", SERVICE),
                ("username", "alice"),
                ("password", "alice-pw"),
            ],
            400,
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", "t"),
                ("username", "alice"),
                ("password", "alice-pw"),
            ],
            400,
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("service", SERVICE),
                ("client_id", "t"),
            ],
            400,
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("service", SERVICE),
                ("client_id", "t"),
                ("refresh_token", "garbage"),
            ],
            401,
        ),
        (
            vec![
                ("grant_type", "password"),
                ("service", SERVICE),
                ("client_id", "t"),
                ("username", "alice"),
                ("password", "alice-pw"),
            ],
            200,
        ),
    ] {
        let res = s
            .client
            .post(s.at("/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), expected, "{form:?}");
    }
}

#[tokio::test]
async fn oauth_password_grant_with_offline_access_and_revocation() {
    let s = server().await;
    let login = |user: &'static str, pw: &'static str| {
        s.client.post(s.at("/token")).form(&[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("client_id", "ci"),
            ("access_type", "offline"),
            ("username", user),
            ("password", pw),
            ("scope", "repository:alice/app:pull"),
        ])
    };
    let body: Value = login("alice", "alice-pw")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(body["scope"], "repository:alice/app:pull");
    let redeem = |refresh: String| {
        s.client.post(s.at("/token")).form(&[
            ("grant_type", "refresh_token".to_owned()),
            ("service", SERVICE.to_owned()),
            ("client_id", "ci".to_owned()),
            ("refresh_token", refresh),
        ])
    };
    assert_eq!(redeem(refresh.clone()).send().await.unwrap().status(), 200);
    // A refresh token is not an access token.
    assert_eq!(bearer_get(&s, &refresh, "/v2/").await.status(), 401);
    // Nor is an access token a refresh token.
    let access_token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(redeem(access_token).send().await.unwrap().status(), 401);

    // Revoking the user's refresh tokens voids this one.
    let storage = portcullis::storage::Storage::new(std::sync::Arc::new(
        portcullis::storage::fs::FsDriver::new(&s.dir.path().join("data"))
            .await
            .unwrap(),
    ));
    portcullis::auth::Revocations::update(&storage, |r| r.revoke_user("alice"))
        .await
        .unwrap();
    let res = redeem(refresh).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");

    // Bob's survive a revocation of alice's; a removed account's do not.
    let body: Value = login("bob", "bob-pw")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bobs = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(redeem(bobs.clone()).send().await.unwrap().status(), 200);
    let users = s.dir.path().join("users.toml");
    let text = std::fs::read_to_string(&users).unwrap();
    let without_bob: String = text
        .split("\n\n")
        .filter(|block| !block.starts_with("[users.bob]"))
        .collect::<Vec<_>>()
        .join("\n\n");
    std::fs::write(&users, without_bob).unwrap();
    // The users file is looked at again at most once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = redeem(bobs.clone()).send().await.unwrap().status();
        if status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "removed account still redeems"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn enforcement_refuses_every_wrong_token() {
    let s = server().await;
    let (_, body) = token(
        &s,
        Some(&basic("alice", "alice-pw")),
        "service=portcullis&scope=repository:alice/a:pull,push",
    )
    .await;
    let alice_a = body["token"].as_str().unwrap().to_owned();
    assert_eq!(push_blob(&s, &alice_a, "alice/a", b"x").await.status(), 201);
    // A token for alice/a used on alice/b.
    let res = push_blob(&s, &alice_a, "alice/b", b"x").await;
    assert_eq!(res.status(), 401);
    assert_eq!(param(&challenge(&res), "error"), Some("insufficient_scope"));
    // A pull token used to push.
    let (_, body) = token(
        &s,
        Some(&basic("alice", "alice-pw")),
        "service=portcullis&scope=repository:alice/a:pull",
    )
    .await;
    let pull_only = body["token"].as_str().unwrap().to_owned();
    let digest = sha256(b"x");
    assert_eq!(
        bearer_get(&s, &pull_only, &format!("/v2/alice/a/blobs/{digest}"))
            .await
            .status(),
        200
    );
    let res = push_blob(&s, &pull_only, "alice/a", b"y").await;
    assert_eq!(res.status(), 401);
    // Delete needs delete.
    let res = s
        .client
        .delete(s.at(&format!("/v2/alice/a/blobs/{digest}")))
        .bearer_auth(&alice_a)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        param(&challenge(&res), "scope"),
        Some("repository:alice/a:delete")
    );
    // A tampered token, garbage, and a Basic header on /v2/.
    let mut parts: Vec<String> = alice_a.split('.').map(str::to_owned).collect();
    parts[1] = data_encoding::BASE64URL_NOPAD.encode(
        serde_json::json!({"iss": "portcullis", "sub": "alice", "aud": SERVICE, "exp": u64::MAX, "nbf": 0, "iat": 0, "jti": "x",
            "access": [{"type": "repository", "name": "bob/a", "actions": ["push", "pull"]}]})
        .to_string()
        .as_bytes(),
    );
    let forged = parts.join(".");
    for bad in [forged.as_str(), "garbage", "a.b.c"] {
        let res = bearer_get(&s, bad, "/v2/").await;
        assert_eq!(res.status(), 401, "{bad}");
        assert_eq!(param(&challenge(&res), "error"), Some("invalid_token"));
    }
    let res = s
        .client
        .get(s.at("/v2/"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Mounting needs pull on the source too.
    let res = s
        .client
        .post(s.at(&format!(
            "/v2/alice/c/blobs/uploads/?mount={digest}&from=bob/secret"
        )))
        .bearer_auth(&alice_a)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let scope = param(&challenge(&res), "scope").unwrap().to_owned();
    assert_eq!(
        scope,
        "repository:alice/c:pull,push repository:bob/secret:pull"
    );
}

#[tokio::test]
async fn anonymous_callers_get_what_the_policy_gives_them() {
    let s = server().await;
    // The shipped policy gives anonymous callers nothing.
    let (status, body) = token(&s, None, "service=portcullis&scope=repository:alice/a:pull").await;
    assert_eq!(status, 200, "an empty grant is still a token");
    assert_eq!(
        access_of(body["token"].as_str().unwrap()),
        serde_json::json!([])
    );
    assert!(body.get("refresh_token").is_none());
    let anon = body["token"].as_str().unwrap();
    let res = bearer_get(&s, anon, "/v2/alice/a/tags/list").await;
    assert_eq!(res.status(), 401);
    // Add a rule for public/**: it takes effect without a restart.
    std::fs::write(
        s.dir.path().join("policies/05-public.toml"),
        "[[rule]]\nanonymous = true\nrepositories = [\"public/**\"]\nactions = [\"pull\"]\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // The policy directory is looked at again at most once a second.
        let (_, body) = token(&s, None, "scope=repository:public/a:pull,push").await;
        let granted = access_of(body["token"].as_str().unwrap());
        if granted != serde_json::json!([]) {
            assert_eq!(granted[0]["actions"], serde_json::json!(["pull"]));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "policy not reloaded");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn catalog_needs_the_catalog_scope_and_is_filtered() {
    let s = server().await;
    for (user, pw, repo) in [("alice", "alice-pw", "alice/a"), ("bob", "bob-pw", "bob/b")] {
        let (_, body) = token(
            &s,
            Some(&basic(user, pw)),
            &format!("scope=repository:{repo}:push,pull"),
        )
        .await;
        assert_eq!(
            push_blob(&s, body["token"].as_str().unwrap(), repo, b"z")
                .await
                .status(),
            201
        );
    }
    let res = s.client.get(s.at("/v2/_catalog")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(param(&challenge(&res), "scope"), Some("registry:catalog:*"));
    // Users list the catalog with the shipped policy: what they may pull.
    let (_, body) = token(
        &s,
        Some(&basic("alice", "alice-pw")),
        "scope=registry:catalog:*",
    )
    .await;
    let res = bearer_get(&s, body["token"].as_str().unwrap(), "/v2/_catalog").await;
    assert_eq!(res.status(), 200);
    let (_, body) = token(
        &s,
        Some(&basic("root", "root-pw")),
        "scope=registry:catalog:*",
    )
    .await;
    let res = bearer_get(&s, body["token"].as_str().unwrap(), "/v2/_catalog").await;
    assert_eq!(res.status(), 200);
    let listed: Value = res.json().await.unwrap();
    assert_eq!(
        listed["repositories"],
        serde_json::json!(["alice/a", "bob/b"])
    );
}

#[tokio::test]
async fn catalog_lists_only_what_the_caller_may_pull() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        format!(
            "[users.carol]\npassword = {:?}\n",
            hash_password("pw").unwrap()
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/10.toml"),
        "[[rule]]\nusers = [\"carol\"]\ncatalog = true\nrepositories = [\"team/**\"]\nactions = [\"pull\", \"push\"]\n",
    )
    .unwrap();
    let s = TestServer::start_configured(dir, |_| {}).await;
    // Content that carol may not see, written with authentication off.
    let data = s.dir.path().join("data");
    let open = {
        let dir = tempfile::tempdir().unwrap();
        let open = TestServer::start_configured(dir, |c| {
            c.auth.enabled = false;
            c.storage.root = data.clone();
        })
        .await;
        for repo in ["team/a", "other/b"] {
            assert_eq!(push_blob(&open, "", repo, b"q").await.status(), 201);
        }
        open
    };
    drop(open);
    let (_, body) = token(&s, Some(&basic("carol", "pw")), "scope=registry:catalog:*").await;
    let res = bearer_get(&s, body["token"].as_str().unwrap(), "/v2/_catalog").await;
    assert_eq!(res.status(), 200);
    let listed: Value = res.json().await.unwrap();
    assert_eq!(listed["repositories"], serde_json::json!(["team/a"]));
}

#[tokio::test]
async fn jwks_publishes_the_verifying_keys() {
    let s = server().await;
    let res = s
        .client
        .get(s.at("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let jwks: Value = res.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "one key under two ids");
    assert_eq!(keys[0]["kty"], "EC");
    assert!(keys[0].get("d").is_none(), "no private part");
    let (_, body) = token(&s, None, "").await;
    let header = body["token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let header: Value = serde_json::from_slice(
        &data_encoding::BASE64URL_NOPAD
            .decode(header.as_bytes())
            .unwrap(),
    )
    .unwrap();
    assert!(keys.iter().any(|k| k["kid"] == header["kid"]));
    assert_eq!(header["alg"], "ES256");
    assert!(header["x5c"][0].is_string());
}

#[tokio::test]
async fn disabled_authentication_has_no_token_endpoint() {
    let s = TestServer::start().await;
    assert_eq!(
        s.client.get(s.at("/token")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        s.client.get(s.at("/v2/")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_and_address() {
    let s = server().await;
    // The default allows 5 failures per account and address in 5 minutes.
    for _ in 0..5 {
        let (status, _) = token(&s, Some(&basic("alice", "guess")), "").await;
        assert_eq!(status, 401);
    }
    let res = s
        .client
        .get(s.at("/token"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    // The same goes for the OAuth2 form.
    let res = s
        .client
        .post(s.at("/token"))
        .form(&[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("client_id", "t"),
            ("username", "alice"),
            ("password", "alice-pw"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another account from the same address is not locked out by alice's.
    let (status, _) = token(&s, Some(&basic("bob", "bob-pw")), "").await;
    assert_eq!(status, 200);
    // Anonymous requests never count.
    let (status, _) = token(&s, None, "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn token_revoke_command_voids_refresh_tokens() {
    let s = server().await;
    let login = |user: &'static str, pw: &'static str| {
        s.client.post(s.at("/token")).form(&[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("client_id", "ci"),
            ("access_type", "offline"),
            ("username", user),
            ("password", pw),
        ])
    };
    let refresh_of = |body: Value| body["refresh_token"].as_str().unwrap().to_owned();
    let alice = refresh_of(
        login("alice", "alice-pw")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    let bob = refresh_of(
        login("bob", "bob-pw")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    let redeem = |refresh: &str| {
        s.client.post(s.at("/token")).form(&[
            ("grant_type", "refresh_token"),
            ("service", SERVICE),
            ("client_id", "ci"),
            ("refresh_token", refresh),
        ])
    };
    let revoke = |args: &[&str]| {
        let data = s.dir.path().join("data");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["token", "revoke", "--data-dir", data.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    revoke(&["--user", "alice"]);
    assert_eq!(redeem(&alice).send().await.unwrap().status(), 401);
    assert_eq!(redeem(&bob).send().await.unwrap().status(), 200);
    revoke(&["--all"]);
    assert_eq!(redeem(&bob).send().await.unwrap().status(), 401);
    // Neither flag, or both: a usage error that writes nothing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["token", "revoke"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
