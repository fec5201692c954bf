//! Sections `small` and `tokens`: many small requests at 64 concurrent
//! connections, driven by `wrk` (Debian's; HEAD by a load loop of the
//! harness' own, see [`head_load`]), where per-request overhead — routing,
//! token verification, the manifest lookup — is all there is.
//!
//! `small`: a tiny image is pushed to both registries, then manifest GET and
//! HEAD by tag are measured against each with one bearer token valid for
//! both; on Portcullis also manifest GET and HEAD by digest, a blob HEAD and
//! `GET /v2/` with the token. `tokens`: `GET /token` with a Basic credential
//! the verification cache already holds, and, in-process, the cold argon2id
//! verification a credential costs the first time it is seen. Both compare
//! Portcullis with what HTTP itself costs here: nginx serving a file of the
//! manifest's bytes at the manifest's path, measured once per run with the
//! same load (see [`nginx_baseline`]).

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::Options;
use crate::report::{Better, Row};
use crate::servers::{self, Servers, Target};

pub const REPOSITORY: &str = "bench/small";
pub const TAG: &str = "latest";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The load: two wrk threads (one per core) holding 64 connections.
const WRK_ARGS: [&str; 4] = ["-t2", "-c64", "-d10s", "--latency"];
/// A short run first, so that neither server is measured while it grows
/// its connection pools and caches, and the page cache holds the manifest.
const WARM_ARGS: [&str; 3] = ["-t2", "-c64", "-d2s"];
/// Cold argon2 verifications timed; the median is kept.
const VERIFY_RUNS: usize = 5;

const MANIFEST_NOTE: &str = "CPU per request: HTTP, the bearer token (Portcullis checks a \
     token's signature once and caches it until expiry; distribution parses and verifies the x5c \
     chain and the signature on every request), the tag lookup and the manifest read; wrk \
     (2 threads) shares the 2 cores with the server, taking CPU it would otherwise use";
const HEAD_NOTE: &str = "as GET, without the body; driven by the harness' own load loop (64 \
     keep-alive connections on 2 threads), since wrk 4.1 never completes a HEAD response that \
     carries Content-Length; the loop shares the 2 cores with the server";
/// nginx at its fastest for a small file: the descriptor and its size
/// kept open between requests, as Portcullis keeps the manifest in memory,
/// so that the baseline is HTTP itself and not a file opened per request
/// (which made nginx 25–35% slower here).
const NGINX_FILE_CACHE: &str =
    "  open_file_cache max=16 inactive=600s;\n  open_file_cache_valid 600s;\n";
const NGINX_NOTE: &str = "nginx 1.22 as one process (`master_process off`: a single worker) \
     serving a file of the manifest's bytes at the manifest's path, with `sendfile`, keep-alive \
     (`keepalive_requests 1000000`) and `open_file_cache` (the file stays open): per request it \
     parses the request and sendfiles the file; the same wrk run (the same headers, 2 threads) \
     shares the 2 cores with it; measured once per run";
const NGINX_HEAD_NOTE: &str = "nginx (one process, `open_file_cache`) answers a HEAD with the \
     header alone; the same load loop as Portcullis' HEAD, sharing the 2 cores";
const DIGEST_NOTE: &str = "as by tag, without the tag lookup: the manifest's path is its digest";
const BLOB_HEAD_NOTE: &str = "the 4 KiB layer's size and digest, without the body; against \
     nginx's HEAD of the manifest-sized file";
const BASE_NOTE: &str = "HTTP and the token check alone (a `{}` body): the floor of an \
     authenticated request, against nginx's GET of the manifest-sized file";
const TOKEN_NOTE: &str = "CPU per request: HTTP, the keyed credential-cache lookup (decided \
     in its first poll, without a task of its own), the policy, and an ES256 signature (aws-lc-rs, \
     about 20 µs) made once per second for the one account and access all 64 connections ask for, \
     as a pipeline's jobs do; the first request paid argon2id; wrk shares the 2 cores";
