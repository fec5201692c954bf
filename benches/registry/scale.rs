//! Section `scale`: listing a registry that holds 25,000 repositories
//! (`/v2/_catalog`, followed page by page through `Link`), idle and while
//! blobs are pushed, and one repository that holds 20,000 tags
//! (`/v2/<name>/tags/list`), whole and by pages of 100.
//!
//! Both registries are first filled the same way over HTTP, each
//! repository with a tiny config blob and an OCI manifest; that population
//! is timed and printed but is not a figure.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LINK, LOCATION};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use crate::Options;
use crate::report::{Better, Row};
use crate::servers::{Servers, Target};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const REPOSITORIES: usize = 25_000;
const TAGS: usize = 20_000;
/// The tag page size of the paged tag listing.
const TAG_PAGE: usize = 100;
/// Where blobs are pushed while the catalog is listed.
const BUSY_REPOSITORY: &str = "scale/busy";
/// Requests in flight while populating.
const IN_FLIGHT: usize = 32;
/// The catalog page size asked for: distribution's default cap on `n`.
const CATALOG_PAGE: usize = 1000;
/// The prefix of the populated repositories; other sections' repositories
/// appear in the catalog too and are not counted.
const PREFIX: &str = "scale/r";
const TAGS_REPOSITORY: &str = "scale/tags";
/// Tags pushed under one token: a chunk takes seconds, well within a
/// token's lifetime (5 minutes), however slow the registry.
const TAGS_PER_TOKEN: usize = 1000;
/// Full catalog listings per registry (the median is kept).
const CATALOG_ROUNDS: usize = 3;
/// Tag listings per registry (the median is kept).
const TAGS_ROUNDS: usize = 5;

/// The one tiny image every repository holds: a config blob and an OCI
/// manifest without layers.
struct Image {
    config: Bytes,
    config_digest: String,
    manifest: Bytes,
}

impl Image {
    fn new() -> Self {
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .unwrap();
        let config_digest = sha256_digest(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [],
        }))
        .unwrap();
        Image {
            config: config.into(),
            config_digest,
            manifest: manifest.into(),
        }
    }
}

