//! The pull-through cache of an upstream (`[upstream.cache]`): what is
//! pulled once is kept in the built-in storage, under the client's name,
//! and served from there by the built-in handlers (so the same policies,
//! `Accept` rules and zero-copy paths apply).
//!
//! - A blob or a manifest by digest is immutable: once stored it is never
//!   asked for upstream again. A blob's first pull streams to its client
//!   while it is stored, verified by digest on the way (the last chunk is
//!   held back until the digest matched, so a client never receives a
//!   whole wrong blob); concurrent first pulls of the same blob wait for
//!   that one fetch and are then served from storage.
//! - A tag is served from storage while it was confirmed less than
//!   `tag_max_age_secs` ago (per replica; a restart starts cold). After
//!   that a `HEAD` upstream says whether it moved; when it did, the new
//!   manifest is fetched and the tag moved. When the upstream cannot be
//!   reached, the stored tag is served, stale, with a warning in the log.
//! - Nothing is evicted: the cache grows until garbage collection (to
//!   come) removes what no tag references.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest as _;
use tokio::sync::{mpsc, watch};

use super::Upstream;
use crate::AppState;
use crate::api::endpoint::Endpoint;
use crate::api::{Conn, authorize};
use crate::error::{ApiError, ErrorCode};
use crate::reference::{Digest, Reference, RepoName, Tag};
use crate::storage::{ByteStream, Chunk, StorageError};

/// Every manifest type the built-in storage keeps: what the cache asks
/// the upstream for, so that the digest it stores is the upstream's own
/// for the tag, whatever the client that first pulled it accepted.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.v1+prettyjws, \
    application/vnd.docker.distribution.manifest.v1+json";

/// Largest manifest fetched (the storage's own limit is smaller).
const MAX_MANIFEST: usize = 8 << 20;

/// Tags whose confirmation is remembered, at most; beyond, the memory is
/// emptied (the next pull of each asks the upstream once more).
const MAX_CONFIRMED: usize = 100_000;

/// What one replica knows of its cache beyond the storage.
pub struct Cache {
    max_age: Duration,
    /// When each tag was last confirmed by the upstream.
    confirmed: Mutex<HashMap<(RepoName, Tag), Instant>>,
    /// Blobs being fetched: the receiver sees its sender dropped when the
    /// fetch ended, stored or not.
    filling: Mutex<HashMap<Digest, watch::Receiver<()>>>,
}

impl Cache {
    pub fn new(config: &crate::config::CacheConfig) -> Self {
        Self {
            max_age: Duration::from_secs(config.tag_max_age_secs),
            confirmed: Mutex::new(HashMap::new()),
            filling: Mutex::new(HashMap::new()),
        }
    }

    fn fresh(&self, repo: &RepoName, tag: &Tag) -> bool {
        let confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        confirmed
            .get(&(repo.clone(), tag.clone()))
            .is_some_and(|at| at.elapsed() < self.max_age)
    }

    fn confirm(&self, repo: &RepoName, tag: &Tag) {
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        if confirmed.len() >= MAX_CONFIRMED {
            confirmed.clear();
        }
        confirmed.insert((repo.clone(), tag.clone()), Instant::now());
    }
}

/// Who answered, for the request log and the metrics.
fn served(state: &AppState, upstream: &Upstream, how: &'static str) {
    let value = format!("cache-{how}:{}", upstream.config.name);
    tracing::Span::current().record("backend", value.as_str());
    state.metrics.cache(&upstream.config.name, how);
}

