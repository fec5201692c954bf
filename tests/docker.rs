//! A real Docker engine against the real binary: `docker login`, `push`,
//! `pull`, `logout` and `manifest` through Portcullis' token server with the
//! shipped policy, and docker's own messages when it refuses; over plain
//! HTTP, and over TLS with the server's CA in docker's `certs.d`.
//!
//! Each test starts its own dockerd (`common::docker`) and its own
//! Portcullis, whose users are added with the real CLI. Like the other
//! real-client tests, these never skip: a missing engine is a failure that
//! says how to install it.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};

use crate::tls::{curl, keygen_tls_for};
use common::clients::stderr_of;
use common::docker::{DockerCli, DockerEngine, RegistryTrust, docker_archive};
use common::pki::{TestCa, Validity};
use common::process::{ServerProcess, config_in, copy_project_policies, run_in};
use common::registry_process::{Auth, Distribution};
use serde_json::Value;
use tempfile::TempDir;

const ALICE_PASSWORD: &str = "alice-docker-secret-1";
const BOB_PASSWORD: &str = "bob-docker-secret-2";

/// The address docker is given for a server over TLS, in place of
/// `127.0.0.1`. dockerd counts `127.0.0.0/8` as an insecure registry whatever
/// its configuration says (Docker 20.10 appends that range to
/// `insecure-registries` unconditionally), and for an insecure registry it
/// speaks HTTPS *without verifying the certificate*, then falls back to HTTP:
/// a TLS test on `127.0.0.1` or `localhost` passes with no `ca.crt` at all
/// (tried: `docker login` succeeds). `[::1]` is outside the range, but
/// Docker 20.10 refuses IPv6 hosts in image references ("invalid reference
/// format"), and another name would need an `/etc/hosts` line, which is
/// global to the machine. `0.0.0.0` is neither: Linux delivers a connection
/// to it to the local host, where the server listens on `127.0.0.1`, and
/// dockerd counts it as a secure registry, verifying the certificate
/// (which names `0.0.0.0`) against `certs.d/0.0.0.0:PORT/ca.crt` only.
/// The TLS tests show that verification: without the `ca.crt`, login fails
/// with an x509 error.
const TLS_ADDRESS: &str = "0.0.0.0";

/// A Portcullis with authentication on, the shipped policy and the users
/// alice and bob, and a Docker engine with a client for it.
struct World {
    server: ServerProcess,
    dir: TempDir,
    /// Kept alive for the test: dropping it stops dockerd.
    _engine: DockerEngine,
    docker: DockerCli,
    /// `HOST:PORT`, docker's name for the registry: the server's own over
    /// plain HTTP, [`TLS_ADDRESS`] and the server's port over TLS.
    host: String,
    /// `http://` or `https://` and [`World::host`], as docker names the
    /// registry in its messages.
    url: String,
    /// Over TLS, the certificate the server presents: its own CA.
    ca: Option<PathBuf>,
}

impl World {
    /// Over plain HTTP (dockerd's default trust of loopback).
    fn start() -> Self {
        Self::start_serving(&[], None)
    }

    /// Over TLS, with a pair from `keygen --tls` for [`TLS_ADDRESS`]; docker
    /// does not trust it until [`World::trust`] is called. The daemon's
    /// configuration is empty: no `insecure-registries`.
    fn start_tls() -> Self {
        Self::start_tls_with("")
    }

