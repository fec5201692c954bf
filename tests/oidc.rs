//! OpenID Connect identities at `/token`, from outside: the real binary,
//! configured with `[[identity.oidc]]` for a real OpenID provider
//! (`oidc-provider`, see `common::oidc`), ID tokens got from it through the
//! authorization-code flow, and tokens made by hand to be refused.

use crate::common;

use std::collections::BTreeMap;
use std::fs;

use common::oidc::{ClientApp, Provider, SigningKey};
use common::process::ServerProcess;
use serde_json::{Value, json};

use crate::logs::Log;

/// The registry's client at the provider: its id is the audience.
const AUDIENCE: &str = "registry";

const POLICY: &str = r#"
[[rule]]
description = "org/app's main branch pushes production images"
sources = ["sso"]
claims = { repository = "org/app", ref = "refs/heads/main" }
repositories = ["prod/app/**", "ci/app/**"]
actions = ["pull", "push"]

[[rule]]
description = "any pipeline of org/app pushes CI images"
sources = ["sso"]
claims = { repository = "org/app" }
repositories = ["ci/app/**"]
actions = ["pull", "push"]

[[rule]]
description = "developers pull production images"
groups = ["sso-developers"]
repositories = ["prod/**"]
actions = ["pull"]

[[rule]]
description = "users push in their own namespace"
users = ["*"]
repositories = ["${user}/**"]
actions = ["pull", "push"]
"#;

struct World {
    provider: Provider,
    key: SigningKey,
    registry: ClientApp,
    dir: tempfile::TempDir,
    server: ServerProcess,
    log: Log,
    client: reqwest::Client,
}

fn accounts() -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        (
            "alice",
            json!({"preferred_username": "alice", "email": "alice@example.com",
                   "email_verified": true, "groups": ["developers", "staff"]}),
        ),
        ("bob", json!({"preferred_username": "bob", "groups": []})),
        (
            "ci-main",
            json!({"preferred_username": "ci-main", "repository": "org/app",
                   "ref": "refs/heads/main", "event_name": "push"}),
        ),
        (
            "ci-pr",
            json!({"preferred_username": "ci-pr", "repository": "org/app",
                   "ref": "refs/pull/7/merge", "event_name": "pull_request"}),
        ),
    ])
}

/// Lines added to the `[[identity.oidc]]` table.
fn start(extra: &str) -> World {
    let key = SigningKey::generate("key-1");
    let registry = ClientApp::new(AUDIENCE);
    let other = ClientApp::new("other-app");
    let provider = Provider::start(&key, &[registry, other], accounts());
    start_for(provider, key, extra)
}

fn start_for(provider: Provider, key: SigningKey, extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("policies")).unwrap();
    fs::write(dir.path().join("policies/ci.toml"), POLICY).unwrap();
    let config = format!(
        "[storage]\nroot = \"data\"\n[users]\nfile = \"users.toml\"\n\
         [auth]\nmax_failures_per_account = 5\n\
         [[identity.oidc]]\nname = \"sso\"\nissuer = \"{issuer}\"\n\
         audiences = [\"{AUDIENCE}\"]\nusername_claim = \"preferred_username\"\n\
         groups_claim = \"groups\"\nprefix = \"sso-\"\nallow_http = true\n\
         jwks_min_refresh_secs = 0\n{extra}\n",
        issuer = provider.issuer,
    );
    fs::write(dir.path().join("portcullis.toml"), config).unwrap();
    common::process::run_in(dir.path(), &["user", "add", "carol"], "carol-password\n");
    let (server, log) = crate::logs::serve(dir.path(), Some("info"));
    World {
        provider,
        key,
        registry: ClientApp::new(AUDIENCE),
        dir,
        server,
        log,
        client: reqwest::Client::new(),
    }
}

impl World {
    /// `GET /token` for `scope` with Basic `user:password`.
    /// Asks for a refresh token too (`offline_token`), as `docker login`
    /// does: none must come.
    async fn token(&self, user: &str, password: &str, scope: &str) -> (u16, Value) {
        let extra = [("offline_token", "true")];
        common::basic_token(
            &self.client,
            &self.server.url,
            (user, password),
            scope,
            &extra,
        )
        .await
    }

    async fn id_token(&self, account: &str) -> String {
        self.provider
            .id_token(&self.registry, account, "profile email groups ci")
            .await
    }

    /// Claims as the provider would sign them for `sub`, valid for an hour.
    fn claims(&self, sub: &str) -> Value {
        let now = portcullis::auth::token::now();
        json!({"iss": self.provider.issuer, "sub": sub, "aud": AUDIENCE,
               "iat": now, "exp": now + 3600, "preferred_username": sub})
    }
}

fn granted(body: &Value, repository: &str) -> Vec<String> {
    common::granted_actions(&common::token_claims(body), repository)
}

