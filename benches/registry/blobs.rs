//! Section `blobs`: one big blob pushed (single request and 64 MiB chunks)
//! and pulled, against distribution, beside the machine's own limits on the
//! same bytes: single-core SHA-256 (the work a push cannot avoid), a plain
//! file write with fsync, and nginx serving the same file with sendfile.
//!
//! Request shape. distribution 2.8 does not take a monolithic upload on the
//! `POST`: `StartBlobUpload` ignores `?digest=` and the body and answers
//! `202 Accepted` with a session, so the blob would never land. The single
//! request push is therefore the shape both servers accept and clients use
//! (docker's "monolithic" upload): `POST` to open a session, then one
//! `PUT <location>&digest=` carrying the whole body. The `POST` is in the
//! timed interval for both; it is a few hundred microseconds next to a
//! blob's transfer.
//!
//! Each push goes to a fresh repository so neither server can answer from a
//! link it already has; both still receive and hash every byte. The client
//! sends the blob file with `sendfile` and discards what it pulls in the
//! kernel ([`crate::bare`]), so the machine's two cores are left to the
//! server under test as much as possible. One pull per round is also read
//! into user space by reqwest, as registry clients read, and reported
//! beside the others.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::Options;
use crate::bare;
use crate::report::{Better, Row};
use crate::servers::{self, Servers, Target};

pub const MIB: u64 = 1 << 20;
/// Chunk size of the chunked push.
const CHUNK: u64 = 64 * MIB;
/// Buffer size for hashing and plain writes: large, so the loop's own cost
/// vanishes beside the work measured.
const BUFFER: usize = 8 << 20;
/// Measurements per figure; the median is kept.
pub const RUNS: usize = 3;
/// Pulls take a fraction of a second each, so they get more rounds: their
/// spread on a shared machine is the widest (one stream from the same
/// server ran anywhere from 3 to 10 GB/s within one run, with where the
/// scheduler put sender and receiver).
pub const PULL_RUNS: usize = 11;
/// Clients pulling the blob at the same time for the concurrent figure.
pub const CLIENTS: usize = 4;