    /// [`World::start_tls`] with `extra` lines in `[server.tls]`.
    fn start_tls_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = keygen_tls_for(&dir.path().join("tls"), &[TLS_ADDRESS], false);
        let key = dir.path().join("tls/tls.key");
        let tls = format!(
            "\n[server.tls]\ncert = {:?}\nkey = {:?}\n{extra}",
            ca.to_str().unwrap(),
            key.to_str().unwrap()
        );
        let mut world = Self::start_serving_with(&[], Some(dir), &tls);
        assert!(
            world.server.url.starts_with("https://"),
            "{}",
            world.server.url
        );
        let port = world.server.host.rsplit_once(':').expect("HOST:PORT").1;
        world.host = format!("{TLS_ADDRESS}:{port}");
        world.url = format!("https://{}", world.host);
        world.ca = Some(ca);
        world
    }

    /// The server with `serve_args` after its configuration, in `dir` (a new
    /// one when `None`).
    fn start_serving(serve_args: &[&str], dir: Option<TempDir>) -> Self {
        Self::start_serving_with(serve_args, dir, "")
    }

    /// [`World::start_serving`] with `config` appended to the configuration.
    fn start_serving_with(serve_args: &[&str], dir: Option<TempDir>, config: &str) -> Self {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
        let file = config_in(dir.path());
        let mut text = fs::read_to_string(&file).expect("read portcullis.toml");
        text.push_str(config);
        fs::write(&file, text).expect("write portcullis.toml");
        let config = file;
        copy_project_policies(dir.path());
        for (user, password) in [("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)] {
            run_in(dir.path(), &["user", "add", user], &format!("{password}\n"));
        }
        let args = [&["--config", config.to_str().unwrap()], serve_args].concat();
        let server = ServerProcess::start_with(&args);
        let engine = DockerEngine::start();
        let docker = engine.client();
        Self {
            host: server.host.clone(),
            url: server.url.clone(),
            server,
            dir,
            _engine: engine,
            docker,
            ca: None,
        }
    }

    /// Puts the server's CA in `certs.d/<host:port>/ca.crt` until the
    /// returned value is dropped.
    fn trust(&self) -> RegistryTrust {
        let ca = self.ca.as_ref().expect("a TLS world");
        RegistryTrust::install(&self.host, &fs::read(ca).expect("read CA"), None)
    }

    /// `docker manifest` talks to the registry from the CLI, which over
    /// plain HTTP must be told `--insecure`; over TLS it verifies the
    /// certificate against the same `certs.d`.
    fn manifest_flags(&self) -> &'static [&'static str] {
        if self.ca.is_some() {
            &[]
        } else {
            &["--insecure"]
        }
    }

    /// `HOST:PORT/<name>`, docker's name for a repository of the server.
    fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    fn login_alice(&self) {
        if let Err(out) = self.docker.login(&self.host, "alice", ALICE_PASSWORD) {
            panic!("docker login refused alice:\n{}", stderr_of(&out));
        }
    }

    /// Builds and loads a one-layer image for `arch` named `reference`;
    /// returns its image id.
    fn load(&self, reference: &str, arch: &str) -> String {
        let image = docker_archive(self.dir.path(), reference, arch);
        let printed = self.docker.load(&image.path);
        assert!(printed.contains(reference), "docker load: {printed}");
        image.id
    }

    /// Logs alice in, loads an image as `HOST:PORT/<name>` and pushes it;
    /// returns docker's reference and the image id.
    fn alice_pushed(&self, name: &str) -> (String, String) {
        self.login_alice();
        let reference = self.image(name);
        let id = self.load(&reference, common::oci::oci_arch());
        self.docker.run(&["push", &reference]);
        (reference, id)
    }

    /// The image id docker holds for `reference`.
    fn image_id(&self, reference: &str) -> String {
        self.docker.inspect(reference)["Id"]
            .as_str()
            .expect("image Id")
            .to_owned()
    }
}

/// Asserts that `text` contains `part`, showing both.
#[track_caller]
fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "expected {part:?} in:\n{text}");
}

/// What docker printed on both streams: `push` reports a refusal on
/// stdout, after the progress lines.
fn printed(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr_of(out))
}

/// The `auths` entry docker's config.json holds for `host`.
fn stored_auth(config: &str, host: &str) -> Value {
    if config.is_empty() {
        return Value::Null;
    }
    let file: Value = serde_json::from_str(config).expect("config.json is JSON");
    file["auths"][host].clone()
}

#[test]
fn docker_login_stores_an_identity_token_not_the_password() {
    let world = World::start();
    world.login_alice();
    assert_identity_token_stored(&world);
}

