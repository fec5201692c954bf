//! Interoperability with an external registry: Debian's `docker-registry`
//! (distribution 2.8) configured to trust Portcullis' tokens
//! (`auth.token.rootcertbundle` = Portcullis' `bundle.crt`, matching `issuer`
//! and `service`, `realm` = Portcullis' `/token`). Real clients (skopeo) and
//! raw HTTP requests go to distribution, get their tokens from Portcullis,
//! and are let in or turned away as Portcullis' policy says.
//!
//! These tests never skip: a missing `docker-registry` or `skopeo` is a
//! failure that says how to install them, so a machine without them cannot
//! report a green run that tested nothing.

use crate::common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::clients::ClientEnv;
use common::distribution::TokenRegistry;
use common::oci::{
    OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST, layout_blobs, layout_tag_digest, oci_ref,
    sha256_digest, write_layout,
};
use common::process::ServerProcess;
use common::registry_process::{DISTRIBUTION, Distribution};
use data_encoding::BASE64URL_NOPAD;
use portcullis::auth::keys::{self, KeyKind, KeyRing};
use portcullis::auth::scope::AccessEntry;
use portcullis::auth::token::Claims;
use rand::RngCore;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Deliberately different from each other and from the defaults, so that a
/// mix-up between issuer and service (or a default left in place) fails.
const ISSUER: &str = "portcullis-interop-issuer";
const SERVICE: &str = "interop-registry";

const ALICE: (&str, &str) = ("alice", "alice-secret-pw");
const BOB: (&str, &str) = ("bob", "bob-secret-pw");

/// Two uncompressed tar layers: one small, one over a MiB, so that uploads
/// are not all single small requests.
const LAYER_SIZES: &[usize] = &[50_000, 1_500_000];

// ---------------------------------------------------------------------------
// Portcullis: configuration, users, policy, keys
// ---------------------------------------------------------------------------

/// The policy under test, first match wins:
/// - alice owns `public/**` (so there is something to pull anonymously),
/// - every user pushes to their own namespace,
/// - every user pulls everything,
/// - anonymous callers pull `public/**` and nothing else.
const POLICY: &str = r#"
[[rule]]
description = "alice publishes"
users = ["alice"]
repositories = ["public/**"]
actions = ["pull", "push"]

[[rule]]
description = "users push to their own namespace"
users = ["*"]
repositories = ["${user}/**"]
actions = ["pull", "push"]

[[rule]]
description = "users pull everything"
users = ["*"]
repositories = ["**"]
actions = ["pull"]

[[rule]]
description = "anonymous pulls public images"
anonymous = true
repositories = ["public/**"]
actions = ["pull"]
"#;

/// Everything one test owns, in one temporary directory: Portcullis'
/// configuration, keys, users and policy, distribution's configuration and
/// storage, and the clients' private configuration.
struct Setup {
    dir: TempDir,
}

impl Setup {
    fn new() -> Self {
        Self::with_key(KeyKind::Es256)
    }