pub async fn run(servers: &Servers, options: &Options) -> Vec<Row> {
    let dir = servers.path("blobs");
    std::fs::create_dir_all(&dir).expect("blobs dir");
    let size = options.blob_mib * MIB;
    let label = if size % (1 << 30) == 0 {
        format!("{} GiB", size >> 30)
    } else {
        format!("{} MiB", options.blob_mib)
    };

    let blob_path = dir.join("blob");
    let digest = {
        let path = blob_path.clone();
        tokio::task::spawn_blocking(move || generate(&path, size))
            .await
            .expect("generate")
    };
    eprintln!("blob: {label}, {digest}");

    let sha = median(&mut (0..RUNS).map(|_| hash_speed(&blob_path, size, &digest)));
    eprintln!("SHA-256, one core: {sha:.0} MB/s");

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let blob = Blob {
        file: Arc::new(std::fs::File::open(&blob_path).expect("open blob")),
        size,
        digest: format!("sha256:{digest}"),
    };

    let [portcullis, distribution] = servers.targets();
    let idle = [portcullis, distribution].map(|t| servers::memory(t.pid).0);
    // The peak is what this section's transfers cost, not what an earlier
    // section left behind: writing 5 to clear_refs resets VmHWM to the
    // current RSS (Linux ≥ 4.0). If it fails the peak is since start, which
    // is still a valid (higher) bound.
    for t in [portcullis, distribution] {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", t.pid), "5");
    }

    let mut single = [Vec::new(), Vec::new()];
    // The disk's ceiling is measured in every round, right before the pushes
    // it bounds: on a shared disk it drifts several-fold within minutes.
    let mut writes = Vec::new();
    let mut direct_writes = Vec::new();
    let mut chunked = [Vec::new(), Vec::new()];
    let mut pulled = [Vec::new(), Vec::new(), Vec::new()];
    let mut together = [Vec::new(), Vec::new(), Vec::new()];
    let mut buffered = [Vec::new(), Vec::new(), Vec::new()];
    // Alternating servers from run to run spreads the shared machine's
    // drift over both instead of favouring whichever ran in a quiet moment.
    for run in 0..RUNS {
        let write = write_speed(&blob_path, &dir.join("copy"), size, false);
        let direct = write_speed(&blob_path, &dir.join("copy"), size, true);
        eprintln!("  file write + fsync: {write:.0} MB/s, with O_DIRECT {direct:.0} MB/s");
        writes.push(write);
        direct_writes.push(direct);
        for (i, target) in [portcullis, distribution].into_iter().enumerate() {
            let repo = format!("bench-blobs/single-{run}");
            let token = push_token(&client, target, &repo).await;
            let speed = measure(target.process(), "push, single request", size, || {
                push_single(&client, target, &repo, &token, &blob)
            })
            .await;
            single[i].push(speed);
        }
    }
    peaks("single pushes", [portcullis, distribution]);
    for run in 0..RUNS {
        for (i, target) in [portcullis, distribution].into_iter().enumerate() {
            let repo = format!("bench-blobs/chunked-{run}");
            let token = push_token(&client, target, &repo).await;
            let speed = measure(target.process(), "push, 64 MiB chunks", size, || {
                push_chunked(&client, target, &repo, &token, &blob)
            })
            .await;
            chunked[i].push(speed);
        }
    }

    peaks("chunked pushes", [portcullis, distribution]);

    let nginx_root = dir.join("www");
    std::fs::create_dir_all(&nginx_root).expect("nginx root");
    // A hard link: the same inode, so nginx reads the very pages the
    // registries were fed, without a second gigabyte on disk.
    let served = nginx_root.join("blob");
    if std::fs::hard_link(&blob_path, &served).is_err() {
        std::fs::copy(&blob_path, &served).expect("copy blob for nginx");
    }
    let (nginx, nginx_url) = servers::start_nginx(&dir, &nginx_root, None);
    for _ in 0..PULL_RUNS {
        // Portcullis, distribution, nginx: the order of the result arrays.
        let mut sources = Vec::new();
        for target in [portcullis, distribution] {
            let token = target
                .token(&client, "repository:bench-blobs/single-0:pull")
                .await;
            let url = target.at(&format!("/v2/bench-blobs/single-0/blobs/{}", blob.digest));
            sources.push((target.process(), url, Some(token)));
        }
        sources.push((("nginx", nginx.pid()), format!("{nginx_url}/blob"), None));
        for (i, (server, url, token)) in sources.into_iter().enumerate() {
            let speed = measure(server, "pull", size, || {
                pull(Reader::Sink, url.clone(), token.clone(), 1)
            })
            .await;
            pulled[i].push(speed);
            let what = format!("pull, {CLIENTS} clients at once");
            let speed = measure(server, &what, CLIENTS as u64 * size, || {
                pull(Reader::Sink, url.clone(), token.clone(), CLIENTS)
            })
            .await;
            together[i].push(speed);
            let speed = measure(server, "pull into a buffer", size, || {
                pull(Reader::Buffer, url, token, 1)
            })
            .await;
            buffered[i].push(speed);
        }
    }
    drop(nginx);

    let peak = [portcullis, distribution].map(|t| servers::memory(t.pid).1);
    eprintln!(
        "RSS idle {:.1} / {:.1} MiB, peak {:.1} / {:.1} MiB (portcullis / distribution)",
        mib(idle[0]),
        mib(idle[1]),
        mib(peak[0]),
        mib(peak[1])
    );

    let _ = std::fs::remove_file(&served);
    let _ = std::fs::remove_file(&blob_path);

    let single = single.map(|mut v| median(&mut v.drain(..)));
    let chunked = chunked.map(|mut v| median(&mut v.drain(..)));
    let pulled = pulled.map(|mut v| median(&mut v.drain(..)));
    let together = together.map(|mut v| median(&mut v.drain(..)));
    let buffered = buffered.map(|mut v| median(&mut v.drain(..)));
    let write = median(&mut writes.into_iter());
    let direct_write = median(&mut direct_writes.into_iter());
    vec![
        Row::new(
            "blob push, single request",
            "MB/s",
            single[0],
            Better::Higher,
        )
        .against("distribution", single[1])
        .target(1.5)
        .note(
            "the upload task receives, a blocking thread hashes (SHA-256), and 4 MiB \
             batches go to the disk with O_DIRECT, three at a time, so hashing and writing \
             overlap receiving; distribution hashes and writes inline at ~0.9 of a core",
        ),
        Row::new(
            "blob push, single request",
            "MB/s",
            single[0],
            Better::Higher,
        )
        .against("SHA-256, one core", sha)
        .target(0.7)
        .note(
            "SHA-256 alone, on the CPU clock of one core: the work a push cannot avoid. \
             A durable push is also bound by the disk (next rows), and here the client, \
             the server and the hash share two cores",
        ),
        Row::new(
            "blob push, single request",
            "MB/s",
            single[0],
            Better::Higher,
        )
        .against("file write + fsync", write)
        .note(
            "the same bytes written to a new file through the page cache and synced, no \
             network, no hash, measured in each round before the pushes (a shared disk: it \
             varies several-fold between runs)",
        ),
        Row::new(
            "blob push, single request",
            "MB/s",
            single[0],
            Better::Higher,
        )
        .against("file write, O_DIRECT + fsync", direct_write)
        .note(
            "the same, written as the push writes: 4 MiB direct writes from one \
             aligned buffer, one at a time, then synced; the disk's ceiling for a push",
        ),
        Row::new(
            "blob push, 64 MiB chunks",
            "MB/s",
            chunked[0],
            Better::Higher,
        )
        .against("distribution", chunked[1])
        .target(1.5)
        .note(
            "as the single request, plus per chunk a request, an fsync of the data and \
             a synced hash-state record (so a chunk survives a crash); the hash carries \
             over, no byte is read twice",
        ),
        Row::new("blob pull", "MB/s", pulled[0], Better::Higher)
            .against("distribution", pulled[1])
            .target(1.5)
            .note(
                "one client that discards the body in the kernel (splice to /dev/null), so \
                 the figure is the server's delivery rate, not a client's copy. Portcullis \
                 sends the file with sendfile (page cache → socket, no user-space copy); \
                 distribution reads it into a buffer and writes that to the socket",
            ),
        Row::new("blob pull", "MB/s", pulled[0], Better::Higher)
            .against("nginx (sendfile)", pulled[2])
            .target(0.8)
            .note("nginx hands the page cache to the socket with sendfile, as Portcullis does"),
        Row::new(
            format!("blob pull, {CLIENTS} clients at once"),
            "MB/s",
            together[0],
            Better::Higher,
        )
        .against("distribution", together[1])
        .target(1.5)
        .note("total over the clients, each discarding in the kernel as above"),
        Row::new(
            format!("blob pull, {CLIENTS} clients at once"),
            "MB/s",
            together[0],
            Better::Higher,
        )
        .against("nginx (sendfile)", together[2])
        .target(0.8),
        Row::new(
            "blob pull into a buffer",
            "MB/s",
            buffered[0],
            Better::Higher,
        )
        .against("distribution", buffered[1])
        .note(
            "one reqwest client copying the body out of the socket, as registry clients \
                 do: on two shared cores that copy takes about a core and bounds both \
                 servers alike, so the ratio stays near 1 and varies most between runs",
        ),
        Row::new(
            "blob pull into a buffer",
            "MB/s",
            buffered[0],
            Better::Higher,
        )
        .against("nginx (sendfile)", buffered[2]),
        Row::new("idle RSS", "MiB", mib(idle[0]), Better::Lower)
            .against("distribution", mib(idle[1]))
            .note("resident memory of the running server before this section's transfers"),
        Row::new(
            format!("peak RSS, {label} push+pull"),
            "MiB",
            mib(peak[0]),
            Better::Lower,
        )
        .against("distribution", mib(peak[1]))
        .note(
            "VmHWM (reset before the pushes) after the pushes and pulls: per-request \
             buffers (a push's four 4 MiB write batches and up to 8 MiB waiting to be \
             hashed; pulls are sent from the page cache) and allocator arenas, not the blob",
        ),
        Row::new(
            format!("peak RSS, {label} push+pull"),
            "MiB",
            mib(peak[0]),
            Better::Lower,
        )
        .target(64.0)
        .note("must stay flat whatever the blob size: blobs are streamed"),
    ]
}