/// config.json holds Portcullis' refresh token for alice, not her password.
fn assert_identity_token_stored(world: &World) {
    let config = world.docker.config_text();
    assert!(
        !config.contains(ALICE_PASSWORD),
        "the password is in config.json:\n{config}"
    );
    let auth = stored_auth(&config, &world.host);
    let token = auth["identitytoken"].as_str().unwrap_or_default();
    assert!(
        !token.is_empty(),
        "no identitytoken in config.json:\n{config}"
    );
    // It is Portcullis' refresh token (the one `token revoke` revokes), not
    // an access token or something docker made up.
    let claims = common::jwt_claims(token);
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["aud"], "portcullis#refresh", "{claims}");
    // With an identity token docker keeps `auth` as base64("user:"): the
    // user name, the password left out.
    let basic = auth["auth"].as_str().expect("auth in config.json");
    let decoded = data_encoding::BASE64
        .decode(basic.as_bytes())
        .expect("base64 auth");
    assert_eq!(decoded, b"alice:", "config.json auth:\n{config}");
}

#[test]
fn docker_login_with_a_wrong_password_is_refused() {
    wrong_password_is_refused(&World::start());
}

#[test]
fn docker_over_tls_login_with_a_wrong_password_is_refused() {
    let world = World::start_tls();
    let _trust = world.trust();
    wrong_password_is_refused(&world);
}

/// A wrong password: docker's message, nothing stored.
fn wrong_password_is_refused(world: &World) {
    let out = world
        .docker
        .login(&world.host, "alice", "not-alices-password")
        .expect_err("docker login with a wrong password succeeded");
    let stderr = stderr_of(&out);
    // docker's wording around the token server's error.
    assert_contains(
        &stderr,
        &format!(
            "Error response from daemon: Get \"{}/v2/\": \
             unauthorized: incorrect username or password",
            world.url
        ),
    );
    assert!(!stderr.contains(ALICE_PASSWORD), "{stderr}");
    let config = world.docker.config_text();
    assert!(
        stored_auth(&config, &world.host).is_null(),
        "a refused login stored credentials:\n{config}"
    );
}

#[test]
fn docker_push_rmi_pull_round_trip() {
    let world = World::start();
    world.login_alice();
    push_rmi_pull(&world);
}

/// Pushes an image, removes it and pulls it back (alice logged in).
fn push_rmi_pull(world: &World) {
    let reference = world.image("alice/app:v1");
    world.load(&reference, common::oci::oci_arch());
    push_rmi_pull_loaded(world, &reference);
}

/// Pushes the loaded image `reference`, removes it and pulls it back.
fn push_rmi_pull_loaded(world: &World, reference: &str) {
    let id = world.image_id(reference);
    let reference = reference.to_owned();
    let pushed = world.docker.run(&["push", &reference]);
    let printed = String::from_utf8_lossy(&pushed.stdout);
    assert_contains(&printed, "v1: digest: sha256:");
    world.docker.run(&["rmi", &reference]);
    world.docker.fails(&["image", "inspect", &reference]);
    world.docker.run(&["pull", &reference]);
    assert_eq!(world.image_id(&reference), id, "pulled image differs");
}

#[test]
fn docker_pushes_and_pulls_through_an_upstream_prefix() {
    // distribution behind the prefix `alice/up`, which the shipped policy
    // lets alice push to (her namespace) and bob only pull.
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Distribution::start(
        &dir.path().join("registry.yml"),
        &dir.path().join("registry-data"),
        Auth::Open,
    );
    let upstream = format!(
        "\n[[upstream]]\nname = \"team\"\nprefix = \"alice/up\"\nurl = \"{}\"\npush = true\n",
        registry.url
    );
    let world = World::start_serving_with(&[], None, &upstream);
    world.login_alice();
    let reference = world.image("alice/up/app:v1");
    world.load(&reference, common::oci::oci_arch());
    push_rmi_pull_loaded(&world, &reference);
    // It is the upstream's, prefix stripped.
    assert_eq!(
        registry.requests("PUT", "/v2/app/manifests/v1"),
        1,
        "{}",
        registry.logs()
    );

    // bob pulls it, and may not push over it.
    world.docker.run(&["logout", &world.host]);
    world.docker.run(&["rmi", &reference]);
    if let Err(out) = world.docker.login(&world.host, "bob", BOB_PASSWORD) {
        panic!("docker login refused bob:\n{}", stderr_of(&out));
    }
    world.docker.run(&["pull", &reference]);
    let refused = world.docker.fails(&["push", &reference]);
    assert_contains(&printed(&refused), "denied");
    assert_eq!(registry.requests("PUT", "/v2/app/manifests/v1"), 1);
}

