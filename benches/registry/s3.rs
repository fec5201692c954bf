//! Section `s3`: Portcullis on an S3 bucket (`[storage.s3]`) beside
//! distribution 2.8 on its own S3 driver, both on one single-node Garage
//! that the section starts (the test suite's harness, in a temporary
//! directory of its own), and beside the bench process itself putting and
//! getting the same bytes with `object_store` (the store's own limit).
//!
//! - Portcullis (tokens on, the first Portcullis' users, policy and keys)
//!   keeps everything under `portcullis/` in the bucket, in 8 MiB parts, 3
//!   at once, with an upload memory budget of 256 MiB (for the concurrent
//!   pushes; a single push holds 32 MiB of it).
//! - distribution trusts the first Portcullis' tokens, as in every section,
//!   and keeps everything under `distribution/`, in 8 MiB chunks (its
//!   `chunksize`), with redirects off, so that it serves pulls itself
//!   rather than sending clients to a presigned URL of the store.
//! - The raw reference is `object_store`'s `WriteMultipart` with the same
//!   part size and as many parts in flight, signed as Portcullis' driver
//!   signs (the payload's SHA-256 in each signature, object_store's
//!   default), and a streamed GET.
//!
//! Garage stores blocks by content hash, so a push of bytes it already
//! holds writes no block: every timed push sends a blob of its own (its own
//! seed), generated before the clock starts.
//!
//! Then 32 clients push a different 64 MiB blob each at once (monolithic
//! `POST ?digest=`), retrying after a 429 as its `Retry-After` says; the
//! budget lets 6 stream at once, and Portcullis' peak RSS must stay within
//! the budget and 64 MiB more.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ClientOptions, ObjectStoreExt, WriteMultipart};

use crate::Options;
use crate::bare;
use crate::blobs::{self, Blob, MIB, RUNS};
use crate::distribution::TokenRegistry;
use crate::garage::{self, Garage};
use crate::report::{Better, Row};
use crate::servers::{self, ISSUER, Proc, SERVICE, Servers, Target};

/// Part size and parts in flight, for Portcullis and the raw reference.
const PART_MIB: usize = 8;
const IN_FLIGHT: usize = 2;
/// Portcullis' `upload_memory_mib`: 8 uploads of 32 MiB stream at once.
const BUDGET_MIB: u64 = 256;
/// The concurrent pushes.
const CLIENTS: usize = 32;
const CLIENT_MIB: u64 = 64;
/// Timed pulls per contender (after one untimed).
const PULL_RUNS: usize = 5;
/// Where each contender keeps its objects in the bucket.
const PORTCULLIS_PREFIX: &str = "portcullis";
const DISTRIBUTION_PREFIX: &str = "distribution";
const RAW_PREFIX: &str = "raw";

const PUSH_NOTE: &str = "Portcullis hashes the body and sends it on in 8 MiB parts, 2 at once, \
    then completes the upload and moves the object into place with a server-side copy; \
    distribution writes 8 MiB chunks and moves the blob with a multipart copy; Garage, on the \
    same two cores, stores every block";
const PULL_NOTE: &str = "Portcullis relays the blob from the store's answers to ranged GETs of \
    8 MiB, 4 asked for ahead of the one being sent, each spliced from its socket to the client's; \
    distribution relays one GET stream through its memory (its redirect to the store turned off)";
const RAW_PUSH_NOTE: &str = "object_store's WriteMultipart from the bench process, 8 MiB parts, \
    2 in flight, payloads signed as Portcullis' driver signs them: no hashing, no client \
    connection, no move";
const RAW_PULL_NOTE: &str = "object_store's streamed GET, counted and dropped in the bench process";
const RSS_NOTE: &str = "VmHWM reset before each push: one upload's 32 MiB share (parts in flight \
    and filling, bytes waiting to be hashed) and the runtime";
const MANY_NOTE: &str = "32 clients at once, each a monolithic POST of its own blob, with a \
    256 MiB upload budget (8 uploads of 32 MiB stream at once); the others wait for a share, \
    and get 429 after 10 s of waiting";