/// An authorized request under a cached upstream's prefix.
pub(in crate::api) async fn serve(
    state: &Arc<AppState>,
    upstream: &Arc<Upstream>,
    endpoint: Endpoint,
    parts: Parts,
    body: Body,
    grant: &authorize::Grant,
    conn: &Conn,
) -> Result<Response<Body>, ApiError> {
    let cache = upstream.cache.as_ref().expect("a cached upstream");
    // What the built-in storage answers, once the cache holds it.
    let local = |endpoint: Endpoint| {
        crate::api::registry(state, endpoint, &parts.headers, Body::empty(), grant, conn)
    };
    match &endpoint {
        Endpoint::GetBlob { name, digest, head } => {
            let (name, digest, head) = (name.clone(), digest.clone(), *head);
            // The built-in handler checks that the blob is here: its answer
            // is a hit, unless it does not know the blob.
            match local(endpoint.clone()).await {
                Err(e) if e.code == ErrorCode::BlobUnknown => {}
                answer => {
                    served(state, upstream, "hit");
                    return answer;
                }
            }
            // A probe or a part of a blob not kept yet: asked upstream as
            // it is, and nothing is kept.
            if head || parts.headers.contains_key(header::RANGE) {
                served(state, upstream, "miss");
                let public = authorize::public_base(state, &parts);
                return upstream
                    .forward(&endpoint, &parts, body, &public, None)
                    .await;
            }
            match fill_blob(state, upstream, cache, &name, &digest, &parts).await? {
                Filled::Streaming(response) => {
                    served(state, upstream, "miss");
                    Ok(response)
                }
                Filled::Stored => {
                    served(state, upstream, "hit");
                    local(endpoint).await
                }
            }
        }
        Endpoint::GetManifest {
            name, reference, ..
        } => {
            let hit = manifest(state, upstream, cache, name, reference).await?;
            served(state, upstream, if hit { "hit" } else { "miss" });
            local(endpoint).await
        }
        // Tag lists, referrers: the upstream's, as for an uncached prefix.
        _ => {
            let public = authorize::public_base(state, &parts);
            served(state, upstream, "pass");
            upstream
                .forward(&endpoint, &parts, body, &public, None)
                .await
        }
    }
}

/// Makes sure the manifest `reference` names is stored as fresh as the
/// cache wants it; `true` when storage had it (a hit).
async fn manifest(
    state: &AppState,
    upstream: &Upstream,
    cache: &Cache,
    name: &RepoName,
    reference: &Reference,
) -> Result<bool, ApiError> {
    let stored = state.storage.manifest_head(name, reference).await;
    let stored = match stored {
        Ok((digest, _, _)) => Some(digest),
        Err(StorageError::ManifestUnknown(_) | StorageError::NameUnknown(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let tag = match reference {
        // Content by digest never changes.
        Reference::Digest(_) if stored.is_some() => return Ok(true),
        Reference::Digest(digest) => {
            fetch_manifest(state, upstream, name, reference, Some(digest)).await?;
            return Ok(false);
        }
        Reference::Tag(tag) => tag,
    };
    if stored.is_some() && cache.fresh(name, tag) {
        return Ok(true);
    }
    // Has the tag moved upstream?
    let remote = upstream.remote(name);
    let target = format!("{}/v2/{remote}/manifests/{tag}", upstream.base);
    let scope = format!("repository:{remote}:pull");
    let asked = upstream
        .send(&Method::HEAD, &target, &accept_all(), Body::empty(), &scope)
        .await;
    let current = match asked {
        Ok(answer) if answer.status() == StatusCode::OK => answer
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok()),
        Ok(answer) if answer.status() == StatusCode::NOT_FOUND => {
            return Err(ApiError::new(ErrorCode::ManifestUnknown));
        }
        Ok(answer) => {
            tracing::warn!(upstream = %upstream.config.name, status = %answer.status(), tag = %tag, "unexpected answer to a tag check");
            return stale(upstream, name, tag, stored.is_some());
        }
        Err(_) => return stale(upstream, name, tag, stored.is_some()),
    };
    if current.is_some() && current == stored {
        cache.confirm(name, tag);
        return Ok(true);
    }
    fetch_manifest(state, upstream, name, reference, current.as_ref()).await?;
    cache.confirm(name, tag);
    Ok(false)
}

/// The stored tag, when the upstream could not say whether it moved.
fn stale(upstream: &Upstream, name: &RepoName, tag: &Tag, stored: bool) -> Result<bool, ApiError> {
    if !stored {
        return Err(upstream.unavailable("is unreachable, and nothing is cached"));
    }
    tracing::warn!(
        upstream = %upstream.config.name,
        repository = %name,
        tag = %tag,
        "serving a cached tag the upstream could not confirm"
    );
    Ok(true)
}

fn accept_all() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_TYPES));
    headers
}