const TOKEN_NGINX_NOTE: &str = "the same wrk run as the row above, against nginx's GET of the \
     manifest-sized file (the `small` rows' baseline): what HTTP itself costs here";
const ARGON_NOTE: &str = "deliberately slow: argon2id at m=19 MiB, t=2, p=1 (OWASP); paid once \
     per credential, then cached";

/// nginx's figures for the manifest-sized file, shared by `small` and
/// `tokens`.
pub struct NginxBaseline {
    /// The file's size: the small manifest's.
    pub bytes: usize,
    pub get: LoadResult,
    pub head: LoadResult,
}

impl NginxBaseline {
    fn get_name(&self) -> String {
        format!("nginx GET, {}-byte file", self.bytes)
    }

    fn head_name(&self) -> String {
        format!("nginx HEAD, {}-byte file", self.bytes)
    }
}

/// nginx (one process, `servers::start_nginx`) serving the small manifest's
/// bytes as a file at the manifest's path, measured with the same wrk run
/// (GET) and the same load loop (HEAD) as the registries, with the same
/// headers (a bearer token and the manifest type, which nginx ignores), so
/// that the requests differ only in who answers them. Measured the first
/// time a section asks and kept in `servers` for the rest of the run; nginx
/// is stopped before anything else is measured.
async fn nginx_baseline<'a>(servers: &'a Servers, client: &reqwest::Client) -> &'a NginxBaseline {
    if let Some(baseline) = servers.small_nginx.get() {
        return baseline;
    }
    let image = SmallImage::new();
    let dir = servers.path("small");
    let www = dir.join("www");
    let path = format!("/v2/{REPOSITORY}/manifests/{TAG}");
    let file = www.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().unwrap()).expect("nginx root");
    std::fs::write(&file, &image.manifest).expect("manifest file for nginx");
    let (nginx, nginx_url) = servers::start_nginx_with(&dir, &www, None, NGINX_FILE_CACHE);
    let host = nginx_url
        .strip_prefix("http://")
        .expect("plain nginx URL")
        .to_owned();
    let token = servers
        .portcullis
        .token(client, &format!("repository:{REPOSITORY}:pull"))
        .await;
    let bearer = format!("Authorization: Bearer {token}");
    let accept = format!("Accept: {MANIFEST_TYPE}");
    let headers = [bearer.as_str(), accept.as_str()];
    let url = format!("{nginx_url}{path}");
    let bytes = image.manifest.len();
    expect_ok(
        client,
        "GET",
        &url,
        &headers,
        Some(bytes),
        "nginx: file GET",
    )
    .await;
    expect_ok(
        client,
        "HEAD",
        &url,
        &headers,
        Some(bytes),
        "nginx: file HEAD",
    )
    .await;
    let get = wrk(&url, &headers).await;
    let head = head_load(&host, &path, &headers).await;
    drop(nginx);
    let _ = servers.small_nginx.set(NginxBaseline { bytes, get, head });
    servers.small_nginx.get().expect("nginx baseline")
}

/// Sends `method` to `url` with `headers` (`Name: value`, as wrk takes
/// them) and asserts a 200, and when `length` is given, a body (GET) or a
/// Content-Length (HEAD) of that many bytes: the exact request a load run
/// is about to send must succeed, not merely avoid 4xx/5xx (all wrk counts
/// as an error), and a failure here says which request failed.
async fn expect_ok(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[&str],
    length: Option<usize>,
    what: &str,
) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method.clone(), url);
    for header in headers {
        let (name, value) = header.split_once(": ").expect("header `Name: value`");
        request = request.header(name, value);
    }
    let res = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(res.status(), reqwest::StatusCode::OK, "{what}");
    let declared = res
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = res.bytes().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(length) = length {
        if method == reqwest::Method::HEAD {
            assert_eq!(declared, Some(length), "{what}: Content-Length");
        } else {
            assert_eq!(body.len(), length, "{what}: body length");
        }
    }
}

