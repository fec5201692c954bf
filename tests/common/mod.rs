//! Shared test harness: a real Portcullis server on an ephemeral port, owning
//! its temporary data directory.
#![allow(dead_code)]

pub mod browser;
pub mod clients;
pub mod distribution;
pub mod docker;
pub mod garage;
pub mod legacy_v1;
pub mod memory_store;
pub mod oci;
pub mod oidc;
pub mod pki;
pub mod process;
pub mod registry_process;
pub mod slapd;
pub mod v1_client;

use std::sync::Arc;

pub use oci::random_bytes;

use portcullis::config::Config;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A running in-process server. Dropping it stops the server and removes its data.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub dir: TempDir,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The S3 store its storage is in, in a crate whose servers run on S3
    /// (`crate::STORAGE_ON_S3`).
    garage: Option<garage::Garage>,
}

std::thread_local! {
    /// The stores of stopped servers, by data directory, until a server is
    /// started over that directory again (a restart) or the test's thread
    /// ends, which stops them.
    static PARKED: std::cell::RefCell<std::collections::HashMap<std::path::PathBuf, garage::Garage>> =
        Default::default();
}

/// The bucket prefix servers on S3 keep the registry under.
pub const S3_PREFIX: &str = "registry";

/// A Garage for a server over `dir` (the one a stopped server over it used,
/// or a new one), and `[storage.s3]` on it in `config`.
fn s3_storage(dir: &std::path::Path, config: &mut Config) -> garage::Garage {
    let garage = PARKED
        .with(|parked| parked.borrow_mut().remove(dir))
        .unwrap_or_else(garage::Garage::start);
    let secret = dir.join("s3-secret");
    std::fs::write(&secret, format!("{}\n", garage::SECRET_KEY)).expect("secret key file");
    config.storage.s3 = Some(s3_config(&garage.endpoint(), secret));
    garage
}

/// `[storage.s3]` for the test bucket at `endpoint` (the key in the file
/// `secret`), with S3's smallest parts so that a few MiB cross several of
/// them, under [`S3_PREFIX`].
pub fn s3_config(endpoint: &str, secret: std::path::PathBuf) -> portcullis::config::S3Config {
    portcullis::config::S3Config {
        bucket: garage::BUCKET.to_owned(),
        region: garage::REGION.to_owned(),
        endpoint: Some(endpoint.to_owned()),
        prefix: S3_PREFIX.to_owned(),
        access_key_id: Some(garage::ACCESS_KEY.to_owned()),
        secret_access_key_file: Some(secret),
        path_style: Some(true),
        part_size_mib: 5,
        parts_in_flight: 2,
        io_timeout_secs: 30,
        conditional_writes: None,
        redirect_pulls: false,
        redirect_expiry_secs: 60,
        relay_pulls: true,
        reads_ahead: 2,
        read_memory_mib: 64,
    }
}

