//! Reads under load and restarts, every byte verified: many clients on
//! keep-alive connections pull many different blobs (whole, by `Range`,
//! `HEAD`s between, some bodies dropped mid-way) while others push, and the
//! server process is SIGKILLed and restarted over the same data between
//! rounds. A completed body must hash to its digest (or to its slice's
//! hash); a request cut by a kill is only retried.
//!
//! The short form runs in the suite. The long form runs until
//! `PORTCULLIS_STRESS_GB` GB are verified, against the binary named by
//! `PORTCULLIS_STRESS_BIN` (a release build) or the test's own, and prints
//! the verified bytes and the mismatches:
//!
//! ```text
//! PORTCULLIS_STRESS_GB=100 PORTCULLIS_STRESS_BIN=target/release/portcullis \
//!   cargo test --test integration stress:: -- --nocapture
//! ```

use crate::common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::ServerProcess;
use futures_util::StreamExt;
use rand::Rng;
use reqwest::StatusCode;
use sha2::Digest as _;

const REPO: &str = "stress/blobs";
const CLIENTS: usize = 16;
const PUSHERS: usize = 2;

struct Blob {
    digest: String,
    data: Bytes,
}

#[derive(Default)]
struct Tally {
    verified: AtomicU64,
    bodies: AtomicU64,
    aborted: AtomicU64,
    heads: AtomicU64,
    ranges: AtomicU64,
    pushed: AtomicU64,
    mismatches: AtomicU64,
}

fn random(len: usize) -> Bytes {
    Bytes::from(common::random_bytes(len))
}

/// Sizes on both sides of the zero-copy threshold (64 KiB) and of its
/// 4 MiB windows.
fn random_size(rng: &mut impl Rng, large: bool) -> usize {
    match rng.random_range(0..10) {
        0 => rng.random_range(1..64 << 10),
        1..=5 => rng.random_range(64 << 10..(1 << 20)),
        6..=8 => rng.random_range(1 << 20..(5 << 20)),
        _ if large => rng.random_range(5 << 20..(13 << 20)),
        _ => rng.random_range(4 << 20..(5 << 20)),
    }
}

async fn push(client: &reqwest::Client, url: &str, data: Bytes) -> Option<Blob> {
    let digest = common::sha256(&data);
    let response = client
        .post(format!("{url}/v2/{REPO}/blobs/uploads/?digest={digest}"))
        .body(data.clone())
        .send()
        .await
        .ok()?;
    (response.status() == StatusCode::CREATED).then_some(Blob { digest, data })
}

/// One read of a random blob; `Err` when the connection failed (a kill).
async fn read_one(
    client: &reqwest::Client,
    url: &str,
    blobs: &Mutex<Vec<Arc<Blob>>>,
    tally: &Tally,
) -> Result<(), reqwest::Error> {
    let (blob, kind, range) = {
        let blobs = blobs.lock().unwrap();
        let mut rng = rand::rng();
        let blob = Arc::clone(&blobs[rng.random_range(0..blobs.len())]);
        let len = blob.data.len();
        let start = rng.random_range(0..len);
        let end = rng.random_range(start..len);
        (blob, rng.random_range(0..10), (start, end))
    };
    let blob_url = format!("{url}/v2/{REPO}/blobs/{}", blob.digest);
    match kind {
        0 => {
            let response = client.head(&blob_url).send().await?;
            assert_eq!(response.status(), StatusCode::OK, "HEAD");
            // The header itself: reqwest's content_length() is the body's.
            let length = response.headers().get("content-length").cloned();
            assert_eq!(
                length.as_ref().and_then(|v| v.to_str().ok()),
                Some(blob.data.len().to_string().as_str()),
                "HEAD length"
            );
            tally.heads.fetch_add(1, Ordering::Relaxed);
        }
        1 | 2 => {
            // Dropped after its first frame: the server is still sending.
            let response = client.get(&blob_url).send().await?;
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = response.bytes_stream();
            let _ = body.next().await.transpose()?;
            tally.aborted.fetch_add(1, Ordering::Relaxed);
        }
        3..=5 => {
            let (start, end) = range;
            let response = client
                .get(&blob_url)
                .header("Range", format!("bytes={start}-{end}"))
                .send()
                .await?;
            assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
            verify(response, &blob.data[start..=end], &blob.digest, tally).await?;
            tally.ranges.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            let response = client.get(&blob_url).send().await?;
            assert_eq!(response.status(), StatusCode::OK);
            verify(response, &blob.data, &blob.digest, tally).await?;
        }
    }
    Ok(())
}

