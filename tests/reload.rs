//! Hot reload under load: the real binary (its own process, so signals are
//! real), with clients asking for tokens and using them on `/v2/` in a loop
//! from before the first change to after the last, every answer checked.
//! In turn a valid and then an invalid version of each thing that can
//! change is put in place — the users file, a policy file, the key
//! directory, the TLS pair (on change), the configuration's upstream and
//! LDAP sections (on `SIGHUP`) — and the server must take the good one,
//! refuse the bad one with one log line keeping what it had, and fail no
//! request at any point.

use crate::common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use data_encoding::{BASE64, BASE64URL_NOPAD};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::logs::{Log, PASSWORD};
use crate::tls::replace;
use crate::upstream::put_blob;
use common::pki::TestCa;
use common::process::{ServerProcess, run_in};
use common::registry_process::{Auth, Distribution};
use common::slapd::{Slapd, SlapdOptions, tree};

/// Clients of the load: a few, on a 2-core machine shared with other tests.
const CLIENTS: usize = 3;
/// How long the load may take to make progress.
const PATIENCE: Duration = Duration::from_secs(30);
/// The load's token request: alice, pulling her own repository.
const TOKEN: &str = "/token?service=portcullis&scope=repository:alice/app:pull";

/// How a client reaches the server: plain TCP, or TLS trusting one CA.
#[derive(Clone)]
struct Client {
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// One answer, and the certificate the server presented for it.
struct Reply {
    status: u16,
    body: Vec<u8>,
    cert: Option<Vec<u8>>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    fn plain(server: &ServerProcess) -> Self {
        Self {
            host: server.host.clone(),
            tls: None,
        }
    }

    fn trusting(server: &ServerProcess, ca: &Path) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection a full handshake: a resumed session is
        // authenticated by the certificate of the session it resumes.
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            host: server.host.clone(),
            tls: Some(Arc::new(config)),
        }
    }

    /// A `GET` on a connection of its own (so every request of the load is
    /// also a new handshake, which a TLS reload must not break).
    async fn get(&self, path: &str, authorization: Option<&str>) -> Result<Reply, String> {
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n");
        let tcp = TcpStream::connect(&self.host)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match &self.tls {
            None => {
                let (status, body) = exchange(tcp, &request).await?;
                Ok(Reply {
                    status,
                    body,
                    cert: None,
                })
            }
            Some(config) => {
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                let cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let (status, body) = exchange(stream, &request).await?;
                Ok(Reply { status, body, cert })
            }
        }
    }

    /// A token for `scope` (`user` with a password, else anonymous).
    async fn token(&self, scope: &str, user: Option<(&str, &str)>) -> Reply {
        let basic = user.map(basic);
        self.get(
            &format!("/token?service=portcullis&scope={scope}"),
            basic.as_deref(),
        )
        .await
        .unwrap()
    }
}

fn basic((name, password): (&str, &str)) -> String {
    format!(
        "Basic {}",
        BASE64.encode(format!("{name}:{password}").as_bytes())
    )
}