#[test]
fn docker_push_the_policy_denies_is_refused() {
    push_the_policy_denies_is_refused(&World::start());
}

#[test]
fn docker_over_tls_push_the_policy_denies_is_refused() {
    let world = World::start_tls();
    let _trust = world.trust();
    push_the_policy_denies_is_refused(&world);
}

/// alice pushing into bob/: docker's "denied".
fn push_the_policy_denies_is_refused(world: &World) {
    world.login_alice();
    // The shipped policy: alice pushes in alice/**, and only pulls bob/**.
    let reference = world.image("bob/app:v1");
    world.load(&reference, common::oci::oci_arch());
    let out = world.docker.fails(&["push", &reference]);
    assert_contains(
        &printed(&out),
        "denied: requested access to the resource is denied",
    );
}

#[test]
fn docker_logout_then_anonymous_pull_is_refused() {
    logout_then_anonymous_pull_is_refused(&World::start());
}

#[test]
fn docker_over_tls_logout_then_anonymous_pull_is_refused() {
    let world = World::start_tls();
    let _trust = world.trust();
    logout_then_anonymous_pull_is_refused(&world);
}

/// Logged out, an anonymous pull of alice's image is refused.
fn logout_then_anonymous_pull_is_refused(world: &World) {
    let (reference, _) = world.alice_pushed("alice/app:v1");
    world.docker.run(&["rmi", &reference]);
    world.docker.run(&["logout", &world.host]);
    let config = world.docker.config_text();
    assert!(
        stored_auth(&config, &world.host).is_null(),
        "logout left credentials:\n{config}"
    );
    let out = world.docker.fails(&["pull", &reference]);
    assert_contains(
        &stderr_of(&out),
        &format!(
            "Error response from daemon: pull access denied for {}, \
             repository does not exist or may require 'docker login': \
             denied: requested access to the resource is denied",
            world.image("alice/app")
        ),
    );
}

#[test]
fn docker_revoked_refresh_token_is_refused() {
    revoked_refresh_token_is_refused(&World::start());
}

#[test]
fn docker_over_tls_revoked_refresh_token_is_refused() {
    let world = World::start_tls();
    let _trust = world.trust();
    revoked_refresh_token_is_refused(&world);
}

/// The identity token docker stored, revoked: pulls and pushes refused.
fn revoked_refresh_token_is_refused(world: &World) {
    let (reference, _) = world.alice_pushed("alice/app:v1");
    // The identity token docker stored is a refresh token: revoked, the
    // next exchange of it for an access token fails.
    run_in(
        world.dir.path(),
        &["token", "revoke", "--user", "alice"],
        "",
    );
    let revoked = "unauthorized: refresh token invalid, expired or revoked";
    let out = world.docker.fails(&["pull", &reference]);
    assert_contains(
        &stderr_of(&out),
        &format!(
            "Error response from daemon: Head \"{}/v2/alice/app/manifests/v1\": {revoked}",
            world.url
        ),
    );
    let out = world.docker.fails(&["push", &reference]);
    assert_contains(&printed(&out), revoked);
}

#[test]
fn docker_manifest_list_push_and_platform_pull() {
    let world = World::start();
    world.login_alice();
    manifest_list_push_and_platform_pull(&world);
}

/// A two-platform list made with `docker manifest` from two pushed images,
/// pushed, inspected, and each platform pulled by `--platform`.
fn manifest_list_push_and_platform_pull(world: &World) {
    let flags = world.manifest_flags();
    let amd64 = world.image("alice/multi:amd64");
    let arm64 = world.image("alice/multi:arm64");
    let list = world.image("alice/multi:v1");
    let amd64_id = world.load(&amd64, "amd64");
    let arm64_id = world.load(&arm64, "arm64");
    world.docker.run(&["push", &amd64]);
    world.docker.run(&["push", &arm64]);
    let create = [&["manifest", "create"], flags, &[&list, &amd64, &arm64]].concat();
    world.docker.run(&create);
    let pushed = world
        .docker
        .run(&[&["manifest", "push"], flags, &[&list]].concat());
    let digest = String::from_utf8_lossy(&pushed.stdout).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "manifest push: {digest}");
    let inspected = world
        .docker
        .run(&[&["manifest", "inspect"], flags, &[&list]].concat());
    let index: Value = serde_json::from_slice(&inspected.stdout).expect("manifest JSON");
    let platforms: Vec<&str> = index["manifests"]
        .as_array()
        .expect("a manifest list")
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"], "{index}");
    world.docker.run(&["rmi", &amd64, &arm64]);
    for (platform, id) in [("linux/arm64", &arm64_id), ("linux/amd64", &amd64_id)] {
        world.docker.run(&["pull", "--platform", platform, &list]);
        assert_eq!(&world.image_id(&list), id, "{platform}");
        world.docker.run(&["rmi", &list]);
    }
}