/// Portcullis' figures beside nginx only.
struct Others {
    digest_get: LoadResult,
    digest_head: LoadResult,
    blob_head: LoadResult,
    base_get: LoadResult,
}

pub async fn run(servers: &Servers, _options: &Options) -> Vec<Row> {
    check_parse_wrk();
    let client = reqwest::Client::new();
    let nginx = nginx_baseline(servers, &client).await;
    let image = SmallImage::new();

    let scope = format!("repository:{REPOSITORY}:pull,push");
    let path = format!("/v2/{REPOSITORY}/manifests/{TAG}");
    let mut results = Vec::new();
    let mut others = None;
    for target in servers.targets() {
        // One token per registry keeps each target's figures independent of
        // the other's run; it lasts 300 s, longer than the runs.
        let token = target.token(&client, &scope).await;
        push_image(&client, target, &token).await;
        let url = target.at(&path);
        let bearer = format!("Authorization: Bearer {token}");
        let accept = format!("Accept: {MANIFEST_TYPE}");
        let headers = [bearer.as_str(), accept.as_str()];
        let bytes = Some(image.manifest.len());
        let name = target.name;
        expect_ok(
            &client,
            "GET",
            &url,
            &headers,
            bytes,
            &format!("{name}: manifest GET by tag"),
        )
        .await;
        expect_ok(
            &client,
            "HEAD",
            &url,
            &headers,
            bytes,
            &format!("{name}: manifest HEAD by tag"),
        )
        .await;
        let get = wrk(&url, &headers).await;
        let head = head_load(&target.host, &path, &headers).await;
        results.push((name, get, head));
        if name != servers.portcullis.name {
            continue;
        }

        let by_digest = format!("/v2/{REPOSITORY}/manifests/{}", image.manifest_digest());
        let url = target.at(&by_digest);
        expect_ok(
            &client,
            "GET",
            &url,
            &headers,
            bytes,
            "manifest GET by digest",
        )
        .await;
        expect_ok(
            &client,
            "HEAD",
            &url,
            &headers,
            bytes,
            "manifest HEAD by digest",
        )
        .await;
        let digest_get = wrk(&url, &headers).await;
        let digest_head = head_load(&target.host, &by_digest, &headers).await;

        let blob = format!("/v2/{REPOSITORY}/blobs/{}", image.layer_digest());
        let bearer_only = [bearer.as_str()];
        let layer = Some(image.layer.len());
        expect_ok(
            &client,
            "HEAD",
            &target.at(&blob),
            &bearer_only,
            layer,
            "blob HEAD",
        )
        .await;
        let blob_head = head_load(&target.host, &blob, &bearer_only).await;

        let base = target.at("/v2/");
        expect_ok(
            &client,
            "GET",
            &base,
            &bearer_only,
            None,
            "GET /v2/ with a token",
        )
        .await;
        let base_get = wrk(&base, &bearer_only).await;
        others = Some(Others {
            digest_get,
            digest_head,
            blob_head,
            base_get,
        });
    }

    let (_, p_get, p_head) = &results[0];
    let (d_name, d_get, d_head) = &results[1];
    let others = others.expect("Portcullis measured");
    let mut rows = Vec::new();
    for (method, p, d, n) in [
        ("GET", p_get, d_get, &nginx.get),
        ("HEAD", p_head, d_head, &nginx.head),
    ] {
        let (nginx_name, nginx_note) = if method == "GET" {
            (nginx.get_name(), NGINX_NOTE)
        } else {
            (nginx.head_name(), NGINX_HEAD_NOTE)
        };
        let rate = format!("manifest {method} by tag, 64 connections");
        let p99 = format!("manifest {method} by tag, p99");
        rows.push(
            Row::new(rate.clone(), "req/s", p.requests_per_sec, Better::Higher)
                .against(*d_name, d.requests_per_sec)
                .target(2.0)
                .note(if method == "GET" {
                    MANIFEST_NOTE
                } else {
                    HEAD_NOTE
                }),
        );
        rows.push(
            Row::new(
                format!("manifest {method} by tag, p50"),
                "ms",
                p.p50_ms,
                Better::Lower,
            )
            .against(*d_name, d.p50_ms),
        );
        rows.push(
            Row::new(p99.clone(), "ms", p.p99_ms, Better::Lower)
                .against(*d_name, d.p99_ms)
                .target(1.0),
        );
        // The issue's bar: at least 0.7× nginx's rate, a p99 at most twice
        // nginx's.
        rows.push(
            Row::new(rate, "req/s", p.requests_per_sec, Better::Higher)
                .against(nginx_name.clone(), n.requests_per_sec)
                .target(0.7)
                .note(nginx_note),
        );
        rows.push(
            Row::new(p99, "ms", p.p99_ms, Better::Lower)
                .against(nginx_name, n.p99_ms)
                .target(0.5),
        );
    }
    for (figure, measured, reference, note) in [
        (
            "manifest GET by digest, 64 connections",
            &others.digest_get,
            (nginx.get_name(), &nginx.get),
            DIGEST_NOTE,
        ),
        (
            "manifest HEAD by digest, 64 connections",
            &others.digest_head,
            (nginx.head_name(), &nginx.head),
            DIGEST_NOTE,
        ),
        (
            "blob HEAD, 64 connections",
            &others.blob_head,
            (nginx.head_name(), &nginx.head),
            BLOB_HEAD_NOTE,
        ),
        (
            "GET /v2/ with a bearer token, 64 connections",
            &others.base_get,
            (nginx.get_name(), &nginx.get),
            BASE_NOTE,
        ),
    ] {
        rows.push(
            Row::new(figure, "req/s", measured.requests_per_sec, Better::Higher)
                .against(reference.0, reference.1.requests_per_sec)
                .note(note),
        );
    }
    rows
}