/// Prints the servers' peak RSS so far: which phase sets the peak.
fn peaks(after: &str, targets: [&Target; 2]) {
    let [a, b] = targets.map(|t| mib(servers::memory(t.pid).1));
    eprintln!("  peak RSS after {after}: {a:.1} / {b:.1} MiB");
}

/// The blob on disk, as the pushes send it.
pub struct Blob {
    /// The file, sent as the request bodies.
    pub file: Arc<std::fs::File>,
    pub size: u64,
    /// `sha256:<hex>`
    pub digest: String,
}

/// A server measured: its name and process id.
pub type Server<'a> = (&'a str, u32);

/// Times one transfer of `size` bytes against `server` and prints how busy
/// the server was meanwhile (CPU seconds per second: 1.0 is one core
/// saturated), the evidence for what bounds the figure.
pub async fn measure<F, Fut>(server: Server<'_>, what: &str, size: u64, transfer: F) -> f64
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    // Start each transfer with no dirty pages pending from the previous one
    // (distribution does not fsync, so its writes would otherwise be
    // flushed during the next server's turn).
    sync();
    let (name, pid) = server;
    let cpu = cpu_seconds(pid);
    let own = own_cpu_seconds();
    let started = Instant::now();
    transfer().await;
    let elapsed = started.elapsed();
    let speed = mb_per_s(size, elapsed);
    eprintln!(
        "  {name} {what}: {speed:.0} MB/s, server {:.2} cores, client {:.2} cores",
        (cpu_seconds(pid) - cpu) / elapsed.as_secs_f64(),
        (own_cpu_seconds() - own) / elapsed.as_secs_f64(),
    );
    speed
}

