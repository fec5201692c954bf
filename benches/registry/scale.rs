//! Section `scale`: listing a registry that holds 10,000 repositories
//! (`/v2/_catalog`, followed page by page through `Link`) and one repository
//! that holds 10,000 tags (`/v2/<name>/tags/list`).
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
const REPOSITORIES: usize = 10_000;
const TAGS: usize = 10_000;
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
    let mut tags: [Vec<f64>; 2] = Default::default();
    let targets = servers.targets();
    let mut catalog_tokens = Vec::new();
    let mut tags_tokens = Vec::new();
    for target in targets {
        catalog_tokens.push(target.token(&client, "registry:catalog:*").await);
        let scope = format!("repository:{TAGS_REPOSITORY}:pull");
        tags_tokens.push(target.token(&client, &scope).await);
    }
    for _ in 0..CATALOG_ROUNDS {
        for (i, target) in targets.into_iter().enumerate() {
            catalog[i].push(list_catalog(&client, target, &catalog_tokens[i]).await);
        }
    }
    for _ in 0..TAGS_ROUNDS {
        for (i, target) in targets.into_iter().enumerate() {
            tags[i].push(list_tags(&client, target, &tags_tokens[i]).await);
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
    let [portcullis_tags, distribution_tags] = tags.map(median);

    vec![
        Row::new(
            "catalog, 10,000 repositories, pages of 1,000",
            "s",
            portcullis_catalog,
            Better::Lower,
        )
        .against("distribution", distribution_catalog)
        .note(
            "11 requests of 1,000 names: Portcullis walks the repository directories once \
             and keeps the sorted list for 5 s (dropped at once by its own changes), so the \
             other pages are answered from memory; distribution walks in order for every \
             page and stops when it is full, so its k-th page costs k thousand listings",
        ),
        Row::new(
            "tags list, 10,000 tags in one repository",
            "ms",
            portcullis_tags * 1000.0,
            Better::Lower,
        )
        .against("distribution", distribution_tags * 1000.0)
        .note(
            "one request: the registry lists the repository's tag directory (10,000 entries, \
             from the page cache), sorts the names and writes about 110 KB of JSON; neither \
             registry pages it by default",
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
    let what = |step: &str| format!("{} {repo}: {step}", target.name);
    let mut path = format!("/v2/{repo}/blobs/uploads/");
    if let Some(from) = mount_from {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("mount", &image.config_digest)
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
            .put(format!(
                "{location}{separator}digest={}",
                image.config_digest
            ))
            .bearer_auth(token)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(image.config.clone()),
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

/// GETs `path` and every page after it through `Link: <…>; rel="next"`;
/// returns each page's JSON.
async fn pages(client: &reqwest::Client, target: &Target, token: &str, path: &str) -> Vec<Value> {
    let mut url = target.at(path);
    let mut pages = Vec::new();
    loop {
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
        match next {
            Some(link) => url = absolute(target, &link),
            None => return pages,
        }
    }
}

/// Lists the full catalog once; the time it took, in seconds. Checks every
/// populated repository is listed exactly once.
async fn list_catalog(client: &reqwest::Client, target: &Target, token: &str) -> f64 {
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

/// Lists the tags of [`TAGS_REPOSITORY`] once; the time it took, in seconds.
/// Checks every tag is listed exactly once.
async fn list_tags(client: &reqwest::Client, target: &Target, token: &str) -> f64 {
    let path = format!("/v2/{TAGS_REPOSITORY}/tags/list");
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
) -> f64 {
    let start = Instant::now();
    let pages = pages(client, target, token, path).await;
    let elapsed = start.elapsed().as_secs_f64();
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
