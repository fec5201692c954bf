//! Crash safety of the real binary: SIGKILL in the middle of uploads, then a
//! restart over the same data. A blob is visible only once its digest was
//! verified, completed blobs survive whole, and a chunked session carries on
//! from its last recorded chunk.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::ServerProcess;
use reqwest::StatusCode;
use tokio::sync::mpsc;

const REPO: &str = "crash/test";
/// Parts every body is sent in, as a client streaming from disk would.
const PART: usize = 64 << 10;
/// How long the test waits for the server to reach a state it cannot
/// announce (bytes on disk) before failing instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);

fn random(len: usize) -> Bytes {
    Bytes::from(common::random_bytes(len))
}

async fn feed(tx: &mpsc::Sender<Bytes>, bytes: &Bytes) {
    for part in bytes.chunks(PART) {
        tx.send(bytes.slice_ref(part))
            .await
            .expect("the server hung up on the body");
    }
}

/// A whole body streamed in parts (chunked transfer encoding, no length).
fn streamed(bytes: &Bytes) -> reqwest::Body {
    let parts: Vec<Result<Bytes, std::io::Error>> =
        bytes.chunks(PART).map(|p| Ok(bytes.slice_ref(p))).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(parts))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// `POST …/blobs/uploads/?digest=` with a streamed body, to completion.
async fn push_monolithic(url: String, blob: Bytes) -> String {
    let digest = common::sha256(&blob);
    let response = client()
        .post(format!("{url}/v2/{REPO}/blobs/uploads/?digest={digest}"))
        .body(streamed(&blob))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "monolithic push");
    digest
}

/// Opens a session; returns its location (a path) and id.
async fn open_session(url: &str) -> (String, String) {
    let response = client()
        .post(format!("{url}/v2/{REPO}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "session start");
    (
        header(&response, "location"),
        header(&response, "docker-upload-uuid"),
    )
}

/// PATCHes `chunk` at `start`; returns the session's `Range` afterwards.
async fn patch(url: &str, location: &str, start: usize, chunk: &Bytes) -> String {
    let end = start + chunk.len() - 1;
    let response = client()
        .patch(format!("{url}{location}"))
        .header("content-range", format!("{start}-{end}"))
        .header("content-length", chunk.len())
        .body(streamed(chunk))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "PATCH {start}-{end}"
    );
    header(&response, "range")
}

/// A chunked session to completion: three PATCHes, then a PUT that carries
/// the last part when `last_in_put`, or closes the session empty.
async fn push_chunked(url: String, blob: Bytes, last_in_put: bool) -> String {
    let digest = common::sha256(&blob);
    let (location, _) = open_session(&url).await;
    let cuts = [
        0,
        blob.len() / 4,
        blob.len() / 2,
        blob.len() * 3 / 4,
        blob.len(),
    ];
    let patched = if last_in_put { 3 } else { 4 };
    for w in cuts[..=patched].windows(2) {
        patch(&url, &location, w[0], &blob.slice(w[0]..w[1])).await;
    }
    let put = client().put(format!("{url}{location}?digest={digest}"));
    let put = if last_in_put {
        let last = blob.slice(cuts[3]..);
        put.header("content-range", format!("{}-{}", cuts[3], blob.len() - 1))
            .header("content-length", last.len())
            .body(streamed(&last))
    } else {
        put.header("content-length", 0)
    };
    let response = put.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "closing PUT");
    digest
}

