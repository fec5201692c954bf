//! Memory stays flat whatever the blob size: 1 GiB blobs are pushed (one
//! monolithic POST, and a chunked upload in 64 MiB PATCHes) and pulled back
//! through the real binary, and the server's peak resident set (`VmHWM`)
//! must stay under 100 MiB.
//!
//! Ignored by default (it moves 4 GiB through the disk); run by
//! `scripts/bench-memory.sh`, which builds the release binary and runs
//! `cargo test --test integration memory:: -- --ignored --nocapture` with
//! `PORTCULLIS_MEMORY_BIN=target/release/portcullis`: the server under test
//! is the release binary, the client the debug test crate.

use crate::common;

use std::time::Instant;

use bytes::Bytes;
use common::process::ServerProcess;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use sha2::Digest as _;

const MIB: u64 = 1024 * 1024;
const BLOB_SIZE: u64 = 1024 * MIB;
const CHUNK_SIZE: u64 = 64 * MIB;
/// Generator block size: the unit the PRNG content is addressed by.
const BLOCK: u64 = MIB;
const LIMIT_KIB: u64 = 100 * 1024;

/// How many distinct 1 MiB blocks the blobs are assembled from.
const POOL: u64 = 64;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function: cheap, and good enough that nothing
/// compresses.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The pool of blocks, generated once. The test runs in the debug test
/// crate (against the release server): generating each block as it is sent
/// held pushes to about 100 MB/s and the server's peak with them, while
/// clones of pooled `Bytes` cost nothing, so the client pushes as fast as
/// the server takes the bytes.
fn pool() -> &'static [Bytes] {
    static BLOCKS: std::sync::OnceLock<Vec<Bytes>> = std::sync::OnceLock::new();
    BLOCKS.get_or_init(|| {
        (0..POOL)
            .map(|b| {
                let mut out = Vec::with_capacity(BLOCK as usize);
                for i in 0..BLOCK / 8 {
                    let z = mix((b << 32 | i).wrapping_mul(GOLDEN));
                    out.extend_from_slice(&z.to_le_bytes());
                }
                Bytes::from(out)
            })
            .collect()
    })
}

/// Deterministic pseudo-random content addressed by block: block `k` of the
/// blob seeded `seed` is the same bytes however often and in whatever order
/// it is asked for, so a blob can be hashed in one pass and sent in
/// another, or sent in ranges, without ever being held in memory.
#[derive(Clone, Copy)]
struct Content {
    seed: u64,
}

impl Content {
    /// One of the pool's blocks, picked by a hash of the seed and `k`: the
    /// two blobs differ, and the server deduplicates nothing below a blob.
    fn block(self, k: u64) -> Bytes {
        let pick = mix(self.seed ^ k.wrapping_mul(GOLDEN)) % POOL;
        pool()[pick as usize].clone()
    }

    /// The blocks covering bytes `start..end` (block-aligned) as a request body.
    fn body(self, start: u64, end: u64) -> reqwest::Body {
        assert!(start % BLOCK == 0 && end % BLOCK == 0);
        let blocks =
            (start / BLOCK..end / BLOCK).map(move |k| Ok::<_, std::io::Error>(self.block(k)));
        reqwest::Body::wrap_stream(futures_util::stream::iter(blocks))
    }

