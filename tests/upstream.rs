//! Repository prefixes served by an upstream registry: distribution 2.8
//! (Debian's `docker-registry`, `common::registry_process`) behind
//! Portcullis, open, behind its own htpasswd, and trusting a second
//! Portcullis as its token server. skopeo pushes and pulls under the
//! prefix through Portcullis, whose policies decide; the upstream sees
//! Portcullis' account, and its address never reaches the client.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common;

use common::clients::{self, ClientEnv};
use common::distribution::TokenRegistry;
use common::oci::{layout_blobs, oci_ref, write_layout};
use common::process::{ServerProcess, config_in, run_in};
use common::registry_process::{Auth, Distribution};
use serde_json::Value;

const ALICE: (&str, &str) = ("alice", "alice-upstream-pw");
const BOB: (&str, &str) = ("bob", "bob-upstream-pw");

/// alice pushes under the prefix, bob only pulls, anonymous callers
/// nothing.
const POLICY: &str = r#"
[[rule]]
description = "alice pushes through the upstream"
users = ["alice"]
repositories = ["mirror/**"]
actions = ["pull", "push", "delete"]

[[rule]]
description = "users pull and list"
users = ["*"]
repositories = ["**"]
actions = ["pull"]
catalog = true
"#;

const LAYER_SIZES: &[usize] = &[20_000, 1_200_000];

/// A Portcullis of its own in `dir`, with alice and bob, [`POLICY`] and
/// `upstream` (the `[[upstream]]` table's body).
fn gateway(dir: &Path, upstream: &str) -> ServerProcess {
    let config = configure(dir, upstream);
    ServerProcess::start_with(&["--config", config.to_str().unwrap()])
}

/// [`gateway`]'s configuration, written; its path.
fn configure(dir: &Path, upstream: &str) -> PathBuf {
    let config = config_in(dir);
    std::fs::write(dir.join("policies/10-upstream.toml"), POLICY).unwrap();
    for (name, password) in [ALICE, BOB] {
        run_in(dir, &["user", "add", name], &format!("{password}\n"));
    }
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[[upstream]]\n{upstream}"));
    std::fs::write(&config, text).unwrap();
    config
}

/// [`gateway`] logging as `filter` says, its log read line by line.
fn gateway_logged(dir: &Path, upstream: &str, filter: &str) -> (ServerProcess, crate::logs::Log) {
    let config = configure(dir, upstream);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("PORTCULLIS_LOG", filter)
        .stderr(std::process::Stdio::piped());
    let mut server = ServerProcess::spawn(command);
    let log = crate::logs::Log::of(&mut server);
    (server, log)
}

/// distribution over `dir`'s `registry-data`, checking clients as `auth` says.
fn upstream_registry(dir: &Path, auth: Auth) -> Distribution {
    Distribution::start(&dir.join("registry.yml"), &dir.join("registry-data"), auth)
}

/// [`gateway`] reaching `registry` with the account `user` (its password
/// in a file of `dir`'s).
fn gateway_with_account(
    dir: &Path,
    registry: &Distribution,
    user: &str,
    password: &str,
) -> ServerProcess {
    let password_file = dir.join("upstream-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let account = format!(
        "username = \"{user}\"\npassword_file = {:?}\n",
        password_file.to_str().unwrap()
    );
    gateway(dir, &upstream_table(registry, &account))
}

/// alice pushes `mirror/team/app:v1` through `server` and pulls it back
/// byte for byte.
async fn alice_round_trip(server: &ServerProcess) {
    let alice = client(server, ALICE);
    blocking(move || {
        let (src, _) = push(&alice, "mirror/team/app:v1");
        pull_same(&alice, "mirror/team/app:v1", &src);
    })
    .await;
}

/// A pull through `server` whose upstream refuses Portcullis' account:
/// a 503 from Portcullis, and no challenge sending the client upstream.
async fn assert_upstream_refuses_portcullis(server: &ServerProcess) {
    let pull = token(server, BOB, "repository:mirror/team/app:pull").await;
    let refused = reqwest::Client::new()
        .get(server.at("/v2/mirror/team/app/manifests/v1"))
        .bearer_auth(&pull)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().get("www-authenticate").is_none());
    let body = refused.text().await.unwrap();
    assert!(body.contains("refused Portcullis' credentials"), "{body}");
}