#[tokio::test]
async fn an_id_token_logs_in_and_its_groups_decide_the_grant() {
    let mut w = start("");
    let token = w.id_token("alice").await;
    let (status, body) = w
        .token(
            "anyone",
            &token,
            "repository:prod/app/web:pull,push repository:sso-alice/tool:push",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(granted(&body, "prod/app/web"), ["pull"], "developers pull");
    assert_eq!(granted(&body, "sso-alice/tool"), ["push"]);
    let claims = common::token_claims(&body);
    assert_eq!(claims["sub"], "sso-alice", "the prefixed user name");
    assert_eq!(claims["credential"], "oidc", "the token says what made it");
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token outlives the ID token: {body}"
    );
    // The OAuth2 form takes it as the password too, with any user name.
    let response = w
        .client
        .post(w.server.at("/token"))
        .form(&[
            ("grant_type", "password"),
            ("service", "portcullis"),
            ("client_id", "ci"),
            ("username", "oauth2accesstoken"),
            ("password", token.as_str()),
            ("scope", "repository:prod/app/web:pull"),
            ("access_type", "offline"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(granted(&body, "prod/app/web"), ["pull"]);
    assert!(body.get("refresh_token").is_none(), "{body}");
    // Bob is no developer; a password user still logs in beside the issuer.
    let bob = w.id_token("bob").await;
    let (status, body) = w.token("bob", &bob, "repository:prod/app/web:pull").await;
    assert_eq!(status, 200, "{body}");
    assert!(granted(&body, "prod/app/web").is_empty());
    let (status, body) = w
        .token("carol", "carol-password", "repository:carol/x:push")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(granted(&body, "carol/x"), ["push"]);
    w.log
        .wait_for(&["token issued", "sso-alice", "source=\"sso\""]);
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_refused() {
    let mut w = start("");
    let scope = "repository:sso-mallory/x:pull";
    let mut refusals: Vec<(&str, String)> = Vec::new();
    let now = portcullis::auth::token::now();
    // Each under a subject of its own: the failed-login limiter counts per
    // claimed subject, and these are all failures.
    let mut expired = w.claims("mallory-1");
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    refusals.push(("expired", w.key.sign(&expired)));
    let mut not_yet = w.claims("mallory-2");
    not_yet["nbf"] = json!(now + 3600);
    refusals.push(("not valid yet", w.key.sign(&not_yet)));
    // A real token of the provider, for another of its clients.
    let other = w
        .provider
        .id_token(&ClientApp::new("other-app"), "bob", "profile")
        .await;
    refusals.push(("wrong audience", other));
    let mut foreign = w.claims("mallory-3");
    foreign["iss"] = json!("https://issuer.invalid");
    refusals.push(("wrong issuer", w.key.sign(&foreign)));
    let stranger = SigningKey::generate("made-up");
    refusals.push(("unknown kid", stranger.sign(&w.claims("mallory-4"))));
    // Another key under the provider's kid.
    let impostor = SigningKey::generate(&w.key.kid);
    refusals.push(("wrong key", impostor.sign(&w.claims("mallory-5"))));
    let b64 = |v: &Value| data_encoding::BASE64URL_NOPAD.encode(v.to_string().as_bytes());
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": w.key.kid})),
        b64(&w.claims("mallory-6"))
    );
    refusals.push(("alg none", unsigned));
    let mut hmac_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hmac_header.kid = Some(w.key.kid.clone());
    let hmac = jsonwebtoken::encode(
        &hmac_header,
        &w.claims("mallory-7"),
        &jsonwebtoken::EncodingKey::from_secret(&w.key.public_bytes()),
    )
    .unwrap();
    refusals.push(("HS256 with the public key", hmac));
    // The attacker's key, embedded in the header it signs.
    let embedded = jsonwebtoken::Header {
        jwk: Some(serde_json::from_value(stranger.public_jwk()).unwrap()),
        ..Default::default()
    };
    refusals.push((
        "embedded jwk",
        stranger.sign_with_header(embedded, &w.claims("mallory-8")),
    ));
    // A real token, its claims changed after signing.
    let real = w.id_token("bob").await;
    let parts: Vec<&str> = real.split('.').collect();
    let mut claims = common::jwt_claims(&real);
    claims["preferred_username"] = json!("alice");
    claims["groups"] = json!(["developers"]);
    refusals.push((
        "tampered",
        format!("{}.{}.{}", parts[0], b64(&claims), parts[2]),
    ));
    for (what, token) in &refusals {
        let (status, body) = w.token("oauth2accesstoken", token, scope).await;
        assert_eq!(status, 401, "{what}: {body}");
        let expected = match *what {
            "expired" => "expired",
            "not valid yet" => "not valid yet",
            "wrong audience" => "(aud)",
            // No configured issuer: an ordinary password, wrong.
            "wrong issuer" => "incorrect username or password",
            "unknown kid" => "a key the issuer does not publish",
            "wrong key" | "tampered" => "signature is not valid",
            "alg none" => "alg none",
            "HS256 with the public key" => "HMAC",
            "embedded jwk" => "names its own key",
            other => panic!("no reason for {other}"),
        };
        let said = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(said.contains(expected), "{what}: {body}");
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED", "{what}: {body}");
        assert!(body.get("token").is_none(), "{what}");
    }
    // The real token itself still logs in: refusals throttled only
    // themselves.
    let (status, body) = w.token("oauth2accesstoken", &real, scope).await;
    assert_eq!(status, 200, "{body}");
    w.log.wait_for(&["token issued", "sso-bob"]);
    for (what, token) in refusals.iter().chain([&("real", real.clone())]) {
        let signature = token.rsplit('.').next().unwrap();
        if signature.len() > 16 {
            assert_eq!(
                w.log.count(signature),
                0,
                "{what}: tokens never reach the log"
            );
        }
    }
}

#[tokio::test]
async fn the_issuers_new_key_is_used_without_a_restart() {
    let mut w = start("");
    let before = w.id_token("alice").await;
    let (status, body) = w
        .token("alice", &before, "repository:sso-alice/x:pull")
        .await;
    assert_eq!(status, 200, "{body}");
    let rotated = SigningKey::generate("key-2");
    w.provider.restart_with(&rotated);
    let after = w.id_token("alice").await;
    assert_eq!(
        jsonwebtoken::decode_header(&after).unwrap().kid.as_deref(),
        Some("key-2")
    );
    let (status, body) = w
        .token("alice", &after, "repository:sso-alice/x:pull")
        .await;
    assert_eq!(
        status, 200,
        "the new key is fetched on its first token: {body}"
    );
    // The old key is gone from the set: a token it signs now is refused.
    let mut stale = w.claims("alice-old");
    stale["preferred_username"] = json!("alice");
    let (status, body) = w
        .token("alice", &w.key.sign(&stale), "repository:sso-alice/x:pull")
        .await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn claims_decide_what_a_pipeline_may_push() {
    let w = start("");
    let main = w.id_token("ci-main").await;
    let pr = w.id_token("ci-pr").await;
    let scope = "repository:prod/app/web:push,pull repository:ci/app/web:push,pull";
    let (status, body) = w.token("oauth2accesstoken", &main, scope).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(granted(&body, "prod/app/web"), ["pull", "push"]);
    assert_eq!(granted(&body, "ci/app/web"), ["pull", "push"]);
    let (status, body) = w.token("oauth2accesstoken", &pr, scope).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        granted(&body, "prod/app/web").is_empty(),
        "a pull request never pushes production: {body}"
    );
    assert_eq!(granted(&body, "ci/app/web"), ["pull", "push"]);
    // The same claims from a password user match nothing: claims bind to
    // the issuer that signed them.
    let (status, body) = w.token("carol", "carol-password", scope).await;
    assert_eq!(status, 200, "{body}");
    assert!(granted(&body, "prod/app/web").is_empty());
    assert!(granted(&body, "ci/app/web").is_empty());
}

#[test]
fn skopeo_pushes_with_an_id_token_as_the_password() {
    common::clients::require("skopeo");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let w = start("username = \"oauth2accesstoken\"\n");
    let (main, pr) =
        runtime.block_on(async { (w.id_token("ci-main").await, w.id_token("ci-pr").await) });
    let env = common::clients::ClientEnv::new(&w.server.host);
    let src = env.path("src");
    common::oci::write_layout(&src, "v1", &[10_000, 40_000]);
    assert!(
        env.login("skopeo", "ci", &main).is_err(),
        "the configured user name is required"
    );
    env.login("skopeo", "oauth2accesstoken", &main)
        .expect("skopeo login with the ID token");
    env.skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--authfile",
        env.auth_file().to_str().unwrap(),
        &common::oci::oci_ref(&src, "v1"),
        &env.docker_ref("prod/app/web:v1"),
    ]);
    let creds = format!("oauth2accesstoken:{pr}");
    let out = env.skopeo_fails(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &common::oci::oci_ref(&src, "v1"),
        &env.docker_ref("prod/app/web:v2"),
    ]);
    let said = common::clients::stderr_of(&out);
    assert!(
        said.contains("denied") || said.contains("authorization") || said.contains("401"),
        "{said}"
    );
    env.skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &common::oci::oci_ref(&src, "v1"),
        &env.docker_ref("ci/app/web:pr-7"),
    ]);
    drop(w.dir);
}

#[tokio::test]
async fn an_unreachable_issuer_answers_503_and_other_logins_go_on() {
    let mut w = start("timeout_secs = 2\n");
    let token = w.key.sign(&w.claims("alice"));
    w.provider.stop();
    let (status, body) = w
        .token("oauth2accesstoken", &token, "repository:sso-alice/x:pull")
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
    let (status, body) = w
        .token("carol", "carol-password", "repository:carol/x:push")
        .await;
    assert_eq!(status, 200, "the users file is not the issuer: {body}");
    w.log.wait_for(&["issuer keys not fetched", "sso"]);
}
