//! Sections `small` and `tokens`: many small requests at 64 concurrent
//! connections, driven by `wrk` (Debian's; HEAD by a load loop of the
//! harness' own, see [`head_load`]), where per-request overhead — routing,
//! token verification, the manifest lookup — is all there is.
//!
//! `small`: a tiny image is pushed to both registries, then manifest GET and
//! HEAD by tag are measured against each with one bearer token valid for
//! both. `tokens`: `GET /token` with a Basic credential the verification
//! cache already holds, and, in-process, the cold argon2id verification a
//! credential costs the first time it is seen.

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
const TOKEN_NOTE: &str = "CPU per request: HTTP, the keyed credential-cache lookup, the \
     policy, and an ES256 signature (aws-lc-rs, a few tens of µs); the login runs as a task of \
     its own (so an abandoned attempt still counts with the limiter); the first request paid \
     argon2id; wrk shares the 2 cores";
const ARGON_NOTE: &str = "deliberately slow: argon2id at m=19 MiB, t=2, p=1 (OWASP); paid once \
     per credential, then cached";

pub async fn run(servers: &Servers, _options: &Options) -> Vec<Row> {
    check_parse_wrk();
    let client = reqwest::Client::new();

    let scope = format!("repository:{REPOSITORY}:pull,push");
    let mut results = Vec::new();
    for target in servers.targets() {
        // One token per registry keeps each target's figures independent of
        // the other's run; it lasts 300 s, longer than the runs.
        let token = target.token(&client, &scope).await;
        push_image(&client, target, &token).await;
        let path = format!("/v2/{REPOSITORY}/manifests/{TAG}");
        let url = target.at(&path);
        let bearer = format!("Authorization: Bearer {token}");
        let accept = format!("Accept: {MANIFEST_TYPE}");
        let headers = [bearer.as_str(), accept.as_str()];
        // Before measuring anything, the exact requests the load will send
        // must succeed with a 200, not merely avoid 4xx/5xx (all wrk counts
        // as an error), and a failure here says which request failed.
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let res = client
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .header("accept", MANIFEST_TYPE)
                .send()
                .await
                .expect("manifest request");
            assert_eq!(
                res.status(),
                reqwest::StatusCode::OK,
                "{}: manifest {method} by tag",
                target.name
            );
        }
        let get = wrk(&url, &headers).await;
        let head = head_load(&target.host, &path, &headers).await;
        results.push((target.name, get, head));
    }

    let (_, p_get, p_head) = &results[0];
    let (d_name, d_get, d_head) = &results[1];
    let mut rows = Vec::new();
    for (method, p, d) in [("GET", p_get, d_get), ("HEAD", p_head, d_head)] {
        rows.push(
            Row::new(
                format!("manifest {method} by tag, 64 connections"),
                "req/s",
                p.requests_per_sec,
                Better::Higher,
            )
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
            Row::new(
                format!("manifest {method} by tag, p99"),
                "ms",
                p.p99_ms,
                Better::Lower,
            )
            .against(*d_name, d.p99_ms)
            .target(1.0),
        );
    }
    rows
}

pub async fn tokens(servers: &Servers, _options: &Options) -> Vec<Row> {
    let client = reqwest::Client::new();
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

    vec![
        Row::new(
            "token issuance, cached credential, 64 connections",
            "req/s",
            issued.requests_per_sec,
            Better::Higher,
        )
        .target(10_000.0)
        .note(TOKEN_NOTE),
        Row::new(
            "token issuance, cached credential, p99",
            "ms",
            issued.p99_ms,
            Better::Lower,
        ),
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

/// Pushes a config blob, one small layer and an OCI image manifest tagged
/// `latest`, asserting each step, so that both registries serve the same
/// manifest.
pub async fn push_image(client: &reqwest::Client, target: &Target, token: &str) {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    // Any bytes do for a layer: neither registry looks inside it.
    let layer: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let config_digest = push_blob(client, target, token, config).await;
    let layer_digest = push_blob(client, target, token, &layer).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    });
    let res = client
        .put(target.at(&format!("/v2/{REPOSITORY}/manifests/{TAG}")))
        .bearer_auth(token)
        .header("content-type", MANIFEST_TYPE)
        .body(serde_json::to_vec(&manifest).unwrap())
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
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
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