fn upstream_table(registry: &Distribution, extra: &str) -> String {
    format!(
        "name = \"dist\"\nprefix = \"mirror\"\nurl = \"{}\"\npush = true\n{extra}",
        registry.url
    )
}

/// skopeo for `server`, logged in as `user`.
fn client(server: &ServerProcess, (user, password): (&str, &str)) -> ClientEnv {
    let env = ClientEnv::new(&server.host);
    env.login("skopeo", user, password).expect("login");
    env
}

/// Pushes a fresh layout as `env`'s user to `name`; returns the layout's
/// directory and its manifest digest.
fn push(env: &ClientEnv, name: &str) -> (PathBuf, String) {
    let src = env.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);
    env.skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &oci_ref(&src, "v1"),
        &env.docker_ref(name),
    ]);
    (src, layout.manifest_digest)
}

/// Pulls `name` into a fresh layout and asserts that every blob is
/// byte-identical to `src`'s.
fn pull_same(env: &ClientEnv, name: &str, src: &Path) {
    let dst = env.path("dst");
    let _ = std::fs::remove_dir_all(&dst);
    env.skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &env.docker_ref(name),
        &oci_ref(&dst, "v1"),
    ]);
    assert_eq!(layout_blobs(&dst), layout_blobs(src));
}

