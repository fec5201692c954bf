//! Section `sso`: token issuance when the credential is an OpenID Connect
//! ID token (a CI job's) or a personal access token, beside the password
//! row of the `tokens` section.
//!
//! The issuer here is a static discovery document and key set served from
//! this process: Portcullis reads them once and keeps the keys (the "cached
//! JWKS" the figure is about), so what an issuer does beyond serving two
//! documents never enters the measured path. The tests drive a real
//! OpenID provider (`tests/oidc.rs`); the bench measures Portcullis.
//!
//! A second Portcullis is started for it, on the first one's users,
//! policy and keys plus the issuer, with storage of its own for the
//! access token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use data_encoding::{BASE64, BASE64URL_NOPAD};
use serde_json::{Value, json};

use crate::Options;
use crate::report::{Better, Row};
use crate::servers::{self, Servers};
use crate::small::wrk;

const AUDIENCE: &str = "registry";
const REPOSITORY: &str = "bench-sso/app";
/// Fresh tokens verified one after another for the in-process row.
const VERIFICATIONS: usize = 2000;

const OIDC_NOTE: &str = "the same ID token on every request, as a CI job's logins for its \
    repositories: verified once (ES256 against the cached key set), then remembered until it \
    expires (a minute at most), so each request costs HTTP, the limiter, the policy with the \
    token's claims and the signature made once per second (as in the password row)";
const FRESH_NOTE: &str = "what a token seen for the first time adds: its header checked, the \
    key found by kid in the cached set, the ES256 signature and claims verified \
    (`Issuer::verify_token` called in the harness, a new token each time)";
const PAT_NOTE: &str = "every request reads the token's record from storage (no cache, so \
    that a revocation holds at once on every replica), compares the secret's SHA-256 in \
    constant time, looks the owner up in the users file and applies the policy; the signature \
    is made once per second";

/// An issuer's signing key and what it publishes.
struct TestIssuer {
    key: EcdsaKeyPair,
    url: String,
}

impl TestIssuer {
    fn sign(&self, sub: &str, exp: u64) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "bench-1"});
        let claims = json!({"iss": self.url, "sub": sub, "aud": AUDIENCE, "exp": exp,
            "iat": portcullis::auth::token::now(), "repository": "org/app",
            "ref": "refs/heads/main"});
        let input = format!(
            "{}.{}",
            BASE64URL_NOPAD.encode(header.to_string().as_bytes()),
            BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = self.key.sign(&rng, input.as_bytes()).expect("sign");
        format!("{input}.{}", BASE64URL_NOPAD.encode(signature.as_ref()))
    }

    fn jwk(&self) -> Value {
        // An uncompressed P-256 point: 0x04, x, y.
        let point = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "bench-1",
            "x": BASE64URL_NOPAD.encode(&point[1..33]), "y": BASE64URL_NOPAD.encode(&point[33..65])})
    }
}

/// Serves the discovery document and the key set on 127.0.0.1.
async fn serve_issuer() -> Arc<TestIssuer> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .expect("key pair");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let issuer = Arc::new(TestIssuer { key, url });
    let discovery = axum_json(
        json!({"issuer": issuer.url, "jwks_uri": format!("{}/jwks", issuer.url),
        "authorization_endpoint": format!("{}/auth", issuer.url),
        "token_endpoint": format!("{}/token", issuer.url)}),
    );
    let jwks = axum_json(json!({"keys": [issuer.jwk()]}));
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || async move { discovery }),
        )
        .route("/jwks", axum::routing::get(move || async move { jwks }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    issuer
}

/// A JSON answer (axum is built without its `json` feature).
fn axum_json(value: Value) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
}

fn oidc_config(issuer: &str) -> String {
    format!(
        "[[identity.oidc]]\nname = \"ci\"\nissuer = \"{issuer}\"\naudiences = [\"{AUDIENCE}\"]\n\
         username = \"oauth2accesstoken\"\nprefix = \"ci-\"\nallow_http = true\n"
    )
}