/// Writes one HTTP/1.1 request and reads its answer: the head, then the
/// body by its length, its chunks, or to the end.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Result<(u16, Vec<u8>), String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before the head ended: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let mut body = buf[head_end..].to_vec();
    loop {
        let complete = match length {
            Some(n) => body.len() >= n,
            None => chunked && body.ends_with(b"0\r\n\r\n"),
        };
        if complete {
            break;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            if length.is_none() && !chunked {
                break;
            }
            return Err("closed in the middle of the body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if chunked {
        body = dechunk(&body)?;
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line")?;
        let size = std::str::from_utf8(&data[..line])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("chunk size")?;
        data = &data[line + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(data.get(..size).ok_or("short chunk")?);
        data = data.get(size + 2..).ok_or("chunk end")?;
    }
}

/// The `kid` of a token's header.
fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value =
        serde_json::from_slice(&BASE64URL_NOPAD.decode(header.as_bytes()).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

fn token_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["token"].as_str().unwrap().to_owned()
}

/// Clients asking for a token and using it on `/v2/` in a loop, each
/// answer checked; every failure is kept to be shown at the end.
struct Load {
    stop: Arc<AtomicBool>,
    done: tokio::sync::watch::Receiver<usize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &Client) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (count, done) = tokio::sync::watch::channel(0usize);
        let count = Arc::new(count);
        let tasks = (0..CLIENTS)
            .map(|_| {
                let (client, stop, failures, count) = (
                    client.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&failures),
                    Arc::clone(&count),
                );
                tokio::spawn(async move {
                    let alice = basic(("alice", PASSWORD));
                    while !stop.load(Ordering::Relaxed) {
                        match Self::round(&client, &alice).await {
                            Ok(()) => count.send_modify(|n| *n += 1),
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            done,
            failures,
            tasks,
        }
    }

    /// One token request and one `/v2/` request with that token.
    async fn round(client: &Client, alice: &str) -> Result<(), String> {
        let reply = client.get(TOKEN, Some(alice)).await?;
        let token = match (reply.status, reply.json()["token"].as_str()) {
            (200, Some(token)) => token.to_owned(),
            _ => return Err(format!("token: {} {}", reply.status, reply.text())),
        };
        let reply = client.get("/v2/", Some(&format!("Bearer {token}"))).await?;
        match reply.status {
            200 => Ok(()),
            status => Err(format!(
                "/v2/ (kid {}): {status} {}",
                kid(&token),
                reply.text()
            )),
        }
    }

    /// Waits until every client could have done another round since now:
    /// the load went on through what was just changed.
    async fn goes_on(&mut self) {
        let target = *self.done.borrow() + CLIENTS;
        tokio::time::timeout(PATIENCE, self.done.wait_for(|n| *n >= target))
            .await
            .expect("the load made no progress")
            .unwrap();
    }

    /// Stops the clients and checks that no round failed, and that they
    /// did work all along.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let good = *self.done.borrow();
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        assert!(
            failures.is_empty(),
            "{} rounds failed (beside {good} good ones): {failures:#?}",
            failures.len()
        );
        assert!(good > 10 * CLIENTS, "only {good} rounds");
    }
}

/// `portcullis serve` in `dir` (its `portcullis.toml`) at the default
/// level, its log read line by line.
fn serve(dir: &Path) -> (ServerProcess, Log) {
    crate::logs::serve(dir, None)
}

/// The DER of the first certificate of a PEM file.
fn der_of(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

/// The certificate a new connection gets.
async fn served(client: &Client) -> Vec<u8> {
    client.get("/healthz", None).await.unwrap().cert.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_policies_keys_and_the_tls_pair_reload_under_load_and_bad_versions_are_refused() {
    let dir = crate::logs::setup();
    let root = dir.path();
    let ca = TestCa::new(&root.join("pki"), "reload");
    let first = ca.issue_server("first", &["localhost", "127.0.0.1"]);
    fs::create_dir(root.join("tls")).unwrap();
    fs::copy(&first.cert, root.join("tls/tls.crt")).unwrap();
    fs::copy(&first.key, root.join("tls/tls.key")).unwrap();
    fs::write(
        root.join("portcullis.toml"),
        "[server.tls]\ncert = \"tls/tls.crt\"\nkey = \"tls/tls.key\"\n[storage]\nroot = \"data\"\n",
    )
    .unwrap();
    let (server, mut log) = serve(root);
    let client = Client::trusting(&server, &ca.cert);
    let mut load = Load::start(&client);
    load.goes_on().await;

    // The users file: a user added is known at once; a broken file is
    // refused and the users in force stay.
    run_in(root, &["user", "add", "bob"], "bob-Pa55word-reload\n");
    log.wait_for(&["users reloaded", "2 users"]);
    let bob = ("bob", "bob-Pa55word-reload");
    token_of(&client.token("repository:bob/app:pull", Some(bob)).await);
    let users = root.join("users.toml");
    let good_users = fs::read(&users).unwrap();
    replace(&users, b"[users.carol\nhash = ");
    let line = log.wait_for(&["users reload refused"]);
    assert!(line.contains("users.toml"), "the file is named: {line}");
    token_of(&client.token("repository:bob/app:pull", Some(bob)).await);
    load.goes_on().await;
    replace(&users, &good_users);
    log.wait_for(&["users reloaded", "2 users"]);

    // A policy file: a new rule applies at once; a broken file is refused
    // and the rules in force stay.
    assert!(anonymous_pull(&client).await.is_empty());
    let public = root.join("policies/60-public.toml");
    replace(
        &public,
        b"[[rule]]\nanonymous = true\nrepositories = [\"public/**\"]\nactions = [\"pull\"]\n",
    );
    log.wait_for(&["policy reloaded"]);
    assert_eq!(anonymous_pull(&client).await, ["pull"]);
    let broken = root.join("policies/70-broken.toml");
    replace(
        &broken,
        b"[[rule]]\nrepositories = [\"**\"]\nactions = [\"fly\"]\n",
    );
    let line = log.wait_for(&["policy reload refused"]);
    assert!(line.contains("70-broken.toml"), "the file is named: {line}");
    assert_eq!(
        anonymous_pull(&client).await,
        ["pull"],
        "the old rules stay"
    );
    load.goes_on().await;
    fs::remove_file(&broken).unwrap();
    log.wait_for(&["policy reloaded"]);

    // The key directory: a standby key verifies but does not sign; once
    // activated it signs the next token while the old key's tokens still
    // verify; a key file broken later is refused and the ring in force
    // stays; a retired key's tokens stop verifying.
    let alice = ("alice", PASSWORD);
    let old_token = token_of(&client.token("repository:alice/app:pull", Some(alice)).await);
    let old_kid = kid(&old_token);
    let old_key = only_key(&root.join("certs"));
    run_in(root, &["keygen"], "");
    log.wait_for(&["signing keys reloaded", "2 keys (1 on standby)"]);
    let jwks = client.get("/.well-known/jwks.json", None).await.unwrap();
    assert_eq!(
        jwks.json()["keys"].as_array().unwrap().len(),
        4,
        "both keys listed"
    );
    let token = token_of(&client.token("repository:alice/app:pull", Some(alice)).await);
    assert_eq!(kid(&token), old_kid, "a standby key does not sign");
    run_in(root, &["keygen", "--activate"], "");
    log.wait_for(&["signing keys reloaded", "2 keys (0 on standby)"]);
    let new_token = token_of(&client.token("repository:alice/app:pull", Some(alice)).await);
    let new_kid = kid(&new_token);
    assert_ne!(new_kid, old_kid, "the activated key signs at once");
    for token in [&old_token, &new_token] {
        let reply = client
            .get("/v2/", Some(&format!("Bearer {token}")))
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    load.goes_on().await;
    let good_key = fs::read(&old_key).unwrap();
    replace(
        &old_key,
        b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    let line = log.wait_for(&["signing keys reload refused"]);
    assert!(
        line.contains(old_key.file_name().unwrap().to_str().unwrap()),
        "{line}"
    );
    let token = token_of(&client.token("repository:alice/app:pull", Some(alice)).await);
    assert_eq!(kid(&token), new_kid);
    let reply = client
        .get("/v2/", Some(&format!("Bearer {old_token}")))
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "the ring in force stays: {}",
        reply.text()
    );
    load.goes_on().await;
    replace(&old_key, &good_key);
    log.wait_for(&["signing keys reloaded", "2 keys (0 on standby)"]);
    run_in(root, &["keygen", "--retire"], "");
    log.wait_for(&["signing keys reloaded", "1 key (0 on standby)"]);
    let reply = client
        .get("/v2/", Some(&format!("Bearer {old_token}")))
        .await
        .unwrap();
    assert_eq!(reply.status, 401, "a retired key's token: {}", reply.text());
    let reply = client
        .get("/v2/", Some(&format!("Bearer {new_token}")))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let jwks = client.get("/.well-known/jwks.json", None).await.unwrap();
    assert_eq!(
        jwks.json()["keys"].as_array().unwrap().len(),
        2,
        "the JWKS follows"
    );
    load.goes_on().await;

    // The TLS pair: a new pair is served to new connections; a key that is
    // not the certificate's is refused and the pair in force stays.
    assert_eq!(served(&client).await, der_of(&first.cert));
    let second = ca.issue_server("second", &["localhost", "127.0.0.1"]);
    fs::copy(&second.key, root.join("tls/new.key")).unwrap();
    fs::copy(&second.cert, root.join("tls/new.crt")).unwrap();
    fs::rename(root.join("tls/new.key"), root.join("tls/tls.key")).unwrap();
    fs::rename(root.join("tls/new.crt"), root.join("tls/tls.crt")).unwrap();
    // The key may be looked at before the certificate moved in (a refused
    // mismatch), but no pair is put in force before both are there.
    let line = log.wait_for(&["TLS certificate reloaded"]);
    assert!(line.contains("subject"), "what it holds: {line}");
    assert_eq!(served(&client).await, der_of(&second.cert));
    load.goes_on().await;
    let other = ca.issue_server("other", &["localhost"]);
    replace(&root.join("tls/tls.key"), &fs::read(&other.key).unwrap());
    let line = log.wait_for(&["TLS certificate reload refused"]);
    assert!(line.contains("does not hold the key"), "{line}");
    assert_eq!(
        served(&client).await,
        der_of(&second.cert),
        "the pair in force stays"
    );
    load.goes_on().await;

    load.finish().await;
}

/// The actions an anonymous token for `public/app` carries.
async fn anonymous_pull(client: &Client) -> Vec<String> {
    let reply = client.token("repository:public/app:pull", None).await;
    let claims = common::jwt_claims(&token_of(&reply));
    common::granted_actions(&claims, "public/app")
}

/// The tags of `mirror/app`, as alice sees them through Portcullis.
async fn mirror_tags(client: &Client) -> Value {
    let alice = ("alice", PASSWORD);
    let token = token_of(
        &client
            .token("repository:mirror/app:pull", Some(alice))
            .await,
    );
    let reply = client
        .get("/v2/mirror/app/tags/list", Some(&format!("Bearer {token}")))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["tags"].clone()
}

/// The one key of a fresh server's key directory.
fn only_key(certs: &Path) -> std::path::PathBuf {
    let keys: Vec<_> = fs::read_dir(certs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.into_iter().next().unwrap()
}

/// Pushes an image whose only layer is `tag`'s name to an open
/// distribution, as `repo:tag`.
async fn push_image(registry: &Distribution, repo: &str, tag: &str) {
    let layer = tag.as_bytes().to_vec();
    let (config_size, layer_size) = (2, layer.len());
    let config = put_blob(registry, repo, b"{}".to_vec()).await;
    let layer = put_blob(registry, repo, layer).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
    });
    let put = reqwest::Client::new()
        .put(registry.at(&format!("/v2/{repo}/manifests/{tag}")))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
}

/// The configuration of the second test: storage (with `storage`'s
/// lines), `more`, and the upstream at `url` (with `upstream`'s lines).
fn configuration(storage: &str, more: &str, url: &str, upstream: &str) -> String {
    format!(
        "[storage]\nroot = \"data\"\n{storage}\n{more}\n\
         [[upstream]]\nname = \"mirror\"\nprefix = \"mirror\"\nurl = \"{url}\"\n{upstream}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_upstream_and_ldap_settings_under_load_and_refuses_a_bad_file() {
    let dir = crate::logs::setup();
    let root = dir.path();
    let (first, second) = (
        Distribution::start(&root.join("a.yml"), &root.join("a-data"), Auth::Open),
        Distribution::start(&root.join("b.yml"), &root.join("b-data"), Auth::Open),
    );
    push_image(&first, "app", "from-first").await;
    push_image(&second, "app", "from-second").await;
    let slapd = Slapd::start_seeded(SlapdOptions::default());
    fs::write(
        root.join("ldap-password"),
        format!("{}\n", tree::SERVICE_PASSWORD),
    )
    .unwrap();
    let config = root.join("portcullis.toml");
    fs::write(&config, configuration("", "", &first.url, "")).unwrap();
    let (mut server, mut log) = serve(root);
    let client = Client::plain(&server);
    let mut load = Load::start(&client);
    load.goes_on().await;

    let dave = (tree::DAVE.uid, tree::DAVE.password);
    assert_eq!(
        mirror_tags(&client).await,
        serde_json::json!(["from-first"])
    );
    assert_eq!(
        client
            .token("repository:dave/app:pull", Some(dave))
            .await
            .status,
        401
    );

    // A new upstream address and a directory, plus a storage setting that
    // needs a restart: the first two are applied, the last reported.
    let ldap = format!(
        "[[identity.ldap]]\nname = \"corp\"\nurls = [\"{}\"]\nbind_dn = \"{}\"\n\
         bind_password_file = \"ldap-password\"\nuser_base = \"{}\"\n\
         user_filter = \"(uid={{username}})\"\n[identity.ldap.groups]\nfrom = \"none\"\n",
        slapd.url(),
        tree::SERVICE_DN,
        tree::PEOPLE,
    );
    let storage = "sweep_interval_secs = 120\n";
    replace(
        &config,
        configuration(storage, &ldap, &second.url, "").as_bytes(),
    );
    server.signal(libc::SIGHUP);
    let line = log.wait_for(&["configuration reloaded"]);
    for part in [
        "upstreams now mirror (mirror/ at http://127.0.0.1:",
        "identity sources now file, corp",
        "changed but ignored until a restart: storage",
    ] {
        assert!(line.contains(part), "{part} missing in: {line}");
    }
    assert_eq!(
        mirror_tags(&client).await,
        serde_json::json!(["from-second"])
    );
    let claims = common::jwt_claims(&token_of(
        &client.token("repository:dave/app:pull", Some(dave)).await,
    ));
    assert_eq!(claims["sub"], "dave");
    load.goes_on().await;

    // A file that does not validate changes nothing, and the server serves
    // on; nor does one that validates but whose upstream cannot be set up
    // (its password file is missing): refused whole, so the directory is
    // not dropped either.
    let account = "username = \"pull\"\npassword_file = \"missing-password\"\n";
    let listen = "\n[server]\nlisten = \"nowhere\"\n";
    for (bad, why) in [
        (
            configuration(storage, &ldap, &first.url, listen),
            "portcullis.toml",
        ),
        (
            configuration(storage, "", &first.url, account),
            "missing-password",
        ),
    ] {
        replace(&config, bad.as_bytes());
        server.signal(libc::SIGHUP);
        let line = log.wait_for(&["configuration reload refused"]);
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains(why), "{why} missing in: {line}");
        assert_eq!(
            mirror_tags(&client).await,
            serde_json::json!(["from-second"]),
            "nothing changed"
        );
        token_of(&client.token("repository:dave/app:pull", Some(dave)).await);
        load.goes_on().await;
    }

    // An edit alone, with no SIGHUP, is found and applied too (the file is
    // looked at every second), and a SIGHUP after it reads nothing again.
    replace(
        &config,
        configuration(storage, &ldap, &first.url, "").as_bytes(),
    );
    let line = log.wait_for(&["configuration reloaded"]);
    assert!(line.contains("upstreams now mirror"), "{line}");
    assert_eq!(
        mirror_tags(&client).await,
        serde_json::json!(["from-first"])
    );
    server.signal(libc::SIGHUP);
    log.wait_for(&["SIGHUP: checking the watched files"]);
    load.goes_on().await;

    load.finish().await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the server"
    );
    assert_eq!(log.count("configuration reloaded"), 2);
    assert_eq!(log.count("configuration reload refused"), 2);
}