    fn with_key(kind: KeyKind) -> Self {
        require_tools();
        let dir = tempfile::tempdir().expect("tempdir");
        let setup = Self { dir };
        fs::create_dir_all(setup.path("policies")).unwrap();
        fs::write(setup.path("policies/10-interop.toml"), POLICY).unwrap();
        let mut users = String::new();
        for (name, password) in [ALICE, BOB] {
            let hash = portcullis::auth::users::hash_password(password).expect("hash");
            users.push_str(&format!("[users.{name}]\npassword = {hash:?}\n\n"));
        }
        fs::write(setup.path("users.toml"), users).unwrap();
        // The first key is made here rather than by Portcullis on its first
        // start so that the test knows it before anything runs.
        keys::generate(&setup.key_dir(), kind).expect("generate key");
        let toml_path = |sub: &str| format!("{:?}", setup.path(sub).to_str().unwrap());
        fs::write(
            setup.path("portcullis.toml"),
            format!(
                "[storage]\nroot = {}\n\n\
                 [token]\nissuer = {ISSUER:?}\nservice = {SERVICE:?}\nkey_dir = {}\n\n\
                 [users]\nfile = {}\n\n\
                 [policy]\ndir = {}\n",
                toml_path("portcullis-data"),
                toml_path("certs"),
                toml_path("users.toml"),
                toml_path("policies"),
            ),
        )
        .unwrap();
        setup
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn key_dir(&self) -> PathBuf {
        self.path("certs")
    }

    fn start_portcullis(&self) -> ServerProcess {
        let config = self.path("portcullis.toml");
        ServerProcess::start_with(&["--config", config.to_str().unwrap()])
    }

    /// Starts distribution trusting `portcullis`, over this setup's
    /// registry storage (the same across restarts).
    fn start_registry(&self, portcullis: &ServerProcess) -> Registry {
        Registry::start(self, portcullis)
    }
}

/// Fails (never skips) when a program the tests need cannot be run.
fn require_tools() {
    for (program, arg) in [(DISTRIBUTION, "--version"), ("skopeo", "--version")] {
        let ok = Command::new(program)
            .arg(arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "`{program}` is not installed or does not run; these tests need it \
             (Debian packages `docker-registry` and `skopeo`, see scripts/install-test-deps.sh)"
        );
    }
}

// ---------------------------------------------------------------------------
// distribution 2.8 as a child process
// ---------------------------------------------------------------------------

/// distribution trusting this setup's Portcullis (`common::registry_process`).
struct Registry(Distribution);

impl std::ops::Deref for Registry {
    type Target = Distribution;

    fn deref(&self) -> &Distribution {
        &self.0
    }
}

impl Registry {
    fn start(setup: &Setup, portcullis: &ServerProcess) -> Self {
        let config = setup.path("registry.yml");
        let yaml = TokenRegistry {
            log: "  level: info\n  formatter: text\n",
            addr: "127.0.0.1:0",
            secret: "interop-test-secret",
            root: &setup.path("registry-data"),
            realm: &format!("{}/token", portcullis.url),
            service: SERVICE,
            issuer: ISSUER,
            bundle: &setup.key_dir().join("bundle.crt"),
        }
        .yaml();
        fs::write(&config, yaml).unwrap();
        let registry = Registry(Distribution::spawn(&config));

        // It is ours and it delegates to Portcullis: an anonymous `/v2/`
        // is challenged with Portcullis' realm and service.
        let http = Http::new();
        let reply = http.send(http.client.get(registry.at("/v2/")));
        assert_eq!(reply.status, 401, "{}", registry.logs());
        assert_eq!(
            reply.challenge(),
            format!(
                "Bearer realm=\"{}/token\",service=\"{SERVICE}\"",
                portcullis.url
            ),
        );
        registry
    }
}

// ---------------------------------------------------------------------------
// Plain HTTP, for the requests a client library would make
// ---------------------------------------------------------------------------

/// A blocking front to reqwest: the tests are sequential scripts around
/// child processes, so each request is simply run to completion.
struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn challenge(&self) -> String {
        self.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body).into_owned()
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Http {
    fn new() -> Self {
        Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        self.runtime.block_on(async {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await.expect("body").to_vec();
            Reply {
                status,
                headers,
                body,
            }
        })
    }

    /// `GET /token` from Portcullis, as `user` or anonymously; the token
    /// must be issued (200).
    fn token(
        &self,
        portcullis: &ServerProcess,
        user: Option<(&str, &str)>,
        scopes: &[&str],
    ) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("service", SERVICE);
        for scope in scopes {
            query.append_pair("scope", scope);
        }
        let url = format!("{}?{}", portcullis.at("/token"), query.finish());
        let mut request = self.client.get(url);
        if let Some((name, password)) = user {
            request = request.basic_auth(name, Some(password));
        }
        let reply = self.send(request);
        assert_eq!(reply.status, 200, "token for {user:?}: {}", reply.text());
        reply.json()["token"]
            .as_str()
            .expect("token in response")
            .to_owned()
    }