/// `GET /token` at `server` (`http://HOST:PORT`) for `scope` with Basic
/// `user:password` (any bytes) and `extra` query pairs: the status and the
/// JSON body.
pub async fn basic_token(
    client: &reqwest::Client,
    server: &str,
    (user, password): (&str, &str),
    scope: &str,
    extra: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let credentials = data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes());
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("service", "portcullis")
        .append_pair("scope", scope);
    for (key, value) in extra {
        query.append_pair(key, value);
    }
    let response = client
        .get(format!("{server}/token?{}", query.finish()))
        .header("authorization", format!("Basic {credentials}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The claims of a JWT, unverified (the server's verification is what
/// other tests exercise).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(payload.as_bytes())
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The claims of a token endpoint answer's `token` ([`jwt_claims`]).
pub fn token_claims(body: &serde_json::Value) -> serde_json::Value {
    jwt_claims(body["token"].as_str().expect("a token"))
}

/// The actions a token's claims grant on `repository`.
pub fn granted_actions(claims: &serde_json::Value, repository: &str) -> Vec<String> {
    claims["access"]
        .as_array()
        .expect("access")
        .iter()
        .filter(|a| a["name"] == repository)
        .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A header of `response` as text; panics when it is missing.
pub fn header_str<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .expect("header is text")
}

/// The first error code of a spec error body, after checking it is JSON.
pub async fn error_code(response: reqwest::Response) -> String {
    assert_eq!(
        header_str(&response, "content-type"),
        "application/json",
        "error bodies are JSON"
    );
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    body["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_owned()
}

/// A request body fed from a channel: the test decides when each part is
/// sent, holding the sender keeps the request open mid-body, and dropping it
/// ends the body.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<bytes::Bytes>, reqwest::Body) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|next| next.map(Ok::<_, std::io::Error>))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

impl TestServer {
    /// A token for `user` (whose password is `<user>-pw`, as every test's
    /// users file has it) asking for `scope`; asserts it was issued.
    pub async fn token(&self, user: &str, scope: &str) -> String {
        let response = self
            .client
            .get(self.at(&format!("/token?service=portcullis&scope={scope}")))
            .basic_auth(user, Some(format!("{user}-pw")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "a token for {user}");
        let body: serde_json::Value = response.json().await.unwrap();
        body["token"].as_str().expect("a token").to_owned()
    }

    /// Pushes `data` into `repo` in one request (`POST ?digest=`), asserts
    /// 201 Created, and returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let response = self
            .client
            .post(self.at(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "push a blob into {repo}");
        digest
    }

    /// Asserts `repo` serves exactly `data` under `digest`: 200, the digest
    /// and length headers, and every byte.
    pub async fn assert_serves_blob(&self, repo: &str, digest: &str, data: &[u8]) {
        let response = self
            .client
            .get(self.at(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{repo} {digest}");
        let header = |name: &str| {
            let value = response.headers().get(name);
            value.and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        assert_eq!(header("docker-content-digest").as_deref(), Some(digest));
        assert_eq!(header("content-length"), Some(data.len().to_string()));
        let body = response.bytes().await.unwrap();
        assert!(body.as_ref() == data, "{repo} {digest}: content differs");
    }

    /// Starts a server on `127.0.0.1:0` with a fresh data directory.
    pub async fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir")).await
    }

    /// Starts a server over an existing data directory (e.g. to restart over
    /// the same data), with authentication off: these servers test the registry.
    pub async fn start_in(dir: TempDir) -> Self {
        Self::start_configured(dir, |config| config.auth.enabled = false).await
    }

    /// Starts a server with the configuration `configure` makes of the
    /// default one, whose paths already point into `dir` (data, certs,
    /// users.toml, policies/).
    pub async fn start_configured(dir: TempDir, configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        config.storage.root = dir.path().join("data");
        config.token.key_dir = dir.path().join("certs");
        config.users.file = dir.path().join("users.toml");
        config.policy.dir = dir.path().join("policies");
        let garage = crate::STORAGE_ON_S3.then(|| s3_storage(dir.path(), &mut config));
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = portcullis::AppState::new(config).await.expect("state");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(portcullis::serve(listener, Arc::clone(&state), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            url,
            dir,
            client,
            stop: Some(stop),
            task: Some(task),
            garage,
        }
    }

    /// A server with the shipped policies and one user, alice
    /// (`alice-pw`), with the configuration `configure` makes.
    pub async fn with_alice(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let users = format!(
            "[users.alice]\npassword = {:?}\n",
            portcullis::auth::users::hash_password("alice-pw").expect("hash")
        );
        std::fs::write(dir.path().join("users.toml"), users).expect("users.toml");
        process::copy_project_policies(dir.path());
        Self::start_configured(dir, configure).await
    }

    /// The upload sessions its storage holds (their ids): the directories
    /// under `data/uploads`, or the prefixes under the bucket's `uploads/`.
    pub async fn upload_sessions(&self) -> Vec<String> {
        match &self.garage {
            None => std::fs::read_dir(self.dir.path().join("data/uploads"))
                .map(|entries| {
                    entries
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default(),
            Some(garage) => {
                let endpoint = garage.endpoint();
                let keys = tokio::task::spawn_blocking(move || {
                    garage::object_keys(&endpoint, &format!("{S3_PREFIX}/uploads/"))
                })
                .await
                .unwrap();
                let mut sessions: Vec<String> = keys
                    .iter()
                    .filter_map(|k| k.split('/').nth(2).map(str::to_owned))
                    .collect();
                sessions.dedup();
                sessions
            }
        }
    }

    /// Stops the server gracefully and hands back its data directory (and,
    /// on S3, keeps its store for a server started over it again).
    pub async fn stop(mut self) -> TempDir {
        self.shutdown().await;
        if let Some(garage) = self.garage.take() {
            let dir = self.dir.path().to_owned();
            PARKED.with(|parked| parked.borrow_mut().insert(dir, garage));
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server");
        }
    }

    /// `self.url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// The JSON body of an unauthenticated `GET path`.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let res = self.client.get(self.at(path)).send().await.unwrap();
        res.json().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value after `label` on its line of a command's output (`keygen`
/// prints `key id (libtrust, distribution 2.8): ID`).
#[track_caller]
pub fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"))
        .trim()
        .to_owned()
}