pub async fn run(servers: &Servers, _options: &Options) -> Vec<Row> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .expect("client");
    let image = Image::new();
    // Both registries are filled at once, sharing each repository's token;
    // each population's time is printed. Waiting for one before starting the
    // other would add Portcullis' population time to the section's.
    let start = Instant::now();
    let tokens: Vec<OnceCell<String>> = (0..REPOSITORIES).map(|_| OnceCell::new()).collect();
    tokio::join!(
        populate(&client, &servers.portcullis, &image, &tokens),
        populate(&client, &servers.distribution, &image, &tokens),
    );
    eprintln!(
        "scale: both registries populated in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Rounds alternate between the registries, so drift in the machine's
    // load spreads over both.
    let mut catalog: [Vec<f64>; 2] = Default::default();
    let mut busy: [Vec<Pages>; 2] = Default::default();
    let mut tags: [Vec<f64>; 2] = Default::default();
    let mut paged: [Vec<Pages>; 2] = Default::default();
    let targets = servers.targets();
    let mut catalog_tokens = Vec::new();
    let mut tags_tokens = Vec::new();
    let mut busy_tokens = Vec::new();
    for target in targets {
        catalog_tokens.push(target.token(&client, "registry:catalog:*").await);
        let scope = format!("repository:{BUSY_REPOSITORY}:pull,push");
        busy_tokens.push(target.token(&client, &scope).await);
        let scope = format!("repository:{TAGS_REPOSITORY}:pull");
        tags_tokens.push(target.token(&client, &scope).await);
    }
    for _ in 0..CATALOG_ROUNDS {
        for (i, target) in targets.into_iter().enumerate() {
            catalog[i].push(
                list_catalog(&client, target, &catalog_tokens[i])
                    .await
                    .total,
            );
        }
    }
    for _ in 0..CATALOG_ROUNDS {
        for (i, target) in targets.into_iter().enumerate() {
            let listing = list_catalog(&client, target, &catalog_tokens[i]);
            let (pages, pushed) = while_pushing(&client, target, &busy_tokens[i], listing).await;
            eprintln!(
                "scale: {}: catalog during {pushed} blob pushes: {}",
                target.name,
                pages.describe()
            );
            busy[i].push(pages);
        }
    }
    for _ in 0..TAGS_ROUNDS {
        for (i, target) in targets.into_iter().enumerate() {
            tags[i].push(
                list_tags(&client, target, &tags_tokens[i], None)
                    .await
                    .total,
            );
            let pages = list_tags(&client, target, &tags_tokens[i], Some(TAG_PAGE)).await;
            eprintln!(
                "scale: {}: tags by n={TAG_PAGE}: {}",
                target.name,
                pages.describe()
            );
            paged[i].push(pages);
        }
    }
    for (i, target) in targets.into_iter().enumerate() {
        eprintln!(
            "scale: {}: catalog {:.3?} s, tags list {:.1?} ms",
            target.name,
            catalog[i],
            tags[i].iter().map(|t| t * 1000.0).collect::<Vec<_>>()
        );
    }
    let [portcullis_catalog, distribution_catalog] = catalog.map(median);
    let [portcullis_busy, distribution_busy] =
        busy.map(|rounds| median(rounds.iter().map(|p| p.total).collect()));
    let [portcullis_tags, distribution_tags] = tags.map(median);
    let [portcullis_paged, distribution_paged] =
        paged.map(|rounds| median(rounds.iter().map(|p| p.total).collect()));

    vec![
        Row::new(
            "catalog, 25,000 repositories, pages of 1,000",
            "s",
            portcullis_catalog,
            Better::Lower,
        )
        .against("distribution", distribution_catalog)
        .note(
            "26 requests of 1,000 names: Portcullis walks the repository directories once \
             into an ordered index kept up to date by its own changes (read again after 5 s \
             for other replicas'), and each page seeks to `last` in it; distribution walks \
             in order for every page and stops when it is full, so its k-th page costs k \
             thousand listings",
        ),
        Row::new(
            "catalog during blob pushes, 25,000 repositories, pages of 1,000",
            "s",
            portcullis_busy,
            Better::Lower,
        )
        .against("distribution", distribution_busy)
        .note(
            "the same listing while one client pushes blobs into another repository \
             without pause: Portcullis' pushes update its index instead of dropping it, so \
             the pages cost what they cost idle",
        ),
        Row::new(
            "tags list, 20,000 tags in one repository",
            "ms",
            portcullis_tags * 1000.0,
            Better::Lower,
        )
        .against("distribution", distribution_tags * 1000.0)
        .note(
            "one request: the registry lists the repository's tag directory (20,000 entries, \
             from the page cache), sorts the names and writes about 220 KB of JSON; neither \
             registry pages it by default",
        ),
        Row::new(
            "tags list by n=100, 20,000 tags in one repository",
            "ms",
            portcullis_paged * 1000.0,
            Better::Lower,
        )
        .against("distribution", distribution_paged * 1000.0)
        .note(
            "200 requests following `Link`: Portcullis reads and sorts the tag directory \
             once into an index kept for 5 s and seeks to `last`, so every page costs about \
             the same; distribution 2.8 does not page tags and answers the first request \
             with all of them",
        ),
    ]
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn repository(i: usize) -> String {
    format!("{PREFIX}{i:05}")
}

fn tag(i: usize) -> String {
    format!("t{i:05}")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Sends a request and panics with the answer unless it succeeded: a
/// population or a listing that went wrong must not yield a figure.
async fn send_ok(request: reqwest::RequestBuilder, what: &str) -> reqwest::Response {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        panic!("{what}: {status}: {body}");
    }
    response
}

/// `location` (a `Location` or `Link` target) as an absolute URL.
fn absolute(target: &Target, location: &str) -> String {
    if location.starts_with('/') {
        target.at(location)
    } else {
        location.to_owned()
    }
}

/// Puts the config blob into `repo`. With `mount_from`, a cross-repository
/// mount (one request) is asked for first; when the registry answers with
/// an upload session instead, or without a mount, the bytes are sent: a
/// POST then a PUT with the body, the upload flow both registries support.
/// Whether the blob was mounted.
async fn push_config(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    repo: &str,
    mount_from: Option<&str>,
    image: &Image,
) -> bool {
    let (digest, config) = (&image.config_digest, image.config.clone());
    upload(client, target, token, repo, mount_from, digest, config).await
}

/// Uploads `body` as `digest` into `repo`, first asking to mount it from
/// `mount_from`: a POST, then (unless mounted) a PUT with the body. Whether
/// the blob was mounted.
async fn upload(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    repo: &str,
    mount_from: Option<&str>,
    digest: &str,
    body: Bytes,
) -> bool {
    let what = |step: &str| format!("{} {repo}: {step}", target.name);
    let mut path = format!("/v2/{repo}/blobs/uploads/");
    if let Some(from) = mount_from {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("mount", digest)
            .append_pair("from", from)
            .finish();
        path = format!("{path}?{query}");
    }
    let start = client.post(target.at(&path)).bearer_auth(token);
    let started = send_ok(start, &what("start upload")).await;
    if started.status() == StatusCode::CREATED {
        return true;
    }
    let location = started
        .headers()
        .get(LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or_else(|| panic!("{}", what("upload without Location")));
    let location = absolute(target, location);
    let separator = if location.contains('?') { '&' } else { '?' };
    send_ok(
        client
            .put(format!("{location}{separator}digest={digest}"))
            .bearer_auth(token)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body),
        &what("finish upload"),
    )
    .await;
    false
}

async fn put_manifest(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    repo: &str,
    reference: &str,
    image: &Image,
) {
    send_ok(
        client
            .put(target.at(&format!("/v2/{repo}/manifests/{reference}")))
            .bearer_auth(token)
            .header(CONTENT_TYPE, OCI_MANIFEST)
            .body(image.manifest.clone()),
        &format!("{} {repo}: put manifest {reference}", target.name),
    )
    .await;
}

/// Fills one registry: first [`TAGS_REPOSITORY`] with the image under
/// [`TAGS`] tags, then [`REPOSITORIES`] repositories of one image each (the
/// config blob mounted from the first), [`IN_FLIGHT`] requests at a time.
/// `tokens` holds one token per repository, fetched by whichever registry's
/// population needs it first; the other uses it seconds later, well within
/// its 5 minutes (an expired one would fail the run with a 401, not skew
/// it). Prints how long each part took.
async fn populate(
    client: &reqwest::Client,
    target: &Target,
    image: &Image,
    tokens: &[OnceCell<String>],
) {
    let start = Instant::now();
    let scope = format!("repository:{TAGS_REPOSITORY}:pull,push");
    let token = target.token(client, &scope).await;
    push_config(client, target, &token, TAGS_REPOSITORY, None, image).await;
    let mounted = &AtomicUsize::new(0);
    for chunk in (0..TAGS).collect::<Vec<_>>().chunks(TAGS_PER_TOKEN) {
        let token = &target.token(client, &scope).await;
        futures_util::stream::iter(chunk)
            .for_each_concurrent(IN_FLIGHT, |&i| async move {
                put_manifest(client, target, token, TAGS_REPOSITORY, &tag(i), image).await;
            })
            .await;
    }
    let tag_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    futures_util::stream::iter(tokens.iter().enumerate())
        .for_each_concurrent(IN_FLIGHT, |(i, token)| async move {
            let repo = repository(i);
            // The mount needs pull on the repository it mounts from.
            let token = token
                .get_or_init(|| {
                    let scope =
                        format!("repository:{repo}:pull,push repository:{TAGS_REPOSITORY}:pull");
                    async move { target.token(client, &scope).await }
                })
                .await;
            if push_config(client, target, token, &repo, Some(TAGS_REPOSITORY), image).await {
                mounted.fetch_add(1, Ordering::Relaxed);
            }
            put_manifest(client, target, token, &repo, "latest", image).await;
        })
        .await;
    let repo_secs = start.elapsed().as_secs_f64();
    eprintln!(
        "scale: {}: {TAGS} tags in {tag_secs:.1} s ({:.0}/s); {REPOSITORIES} repositories \
         (a config blob, {} of them mounted, and a manifest each) in {repo_secs:.1} s ({:.0}/s)",
        target.name,
        TAGS as f64 / tag_secs,
        mounted.load(Ordering::Relaxed),
        REPOSITORIES as f64 / repo_secs,
    );
}

/// The pages of one listing, each with how long its request took.
#[derive(Default)]
struct Pages {
    /// Seconds from the first request to the last page's body.
    total: f64,
    /// Seconds each page took.
    each: Vec<f64>,
}

impl Pages {
    fn describe(&self) -> String {
        let ms = |s: Option<&f64>| s.map_or(0.0, |s| s * 1000.0);
        format!(
            "{} pages in {:.3} s, first {:.2} ms, last {:.2} ms",
            self.each.len(),
            self.total,
            ms(self.each.first()),
            ms(self.each.last())
        )
    }
}

/// GETs `path` and every page after it through `Link: <…>; rel="next"`;
/// returns each page's JSON and how long each took.
async fn pages(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    path: &str,
) -> (Vec<Value>, Vec<f64>) {
    let mut url = target.at(path);
    let mut pages = Vec::new();
    let mut times = Vec::new();
    loop {
        let start = Instant::now();
        let response = send_ok(
            client.get(&url).bearer_auth(token),
            &format!("{} GET {url}", target.name),
        )
        .await;
        let next = response
            .headers()
            .get(LINK)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| {
                let (link, params) = l.split_once('>')?;
                params
                    .contains("rel=\"next\"")
                    .then(|| link.trim().trim_start_matches('<').to_owned())
            });
        pages.push(response.json::<Value>().await.expect("list is JSON"));
        times.push(start.elapsed().as_secs_f64());
        match next {
            Some(link) => url = absolute(target, &link),
            None => return (pages, times),
        }
    }
}