pub async fn run(servers: &Servers, options: &Options) -> Vec<Row> {
    let dir = servers.path("s3");
    std::fs::create_dir_all(&dir).expect("s3 dir");
    let garage = tokio::task::spawn_blocking(Garage::start)
        .await
        .expect("start Garage");
    let endpoint = garage.endpoint();
    eprintln!("garage at {endpoint}");

    let (_portcullis_proc, portcullis) = start_portcullis(servers, &dir, &endpoint);
    eprintln!("portcullis (S3) at {}", portcullis.url);
    let (_distribution_proc, distribution) = start_distribution(servers, &dir, &endpoint);
    eprintln!("distribution (S3) at {}", distribution.url);
    let raw = raw_store(&endpoint, false);
    let unsigned = raw_store(&endpoint, true);

    let size = options.blob_mib * MIB;
    let label = format!("{} MiB", options.blob_mib);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // Pushes: each round every contender once, in a rotating order, each
    // with a blob of its own.
    let mut pushed = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut last: [(String, String); 4] = Default::default();
    let mut rss_peak = [0u64, 0u64];
    eprintln!(
        "  idle RSS: portcullis {:.1} MiB, distribution {:.1} MiB",
        mib(servers::memory(portcullis.pid).0),
        mib(servers::memory(distribution.pid).0)
    );
    for run in 0..RUNS {
        for turn in 0..4 {
            let i = (run + turn) % 4;
            let path = dir.join("blob");
            let digest = {
                let path = path.clone();
                let seed = 1000 + (run * 4 + i) as u64;
                tokio::task::spawn_blocking(move || blobs::generate_seeded(&path, size, seed))
                    .await
                    .expect("generate")
            };
            let blob = Blob {
                file: Arc::new(File::open(&path).expect("open blob")),
                size,
                digest: format!("sha256:{digest}"),
            };
            let speed = match i {
                0 | 1 => {
                    let target = if i == 0 { &portcullis } else { &distribution };
                    let repo = format!("bench-s3/push-{run}");
                    let token = blobs::push_token(&client, target, &repo).await;
                    let _ = std::fs::write(format!("/proc/{}/clear_refs", target.pid), "5");
                    let speed = blobs::measure(target.process(), "push", size, || {
                        blobs::push_single(&client, target, &repo, &token, &blob)
                    })
                    .await;
                    rss_peak[i] = rss_peak[i].max(servers::memory(target.pid).1);
                    last[i] = (repo, blob.digest.clone());
                    speed
                }
                _ => {
                    let (store, name) = if i == 2 {
                        (&raw, "object_store put")
                    } else {
                        (&unsigned, "object_store put, unsigned payload")
                    };
                    let key = format!("{RAW_PREFIX}/blob-{run}-{i}");
                    let me = (name, std::process::id());
                    let speed =
                        blobs::measure(me, "", size, || raw_put(store, &key, &blob.file, size))
                            .await;
                    last[i] = (key, String::new());
                    speed
                }
            };
            pushed[i].push(speed);
            drop(blob);
            let _ = std::fs::remove_file(&path);
        }
    }
    eprintln!(
        "  peak RSS during a push: portcullis {:.1} MiB, distribution {:.1} MiB",
        mib(rss_peak[0]),
        mib(rss_peak[1])
    );

    // Pulls of each contender's last pushed blob, once before the clock.
    let pull_tokens = [
        portcullis
            .token(&client, &format!("repository:{}:pull", last[0].0))
            .await,
        distribution
            .token(&client, &format!("repository:{}:pull", last[1].0))
            .await,
    ];
    let mut pulled = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..=PULL_RUNS {
        for i in 0..3 {
            let speed = if i < 2 {
                let target = if i == 0 { &portcullis } else { &distribution };
                let url = target.at(&format!("/v2/{}/blobs/{}", last[i].0, last[i].1));
                let token = pull_tokens[i].clone();
                blobs::measure(target.process(), "pull", size, || async move {
                    tokio::task::spawn_blocking(move || bare::get(&url, Some(&token)))
                        .await
                        .expect("pull thread");
                })
                .await
            } else {
                let me = ("object_store get", std::process::id());
                blobs::measure(me, "", size, || raw_get(&raw, &last[2].0, size)).await
            };
            if round > 0 {
                pulled[i].push(speed);
            }
        }
    }

    // What a finishing push's move costs the store: Portcullis' driver
    // renames an upload into place with a server-side copy and a delete.
    let copied = format!("{RAW_PREFIX}/copy");
    let started = Instant::now();
    raw.copy(
        &object_store::path::Path::from(last[2].0.as_str()),
        &object_store::path::Path::from(copied.as_str()),
    )
    .await
    .expect("server-side copy");
    eprintln!(
        "  server-side copy of a {label} object: {:.3} s",
        started.elapsed().as_secs_f64()
    );

    // Many pushes at once.
    let many = many_pushes(&client, &portcullis, &dir).await;

    let median = |v: &[f64]| blobs::median(&mut v.iter().copied());
    let raw_name = "object_store, same parts";
    let distribution_name = "distribution 2.8, S3 driver";
    let rows = vec![
        Row::new(
            format!("{label} blob push, S3 (Garage)"),
            "MB/s",
            median(&pushed[0]),
            Better::Higher,
        )
        .against(distribution_name, median(&pushed[1]))
        .target(1.5)
        .note(PUSH_NOTE),
        Row::new(
            format!("{label} blob push, S3 (Garage)"),
            "MB/s",
            median(&pushed[0]),
            Better::Higher,
        )
        .against(raw_name, median(&pushed[2]))
        .target(0.8)
        .note(RAW_PUSH_NOTE),
        Row::new(
            format!("{label} blob push, S3 (Garage)"),
            "MB/s",
            median(&pushed[0]),
            Better::Higher,
        )
        .against("object_store, unsigned payload", median(&pushed[3]))
        .note(
            "the same put without the payload's SHA-256 in each request's signature \
             (UNSIGNED-PAYLOAD), which Portcullis' driver does not use",
        ),
        Row::new(
            format!("{label} blob pull, S3 (Garage)"),
            "MB/s",
            median(&pulled[0]),
            Better::Higher,
        )
        .against(distribution_name, median(&pulled[1]))
        .target(1.5)
        .note(PULL_NOTE),
        Row::new(
            format!("{label} blob pull, S3 (Garage)"),
            "MB/s",
            median(&pulled[0]),
            Better::Higher,
        )
        .against(raw_name, median(&pulled[2]))
        .target(0.8)
        .note(RAW_PULL_NOTE),
        Row::new(
            format!("peak RSS during a {label} push to S3"),
            "MiB",
            mib(rss_peak[0]),
            Better::Lower,
        )
        .against(distribution_name, mib(rss_peak[1]))
        .note(RSS_NOTE),
        Row::new(
            format!("peak RSS during a {label} push to S3"),
            "MiB",
            mib(rss_peak[0]),
            Better::Lower,
        )
        .target(64.0),
        Row::new(
            format!("{CLIENTS} concurrent {CLIENT_MIB} MiB pushes, S3"),
            "MB/s",
            many.speed,
            Better::Higher,
        )
        .against("object_store, one put", median(&pushed[2]))
        .note(MANY_NOTE),
        Row::new(
            format!("{CLIENTS} concurrent {CLIENT_MIB} MiB pushes, S3: 429 answers"),
            "answers",
            many.refused as f64,
            Better::Lower,
        ),
        Row::new(
            format!("{CLIENTS} concurrent {CLIENT_MIB} MiB pushes, S3: blobs present after"),
            "blobs",
            many.present as f64,
            Better::Higher,
        )
        .target(CLIENTS as f64),
        Row::new(
            format!("peak RSS, {CLIENTS} concurrent {CLIENT_MIB} MiB pushes, S3"),
            "MiB",
            mib(many.peak),
            Better::Lower,
        )
        .target((BUDGET_MIB + 64) as f64)
        .note("the budget (256 MiB) and 64 MiB more"),
    ];
    drop(_distribution_proc);
    drop(_portcullis_proc);
    drop(garage);
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// A Portcullis on the first one's users, policy and token keys, storing
/// in the Garage bucket under [`PORTCULLIS_PREFIX`].
fn start_portcullis(servers: &Servers, dir: &Path, endpoint: &str) -> (Proc, Target) {
    let secret = dir.join("s3-secret-key");
    std::fs::write(&secret, format!("{}\n", garage::SECRET_KEY)).expect("secret file");
    let first = servers.path("portcullis/portcullis.toml");
    let text = std::fs::read_to_string(first).expect("the first configuration");
    let data = servers.path("portcullis/data");
    let storage = format!(
        "root = {:?}\nupload_memory_mib = {BUDGET_MIB}\n\n[storage.s3]\nendpoint = {endpoint:?}\n\
         region = {:?}\nbucket = {:?}\nprefix = {PORTCULLIS_PREFIX:?}\naccess_key_id = {:?}\n\
         secret_access_key_file = {secret:?}\npath_style = true\npart_size_mib = {PART_MIB}\n\
         parts_in_flight = {IN_FLIGHT}\n",
        dir.join("data"),
        garage::REGION,
        garage::BUCKET,
        garage::ACCESS_KEY,
    );
    let from = format!("root = {data:?}\n");
    assert!(
        text.contains(&from),
        "the first configuration's storage root"
    );
    let text = text.replace(&from, &storage);
    let config = dir.join("portcullis.toml");
    std::fs::write(&config, text).expect("S3 configuration");
    servers.start_portcullis_on(&config, "portcullis (S3)", None)
}

/// distribution 2.8 on the Garage bucket under [`DISTRIBUTION_PREFIX`],
/// trusting the first Portcullis' tokens.
fn start_distribution(servers: &Servers, dir: &Path, endpoint: &str) -> (Proc, Target) {
    let root = dir.join("distribution");
    std::fs::create_dir_all(&root).expect("distribution dir");
    let auth = TokenRegistry {
        log: "",
        addr: "",
        secret: "",
        root: &root,
        realm: &format!("{}/token", servers.portcullis.url),
        service: SERVICE,
        issuer: ISSUER,
        bundle: &servers.path("portcullis/certs/bundle.crt"),
    }
    .auth_yaml();
    // distribution 2.8's s3aws driver: with `regionendpoint` set it
    // addresses the bucket path-style (no `forcepathstyle` option yet) and
    // takes any region name.
    servers::launch_distribution(
        "distribution (S3)",
        &root,
        &servers.portcullis.url,
        |port| {
            format!(
                "version: 0.1\n\
             log:\n  level: error\n  formatter: text\n  accesslog:\n    disabled: true\n\
             storage:\n  s3:\n\
             \x20   accesskey: {access}\n    secretkey: {secret}\n\
             \x20   region: {region}\n    regionendpoint: {endpoint}\n\
             \x20   bucket: {bucket}\n    secure: false\n    v4auth: true\n\
             \x20   chunksize: {chunk}\n    rootdirectory: /{DISTRIBUTION_PREFIX}\n\
             \x20 delete:\n    enabled: true\n\
             \x20 redirect:\n    disable: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: bench-secret\n\
             {auth}",
                access = garage::ACCESS_KEY,
                secret = garage::SECRET_KEY,
                region = garage::REGION,
                bucket = garage::BUCKET,
                chunk = PART_MIB << 20,
            )
        },
    )
}

/// The bucket, as Portcullis' driver reaches it (path-style, plain HTTP),
/// from the bench process; with `unsigned`, payloads are not hashed into
/// the signatures.
fn raw_store(endpoint: &str, unsigned: bool) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_region(garage::REGION)
        .with_bucket_name(garage::BUCKET)
        .with_access_key_id(garage::ACCESS_KEY)
        .with_secret_access_key(garage::SECRET_KEY)
        .with_virtual_hosted_style_request(false)
        .with_allow_http(true)
        .with_unsigned_payload(unsigned)
        .with_client_options(
            ClientOptions::new()
                .with_timeout_disabled()
                .with_allow_http(true),
        )
        .build()
        .expect("object_store client")
}

