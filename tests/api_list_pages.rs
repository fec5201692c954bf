//! Listings at scale: a page of the catalog or of a tag list costs about its
//! own size, also while pushes go on, and stays correct and fresh: this
//! process' changes show at once, another replica's within seconds.
//!
//! The cost is counted, not timed: the server reports how many directories
//! it read to answer listings (`Storage::listing_reads`).

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::sha256;
use portcullis::AppState;
use portcullis::config::Config;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &[u8] = b"{}";

/// An in-process server whose state the test can read (its listing cost).
struct Server {
    url: String,
    client: reqwest::Client,
    state: Arc<AppState>,
    _stop: oneshot::Sender<()>,
}

impl Server {
    /// A server over `root`; two servers over one root are two replicas.
    async fn start(root: &Path) -> Self {
        let mut config = Config::default();
        config.storage.root = root.to_owned();
        config.auth.enabled = false;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(config).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(portcullis::serve(listener, Arc::clone(&state), async {
            let _ = stopped.await;
        }));
        Self {
            url,
            client: reqwest::Client::new(),
            state,
            _stop: stop,
        }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn listing_reads(&self) -> u64 {
        self.state.storage.listing_reads()
    }

    /// Pushes the config blob into `repo`; its digest.
    async fn push_blob(&self, repo: &str) -> String {
        let digest = sha256(CONFIG);
        let r = self
            .client
            .post(self.at(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .body(CONFIG)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "push into {repo}");
        digest
    }

    /// Pushes a manifest (distinct per `variant`) under `tag`; its digest.
    async fn push_tag(&self, repo: &str, tag: &str, variant: &str) -> String {
        let config = self.push_blob(repo).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": CONFIG.len()},
            "layers": [],
            "annotations": {"variant": variant},
        }))
        .unwrap();
        let r = self
            .client
            .put(self.at(&format!("/v2/{repo}/manifests/{tag}")))
            .header(header::CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{repo}:{tag}");
        sha256(&manifest)
    }