pub async fn tokens(servers: &Servers, _options: &Options) -> Vec<Row> {
    let client = reqwest::Client::new();
    let nginx = nginx_baseline(servers, &client).await;
    let portcullis = &servers.portcullis;
    let url = format!(
        "{}/token?service={}&scope=repository:{REPOSITORY}:pull",
        portcullis.token_url,
        servers::SERVICE
    );
    let basic = servers::basic_auth();
    // The first request pays argon2id and fills the verification cache, so
    // that the run measures issuance with a cached credential; it must
    // succeed, or wrk would time refusals.
    let res = client
        .get(&url)
        .header("authorization", &basic)
        .send()
        .await
        .expect("token request");
    assert_eq!(res.status(), reqwest::StatusCode::OK, "token with Basic");
    let body: serde_json::Value = res.json().await.expect("token json");
    assert!(body["token"].is_string(), "token response without token");

    let header = format!("Authorization: {basic}");
    let issued = wrk(&url, &[header.as_str()]).await;

    let verify_ms = tokio::task::spawn_blocking(cold_verify_ms)
        .await
        .expect("argon2 timing");

    let rate = "token issuance, cached credential, 64 connections";
    vec![
        Row::new(rate, "req/s", issued.requests_per_sec, Better::Higher)
            .target(10_000.0)
            .note(TOKEN_NOTE),
        Row::new(rate, "req/s", issued.requests_per_sec, Better::Higher)
            .against(nginx.get_name(), nginx.get.requests_per_sec)
            .target(0.5)
            .note(TOKEN_NGINX_NOTE),
        Row::new(
            "token issuance, cached credential, p99",
            "ms",
            issued.p99_ms,
            Better::Lower,
        )
        .against(nginx.get_name(), nginx.get.p99_ms),
        Row::new(
            "argon2id verification, cold (in-process)",
            "ms",
            verify_ms,
            Better::Lower,
        )
        .note(ARGON_NOTE),
    ]
}