/// A push token for `repo`, fetched before the clock starts: issuing it
/// (a password check) is not part of a blob's transfer.
pub async fn push_token(client: &reqwest::Client, target: &Target, repo: &str) -> String {
    target
        .token(client, &format!("repository:{repo}:pull,push"))
        .await
}

pub async fn push_single(
    client: &reqwest::Client,
    target: &Target,
    repo: &str,
    token: &str,
    blob: &Blob,
) {
    let location = start_upload(client, target, repo, token).await;
    let res = send(
        blob,
        "PUT",
        with_digest(&location, &blob.digest),
        token,
        vec![],
        0,
        blob.size,
    )
    .await;
    assert_eq!(res.status, 201, "{} single push", target.name);
}

async fn push_chunked(
    client: &reqwest::Client,
    target: &Target,
    repo: &str,
    token: &str,
    blob: &Blob,
) {
    let mut location = start_upload(client, target, repo, token).await;
    let mut offset = 0;
    while offset < blob.size {
        let len = CHUNK.min(blob.size - offset);
        let range = vec![("Content-Range", format!("{offset}-{}", offset + len - 1))];
        let res = send(blob, "PATCH", location.clone(), token, range, offset, len).await;
        assert_eq!(res.status, 202, "{} chunk at {offset}", target.name);
        // distribution changes its session state in the URL on every chunk.
        location = absolute(target, res.location.expect("Location"));
        offset += len;
    }
    let res = client
        .put(with_digest(&location, &blob.digest))
        .bearer_auth(token)
        .header("content-length", 0)
        .send()
        .await
        .expect("PUT close");
    assert_eq!(
        res.status(),
        reqwest::StatusCode::CREATED,
        "{} chunked close",
        target.name
    );
}