/// Hashes a body as it arrives; a complete body of the right length whose
/// hash differs is a mismatch (counted and reported, never retried).
async fn verify(
    response: reqwest::Response,
    expected: &[u8],
    digest: &str,
    tally: &Tally,
) -> Result<(), reqwest::Error> {
    let mut hasher = sha2::Sha256::new();
    let mut received = 0usize;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        received += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(
        received,
        expected.len(),
        "a complete body of another length"
    );
    if hasher.finalize().as_slice() != sha2::Sha256::digest(expected).as_slice() {
        tally.mismatches.fetch_add(1, Ordering::Relaxed);
        eprintln!("MISMATCH: {digest}, {received} bytes");
    }
    tally.verified.fetch_add(received as u64, Ordering::Relaxed);
    tally.bodies.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Runs rounds until `target` bytes are verified, killing and restarting
/// the server between them.
async fn run(binary: PathBuf, target: u64, round: Duration, large: bool) -> Arc<Tally> {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_arg = data_dir.to_str().unwrap().to_owned();
    let start = |binary: &PathBuf| {
        ServerProcess::start_binary(binary, &["--no-auth", "--data-dir", &data_arg])
    };
    let tally = Arc::new(Tally::default());
    let blobs = Arc::new(Mutex::new(Vec::new()));
    {
        let server = start(&binary);
        let client = reqwest::Client::new();
        let mut rng = rand::rng();
        for _ in 0..24 {
            let data = random(random_size(&mut rng, large));
            let blob = push(&client, &server.url, data).await.expect("seed push");
            blobs.lock().unwrap().push(Arc::new(blob));
        }
        server.kill();
    }
    // One client per reader for the whole run: its pool keeps connections
    // alive across requests (and loses them at each kill).
    let clients: Vec<reqwest::Client> = (0..CLIENTS + PUSHERS)
        .map(|_| reqwest::Client::new())
        .collect();
    let began = Instant::now();
    let mut rounds = 0;
    while tally.verified.load(Ordering::Relaxed) < target {
        rounds += 1;
        let server = start(&binary);
        let url = server.url.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            let (client, url, stop) = (client.clone(), url.clone(), Arc::clone(&stop));
            let (blobs, tally) = (Arc::clone(&blobs), Arc::clone(&tally));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if i >= CLIENTS {
                        let size = random_size(&mut rand::rng(), large);
                        if let Some(blob) = push(&client, &url, random(size)).await {
                            tally.pushed.fetch_add(1, Ordering::Relaxed);
                            let mut blobs = blobs.lock().unwrap();
                            // A bounded set, renewed: old blobs make way.
                            if blobs.len() >= 64 {
                                let at = rand::rng().random_range(0..blobs.len());
                                blobs.swap_remove(at);
                            }
                            blobs.push(Arc::new(blob));
                        }
                    } else if read_one(&client, &url, &blobs, &tally).await.is_err() {
                        // Cut by the kill: the next round's server answers.
                        break;
                    }
                }
            }));
        }
        let until = Instant::now() + round;
        while Instant::now() < until && tally.verified.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Killed while requests are in flight, as a crash would.
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("a reader's assertion failed");
        }
        if target > 10 << 30 {
            eprintln!(
                "stress: round {rounds}, {:.0?}: {:.2} GB verified, {} mismatches",
                began.elapsed(),
                tally.verified.load(Ordering::Relaxed) as f64 / 1e9,
                tally.mismatches.load(Ordering::Relaxed),
            );
        }
    }
    let t = &tally;
    println!(
        "stress: {rounds} rounds in {:.0?}: {:.2} GB verified in {} bodies ({} ranges), \
         {} aborted, {} HEADs, {} pushes; {} mismatches",
        began.elapsed(),
        t.verified.load(Ordering::Relaxed) as f64 / 1e9,
        t.bodies.load(Ordering::Relaxed),
        t.ranges.load(Ordering::Relaxed),
        t.aborted.load(Ordering::Relaxed),
        t.heads.load(Ordering::Relaxed),
        t.pushed.load(Ordering::Relaxed),
        t.mismatches.load(Ordering::Relaxed),
    );
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_under_pushes_and_restarts_are_exact() {
    let long = std::env::var("PORTCULLIS_STRESS_GB").ok().map(|gb| {
        gb.parse::<f64>()
            .expect("PORTCULLIS_STRESS_GB: a number of GB")
    });
    let binary = std::env::var_os("PORTCULLIS_STRESS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_portcullis")));
    let tally = match long {
        Some(gb) => run(binary, (gb * 1e9) as u64, Duration::from_secs(20), true).await,
        None => run(binary, 400 << 20, Duration::from_secs(2), false).await,
    };
    assert_eq!(tally.mismatches.load(Ordering::Relaxed), 0, "wrong bytes");
    assert!(tally.aborted.load(Ordering::Relaxed) > 0);
    assert!(tally.ranges.load(Ordering::Relaxed) > 0);
    assert!(tally.heads.load(Ordering::Relaxed) > 0);
}