/// Median wall time of one `Users::verify` of a correct password against an
/// argon2id hash made the way `portcullis user passwd` makes it.
fn cold_verify_ms() -> f64 {
    let hash = portcullis::auth::users::hash_password(servers::PASSWORD).expect("hash");
    let users = portcullis::auth::users::Users::from_toml(
        "bench-users.toml",
        &format!("[users.{}]\npassword = {hash:?}\n", servers::USER),
    )
    .expect("users file");
    let mut times: Vec<f64> = (0..VERIFY_RUNS)
        .map(|_| {
            let start = Instant::now();
            let account = users.verify(servers::USER, servers::PASSWORD);
            let elapsed = start.elapsed().as_secs_f64() * 1000.0;
            assert!(
                account.is_some(),
                "argon2 verification refused the password"
            );
            elapsed
        })
        .collect();
    median(&mut times)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

// ---------------------------------------------------------------------------
// Pushing the small image.

/// The small image both registries are given, as bytes: a config blob,
/// one 4 KiB layer and the OCI image manifest naming them. The same bytes
/// every time, so that a section that does not push (nginx's baseline, when
/// only `tokens` runs) knows the manifest's size and digests.
pub struct SmallImage {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl SmallImage {
    pub fn new() -> Self {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#.to_vec();
        // Any bytes do for a layer: neither registry looks inside it.
        let layer: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_digest(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha256_digest(&layer),
                "size": layer.len(),
            }],
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        SmallImage {
            config,
            layer,
            manifest,
        }
    }

    pub fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    pub fn layer_digest(&self) -> String {
        sha256_digest(&self.layer)
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes the [`SmallImage`]: its config blob, its layer and its manifest,
/// tagged `latest`, asserting each step, so that both registries serve the
/// same manifest.
pub async fn push_image(client: &reqwest::Client, target: &Target, token: &str) {
    let image = SmallImage::new();
    let config_digest = push_blob(client, target, token, &image.config).await;
    let layer_digest = push_blob(client, target, token, &image.layer).await;
    assert_eq!(config_digest, sha256_digest(&image.config));
    assert_eq!(layer_digest, image.layer_digest());
    let res = client
        .put(target.at(&format!("/v2/{REPOSITORY}/manifests/{TAG}")))
        .bearer_auth(token)
        .header("content-type", MANIFEST_TYPE)
        .body(image.manifest)
        .send()
        .await
        .expect("manifest put");
    assert_eq!(
        res.status(),
        reqwest::StatusCode::CREATED,
        "{}: manifest put: {}",
        target.name,
        res.text().await.unwrap_or_default()
    );
}

/// A blob in two requests (POST for a session, PUT with the digest), the
/// way every client can; returns its digest.
async fn push_blob(client: &reqwest::Client, target: &Target, token: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let res = client
        .post(target.at(&format!("/v2/{REPOSITORY}/blobs/uploads/")))
        .bearer_auth(token)
        .send()
        .await
        .expect("upload start");
    assert_eq!(
        res.status(),
        reqwest::StatusCode::ACCEPTED,
        "{}: upload start",
        target.name
    );
    let location = res
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .expect("upload location")
        .to_owned();
    // distribution answers with an absolute URL, Portcullis with a path.
    let location = if location.starts_with('/') {
        target.at(&location)
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let res = client
        .put(format!("{location}{separator}digest={digest}"))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("upload finish");
    assert_eq!(
        res.status(),
        reqwest::StatusCode::CREATED,
        "{}: upload finish",
        target.name
    );
    digest
}

// ---------------------------------------------------------------------------
// Running wrk and reading its report.

/// What a load run reports that the table uses.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl std::fmt::Display for LoadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
            self.requests_per_sec, self.p50_ms, self.p99_ms
        )
    }
}

/// Runs a short warm-up and then the measured wrk run against `url`, with
/// `headers` (`Name: value`). Panics, with wrk's output, when wrk fails or
/// any response was an error: a figure made of errors must not reach the
/// table.
pub async fn wrk(url: &str, headers: &[&str]) -> LoadResult {
    let args: Vec<&str> = headers.iter().flat_map(|h| ["-H", h]).collect();
    wrk_with(url, &args).await
}

/// [`wrk`] with other arguments before the URL (e.g. `-s script.lua`).
pub async fn wrk_with(url: &str, extra: &[&str]) -> LoadResult {
    let _ = run_wrk(&WARM_ARGS, url, extra).await;
    let output = run_wrk(&WRK_ARGS, url, extra).await;
    let result = parse_wrk(&output).unwrap_or_else(|e| panic!("wrk {url}: {e}\n{output}"));
    eprintln!("  GET {url}: {result}");
    result
}

async fn run_wrk(args: &[&str], url: &str, extra: &[&str]) -> String {
    let mut command = tokio::process::Command::new("wrk");
    command.args(args).args(extra).arg(url);
    servers::client_output(command, &format!("wrk {url}")).await
}

/// Reads `Requests/sec:`, the 50% and 99% lines of `Latency Distribution`,
/// and refuses a run with error responses or socket errors other than
/// timeouts (which are reported but only flatter the latency figures).
fn parse_wrk(output: &str) -> Result<LoadResult, String> {
    let mut requests_per_sec = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut in_distribution = false;
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            return Err(format!("{} responses were errors", rest.trim()));
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            check_socket_errors(rest)?;
            continue;
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = Some(
                rest.trim()
                    .parse::<f64>()
                    .map_err(|e| format!("Requests/sec {rest:?}: {e}"))?,
            );
            continue;
        }
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next(), fields.next()) {
                (Some("50%"), Some(time), None) => p50 = Some(duration_ms(time)?),
                (Some("99%"), Some(time), None) => p99 = Some(duration_ms(time)?),
                (Some(p), Some(_), None) if p.ends_with('%') => {}
                _ => in_distribution = false,
            }
        }
    }
    let requests_per_sec = requests_per_sec.ok_or("no Requests/sec line")?;
    if requests_per_sec <= 0.0 {
        return Err("no request completed".to_owned());
    }
    Ok(LoadResult {
        requests_per_sec,
        p50_ms: p50.ok_or("no 50% latency line (was --latency given?)")?,
        p99_ms: p99.ok_or("no 99% latency line (was --latency given?)")?,
    })
}