/// Size of every session's `data` under the data directory, by session id.
fn session_sizes(data: &Path) -> HashMap<String, u64> {
    let Ok(entries) = std::fs::read_dir(data.join("uploads")) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .map(|e| {
            let size = std::fs::metadata(e.path().join("data")).map_or(0, |m| m.len());
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect()
}

/// Every file under `blobs/`, checked to hash to its own name and to sit in
/// its `<alg>/<hex[..2]>/` directory; returns the digests found.
fn verified_blob_files(data: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let root = data.join("blobs");
    let mut files = Vec::new();
    if root.exists() {
        walk(&root, &mut files);
    }
    let mut digests = BTreeSet::new();
    for file in files {
        let relative = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let parts: Vec<&str> = relative.split('/').collect();
        let [alg, fan, hex] = parts[..] else {
            panic!("unexpected file under blobs/: {relative}");
        };
        assert_eq!(alg, "sha256", "unexpected algorithm directory: {relative}");
        assert_eq!(fan, &hex[..2.min(hex.len())], "misplaced blob: {relative}");
        let content = std::fs::read(&file).unwrap();
        assert_eq!(
            common::sha256(&content),
            format!("sha256:{hex}"),
            "blobs/{relative} ({} bytes) does not hash to its name: a half blob is visible",
            content.len()
        );
        digests.insert(format!("sha256:{hex}"));
    }
    digests
}

async fn get_blob(url: &str, digest: &str) -> reqwest::Response {
    client()
        .get(format!("{url}/v2/{REPO}/blobs/{digest}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_leaves_only_verified_blobs() {
    // Halves larger than the appender's 4 MiB write batch, so that bytes of
    // every interrupted body reach the disk before the kill.
    const SIZE: usize = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let url = server.url.clone();

    // Interrupted monolithic pushes: half the body sent, the rest never.
    let mut open_bodies = Vec::new();
    let mut interrupted = Vec::new();
    let mut cut_off = Vec::new();
    for _ in 0..2 {
        let blob = random(SIZE);
        let digest = common::sha256(&blob);
        let (tx, body) = common::channel_body();
        interrupted.push(tokio::spawn(
            client()
                .post(format!("{url}/v2/{REPO}/blobs/uploads/?digest={digest}"))
                .body(body)
                .send(),
        ));
        feed(&tx, &blob.slice(..SIZE / 2)).await;
        open_bodies.push(tx);
        cut_off.push(digest);
    }

    // An interrupted chunked session: one PATCH recorded, a second one cut
    // off after more than the appender's write batch, so bytes past the
    // recorded size reach the disk before the kill.
    let resumable = random(SIZE);
    let resumable_digest = common::sha256(&resumable);
    let (location, session) = open_session(&url).await;
    let recorded = 3 << 19; // 1.5 MiB
    let range = patch(&url, &location, 0, &resumable.slice(..recorded)).await;
    assert_eq!(range, format!("0-{}", recorded - 1));
    let (tx, body) = common::channel_body();
    interrupted.push(tokio::spawn(
        client()
            .patch(format!("{url}{location}"))
            .header("content-range", format!("{recorded}-{}", SIZE - 1))
            .header("content-length", SIZE - recorded)
            .body(body)
            .send(),
    ));
    feed(&tx, &resumable.slice(recorded..recorded + (5 << 20))).await;
    open_bodies.push(tx);

    // Completed uploads, pushed while the others hang open.
    let complete: Vec<Bytes> = (0..4).map(|_| random(SIZE + 12_345)).collect();
    let (a, b, c, d) = tokio::join!(
        tokio::spawn(push_monolithic(url.clone(), complete[0].clone())),
        tokio::spawn(push_monolithic(url.clone(), complete[1].clone())),
        tokio::spawn(push_chunked(url.clone(), complete[2].clone(), false)),
        tokio::spawn(push_chunked(url.clone(), complete[3].clone(), true)),
    );
    let completed: Vec<(String, Bytes)> = [a, b, c, d]
        .into_iter()
        .map(|r| r.unwrap())
        .zip(complete)
        .collect();

    // Kill only once the server has written bytes of every interrupted body
    // (the completed pushes removed their sessions, so three are left). The
    // server cannot announce that, so poll the data directory, bounded.
    let start = Instant::now();
    loop {
        let sizes = session_sizes(&data);
        let chunked_residue = sizes.get(&session).is_some_and(|&n| n > recorded as u64);
        let monolithic_started = sizes
            .iter()
            .filter(|(id, n)| **id != session && **n > 0)
            .count();
        if chunked_residue && monolithic_started == 2 {
            assert_eq!(sizes.len(), 3, "sessions on disk: {sizes:?}");
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "interrupted bodies never reached the disk: {sizes:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    drop(open_bodies);
    for request in interrupted {
        let outcome = tokio::time::timeout(DEADLINE, request)
            .await
            .expect("interrupted request hangs")
            .unwrap();
        assert!(
            outcome.is_err(),
            "a request cut off by the kill got a response: {:?}",
            outcome.map(|r| r.status())
        );
    }

    // Restart over the same data.
    let server = ServerProcess::start(&data, &[]);
    let url = server.url.clone();

    for digest in cut_off.iter().chain([&resumable_digest]) {
        let response = get_blob(&url, digest).await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "blob of an interrupted upload is visible: {digest}"
        );
    }
    for (digest, blob) in &completed {
        let response = get_blob(&url, digest).await;
        assert_eq!(response.status(), StatusCode::OK, "completed blob {digest}");
        assert_eq!(header(&response, "docker-content-digest"), *digest);
        let body = response.bytes().await.unwrap();
        assert_eq!(
            common::sha256(&body),
            *digest,
            "completed blob's bytes do not verify"
        );
        assert!(
            body == blob,
            "completed blob {digest} differs from what was pushed"
        );
    }
    let on_disk = verified_blob_files(&data);
    let expected: BTreeSet<String> = completed.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(on_disk, expected, "blobs on disk after the crash");

    // The chunked session survived: its recorded size, not the residue.
    let status = client()
        .get(format!("{url}{location}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        status.status(),
        StatusCode::NO_CONTENT,
        "session status after restart"
    );
    let range = header(&status, "range");
    assert_eq!(
        range,
        format!("0-{}", recorded - 1),
        "recorded size after restart"
    );
    let resume_at: usize = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
    let range = patch(&url, &location, resume_at, &resumable.slice(resume_at..)).await;
    assert_eq!(range, format!("0-{}", SIZE - 1), "Range after resuming");
    let response = client()
        .put(format!("{url}{location}?digest={resumable_digest}"))
        .header("content-length", 0)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "finishing the resumed session (residue must not count)"
    );
    let body = get_blob(&url, &resumable_digest)
        .await
        .bytes()
        .await
        .unwrap();
    assert!(
        body == resumable,
        "the resumed blob differs from what was pushed"
    );

    let mut expected = expected;
    expected.insert(resumable_digest);
    assert_eq!(
        verified_blob_files(&data),
        expected,
        "blobs on disk after resuming"
    );
}