    async fn delete(&self, path: &str) {
        let r = self.client.delete(self.at(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "DELETE {path}");
    }

    /// Every page from `first` on, following `Link`.
    async fn pages<F: Future<Output = ()>>(
        &self,
        first: &str,
        key: &str,
        between: impl Fn() -> F,
    ) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut path = first.to_owned();
        loop {
            let r = self.client.get(self.at(&path)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let next = r
                .headers()
                .get(header::LINK)
                .map(|l| l.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap();
            pages.push(serde_json::from_value(body[key].clone()).unwrap());
            let Some(next) = next else { return pages };
            path = next
                .split_once('>')
                .unwrap()
                .0
                .trim_start_matches('<')
                .to_owned();
            assert!(pages.len() < 10_000, "pagination does not end");
            between().await;
        }
    }

    /// One whole listing.
    async fn list(&self, path: &str, key: &str) -> Vec<String> {
        self.pages(path, key, || async {}).await.concat()
    }
}

/// Runs `push(i)` for i = 0, 1, … on a task until the returned guard drops;
/// `done` counts finished pushes.
fn keep_pushing<F>(push: impl Fn(usize) -> F + Send + 'static) -> (Arc<AtomicUsize>, impl Drop)
where
    F: Future<Output = ()> + Send,
{
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (Arc::clone(&done), Arc::clone(&stop));
    tokio::spawn(async move {
        let mut i = 0;
        while !s.load(Ordering::SeqCst) {
            push(i).await;
            i += 1;
            d.fetch_add(1, Ordering::SeqCst);
        }
    });
    (done, Stop(stop))
}

/// Waits until `done` passes `seen` (a push finished since), with a deadline.
async fn another_push(done: &AtomicUsize, seen: &AtomicUsize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) <= seen.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the pusher stalled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    seen.store(done.load(Ordering::SeqCst), Ordering::SeqCst);
}

/// The spec's order for tags: case-insensitive, byte order breaking ties.
fn lexical(a: &str, b: &str) -> std::cmp::Ordering {
    a.to_ascii_lowercase()
        .cmp(&b.to_ascii_lowercase())
        .then_with(|| a.cmp(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_pages_during_pushes_do_not_rewalk_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(dir.path()).await);
    const BASE: usize = 200;
    let base: Vec<String> = (0..BASE).map(|i| format!("base/r{i:04}")).collect();
    for chunk in base.chunks(16) {
        futures_util::future::join_all(chunk.iter().map(|repo| server.push_blob(repo))).await;
    }

    // A new repository appears between every two pages: each page sees a
    // catalog changed since the one before.
    let pusher = Arc::clone(&server);
    let (done, _pushing) = keep_pushing(move |i| {
        let pusher = Arc::clone(&pusher);
        async move {
            pusher.push_blob(&format!("live/p{i:05}")).await;
        }
    });
    let seen = AtomicUsize::new(done.load(Ordering::SeqCst));
    let before = server.listing_reads();
    let pages = server
        .pages("/v2/_catalog?n=10", "repositories", || {
            another_push(&done, &seen)
        })
        .await;
    let reads = server.listing_reads() - before;

    let listed = pages.concat();
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "pages are in order, each name once"
    );
    let listed_base: Vec<&String> = listed.iter().filter(|n| n.starts_with("base/")).collect();
    assert_eq!(listed_base, base.iter().collect::<Vec<_>>());
    // One walk reads every repository directory once (and the few above
    // them); a walk per page would be `pages` times that.
    let walk = listed.len() as u64 + 4;
    assert!(
        reads <= 3 * walk,
        "{} pages read {reads} directories: {:.1} walks of the tree",
        pages.len(),
        reads as f64 / walk as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_pages_during_pushes_do_not_reread_the_tag_directory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(dir.path()).await);
    const REPO: &str = "many/tags";
    // Mixed case, so the case-insensitive order is exercised across pages.
    let base: Vec<String> = (0..300)
        .map(|i| match i % 3 {
            0 => format!("v{i:04}"),
            1 => format!("V{i:04}"),
            _ => format!("rc-{i:04}"),
        })
        .collect();
    for chunk in base.chunks(16) {
        futures_util::future::join_all(chunk.iter().map(|tag| server.push_tag(REPO, tag, "a")))
            .await;
    }

    let pusher = Arc::clone(&server);
    let (done, _pushing) = keep_pushing(move |i| {
        let pusher = Arc::clone(&pusher);
        async move {
            pusher.push_tag(REPO, &format!("live-{i:05}"), "b").await;
        }
    });
    let seen = AtomicUsize::new(done.load(Ordering::SeqCst));
    let before = server.listing_reads();
    let pages = server
        .pages(&format!("/v2/{REPO}/tags/list?n=10"), "tags", || {
            another_push(&done, &seen)
        })
        .await;
    let reads = server.listing_reads() - before;

    let listed = pages.concat();
    assert!(
        listed.windows(2).all(|w| lexical(&w[0], &w[1]).is_lt()),
        "pages are in the spec's order, each tag once"
    );
    let mut expected = base.clone();
    expected.sort_by(|a, b| lexical(a, b));
    let listed_base: Vec<&String> = listed.iter().filter(|t| !t.starts_with("live-")).collect();
    assert_eq!(listed_base, expected.iter().collect::<Vec<_>>());
    assert!(
        reads <= 4,
        "{} pages read the tag directory {reads} times",
        pages.len()
    );
}

#[tokio::test]
async fn listings_show_this_servers_changes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.push_tag("app", "v1", "a").await;
    assert_eq!(server.list("/v2/_catalog", "repositories").await, ["app"]);

    // A new repository, then its removal by unlinking its only blob.
    let digest = server.push_blob("scratch/one").await;
    assert_eq!(
        server.list("/v2/_catalog?n=1", "repositories").await,
        ["app", "scratch/one"]
    );
    server
        .delete(&format!("/v2/scratch/one/blobs/{digest}"))
        .await;
    assert_eq!(server.list("/v2/_catalog", "repositories").await, ["app"]);

    // Tags: added, deleted by name, and deleted with their manifest.
    let tags = "/v2/app/tags/list?n=1";
    assert_eq!(server.list(tags, "tags").await, ["v1"]);
    server.push_tag("app", "V0", "a").await;
    let other = server.push_tag("app", "x", "b").await;
    server.push_tag("app", "y", "b").await;
    assert_eq!(server.list(tags, "tags").await, ["V0", "v1", "x", "y"]);
    server.delete("/v2/app/manifests/V0").await;
    assert_eq!(server.list(tags, "tags").await, ["v1", "x", "y"]);
    server.delete(&format!("/v2/app/manifests/{other}")).await;
    assert_eq!(server.list(tags, "tags").await, ["v1"]);
}

/// Polls `list` until it equals `expected`, for at most 30 s.
async fn eventually(server: &Server, path: &str, key: &str, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = server.list(path, key).await;
        if listed == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still lists {listed:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn another_replicas_changes_show_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        Server::start(dir.path()).await,
        Server::start(dir.path()).await,
    );
    a.push_tag("app", "v1", "a").await;
    // A lists first, so what it shows next comes from what it keeps.
    assert_eq!(a.list("/v2/_catalog", "repositories").await, ["app"]);
    assert_eq!(a.list("/v2/app/tags/list", "tags").await, ["v1"]);

    let digest = b.push_blob("from/b").await;
    b.push_tag("app", "v2", "b").await;
    eventually(&a, "/v2/_catalog", "repositories", &["app", "from/b"]).await;
    eventually(&a, "/v2/app/tags/list", "tags", &["v1", "v2"]).await;

    b.delete(&format!("/v2/from/b/blobs/{digest}")).await;
    b.delete("/v2/app/manifests/v1").await;
    eventually(&a, "/v2/_catalog", "repositories", &["app"]).await;
    eventually(&a, "/v2/app/tags/list", "tags", &["v2"]).await;
}