    /// A request to distribution with a bearer token.
    fn registry(&self, method: reqwest::Method, url: &str, token: &str) -> reqwest::RequestBuilder {
        self.client.request(method, url).bearer_auth(token)
    }

    /// Pushes a small image (one random layer) as `repo:tag` with a push
    /// token, the way a client does: monolithic blob uploads, then the
    /// manifest. Returns the manifest's digest.
    fn push_image(&self, registry: &Registry, token: &str, repo: &str, tag: &str) -> String {
        let mut layer = vec![0u8; 4096];
        rand::rng().fill_bytes(&mut layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
        }))
        .unwrap();
        for blob in [&layer, &config] {
            self.push_blob(registry, token, repo, blob);
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(&config), "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER_TAR, "digest": sha256_digest(&layer), "size": layer.len()}],
        }))
        .unwrap();
        let reply = self.send(
            self.registry(
                reqwest::Method::PUT,
                &registry.at(&format!("/v2/{repo}/manifests/{tag}")),
                token,
            )
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest.clone()),
        );
        assert_eq!(reply.status, 201, "manifest PUT: {}", reply.text());
        sha256_digest(&manifest)
    }

    fn push_blob(&self, registry: &Registry, token: &str, repo: &str, blob: &[u8]) {
        let reply = self.send(self.registry(
            reqwest::Method::POST,
            &registry.at(&format!("/v2/{repo}/blobs/uploads/")),
            token,
        ));
        assert_eq!(reply.status, 202, "upload POST: {}", reply.text());
        let location = reply.headers["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') {
            registry.at(&location)
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let reply = self.send(
            self.registry(
                reqwest::Method::PUT,
                &format!("{location}{separator}digest={}", sha256_digest(blob)),
                token,
            )
            .header("Content-Type", "application/octet-stream")
            .body(blob.to_vec()),
        );
        assert_eq!(reply.status, 201, "upload PUT: {}", reply.text());
    }

    /// `GET /v2/<repo>/tags/list` on distribution.
    fn tags(&self, registry: &Registry, token: &str, repo: &str) -> Reply {
        self.send(self.registry(
            reqwest::Method::GET,
            &registry.at(&format!("/v2/{repo}/tags/list")),
            token,
        ))
    }
}

/// The claims of a JWT, read without verifying it (the test inspects what
/// Portcullis issued; distribution does the verifying).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(
        &BASE64URL_NOPAD
            .decode(payload.as_bytes())
            .expect("base64url"),
    )
    .expect("JSON claims")
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().expect("JWT header");
    serde_json::from_slice(
        &BASE64URL_NOPAD
            .decode(header.as_bytes())
            .expect("base64url"),
    )
    .expect("JSON header")
}

// ---------------------------------------------------------------------------
// skopeo, in a private configuration world (tests/common/clients.rs)
// ---------------------------------------------------------------------------

/// Runs skopeo, which must fail because access was refused: the error
/// must say so (not a crash, a network error or a missing image).
fn refused(env: &ClientEnv, args: &[&str]) -> Output {
    let out = env.skopeo_fails(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("unauthorized")
            || stderr.contains("denied")
            || stderr.contains("authentication required"),
        "skopeo {args:?} failed for another reason than a refusal\n{}",
        shown(&out)
    );
    out
}