/// Fetches the manifest `reference` names and stores it under it,
/// checked against `expected` (the digest the upstream announced).
async fn fetch_manifest(
    state: &AppState,
    upstream: &Upstream,
    name: &RepoName,
    reference: &Reference,
    expected: Option<&Digest>,
) -> Result<(), ApiError> {
    let remote = upstream.remote(name);
    let target = format!("{}/v2/{remote}/manifests/{reference}", upstream.base);
    let scope = format!("repository:{remote}:pull");
    let answer = upstream
        .send(&Method::GET, &target, &accept_all(), Body::empty(), &scope)
        .await?;
    match answer.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Err(ApiError::new(ErrorCode::ManifestUnknown)),
        status => {
            tracing::warn!(upstream = %upstream.config.name, %status, "unexpected answer to a manifest fetch");
            return Err(upstream.unavailable("did not send the manifest"));
        }
    }
    let media_type = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(answer.into_body(), MAX_MANIFEST)
        .await
        .map_err(|_| upstream.unavailable("sent a broken manifest"))?;
    let put = state
        .storage
        .manifest_put_cached(name, reference, media_type.as_deref(), bytes)
        .await;
    match put {
        Ok(put) if expected.is_none_or(|e| *e == put.digest) => Ok(()),
        Ok(put) => {
            tracing::warn!(upstream = %upstream.config.name, announced = ?expected, got = %put.digest, "a manifest that is not what the upstream announced");
            Err(upstream.unavailable("sent a manifest that does not match its digest"))
        }
        Err(StorageError::ManifestInvalid(why)) => {
            tracing::warn!(upstream = %upstream.config.name, %why, "an upstream manifest the storage refused");
            Err(upstream.unavailable("sent a manifest Portcullis cannot keep"))
        }
        Err(StorageError::DigestMismatch { .. }) => {
            Err(upstream.unavailable("sent a manifest that does not match its digest"))
        }
        Err(e) => Err(e.into()),
    }
}

enum Filled {
    /// This request fetches the blob: its bytes stream as they are stored.
    Streaming(Response<Body>),
    /// Another request fetched it, and it is stored now.
    Stored,
}

/// The first pull of a blob: this request fetches it (and streams it while
/// it is stored), or waits for the request that does.
async fn fill_blob(
    state: &Arc<AppState>,
    upstream: &Arc<Upstream>,
    cache: &Cache,
    name: &RepoName,
    digest: &Digest,
    parts: &Parts,
) -> Result<Filled, ApiError> {
    loop {
        // The guard ends with the block: never held across an await.
        let turn = {
            let mut filling = cache.filling.lock().unwrap_or_else(|e| e.into_inner());
            match filling.get(digest) {
                Some(receiver) => Err(receiver.clone()),
                None => {
                    let (done, receiver) = watch::channel(());
                    filling.insert(digest.clone(), receiver);
                    Ok(done)
                }
            }
        };
        match turn {
            Ok(done) => return start_fill(state, upstream, name, digest, parts, done).await,
            Err(mut receiver) => {
                // Ends when the fetching request's sender is dropped.
                let _ = receiver.changed().await;
                if state.storage.blob_size(name, digest).await.is_ok() {
                    return Ok(Filled::Stored);
                }
                // That fetch failed: this request tries in turn.
            }
        }
    }
}