/// Runs `listing` while pushing small distinct blobs into
/// [`BUSY_REPOSITORY`] one after another; the listing's result and how many
/// pushes finished meanwhile.
async fn while_pushing<T>(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    listing: impl Future<Output = T>,
) -> (T, usize) {
    let done = std::sync::atomic::AtomicBool::new(false);
    let pushed = AtomicUsize::new(0);
    let pusher = async {
        let mut i = 0u64;
        while !done.load(Ordering::Relaxed) {
            let blob = Bytes::from(format!("busy {} {i}", std::process::id()).repeat(64));
            push_blob(client, target, token, BUSY_REPOSITORY, blob).await;
            pushed.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
    };
    let listing = async {
        let result = listing.await;
        done.store(true, Ordering::Relaxed);
        result
    };
    let (result, ()) = tokio::join!(listing, pusher);
    (result, pushed.load(Ordering::Relaxed))
}

/// Pushes `blob` into `repo`: a POST, then a PUT with the body.
async fn push_blob(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    repo: &str,
    blob: Bytes,
) {
    let digest = sha256_digest(&blob);
    upload(client, target, token, repo, None, &digest, blob).await;
}

/// Lists the full catalog once, timed. Checks every populated repository
/// is listed exactly once.
async fn list_catalog(client: &reqwest::Client, target: &Target, token: &str) -> Pages {
    let path = format!("/v2/_catalog?n={CATALOG_PAGE}");
    let expected = (0..REPOSITORIES).map(repository);
    list_all(
        client,
        target,
        token,
        &path,
        "repositories",
        PREFIX,
        expected,
    )
    .await
}

/// Lists the tags of [`TAGS_REPOSITORY`] once (by pages of `n` when
/// given), timed. Checks every tag is listed exactly once.
async fn list_tags(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    n: Option<usize>,
) -> Pages {
    let mut path = format!("/v2/{TAGS_REPOSITORY}/tags/list");
    if let Some(n) = n {
        path = format!("{path}?n={n}");
    }
    list_all(client, target, token, &path, "tags", "", (0..TAGS).map(tag)).await
}

/// Follows every page of the list at `path`, timed; then checks that the
/// names under `field` that start with `prefix` (the catalog holds other
/// sections' repositories too) are exactly `expected`, each listed once.
async fn list_all(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    path: &str,
    field: &str,
    prefix: &str,
    expected: impl Iterator<Item = String>,
) -> Pages {
    let start = Instant::now();
    let (pages, each) = pages(client, target, token, path).await;
    let elapsed = Pages {
        total: start.elapsed().as_secs_f64(),
        each,
    };
    let listed: Vec<&str> = pages
        .iter()
        .flat_map(|page| {
            page[field]
                .as_array()
                .unwrap_or_else(|| panic!("{}: {path} page {page}", target.name))
        })
        .map(|name| name.as_str().expect("listed name"))
        .filter(|name| name.starts_with(prefix))
        .collect();
    let distinct: BTreeSet<&str> = listed.iter().copied().collect();
    let expected: BTreeSet<String> = expected.collect();
    assert!(
        listed.len() == expected.len()
            && distinct.len() == expected.len()
            && expected.iter().all(|name| distinct.contains(name.as_str())),
        "{}: {path} lists {} names ({} distinct) in {} pages, not the {} pushed",
        target.name,
        listed.len(),
        distinct.len(),
        pages.len(),
        expected.len()
    );
    elapsed
}