fn shown(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// skopeo logs in to distribution with Portcullis credentials, pushes and
/// pulls through Portcullis' tokens, and is refused where the policy
/// refuses.
#[test]
fn skopeo_logs_in_pushes_and_pulls_through_portcullis_tokens() {
    let setup = Setup::new();
    let portcullis = setup.start_portcullis();
    let registry = setup.start_registry(&portcullis);
    let host = registry.host.as_str();
    let alice = ClientEnv::new(host);
    let remote = |name: &str| format!("docker://{host}/{name}");

    // Bad credentials: refused, and nothing is stored.
    if let Ok(out) = alice.login("skopeo", ALICE.0, "wrong-password") {
        panic!("login with a wrong password succeeded\n{}", shown(&out));
    }
    assert_eq!(alice.stored_credentials(), None);

    // Good credentials: skopeo's login goes through distribution's
    // challenge to Portcullis' realm and is accepted; the auth file keeps
    // them for the later commands.
    alice
        .login("skopeo", ALICE.0, ALICE.1)
        .unwrap_or_else(|out| panic!("login failed\n{}", shown(&out)));
    assert_eq!(
        alice.stored_credentials().as_deref(),
        Some("alice:alice-secret-pw")
    );

    // Push into alice's own namespace with the stored login, then pull back
    // into a fresh layout: same manifest, same blobs, same bytes.
    // `--preserve-digests` keeps skopeo from compressing the tar layers, so
    // digests can be compared end to end.
    let src = alice.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);
    alice.skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &oci_ref(&src, "v1"),
        &remote("alice/app:v1"),
    ]);
    let back = alice.path("back");
    alice.skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &remote("alice/app:v1"),
        &oci_ref(&back, "v1"),
    ]);
    assert_eq!(layout_tag_digest(&back, "v1"), layout.manifest_digest);
    assert_eq!(layout_blobs(&back), layout.blobs);

    // bob, with his own credentials, owns bob/app…
    alice.skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("{}:{}", BOB.0, BOB.1),
        &oci_ref(&src, "v1"),
        &remote("bob/app:v1"),
    ]);
    // …which alice may pull (every user pulls everything)…
    let inspect: Value = serde_json::from_slice(
        &alice
            .skopeo(&["inspect", "--tls-verify=false", &remote("bob/app:v1")])
            .stdout,
    )
    .unwrap();
    assert_eq!(inspect["Digest"], layout.manifest_digest.as_str());
    // …but not push to. With the blobs already there skopeo reuses them
    // and is refused at the manifest; with new content it is refused at
    // the first blob upload, and no blob of it lands in bob/app.
    refused(
        &alice,
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &oci_ref(&src, "v1"),
            &remote("bob/app:by-alice"),
        ],
    );
    let other = alice.path("other");
    let other_layout = write_layout(&other, "v1", LAYER_SIZES);
    refused(
        &alice,
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &oci_ref(&other, "v1"),
            &remote("bob/app:by-alice"),
        ],
    );
    let http = Http::new();
    let bob_pull = http.token(&portcullis, Some(BOB), &["repository:bob/app:pull"]);
    for digest in other_layout.blobs.keys() {
        let reply = http.send(http.registry(
            reqwest::Method::HEAD,
            &registry.at(&format!("/v2/bob/app/blobs/{digest}")),
            &bob_pull,
        ));
        assert_eq!(
            reply.status, 404,
            "blob {digest} of a refused push is in bob/app"
        );
    }
    let tags: Value = serde_json::from_slice(
        &alice
            .skopeo(&["list-tags", "--tls-verify=false", &remote("bob/app")])
            .stdout,
    )
    .unwrap();
    assert_eq!(
        tags["Tags"],
        json!(["v1"]),
        "alice's refused push left a tag"
    );

    // alice publishes…
    alice.skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &oci_ref(&src, "v1"),
        &remote("public/app:v1"),
    ]);

    // …and an anonymous client (no login) pulls public images only.
    let anonymous = ClientEnv::new(host);
    let public = anonymous.path("public");
    anonymous.skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &remote("public/app:v1"),
        &oci_ref(&public, "v1"),
    ]);
    assert_eq!(layout_tag_digest(&public, "v1"), layout.manifest_digest);
    assert_eq!(layout_blobs(&public), layout.blobs);
    refused(
        &anonymous,
        &[
            "copy",
            "--src-tls-verify=false",
            &remote("alice/app:v1"),
            &oci_ref(&anonymous.path("private"), "v1"),
        ],
    );
    // An anonymous push is refused even where anonymous may pull.
    refused(
        &anonymous,
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &oci_ref(&src, "v1"),
            &remote("public/app:anonymous"),
        ],
    );

    // After logging out, alice is anonymous again.
    alice.skopeo(&["logout", host]);
    assert_eq!(alice.stored_credentials(), None);
    refused(
        &alice,
        &["inspect", "--tls-verify=false", &remote("alice/app:v1")],
    );
    drop(registry);
}