/// The second Portcullis' configuration: the first one's, with the issuer
/// and storage of its own.
fn write_config(servers: &Servers, issuer: &str) -> PathBuf {
    let dir = servers.path("sso");
    std::fs::create_dir_all(dir.join("policies")).expect("sso dir");
    let first = servers.path("portcullis");
    std::fs::write(
        dir.join("policies/10-bench.toml"),
        format!(
            "[[rule]]\nsources = [\"ci\"]\nclaims = {{ repository = \"org/app\", ref = \"refs/heads/main\" }}\n\
             repositories = [\"bench-sso/**\"]\nactions = [\"pull\", \"push\"]\n\n\
             [[rule]]\nusers = [\"{}\"]\nrepositories = [\"bench-sso/**\"]\nactions = [\"pull\", \"push\"]\n",
            servers::USER
        ),
    )
    .expect("policy");
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"warn\"\n[storage]\nroot = {:?}\n[token]\nissuer = \"{}\"\nservice = \"{}\"\n\
             key_dir = {:?}\n[users]\nfile = {:?}\n[policy]\ndir = {:?}\n{}",
            dir.join("data"),
            servers::ISSUER,
            servers::SERVICE,
            first.join("certs"),
            first.join("users.toml"),
            dir.join("policies"),
            oidc_config(issuer),
        ),
    )
    .expect("config");
    config
}

pub async fn run(servers: &Servers, _options: &Options) -> Vec<Row> {
    let issuer = serve_issuer().await;
    let config = write_config(servers, &issuer.url);
    let pat = {
        let out = std::process::Command::new(&servers.binary)
            .args([
                "token",
                "create",
                "--user",
                servers::USER,
                "--name",
                "bench",
            ])
            .arg("--config")
            .arg(&config)
            .output()
            .expect("token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("token")
            .trim()
            .to_owned()
    };
    let (_proc, target) = servers.start_portcullis_on(&config, "portcullis (sso)", None);
    let url = format!(
        "{}/token?service={}&scope=repository:{REPOSITORY}:pull,push",
        target.url,
        servers::SERVICE
    );
    let client = reqwest::Client::new();
    let now = portcullis::auth::token::now();
    let id_token = issuer.sign("pipeline-1", now + 3600);
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            BASE64.encode(format!("{user}:{password}").as_bytes())
        )
    };
    let oidc = basic("oauth2accesstoken", &id_token);
    let pat = basic(servers::USER, &pat);
    // Each credential once first: it must be granted push, or wrk would
    // time refusals.
    for credential in [&oidc, &pat] {
        let res = client
            .get(&url)
            .header("authorization", credential)
            .send()
            .await
            .expect("token request");
        assert_eq!(res.status(), reqwest::StatusCode::OK, "token request");
        let body: Value = res.json().await.expect("token json");
        let claims = body["token"]
            .as_str()
            .expect("token")
            .split('.')
            .nth(1)
            .map(|p| {
                serde_json::from_slice::<Value>(&BASE64URL_NOPAD.decode(p.as_bytes()).unwrap())
                    .unwrap()
            });
        assert!(
            claims.is_some_and(|c| c["access"].to_string().contains("push")),
            "the credential is granted push"
        );
    }
    let header = format!("Authorization: {oidc}");
    let with_oidc = wrk(&url, &[header.as_str()]).await;
    let header = format!("Authorization: {pat}");
    let with_pat = wrk(&url, &[header.as_str()]).await;
    let fresh_us = fresh_verification_us(&issuer).await;
    vec![
        Row::new(
            "token issuance, OIDC ID token (cached JWKS), 64 connections",
            "req/s",
            with_oidc.requests_per_sec,
            Better::Higher,
        )
        .target(10_000.0)
        .note(OIDC_NOTE),
        Row::new(
            "OIDC ID token verification, token not seen before (in-process)",
            "µs",
            fresh_us,
            Better::Lower,
        )
        .note(FRESH_NOTE),
        Row::new(
            "token issuance, personal access token, 64 connections",
            "req/s",
            with_pat.requests_per_sec,
            Better::Higher,
        )
        .target(10_000.0)
        .note(PAT_NOTE),
    ]
}

/// Median time of one verification of a token the issuer has not seen.
async fn fresh_verification_us(issuer: &TestIssuer) -> f64 {
    let config = portcullis::config::Config::parse(&oidc_config(&issuer.url)).expect("config");
    let verifier =
        portcullis::auth::identity::oidc::Issuer::new(&config.identity.oidc[0]).expect("issuer");
    let exp = portcullis::auth::token::now() + 3600;
    let tokens: Vec<String> = (0..VERIFICATIONS)
        .map(|i| issuer.sign(&format!("pipeline-{i}"), exp))
        .collect();
    // The keys fetched once, as the server has them.
    verifier.verify_token(&tokens[0]).await.expect("verified");
    let mut times = Vec::with_capacity(VERIFICATIONS);
    for token in &tokens[1..] {
        let start = Instant::now();
        verifier.verify_token(token).await.expect("verified");
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