/// The parser against wrk's report format (this harness has no test
/// runner): a misread unit would silently skew every latency by 1000×.
fn check_parse_wrk() {
    let report = "Running 10s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n  \
        Thread Stats   Avg      Stdev     Max   +/- Stdev\n    \
        Latency   635.91us    0.89ms  12.92ms   93.69%\n    \
        Req/Sec    56.20k     8.07k   62.89k    86.54%\n  Latency Distribution\n     \
        50%  250.00us\n     75%  491.00us\n     90%  700.00us\n     99%    1.20s\n  \
        22464657 requests in 10.00s, 17.76GB read\nRequests/sec: 373981.38\n\
        Transfer/sec:    302.77MB\n";
    let parsed = parse_wrk(report).expect("sample wrk report");
    assert_eq!(
        parsed,
        LoadResult {
            requests_per_sec: 373981.38,
            p50_ms: 0.25,
            p99_ms: 1200.0,
        }
    );
    let errors = report.replace(
        "Requests/sec",
        "  Non-2xx or 3xx responses: 12\nRequests/sec",
    );
    assert!(parse_wrk(&errors).is_err(), "error responses accepted");
    let socket = report.replace(
        "Requests/sec",
        "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec",
    );
    assert!(parse_wrk(&socket).is_err(), "socket errors accepted");
    let no_latency = report.replace("99%", "98%");
    assert!(parse_wrk(&no_latency).is_err(), "missing 99% accepted");
}

/// `connect 0, read 0, write 0, timeout 0`
fn check_socket_errors(counts: &str) -> Result<(), String> {
    for part in counts.split(',') {
        let mut fields = part.split_whitespace();
        let (Some(kind), Some(count)) = (fields.next(), fields.next()) else {
            return Err(format!("unreadable socket errors {counts:?}"));
        };
        let count: u64 = count
            .parse()
            .map_err(|_| format!("unreadable socket errors {counts:?}"))?;
        match (kind, count) {
            (_, 0) => {}
            ("timeout", n) => eprintln!("  warning: {n} requests timed out (not in the latencies)"),
            _ => return Err(format!("socket errors: {}", counts.trim())),
        }
    }
    Ok(())
}