/// Raw requests, as a client library makes them: a token Portcullis issues
/// for a scope opens exactly that scope on distribution, and nothing else.
#[test]
fn distribution_enforces_the_scopes_in_portcullis_tokens() {
    let setup = Setup::new();
    let portcullis = setup.start_portcullis();
    let registry = setup.start_registry(&portcullis);
    let http = Http::new();
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    // A push token for alice's own repository carries what distribution
    // 2.8 needs: our issuer, the service as a single-string audience, the
    // granted actions, and a header naming the key both ways.
    let alice_push = http.token(
        &portcullis,
        Some(ALICE),
        &["repository:alice/app:pull,push"],
    );
    let claims = claims_of(&alice_push);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], SERVICE);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}])
    );
    let header = header_of(&alice_push);
    assert_eq!(header["alg"], "ES256");
    let ring = KeyRing::load(&setup.key_dir()).unwrap();
    assert_eq!(header["kid"], ring.signer().libtrust_id.as_str());
    assert_eq!(header["x5c"], json!([ring.signer().x5c.as_str()]));

    // Pushes work with push tokens: alice into alice/app, bob into bob/app.
    let alice_digest = http.push_image(&registry, &alice_push, "alice/app", "v1");
    let bob_push = http.token(&portcullis, Some(BOB), &["repository:bob/app:pull,push"]);
    http.push_image(&registry, &bob_push, "bob/app", "v1");

    // A pull token for alice/app reads alice/app…
    let alice_pull = http.token(&portcullis, Some(ALICE), &["repository:alice/app:pull"]);
    let reply = http.tags(&registry, &alice_pull, "alice/app");
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), registry.logs());
    assert_eq!(reply.json()["tags"], json!(["v1"]));
    let reply = http.send(
        http.registry(
            get.clone(),
            &registry.at(&format!("/v2/alice/app/manifests/{alice_digest}")),
            &alice_pull,
        )
        .header("Accept", OCI_MANIFEST),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(sha256_digest(&reply.body), alice_digest);
    // …but not bob/app, which exists (bob pushed it) and alice may pull
    // with a token for it: the refusal is the token's scope, nothing else.
    let reply = http.tags(&registry, &alice_pull, "bob/app");
    assert_eq!(reply.status, 401, "{}", reply.text());
    let challenge = reply.challenge();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"repository:bob/app:pull\""),
        "challenge: {challenge}"
    );
    // Nor may it push to alice/app.
    let reply = http.send(http.registry(
        post.clone(),
        &registry.at("/v2/alice/app/blobs/uploads/"),
        &alice_pull,
    ));
    assert_eq!(
        reply.status,
        401,
        "pull token opened an upload: {}",
        reply.text()
    );

    // alice asking to push to bob/app is granted pull only (a partial
    // grant, not an error); distribution lets her read and not write.
    let alice_on_bob = http.token(&portcullis, Some(ALICE), &["repository:bob/app:pull,push"]);
    assert_eq!(
        claims_of(&alice_on_bob)["access"],
        json!([{"type": "repository", "name": "bob/app", "actions": ["pull"]}])
    );
    let reply = http.tags(&registry, &alice_on_bob, "bob/app");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["tags"], json!(["v1"]));
    let reply = http.send(http.registry(
        post.clone(),
        &registry.at("/v2/bob/app/blobs/uploads/"),
        &alice_on_bob,
    ));
    assert_eq!(reply.status, 401, "{}", reply.text());
    // distribution keeps a scope's actions in a Go map, so it names them
    // in either order from one request to the next.
    let challenge = reply.challenge();
    assert!(
        challenge.contains("scope=\"repository:bob/app:pull,push\"")
            || challenge.contains("scope=\"repository:bob/app:push,pull\""),
        "challenge: {challenge}"
    );

    // Anonymous callers get a token with no access to private repositories,
    // and distribution refuses it.
    let anonymous = http.token(&portcullis, None, &["repository:alice/app:pull"]);
    assert_eq!(claims_of(&anonymous)["access"], json!([]));
    let reply = http.tags(&registry, &anonymous, "alice/app");
    assert_eq!(reply.status, 401, "{}", reply.text());

    // No token at all: distribution's challenge sends the client to
    // Portcullis for exactly the scope it needs.
    let reply = http.send(http.client.get(registry.at("/v2/alice/app/tags/list")));
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.challenge(),
        format!(
            "Bearer realm=\"{}/token\",service=\"{SERVICE}\",scope=\"repository:alice/app:pull\"",
            portcullis.url
        )
    );

    // distribution 2.8 also finds the key by `kid` alone, as a libtrust key
    // id of a certificate in its bundle: a token without `x5c` whose `kid`
    // is our libtrust id is accepted, which proves the ids agree. The same
    // token naming the key by its RFC 7638 thumbprint (what 3.x uses) is
    // refused by 2.8: the acceptance above was no blanket one.
    let key = ring.signer();
    let access = vec![AccessEntry {
        kind: "repository".into(),
        name: "alice/app".into(),
        actions: vec!["pull".into()],
    }];
    let by_libtrust = sign_with_kid_only(&ring, &key.libtrust_id, access.clone());
    let reply = http.tags(&registry, &by_libtrust, "alice/app");
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), registry.logs());
    let by_thumbprint = sign_with_kid_only(&ring, &key.thumbprint, access);
    let reply = http.tags(&registry, &by_thumbprint, "alice/app");
    assert_eq!(reply.status, 401, "{}", reply.text());
}