async fn json(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

/// An access token for `scope` from `server`.
async fn token(server: &ServerProcess, (user, password): (&str, &str), scope: &str) -> String {
    let res = reqwest::Client::new()
        .get(server.at(&format!("/token?service=portcullis&scope={scope}")))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    json(res).await["token"].as_str().unwrap().to_owned()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn an_open_upstream_serves_its_prefix_under_portcullis_policies() {
    clients::require("skopeo");
    let dir = tempfile::tempdir().unwrap();
    let mut registry = upstream_registry(dir.path(), Auth::Open);
    let server = gateway(dir.path(), &upstream_table(&registry, "catalog = true\n"));

    // alice pushes under the prefix: the image lands upstream, prefix
    // stripped, and comes back byte for byte.
    let alice = client(&server, ALICE);
    let (alice, src, digest) = blocking(move || {
        let (src, digest) = push(&alice, "mirror/team/app:v1");
        pull_same(&alice, "mirror/team/app:v1", &src);
        (alice, src, digest)
    })
    .await;
    let http = reqwest::Client::new();
    let upstream_tags = json(
        http.get(registry.at("/v2/team/app/tags/list"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(upstream_tags["tags"], serde_json::json!(["v1"]));

    // Through Portcullis the tag list carries the client's name.
    let pull = token(&server, BOB, "repository:mirror/team/app:pull").await;
    let tags = http
        .get(server.at("/v2/mirror/team/app/tags/list"))
        .bearer_auth(&pull)
        .send()
        .await
        .unwrap();
    assert_eq!(tags.status(), 200);
    let tags = json(tags).await;
    assert_eq!(tags["name"], "mirror/team/app");
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    let manifest = http
        .head(server.at("/v2/mirror/team/app/manifests/v1"))
        .bearer_auth(&pull)
        .header("accept", common::oci::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    assert_eq!(
        common::header_str(&manifest, "docker-content-digest"),
        digest
    );

    // A range of a layer passes through.
    let layers = layout_blobs(&src);
    let (layer, size) = layers
        .iter()
        .max_by_key(|(_, size)| **size)
        .map(|(d, s)| (d.clone(), *s))
        .unwrap();
    let ranged = http
        .get(server.at(&format!("/v2/mirror/team/app/blobs/{layer}")))
        .bearer_auth(&pull)
        .header("range", "bytes=100-1123")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        common::header_str(&ranged, "content-range"),
        format!("bytes 100-1123/{size}")
    );
    let part = ranged.bytes().await.unwrap();
    let whole = std::fs::read(
        src.join("blobs/sha256")
            .join(layer.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert_eq!(part[..], whole[100..1124]);

    // The catalog lists the upstream's repositories under the prefix,
    // beside the built-in storage's own (empty here).
    let catalog_token = token(&server, BOB, "registry:catalog:*").await;
    let catalog = http
        .get(server.at("/v2/_catalog"))
        .bearer_auth(&catalog_token)
        .send()
        .await
        .unwrap();
    assert_eq!(catalog.status(), 200);
    assert_eq!(
        json(catalog).await["repositories"],
        serde_json::json!(["mirror/team/app"])
    );

    // bob may pull but not push: his push is refused by Portcullis and
    // never reaches the upstream.
    let bob = client(&server, BOB);
    let refused = blocking(move || {
        write_layout(&bob.path("src"), "v1", LAYER_SIZES);
        bob.skopeo_fails(&[
            "copy",
            "--dest-tls-verify=false",
            &oci_ref(&bob.path("src"), "v1"),
            &bob.docker_ref("mirror/bob/app:v1"),
        ])
    })
    .await;
    let said = clients::stderr_of(&refused);
    assert!(
        said.contains("denied") || said.contains("unauthorized"),
        "{said}"
    );
    // (Its reads were his to make: skopeo looks for the blobs first.)
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        assert_eq!(
            registry.requests(method, "bob/app"),
            0,
            "{}",
            registry.logs()
        );
    }

    // An upload's Location is Portcullis', under the client's name.
    let push_token = token(&server, ALICE, "repository:mirror/team/app:pull,push").await;
    let started = http
        .post(server.at("/v2/mirror/team/app/blobs/uploads/"))
        .bearer_auth(&push_token)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = common::header_str(&started, "location").to_owned();
    assert!(
        location.starts_with(&format!("{}/v2/mirror/team/app/blobs/uploads/", server.url)),
        "{location}"
    );
    assert!(!location.contains(&registry.host), "{location}");
    for (name, value) in started.headers() {
        let value = value.to_str().unwrap_or_default();
        assert!(
            !value.contains(&registry.host),
            "{name}: {value} names the upstream"
        );
    }
    let cancelled = http
        .delete(&location)
        .bearer_auth(&push_token)
        .send()
        .await
        .unwrap();
    assert!(cancelled.status().is_success(), "{}", cancelled.status());

    // The upstream stopped: a clear 503 that does not say where it was.
    registry.stop();
    let down = http
        .get(server.at("/v2/mirror/team/app/manifests/v1"))
        .bearer_auth(&pull)
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 503);
    let body = down.text().await.unwrap();
    assert!(
        body.contains("UNAVAILABLE") && body.contains("`dist`"),
        "{body}"
    );
    assert!(!body.contains(&registry.host), "{body}");
    drop((alice, src));
}

#[tokio::test]
async fn a_prefix_without_push_refuses_every_write_before_looking_at_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let registry = upstream_registry(dir.path(), Auth::Open);
    let server = gateway(
        dir.path(),
        &format!(
            "name = \"ro\"\nprefix = \"mirror\"\nurl = \"{}\"\n",
            registry.url
        ),
    );
    let push = token(
        &server,
        ALICE,
        "repository:mirror/team/app:pull,push,delete",
    )
    .await;
    let http = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::POST, "/v2/mirror/team/app/blobs/uploads/"),
        (reqwest::Method::PUT, "/v2/mirror/team/app/manifests/v1"),
        (reqwest::Method::DELETE, "/v2/mirror/team/app/manifests/v1"),
    ] {
        let res = http
            .request(method.clone(), server.at(path))
            .bearer_auth(&push)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{method} {path}");
        let body = res.text().await.unwrap();
        assert!(
            body.contains("UNSUPPORTED") && body.contains("`ro`"),
            "{body}"
        );
    }
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        assert_eq!(
            registry.requests(method, "team/app"),
            0,
            "{}",
            registry.logs()
        );
    }
}

#[tokio::test]
async fn an_upstream_behind_htpasswd_sees_portcullis_account_never_the_clients() {
    clients::require("skopeo");
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("portcullis-at-upstream", 5).unwrap();
    std::fs::write(&htpasswd, format!("portcullis:{hash}\n")).unwrap();
    let registry = upstream_registry(dir.path(), Auth::Htpasswd(&htpasswd));
    let server = gateway_with_account(
        dir.path(),
        &registry,
        "portcullis",
        "portcullis-at-upstream",
    );
    alice_round_trip(&server).await;

    // The wrong password: Portcullis says the upstream refused it, and the
    // client is not sent to the upstream's realm.
    let dir2 = tempfile::tempdir().unwrap();
    let server2 = gateway_with_account(dir2.path(), &registry, "portcullis", "wrong");
    assert_upstream_refuses_portcullis(&server2).await;
}

#[tokio::test]
async fn an_upstream_with_its_own_token_server_gets_portcullis_tokens_from_it() {
    clients::require("skopeo");
    // The upstream's token server is a second Portcullis, where the front
    // door has an account that may push `team/**`.
    let issuer_dir = tempfile::tempdir().unwrap();
    let issuer_config = config_in(issuer_dir.path());
    std::fs::write(
        issuer_dir.path().join("policies/10-front.toml"),
        "[[rule]]\nusers = [\"front-door\"]\nrepositories = [\"team/**\"]\nactions = [\"pull\", \"push\"]\n",
    )
    .unwrap();
    run_in(
        issuer_dir.path(),
        &["user", "add", "front-door"],
        "front-door-pw\n",
    );
    let issuer = ServerProcess::start_with(&["--config", issuer_config.to_str().unwrap()]);
    // Its key and bundle exist once it has started.
    let bundle = issuer_dir.path().join("certs/bundle.crt");
    let block = TokenRegistry {
        log: "",
        addr: "",
        secret: "",
        root: Path::new(""),
        realm: &format!("{}/token", issuer.url),
        service: "portcullis",
        issuer: "portcullis",
        bundle: &bundle,
    }
    .auth_yaml();
    let dir = tempfile::tempdir().unwrap();
    let registry = upstream_registry(dir.path(), Auth::Token(block));
    let server = gateway_with_account(dir.path(), &registry, "front-door", "front-door-pw");
    alice_round_trip(&server).await;

    // A wrong password: the upstream's token server refuses Portcullis, and
    // the client hears it from Portcullis, not the upstream's realm.
    let dir2 = tempfile::tempdir().unwrap();
    let wrong = gateway_with_account(dir2.path(), &registry, "front-door", "wrong");
    assert_upstream_refuses_portcullis(&wrong).await;
    drop(issuer);
}

/// Pushes `data` as a blob of `repo` straight to an open distribution.
pub(crate) async fn put_blob(registry: &Distribution, repo: &str, data: Vec<u8>) -> String {
    let digest = common::sha256(&data);
    let http = reqwest::Client::new();
    let started = http
        .post(registry.at(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = common::header_str(&started, "location").to_owned();
    let separator = if location.contains('?') { '&' } else { '?' };
    let done = http
        .put(format!("{location}{separator}digest={digest}"))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201, "{}", registry.logs());
    digest
}

/// The digest `server` answers for `path` (a manifest) with `token`.
async fn head_digest(server: &ServerProcess, path: &str, token: &str) -> String {
    let res = reqwest::Client::new()
        .head(server.at(path))
        .bearer_auth(token)
        .header("accept", common::oci::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{path}");
    common::header_str(&res, "docker-content-digest").to_owned()
}

#[tokio::test]
async fn a_pull_through_cache_serves_what_it_pulled_once_even_with_the_upstream_stopped() {
    clients::require("skopeo");
    const AGE_SECS: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let mut registry = upstream_registry(dir.path(), Auth::Open);
    // The upstream's image, pushed to it directly.
    let publisher = ClientEnv::new(&registry.host);
    let upstream_ref = publisher.docker_ref("library/app:v1");
    let (publisher, src, layout) = blocking(move || {
        let src = publisher.path("src");
        let layout = write_layout(&src, "v1", LAYER_SIZES);
        publisher.skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &oci_ref(&src, "v1"),
            &upstream_ref,
        ]);
        (publisher, src, layout)
    })
    .await;
    let server = gateway(
        dir.path(),
        &format!(
            "name = \"hub\"\nprefix = \"cache\"\nurl = \"{}\"\ndefault_namespace = \"library\"\n\
             [upstream.cache]\ntag_max_age_secs = {AGE_SECS}\n",
            registry.url
        ),
    );

    // No token, no pull: the cache is behind the same policies.
    let http = reqwest::Client::new();
    let anonymous = http
        .get(server.at("/v2/cache/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // The first pull goes upstream once per blob.
    let bob = client(&server, BOB);
    let first_pull = Instant::now();
    let bob = blocking({
        let src = src.clone();
        move || {
            pull_same(&bob, "cache/app:v1", &src);
            bob
        }
    })
    .await;
    // The config and each layer went upstream once (the manifest is not a
    // blob request).
    for digest in layout.layer_digests.iter().chain([&layout.config_digest]) {
        let fetched = registry.requests("GET", &format!("/blobs/{digest}"));
        assert_eq!(fetched, 1, "{digest}\n{}", registry.logs());
    }
    let token = token(&server, BOB, "repository:cache/app:pull").await;
    let old = head_digest(&server, "/v2/cache/app/manifests/v1", &token).await;
    let misses = cache_requests(&server, "miss").await;
    assert!(
        misses >= 1.0 + LAYER_SIZES.len() as f64,
        "each blob a miss: {misses}"
    );

    // The tag moves upstream: the cache keeps the old one until it is
    // older than the age, then sees the new one.
    let new_src = publisher.path("src2");
    let upstream_ref = publisher.docker_ref("library/app:v1");
    let publisher = blocking(move || {
        write_layout(&new_src, "v1", &[30_000]);
        publisher.skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &oci_ref(&new_src, "v1"),
            &upstream_ref,
        ]);
        publisher
    })
    .await;
    if first_pull.elapsed() < Duration::from_secs(AGE_SECS) {
        assert_eq!(
            head_digest(&server, "/v2/cache/app/manifests/v1", &token).await,
            old
        );
    }
    let deadline = Instant::now() + Duration::from_secs(AGE_SECS + 15);
    let new = loop {
        let now = head_digest(&server, "/v2/cache/app/manifests/v1", &token).await;
        if now != old {
            break now;
        }
        assert!(Instant::now() < deadline, "the moved tag was never seen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(first_pull.elapsed() >= Duration::from_secs(AGE_SECS));
    assert_ne!(new, old);

    // The upstream stopped: what was pulled is still served, the old image
    // by digest byte for byte, the tag (stale now) as last seen.
    registry.stop();
    let by_digest = format!("cache/app@{old}");
    blocking(move || {
        let dst = bob.path("by-digest");
        bob.skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &bob.docker_ref(&by_digest),
            &oci_ref(&dst, "v1"),
        ]);
        assert_eq!(layout_blobs(&dst), layout_blobs(&src));
        drop(publisher);
    })
    .await;
    assert_eq!(
        head_digest(&server, "/v2/cache/app/manifests/v1", &token).await,
        new
    );
    assert!(cache_requests(&server, "hit").await >= 1.0 + LAYER_SIZES.len() as f64);
}

/// `portcullis_cache_requests_total` of the upstream `hub` for `result`.
async fn cache_requests(server: &ServerProcess, result: &str) -> f64 {
    let text = reqwest::get(server.at("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = format!("{{upstream=\"hub\",result=\"{result}\"}}");
    text.lines()
        .filter_map(|l| l.strip_prefix("portcullis_cache_requests_total"))
        .filter_map(|l| l.strip_prefix(labels.as_str()))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn two_first_pulls_of_a_big_blob_fetch_it_from_the_upstream_once() {
    let dir = tempfile::tempdir().unwrap();
    let registry = upstream_registry(dir.path(), Auth::Open);
    let mut data = vec![0u8; 48 << 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    let digest = put_blob(&registry, "library/big", data.clone()).await;
    let server = gateway(
        dir.path(),
        &format!(
            "name = \"hub\"\nprefix = \"cache\"\nurl = \"{}\"\ndefault_namespace = \"library\"\n\
             [upstream.cache]\n",
            registry.url
        ),
    );
    let token = token(&server, BOB, "repository:cache/big:pull").await;
    let url = server.at(&format!("/v2/cache/big/blobs/{digest}"));
    let pull = |url: String, token: String| async move {
        let res = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap()
    };
    let (a, b) = tokio::join!(
        tokio::spawn(pull(url.clone(), token.clone())),
        tokio::spawn(pull(url.clone(), token.clone()))
    );
    assert!(
        a.unwrap() == data && b.unwrap() == data,
        "a pull got other bytes"
    );
    assert_eq!(
        registry.requests("GET", &format!("/blobs/{digest}")),
        1,
        "{}",
        registry.logs()
    );
    // And a third is served from storage.
    assert!(pull(url, token).await == data);
    assert_eq!(registry.requests("GET", &format!("/blobs/{digest}")), 1);
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_its_ca_and_spoken_to_over_http2() {
    clients::require("skopeo");
    let dir = tempfile::tempdir().unwrap();
    let ca = common::pki::TestCa::new(&dir.path().join("pki"), "upstream-ca");
    let pair = ca.issue_server("upstream", &["127.0.0.1"]);
    let registry = Distribution::start_with_tls(
        &dir.path().join("registry.yml"),
        &dir.path().join("registry-data"),
        Auth::Open,
        Some((&pair.cert, &pair.key)),
    );
    assert!(registry.url.starts_with("https://"));
    let upstream = format!(
        "name = \"tls\"\nprefix = \"mirror\"\nurl = \"{}\"\npush = true\nca_file = {:?}\n",
        registry.url,
        ca.cert.to_str().unwrap()
    );
    let (server, mut log) = gateway_logged(
        dir.path(),
        &upstream,
        "warn,portcullis::api::upstream=debug",
    );
    alice_round_trip(&server).await;
    let line = log.wait_for(&["upstream answered", "upstream=tls"]);
    assert!(line.contains("version=HTTP/2.0"), "{line}");
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_a_503_within_its_timeout() {
    // A hand-written stand-in (distribution cannot be made to hang): it
    // answers the `GET /v2/` probe, open, on the connection's first
    // request, and never writes a byte for anything else.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((mut socket, _)) = silent.accept().await {
            let mut head = [0u8; 4096];
            let n = socket.read(&mut head).await.unwrap_or(0);
            if head[..n].starts_with(b"GET /v2/ ") {
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
            }
            open.push(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(
        dir.path(),
        &format!(
            "name = \"silent\"\nprefix = \"mirror\"\nurl = \"http://{addr}\"\ntimeout_secs = 1\n"
        ),
    );
    let pull = token(&server, BOB, "repository:mirror/team/app:pull").await;
    // A manifest on the pooled path, a whole blob on a connection of its
    // own (the relay's).
    let blob = format!("/v2/mirror/team/app/blobs/sha256:{}", "a".repeat(64));
    for path in ["/v2/mirror/team/app/manifests/v1", blob.as_str()] {
        let started = Instant::now();
        let res = reqwest::Client::new()
            .get(server.at(path))
            .bearer_auth(&pull)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 503, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path}: {:?}",
            started.elapsed()
        );
        let body = res.text().await.unwrap();
        assert!(
            body.contains("`silent` did not answer in time"),
            "{path}: {body}"
        );
        assert!(!body.contains(&addr.port().to_string()), "{path}: {body}");
    }
    held.abort();
}

#[tokio::test]
async fn the_request_log_says_which_upstream_answered_and_whether_the_cache_had_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = upstream_registry(dir.path(), Auth::Open);
    let digest = put_blob(&registry, "library/app", b"a small blob".to_vec()).await;
    let upstreams = format!(
        "name = \"hub\"\nprefix = \"cache\"\nurl = \"{0}\"\ndefault_namespace = \"library\"\n\
         [upstream.cache]\n\n[[upstream]]\nname = \"plain\"\nprefix = \"up\"\nurl = \"{0}\"\n",
        registry.url
    );
    let (server, mut log) = gateway_logged(dir.path(), &upstreams, "warn,tower_http=debug");
    let http = reqwest::Client::new();
    for (repo, backend) in [
        ("cache/app", "cache-miss:hub"),
        ("cache/app", "cache-hit:hub"),
        ("up/library/app", "upstream:plain"),
    ] {
        let pull = token(&server, BOB, &format!("repository:{repo}:pull")).await;
        let path = format!("/v2/{repo}/blobs/{digest}");
        let res = http
            .get(server.at(&path))
            .bearer_auth(&pull)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(&res.bytes().await.unwrap()[..], b"a small blob");
        let line = log.wait_for(&["finished processing request", &format!("uri={path}")]);
        assert!(line.contains(&format!("backend=\"{backend}\"")), "{line}");
    }
}

/// A blob pulled whole through a plain-HTTP upstream from a plain-HTTP/1
/// client is spliced from the upstream's socket to the client's, byte for
/// byte, pull after pull; a range of it takes the pooled path; a blob the
/// upstream does not have is its 404, asked again on the pooled path, never
/// a relayed error page; the upstream stopped, a whole-blob pull is the
/// clear 503 of the pooled path.
#[tokio::test]
async fn a_blob_pulled_through_a_plain_upstream_is_spliced_to_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = upstream_registry(dir.path(), Auth::Open);
    // Larger than a window of the connection's marker frames (4 MiB).
    let data: Vec<u8> = (0..6 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let digest = put_blob(&registry, "team/big", data.clone()).await;
    let (server, mut log) = gateway_logged(
        dir.path(),
        &upstream_table(&registry, ""),
        "warn,portcullis::serve=debug",
    );
    let pull = token(&server, BOB, "repository:mirror/team/big:pull").await;
    let path = format!("/v2/mirror/team/big/blobs/{digest}");
    let http = reqwest::Client::new();
    for round in 0..2 {
        let res = http
            .get(server.at(&path))
            .bearer_auth(&pull)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{round}");
        assert_eq!(
            common::header_str(&res, "content-length"),
            data.len().to_string(),
            "{round}"
        );
        assert_eq!(
            common::header_str(&res, "docker-content-digest"),
            digest,
            "{round}"
        );
        let body = res.bytes().await.unwrap();
        assert!(body[..] == data[..], "{round}: the bytes differ");
        let line = log.wait_for(&["upstream blob sent"]);
        assert!(line.contains(r#"path="splice""#), "{round}: {line}");
        assert!(
            line.contains(&format!("bytes={}", data.len())),
            "{round}: {line}"
        );
    }

    let ranged = http
        .get(server.at(&path))
        .bearer_auth(&pull)
        .header("range", "bytes=5000000-5001023")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.bytes().await.unwrap()[..],
        data[5_000_000..5_001_024]
    );

    let missing = format!("sha256:{}", "0".repeat(64));
    let res = http
        .get(server.at(&format!("/v2/mirror/team/big/blobs/{missing}")))
        .bearer_auth(&pull)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let line = log.wait_for(&["upstream blob sent"]);
    assert!(line.contains(r#"path="copy""#), "{line}");
    assert!(line.contains(r#"why="status""#), "{line}");
    let body = res.text().await.unwrap();
    assert!(body.contains("BLOB_UNKNOWN"), "{body}");
    assert!(!body.contains(&registry.url), "{body}");

    registry.stop();
    let down = http
        .get(server.at(&path))
        .bearer_auth(&pull)
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 503);
    let body = down.text().await.unwrap();
    assert!(body.contains("`dist` is unreachable"), "{body}");
    assert!(!body.contains(&registry.host), "{body}");
}