    fn digest(self, size: u64) -> String {
        let mut hasher = sha2::Sha256::new();
        for k in 0..size / BLOCK {
            hasher.update(self.block(k));
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Streams a blob back, hashing as it arrives, and returns (digest, size).
async fn pull(client: &reqwest::Client, url: &str) -> (String, u64) {
    let mut response = client.get(url).send().await.expect("GET blob");
    assert_eq!(response.status(), 200, "GET {url}");
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = response.chunk().await.expect("blob body") {
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (format!("sha256:{}", hex::encode(hasher.finalize())), size)
}

fn location(server: &ServerProcess, response: &reqwest::Response) -> String {
    let location = response
        .headers()
        .get(LOCATION)
        .expect("Location")
        .to_str()
        .unwrap();
    if location.starts_with('/') {
        server.at(location)
    } else {
        location.to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "moves 4 GiB; run by scripts/bench-memory.sh"]
async fn gigabyte_blobs_stream_in_flat_memory() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_named_by("PORTCULLIS_MEMORY_BIN", data.path(), &[]);
    let pid = server.child.id();
    let client = reqwest::Client::new();
    let (idle_rss, idle_hwm) = memory_kib(pid);
    println!(
        "idle: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(idle_rss),
        mib(idle_hwm)
    );

    // Monolithic: one POST carrying the whole blob, digest in the query.
    let mono = Content { seed: 0x5EED_0001 };
    let mono_digest = mono.digest(BLOB_SIZE);
    let started = Instant::now();
    let response = client
        .post(server.at(&format!(
            "/v2/bench/memory/blobs/uploads/?digest={mono_digest}"
        )))
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, BLOB_SIZE)
        .body(mono.body(0, BLOB_SIZE))
        .send()
        .await
        .expect("monolithic POST");
    assert_eq!(response.status(), 201, "monolithic push");
    println!("monolithic push: {:.1} s", started.elapsed().as_secs_f64());
    let (_, after_mono) = memory_kib(pid);
    println!("after monolithic push: VmHWM {:.1} MiB", mib(after_mono));

    // Chunked: 64 MiB PATCHes, the last chunk carried by the closing PUT.
    let chunked = Content { seed: 0x5EED_0002 };
    let chunked_digest = chunked.digest(BLOB_SIZE);
    let started = Instant::now();
    let response = client
        .post(server.at("/v2/bench/memory/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(response.status(), 202, "start upload");
    let mut upload = location(&server, &response);
    let mut offset = 0;
    while offset + CHUNK_SIZE < BLOB_SIZE {
        let end = offset + CHUNK_SIZE;
        let response = client
            .patch(&upload)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_RANGE, format!("{offset}-{}", end - 1))
            .header(CONTENT_LENGTH, CHUNK_SIZE)
            .body(chunked.body(offset, end))
            .send()
            .await
            .expect("PATCH");
        assert_eq!(response.status(), 202, "PATCH at {offset}");
        upload = location(&server, &response);
        offset = end;
    }
    let separator = if upload.contains('?') { '&' } else { '?' };
    let response = client
        .put(format!("{upload}{separator}digest={chunked_digest}"))
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_RANGE, format!("{offset}-{}", BLOB_SIZE - 1))
        .header(CONTENT_LENGTH, BLOB_SIZE - offset)
        .body(chunked.body(offset, BLOB_SIZE))
        .send()
        .await
        .expect("closing PUT");
    assert_eq!(response.status(), 201, "closing PUT");
    println!("chunked push: {:.1} s", started.elapsed().as_secs_f64());
    let (_, after_chunked) = memory_kib(pid);
    println!("after chunked push: VmHWM {:.1} MiB", mib(after_chunked));

    // Pull both back, streaming, and check every byte through the digest.
    for digest in [&mono_digest, &chunked_digest] {
        let started = Instant::now();
        let (got, size) = pull(
            &client,
            &server.at(&format!("/v2/bench/memory/blobs/{digest}")),
        )
        .await;
        assert_eq!(size, BLOB_SIZE);
        assert_eq!(&got, digest);
        println!("pull {digest}: {:.1} s", started.elapsed().as_secs_f64());
    }

    let (rss, peak) = memory_kib(pid);
    println!(
        "server memory: idle {:.1} MiB, peak (VmHWM) {:.1} MiB, now {:.1} MiB; limit {:.0} MiB",
        mib(idle_rss),
        mib(peak),
        mib(rss),
        mib(LIMIT_KIB)
    );
    assert!(
        peak < LIMIT_KIB,
        "server peak RSS {:.1} MiB reached the {:.0} MiB limit: blobs are not streamed",
        mib(peak),
        mib(LIMIT_KIB)
    );
}