/// A token for alice signed with the ring's signing key, its header naming
/// the key by `kid` only (no `x5c`, no `jwk`).
fn sign_with_kid_only(ring: &KeyRing, kid: &str, access: Vec<AccessEntry>) -> String {
    let key = ring.signer();
    let mut header = jsonwebtoken::Header::new(key.kind.algorithm());
    header.typ = Some("JWT".to_owned());
    header.kid = Some(kid.to_owned());
    let claims = Claims::new(ISSUER, "alice", SERVICE, Duration::from_secs(300), access);
    let pem = std::fs::read(&key.file).expect("key file");
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("ES256 key");
    jsonwebtoken::encode(&header, &claims, &encoding).expect("sign")
}

/// `portcullis keygen <args>` over the setup's configuration, as the
/// operator runs it; must succeed. Returns what it printed.
fn keygen(setup: &Setup, args: &[&str]) -> String {
    let config = setup.path("portcullis.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("keygen")
        .arg("--config")
        .arg(&config)
        .args(args)
        .output()
        .expect("run portcullis keygen");
    assert!(out.status.success(), "keygen {args:?}\n{}", shown(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh push/pull token for alice/app from `portcullis`, which must be
/// signed by `kid` and accepted by `registry`; returns it.
fn accepted_token(
    http: &Http,
    portcullis: &ServerProcess,
    registry: &Registry,
    kid: &str,
) -> String {
    let token = http.token(portcullis, Some(ALICE), &["repository:alice/app:pull,push"]);
    assert_eq!(header_of(&token)["kid"], kid);
    let reply = http.tags(registry, &token, "alice/app");
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), registry.logs());
    token
}

/// Portcullis and distribution started over the setup's first key, and
/// alice/app:v1 pushed with a token of that key. Returns the key's id, the
/// two servers and the token.
fn started_with_an_image(setup: &Setup, http: &Http) -> (String, ServerProcess, Registry, String) {
    let key_id = KeyRing::load(&setup.key_dir())
        .unwrap()
        .signer()
        .libtrust_id
        .clone();
    let portcullis = setup.start_portcullis();
    let registry = setup.start_registry(&portcullis);
    let token = http.token(
        &portcullis,
        Some(ALICE),
        &["repository:alice/app:pull,push"],
    );
    assert_eq!(header_of(&token)["kid"], key_id.as_str());
    http.push_image(&registry, &token, "alice/app", "v1");
    (key_id, portcullis, registry, token)
}

/// Key rotation in the order the README gives: the new key goes on
/// standby (bundle first), every trusting registry restarts over the new
/// bundle, then the key is activated (the running Portcullis takes it up,
/// a restarted one too), and after the old tokens expired the old key is
/// retired. At no step does distribution
/// refuse a token Portcullis issues.
#[test]
fn rotation_in_order_never_has_a_token_refused() {
    let setup = Setup::new();
    let http = Http::new();
    let (old_id, portcullis, registry, first) = started_with_an_image(&setup, &http);

    // 1. A standby key: in the bundle, not signing, whether Portcullis
    // keeps running or restarts meanwhile (a replica may).
    let said = keygen(&setup, &[]);
    assert!(said.contains("on standby"), "{said}");
    let new_id = common::field(&said, "key id (libtrust, distribution 2.8):");
    assert_ne!(new_id, old_id);
    let bundle = fs::read_to_string(setup.key_dir().join("bundle.crt")).unwrap();
    assert_eq!(bundle.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    accepted_token(&http, &portcullis, &registry, &old_id);
    drop(portcullis);
    let portcullis = setup.start_portcullis();
    accepted_token(&http, &portcullis, &registry, &old_id);

    // 2. distribution restarts over the new bundle: still the old key's
    // tokens, now trusted alongside the new key.
    drop(registry);
    let registry = setup.start_registry(&portcullis);
    accepted_token(&http, &portcullis, &registry, &old_id);

    // 3. Activated: the running Portcullis signs with the new key within a
    // second (it watches the key directory), a restarted one too, and
    // distribution takes both keys' tokens, old ones too.
    let said = keygen(&setup, &["--activate"]);
    assert!(said.contains("within a second"), "{said}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let token = http.token(
            &portcullis,
            Some(ALICE),
            &["repository:alice/app:pull,push"],
        );
        if header_of(&token)["kid"] == new_id.as_str() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the running Portcullis never signed with the activated key"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    accepted_token(&http, &portcullis, &registry, &new_id);
    let reply = http.tags(&registry, &first, "alice/app");
    assert_eq!(reply.status, 200, "an old key's token: {}", reply.text());
    drop(portcullis);
    let portcullis = setup.start_portcullis();
    let new_token = accepted_token(&http, &portcullis, &registry, &new_id);
    http.push_image(&registry, &new_token, "alice/app", "v2");
    let reply = http.tags(&registry, &first, "alice/app");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["tags"], json!(["v1", "v2"]));

    // 4. The old key retired and the bundle handed out again: new tokens
    // still pass; one the old key signed no longer does.
    let said = keygen(&setup, &["--retire"]);
    assert!(said.contains("retired:"), "{said}");
    let bundle = fs::read_to_string(setup.key_dir().join("bundle.crt")).unwrap();
    assert_eq!(bundle.matches("-----BEGIN CERTIFICATE-----").count(), 1);
    drop(registry);
    let registry = setup.start_registry(&portcullis);
    accepted_token(&http, &portcullis, &registry, &new_id);
    drop(portcullis);
    let portcullis = setup.start_portcullis();
    accepted_token(&http, &portcullis, &registry, &new_id);
    assert_eq!(http.tags(&registry, &first, "alice/app").status, 401);
}

/// The wrong order: the new key activated (or made with `--now`) and
/// Portcullis restarted before distribution has the new bundle. Its tokens
/// are refused until distribution restarts over the bundle; then tokens of
/// both keys pass.
#[test]
fn a_key_activated_before_distribution_has_the_bundle_is_refused() {
    let setup = Setup::new();
    let http = Http::new();
    let (_, portcullis, registry, old_token) = started_with_an_image(&setup, &http);

    // Bundle step skipped: generated and activated at once.
    let said = keygen(&setup, &[]);
    let new_id = common::field(&said, "key id (libtrust, distribution 2.8):");
    keygen(&setup, &["--activate"]);
    let ring = KeyRing::load(&setup.key_dir()).unwrap();
    assert_eq!(ring.keys().len(), 2);
    assert_eq!(ring.signer().libtrust_id, new_id);

    drop(portcullis);
    let portcullis = setup.start_portcullis();
    let new_token = http.token(
        &portcullis,
        Some(ALICE),
        &["repository:alice/app:pull,push"],
    );
    assert_eq!(header_of(&new_token)["kid"], new_id.as_str());
    // distribution still runs with the bundle it read at start, which does
    // not hold the new certificate: it refuses the new token.
    let reply = http.tags(&registry, &new_token, "alice/app");
    assert_eq!(reply.status, 401, "{}", reply.text());

    // The same with `--now`, the emergency rotation.
    let said = keygen(&setup, &["--now"]);
    let now_id = common::field(&said, "key id (libtrust, distribution 2.8):");
    drop(portcullis);
    let portcullis = setup.start_portcullis();
    let now_token = http.token(&portcullis, Some(ALICE), &["repository:alice/app:pull"]);
    assert_eq!(header_of(&now_token)["kid"], now_id.as_str());
    assert_eq!(http.tags(&registry, &now_token, "alice/app").status, 401);

    // Restarted over the same storage, it reads every certificate: tokens
    // of all three keys pass until they expire.
    drop(registry);
    let registry = setup.start_registry(&portcullis);
    for token in [&now_token, &new_token, &old_token] {
        let reply = http.tags(&registry, token, "alice/app");
        assert_eq!(reply.status, 200, "{}\n{}", reply.text(), registry.logs());
        assert_eq!(reply.json()["tags"], json!(["v1"]));
    }
}

/// RS256 keys work as well as ES256 ones with distribution 2.8.
#[test]
fn rs256_tokens_are_accepted() {
    let setup = Setup::with_key(KeyKind::Rs256);
    let portcullis = setup.start_portcullis();
    let registry = setup.start_registry(&portcullis);
    let http = Http::new();
    let token = http.token(&portcullis, Some(BOB), &["repository:bob/tool:pull,push"]);
    assert_eq!(header_of(&token)["alg"], "RS256");
    http.push_image(&registry, &token, "bob/tool", "v1");
    let reply = http.tags(&registry, &token, "bob/tool");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["tags"], json!(["v1"]));
    // The same key signing a token for another repository of bob's does
    // not open this one.
    let other = http.token(&portcullis, Some(BOB), &["repository:bob/other:pull"]);
    assert_eq!(http.tags(&registry, &other, "bob/tool").status, 401);
}

/// Rotation must not depend on the clock's second ticking over: a key
/// generated right after another one (as a script or this file's rotation
/// test may do) is the one that signs. Repeated because one lucky ordering
/// proves nothing.
#[test]
fn a_key_generated_within_the_same_second_signs_next() {
    let dir = tempfile::tempdir().unwrap();
    keys::generate(dir.path(), KeyKind::Es256).unwrap();
    for round in 0..20 {
        let newest = keys::generate(dir.path(), KeyKind::Es256).unwrap();
        let ring = KeyRing::load(dir.path()).unwrap();
        assert_eq!(ring.keys().len(), round + 2);
        assert_eq!(ring.signer().file, newest, "round {round}");
    }
}