/// A multipart put of the file's `size` bytes: parts of [`PART_MIB`], at
/// most [`IN_FLIGHT`] uploading while the next one is read.
async fn raw_put(store: &AmazonS3, key: &str, file: &File, size: u64) {
    let path = object_store::path::Path::from(key);
    let upload = store.put_multipart(&path).await.expect("create multipart");
    let part = PART_MIB << 20;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
    let mut offset = 0u64;
    while offset < size {
        let n = (part as u64).min(size - offset) as usize;
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, offset).expect("read blob");
        writer
            .wait_for_capacity(IN_FLIGHT)
            .await
            .expect("part upload");
        writer.put(Bytes::from(buf));
        offset += n as u64;
    }
    writer.finish().await.expect("complete multipart");
}

/// A streamed GET of `key`, its bytes counted and dropped.
async fn raw_get(store: &AmazonS3, key: &str, size: u64) {
    let path = object_store::path::Path::from(key);
    let mut stream = store.get(&path).await.expect("GET").into_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        received += chunk.expect("GET body").len() as u64;
    }
    assert_eq!(received, size, "raw GET {key}");
}

struct Many {
    /// Aggregate MB/s, from the first request to the last 201.
    speed: f64,
    /// 429 answers, over all clients.
    refused: u64,
    /// Blobs that answered HEAD 200 with their size afterwards.
    present: usize,
    /// Portcullis' VmHWM over the pushes (reset before).
    peak: u64,
}