/// Asks the upstream for the blob and, when it comes, streams it to the
/// client while a task stores it; `done` is dropped when the task ends.
async fn start_fill(
    state: &Arc<AppState>,
    upstream: &Arc<Upstream>,
    name: &RepoName,
    digest: &Digest,
    parts: &Parts,
    done: watch::Sender<()>,
) -> Result<Filled, ApiError> {
    let remote = upstream.remote(name);
    let target = format!("{}/v2/{remote}/blobs/{digest}", upstream.base);
    let scope = format!("repository:{remote}:pull");
    let answer = match upstream
        .send(
            &Method::GET,
            &target,
            &HeaderMap::new(),
            Body::empty(),
            &scope,
        )
        .await
    {
        Ok(answer) if answer.status() == StatusCode::OK => answer,
        Ok(answer) => {
            forget(upstream, digest);
            let public = authorize::public_base(state, parts);
            let endpoint = Endpoint::GetBlob {
                name: name.clone(),
                digest: digest.clone(),
                head: false,
            };
            return upstream
                .answer(&endpoint, answer, &remote, name, &public)
                .await
                .map(Filled::Streaming);
        }
        Err(e) => {
            forget(upstream, digest);
            return Err(e);
        }
    };
    let length = answer.headers().get(header::CONTENT_LENGTH).cloned();
    let (to_client, from_fill) = mpsc::channel::<io::Result<Bytes>>(4);
    let stream = held_back(answer.into_body(), digest.clone(), to_client);
    let task = {
        let (state, upstream) = (state.clone(), upstream.clone());
        let (name, digest) = (name.clone(), digest.clone());
        async move {
            let stored = state
                .storage
                .blob_put(&name, None, &digest, Chunk::default(), stream)
                .await;
            match stored {
                Ok(size) => {
                    tracing::info!(upstream = %upstream.config.name, %digest, size, "blob cached")
                }
                Err(e) => {
                    tracing::warn!(upstream = %upstream.config.name, %digest, error = %e, "blob not cached")
                }
            }
            forget(&upstream, &digest);
            drop(done);
        }
    };
    // Its lines ("blob cached") belong to the pull that started it.
    tokio::spawn(tracing::Instrument::in_current_span(task));
    let body = futures_util::stream::unfold(from_fill, |mut from_fill| async move {
        from_fill.recv().await.map(|item| (item, from_fill))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("docker-content-digest", value);
    }
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, length);
    }
    Ok(Filled::Streaming(response))
}

/// Ends the record of a blob's fetch (before its waiters are woken, so
/// that they look in storage, not at the finished fetch).
fn forget(upstream: &Upstream, digest: &Digest) {
    if let Some(cache) = &upstream.cache {
        let mut filling = cache.filling.lock().unwrap_or_else(|e| e.into_inner());
        filling.remove(digest);
    }
}

/// The upstream's body as storage takes it, each chunk also sent to the
/// client, the last one only once the bytes matched `digest` (a mismatch
/// fails the client's body instead). The client going away does not stop
/// the store.
fn held_back(body: Body, digest: Digest, client: mpsc::Sender<io::Result<Bytes>>) -> ByteStream {
    struct State {
        body: axum::body::BodyDataStream,
        hasher: Hasher,
        held: Option<Bytes>,
        client: mpsc::Sender<io::Result<Bytes>>,
        digest: Digest,
    }
    let state = State {
        body: body.into_data_stream(),
        hasher: Hasher::new(&digest),
        held: None,
        client,
        digest,
    };
    futures_util::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match state.body.next().await {
            Some(Ok(chunk)) => {
                state.hasher.update(&chunk);
                if let Some(previous) = state.held.replace(chunk.clone()) {
                    let _ = state.client.send(Ok(previous)).await;
                }
                Some((Ok(chunk), Some(state)))
            }
            Some(Err(e)) => {
                let _ = state
                    .client
                    .send(Err(io::Error::other("the upstream broke off")))
                    .await;
                Some((Err(io::Error::other(e)), None))
            }
            None => {
                let last = match state.hasher.finish() == state.digest {
                    true => state.held.take().map(Ok),
                    false => Some(Err(io::Error::other(
                        "the upstream's blob does not match its digest",
                    ))),
                };
                if let Some(last) = last {
                    let _ = state.client.send(last).await;
                }
                None
            }
        }
    })
    .boxed()
}

/// SHA-256 or SHA-512, as the digest says.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(digest: &Digest) -> Self {
        match digest.algorithm() {
            crate::reference::Algorithm::Sha512 => Self::Sha512(sha2::Sha512::new()),
            _ => Self::Sha256(sha2::Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Digest {
        match self {
            Self::Sha256(h) => Digest::from_sha256(&h.finalize()),
            Self::Sha512(h) => Digest::from_sha512(&h.finalize()),
        }
    }
}