#[test]
fn docker_over_tls_trusts_the_ca_in_certs_d_then_logs_in_pushes_and_pulls() {
    let world = World::start_tls();
    // The challenge sends docker to the token endpoint over HTTPS, on the
    // name docker was given.
    let ca = world.ca.as_ref().unwrap().to_str().unwrap();
    let out = curl(&["-i", "--cacert", ca, &format!("{}/v2/", world.url)]);
    let challenge = String::from_utf8_lossy(&out.stdout);
    assert_contains(&challenge, &format!("realm=\"{}/token\"", world.url));

    // Not yet trusted: dockerd verifies the certificate, and refuses it.
    let out = world
        .docker
        .login(&world.host, "alice", ALICE_PASSWORD)
        .expect_err("docker login trusted a certificate it has no CA for");
    assert_contains(
        &stderr_of(&out),
        &format!(
            "Error response from daemon: Get \"{}/v2/\": \
             x509: certificate signed by unknown authority",
            world.url
        ),
    );

    let _trust = world.trust();
    world.login_alice();
    assert_identity_token_stored(&world);
    push_rmi_pull(&world);
}

#[test]
fn docker_over_tls_manifest_list_push_and_platform_pull() {
    let world = World::start_tls();
    let _trust = world.trust();
    world.login_alice();
    manifest_list_push_and_platform_pull(&world);
}

#[test]
fn docker_with_a_client_certificate_pushes_and_pulls_without_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clients = TestCa::new(dir.path(), "clients");
    let world = World::start_tls_with(&format!(
        "client_ca = {:?}\nclient_auth = \"required\"\n",
        clients.cert.to_str().unwrap()
    ));
    let ca = fs::read(world.ca.as_ref().unwrap()).expect("read CA");
    let reference = world.image("alice/app:v1");
    world.load(&reference, common::oci::oci_arch());

    // Trusting the server is not enough when a certificate is required.
    let trust = RegistryTrust::install(&world.host, &ca, None);
    let out = world.docker.fails(&["push", &reference]);
    assert_contains(&printed(&out), "certificate required");
    drop(trust);

    // alice's certificate in certs.d: docker presents it, and the token
    // endpoint takes it for alice with no login.
    let alice = clients.issue("alice", Some("alice"), Validity::Current);
    let _trust = RegistryTrust::install(
        &world.host,
        &ca,
        Some((&alice.cert_pem(), &alice.key_pem())),
    );
    push_rmi_pull_loaded(&world, &reference);
    assert!(
        !world.docker.config_text().contains(&world.host),
        "docker stored credentials it was never given"
    );
    // The certificate is alice: bob's namespace is closed to it.
    let bobs = world.image("bob/app:v1");
    world.load(&bobs, common::oci::oci_arch());
    let out = world.docker.fails(&["push", &bobs]);
    assert_contains(
        &printed(&out),
        "denied: requested access to the resource is denied",
    );
}

/// Not a test of Portcullis: the harness's own promise that an engine's
/// files are gone when it is dropped, and that two engines run at once.
#[test]
fn docker_engines_run_side_by_side_and_clean_up() {
    let first = DockerEngine::start();
    let second = DockerEngine::start();
    for engine in [&first, &second] {
        engine.client().run(&["version"]);
    }
    let socket = first.host_url();
    let socket = Path::new(socket.trim_start_matches("unix://")).to_owned();
    assert!(socket.exists());
    drop(first);
    assert!(!socket.exists(), "the engine's directory outlived it");
    second.client().run(&["info"]);
}