/// Opens an upload session and returns its absolute location.
async fn start_upload(
    client: &reqwest::Client,
    target: &Target,
    repo: &str,
    token: &str,
) -> String {
    let res = client
        .post(target.at(&format!("/v2/{repo}/blobs/uploads/")))
        .bearer_auth(token)
        .header("content-length", 0)
        .send()
        .await
        .expect("POST upload");
    assert_eq!(
        res.status(),
        reqwest::StatusCode::ACCEPTED,
        "{} upload start",
        target.name
    );
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location");
    absolute(target, location.to_owned())
}

/// A `Location`, made absolute: Portcullis answers with a path,
/// distribution with a full URL.
pub fn absolute(target: &Target, location: String) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location
    } else {
        target.at(&location)
    }
}

pub fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// Sends `len` bytes of the blob from `offset` as the body of a request
/// ([`bare::send_file`]: from the page cache to the socket, so the client
/// spends next to no CPU, which on this machine is taken from the server
/// under test).
async fn send(
    blob: &Blob,
    method: &'static str,
    url: String,
    token: &str,
    headers: Vec<(&'static str, String)>,
    offset: u64,
    len: u64,
) -> bare::Response {
    let (file, token) = (Arc::clone(&blob.file), token.to_owned());
    tokio::task::spawn_blocking(move || {
        bare::send_file(method, &url, &token, &headers, &file, offset, len)
    })
    .await
    .expect("upload thread")
}

/// Fills `buf` as far as the reader allows; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// How a pull's client takes the body.
#[derive(Clone, Copy)]
enum Reader {
    /// Discarded in the kernel ([`bare::get`]): the figure is the server's.
    Sink,
    /// Copied out of the socket by reqwest, as a registry client does
    /// before hashing: on two shared cores, the figure is mostly the
    /// client's copy.
    Buffer,
}

/// `clients` pulls of `url` at once, each on its own connection.
async fn pull(reader: Reader, url: String, token: Option<String>, clients: usize) {
    let pulls = (0..clients).map(|_| {
        let (url, token) = (url.clone(), token.clone());
        match reader {
            Reader::Sink => tokio::task::spawn_blocking(move || bare::get(&url, token.as_deref())),
            Reader::Buffer => tokio::spawn(async move { pull_into_buffer(url, token).await }),
        }
    });
    for pull in futures_util::future::join_all(pulls).await {
        pull.expect("pull task");
    }
}

/// GETs `url` with reqwest and counts the body's bytes, without hashing
/// them: the client's CPU is the server's competition on this machine.
async fn pull_into_buffer(url: String, token: Option<String>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut req = client.get(&url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let mut res = req.send().await.expect("GET blob");
    assert_eq!(res.status(), reqwest::StatusCode::OK, "GET {url}");
    let expected = res.content_length();
    let mut received = 0u64;
    while let Some(chunk) = res.chunk().await.expect("blob body") {
        received += chunk.len() as u64;
    }
    if let Some(expected) = expected {
        assert_eq!(received, expected, "GET {url}: short body");
    }
}

/// Writes `size` bytes from a fast deterministic generator (xorshift64*,
/// incompressible enough that no layer can shortcut it) to `path`, hashing
/// them on the way. Returns the hex SHA-256.
pub fn generate(path: &Path, size: u64) -> String {
    generate_seeded(path, size, 0)
}

/// As [`generate`], another sequence per `seed`.
pub fn generate_seeded(path: &Path, size: u64, seed: u64) -> String {
    let mut file = std::fs::File::create(path).expect("create blob");
    let mut hasher = Sha256::new();
    // Never zero: xorshift would stay at zero.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15 | 1) | 1;
    let mut buf = vec![0u8; BUFFER];
    let mut left = size;
    while left > 0 {
        let n = (BUFFER as u64).min(left) as usize;
        for word in buf[..n].chunks_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).expect("write blob");
        left -= n as u64;
    }
    file.sync_all().expect("sync blob");
    hex::encode(hasher.finalize())
}

/// Single-core SHA-256 speed over the blob's bytes, read from the page
/// cache in large buffers; only the hashing is timed, on the thread's CPU
/// clock: it is what one core can do, which the wall clock of a shared
/// machine understates whenever another process takes the core. Returns
/// MB/s; the wall-clock figure is printed beside it.
fn hash_speed(path: &Path, size: u64, digest: &str) -> f64 {
    let mut file = std::fs::File::open(path).expect("open blob");
    let mut buf = vec![0u8; BUFFER];
    let mut hasher = Sha256::new();
    let mut cpu = Duration::ZERO;
    let mut wall = Duration::ZERO;
    loop {
        let n = read_full(&mut file, &mut buf).expect("read blob");
        if n == 0 {
            break;
        }
        let (cpu_start, wall_start) = (thread_cpu(), Instant::now());
        hasher.update(&buf[..n]);
        wall += wall_start.elapsed();
        cpu += thread_cpu().saturating_sub(cpu_start);
    }
    assert_eq!(
        hex::encode(hasher.finalize()),
        digest,
        "blob changed on disk"
    );
    eprintln!(
        "  SHA-256: {:.0} MB/s on the thread's CPU clock, {:.0} MB/s wall",
        mb_per_s(size, cpu),
        mb_per_s(size, wall)
    );
    mb_per_s(size, cpu)
}

/// CPU time used by the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A plain file write of the blob's bytes: read from the page cache, written
/// to a new file in the same directory, synced. The copy is removed. With
/// `direct`, written as a push writes: `O_DIRECT`, 4 MiB at a time from one
/// block-aligned buffer (the blob's size is a multiple of 4 KiB).
fn write_speed(from: &Path, to: &Path, size: u64, direct: bool) -> f64 {
    use std::os::unix::fs::OpenOptionsExt;
    const DIRECT_BATCH: usize = 4 << 20;
    const ALIGN: usize = 4096;
    sync();
    let mut src = std::fs::File::open(from).expect("open blob");
    let mut raw = vec![0u8; BUFFER + ALIGN];
    let start = raw.as_ptr().align_offset(ALIGN);
    let buf = &mut raw[start..start + if direct { DIRECT_BATCH } else { BUFFER }];
    let started = Instant::now();
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(to)
        .expect("create copy");
    loop {
        let n = read_full(&mut src, buf).expect("read blob");
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).expect("write copy");
    }
    dst.sync_all().expect("sync copy");
    let speed = mb_per_s(size, started.elapsed());
    drop(dst);
    let _ = std::fs::remove_file(to);
    speed
}

pub fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// CPU time (user + system) a process has used, in seconds, from
/// `/proc/<pid>/stat`; 0 if it cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu(&format!("/proc/{pid}/stat"), false)
}

/// The harness' own CPU time, with that of the child processes it has
/// waited for (a client such as curl, run and reaped within a transfer).
fn own_cpu_seconds() -> f64 {
    stat_cpu("/proc/self/stat", true)
}

fn stat_cpu(path: &str, children: bool) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces, hence the
    // last ')'): utime and stime are the 12th and 13th, cutime and cstime
    // (children waited for) the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let waited = if children {
        ticks(13).unwrap_or(0.0) + ticks(14).unwrap_or(0.0)
    } else {
        0.0
    };
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) if hz > 0.0 => (u + s + waited) / hz,
        _ => 0.0,
    }
}

pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

pub fn median(values: &mut dyn Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