/// [`CLIENTS`] clients pushing a [`CLIENT_MIB`] blob each at once.
async fn many_pushes(client: &reqwest::Client, target: &Target, dir: &Path) -> Many {
    let size = CLIENT_MIB * MIB;
    let mut jobs = Vec::new();
    for i in 0..CLIENTS {
        let path = dir.join(format!("many-{i}"));
        let digest = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                blobs::generate_seeded(&path, size, 5000 + i as u64)
            })
            .await
            .expect("generate")
        };
        let repo = format!("bench-s3/many-{i}");
        let token = blobs::push_token(client, target, &repo).await;
        jobs.push((path, repo, format!("sha256:{digest}"), token));
    }
    let refused = Arc::new(AtomicU64::new(0));
    let _ = std::fs::write(format!("/proc/{}/clear_refs", target.pid), "5");
    let cpu = blobs::cpu_seconds(target.pid);
    blobs::sync();
    let started = Instant::now();
    let pushes = jobs.iter().map(|(path, repo, digest, token)| {
        let url = target.at(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"));
        let (path, token, refused) = (path.clone(), token.clone(), Arc::clone(&refused));
        tokio::task::spawn_blocking(move || {
            let file = File::open(&path).expect("open blob");
            loop {
                let (status, retry) = post_file(&url, &token, &file, size);
                match status {
                    201 => return,
                    429 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_secs(retry.unwrap_or(1)));
                    }
                    other => panic!("POST {url}: {other}"),
                }
            }
        })
    });
    for push in futures_util::future::join_all(pushes).await {
        push.expect("push thread");
    }
    let elapsed = started.elapsed();
    let speed = blobs::mb_per_s(CLIENTS as u64 * size, elapsed);
    let peak = servers::memory(target.pid).1;
    let refused = refused.load(Ordering::Relaxed);
    eprintln!(
        "  {CLIENTS} pushes of {CLIENT_MIB} MiB at once: {speed:.0} MB/s in {:.1} s, {refused} \
         answers 429, server {:.2} cores, peak RSS {:.1} MiB",
        elapsed.as_secs_f64(),
        (blobs::cpu_seconds(target.pid) - cpu) / elapsed.as_secs_f64(),
        mib(peak)
    );
    let mut present = 0;
    for (path, repo, digest, token) in &jobs {
        let res = client
            .head(target.at(&format!("/v2/{repo}/blobs/{digest}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("HEAD blob");
        let length = res
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if res.status() == reqwest::StatusCode::OK && length == Some(size) {
            present += 1;
        } else {
            eprintln!("  {repo}@{digest}: HEAD {} {length:?}", res.status());
        }
        let _ = std::fs::remove_file(path);
    }
    Many {
        speed,
        refused,
        present,
        peak,
    }
}

/// A `POST` of the whole file as the body (sendfile, on a thread of its
/// own), while the response head is read: a 429 may come before the body
/// is taken, after which the server closes the connection. Returns the
/// status and `Retry-After` in seconds.
fn post_file(url: &str, token: &str, file: &File, len: u64) -> (u16, Option<u64>) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').expect("a path"));
    let mut socket = TcpStream::connect(authority).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\n\r\n"
    );
    socket
        .write_all(head.as_bytes())
        .expect("send request head");
    let sender = socket.try_clone().expect("clone socket");
    let source = file.try_clone().expect("clone file");
    let sending = std::thread::spawn(move || {
        let mut at: libc::off_t = 0;
        while (at as u64) < len {
            let want = (1usize << 20).min((len - at as u64) as usize);
            // SAFETY: both descriptors are open for the call (owned by this
            // thread) and `at` is a valid off_t that sendfile advances.
            let sent =
                unsafe { libc::sendfile(sender.as_raw_fd(), source.as_raw_fd(), &mut at, want) };
            if sent <= 0 {
                let e = std::io::Error::last_os_error();
                if sent < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // The server answered early and closed.
                return;
            }
        }
    });
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = socket
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("POST {url}: reading the response: {e}"));
        assert!(n > 0, "POST {url}: closed before the response head");
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("POST {url}: bad response {text:?}"));
    let retry = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse().ok());
    let _ = socket.shutdown(std::net::Shutdown::Both);
    let _ = sending.join();
    (status, retry)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}