/// wrk's durations: a number and a unit among us, ms, s, m, h.
fn duration_ms(text: &str) -> Result<f64, String> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| format!("duration without unit {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("unreadable duration {text:?}"))?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return Err(format!("unknown unit in {text:?}")),
    };
    Ok(number * scale)
}

// ---------------------------------------------------------------------------
// HEAD under load. wrk 4.1 cannot measure it: its HTTP parser is never told
// that a response answers a HEAD, so it waits for the Content-Length bytes
// of a body that never comes and completes no request at all. This loop
// does what wrk does for one request at a time per connection: 64
// keep-alive connections on the harness' runtime (one worker per core, as
// wrk -t2 on two cores), each sending the request, reading the head of the
// response and timing the round trip.

/// The measured run, after a warm-up like wrk's.
const LOAD_SECONDS: u64 = 10;
const WARM_SECONDS: u64 = 2;
const CONNECTIONS: usize = 64;
/// wrk's default timeout is 2 s; a response later than this is a failure
/// here, not a figure.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A response head larger than this is not a manifest HEAD answer.
const MAX_HEAD: usize = 64 * 1024;

/// HEAD `path` on `host` (`127.0.0.1:PORT`) with `headers`, as [`wrk`] does
/// GET. Panics when any response is not a 200 or a connection fails.
async fn head_load(host: &str, path: &str, headers: &[&str]) -> LoadResult {
    let mut request = format!("HEAD {path} HTTP/1.1\r\nHost: {host}\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let request: std::sync::Arc<[u8]> = request.into_bytes().into();
    let _ = head_run(host, &request, Duration::from_secs(WARM_SECONDS)).await;
    let result = head_run(host, &request, Duration::from_secs(LOAD_SECONDS))
        .await
        .unwrap_or_else(|e| panic!("HEAD {host}{path}: {e}"));
    eprintln!("  HEAD http://{host}{path}: {result}");
    result
}

async fn head_run(
    host: &str,
    request: &std::sync::Arc<[u8]>,
    duration: Duration,
) -> Result<LoadResult, String> {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(head_connection(host.to_owned(), request.clone(), deadline)))
        .collect();
    let mut latencies_us: Vec<u64> = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.map_err(|e| e.to_string())??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if latencies_us.is_empty() {
        return Err("no request completed".to_owned());
    }
    latencies_us.sort_unstable();
    let percentile = |p: f64| {
        let rank = ((p * latencies_us.len() as f64).ceil() as usize).max(1);
        latencies_us[rank - 1] as f64 / 1000.0
    };
    Ok(LoadResult {
        requests_per_sec: latencies_us.len() as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    })
}

/// One keep-alive connection sending `request` until `deadline`; the
/// latency of each response, in µs.
async fn head_connection(
    host: String,
    request: std::sync::Arc<[u8]>,
    deadline: Instant,
) -> Result<Vec<u64>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(&host)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut latencies = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    while Instant::now() < deadline {
        let sent = Instant::now();
        buf.clear();
        let exchange = async {
            stream.write_all(&request).await?;
            // One request in flight per connection: the response head ends
            // the exchange, and a HEAD response has nothing after it.
            loop {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ));
                }
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Ok(end + 4);
                }
                if buf.len() > MAX_HEAD {
                    return Err(std::io::Error::other("response head too large"));
                }
            }
        };
        let head_len = tokio::time::timeout(RESPONSE_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no response within {RESPONSE_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        latencies.push(sent.elapsed().as_micros() as u64);
        if head_len != buf.len() {
            return Err("bytes after a HEAD response's head".to_owned());
        }
        let status = buf
            .split(|&b| b == b'\r')
            .next()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        if !status.starts_with("HTTP/1.1 200 ") {
            return Err(format!("response {status:?}"));
        }
    }
    Ok(latencies)
}
