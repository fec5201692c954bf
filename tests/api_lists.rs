//! Tag lists and the catalog over HTTP: ordering, `n`/`last` pagination with
//! `Link` headers, and the errors for unknown repositories and bad numbers.

use crate::common;

use common::TestServer;
use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Pushes one small image manifest into `repo` under each of `tags`.
async fn push_tags(server: &TestServer, repo: &str, tags: &[&str]) {
    let config = b"{}";
    let digest = server.push_blob(repo, config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    for tag in tags {
        let r = server
            .client
            .put(server.at(&format!("/v2/{repo}/manifests/{tag}")))
            .header(header::CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{repo}:{tag}");
    }
}

async fn get(server: &TestServer, path: &str) -> Response {
    server.client.get(server.at(path)).send().await.unwrap()
}

/// The path inside a `Link: <path>; rel="next"` header, checking its form.
fn next_link(r: &Response) -> Option<String> {
    let link = r.headers().get(header::LINK)?.to_str().unwrap();
    let (target, rel) = link
        .split_once(';')
        .unwrap_or_else(|| panic!("Link without parameters: {link}"));
    assert_eq!(rel.trim(), "rel=\"next\"", "{link}");
    let path = target
        .trim()
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or_else(|| panic!("Link target not in <>: {link}"));
    Some(path.to_owned())
}

async fn assert_error(r: Response, status: StatusCode, code: &str) {
    assert_eq!(r.status(), status, "status for expected {code}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{body}");
}

/// Follows `Link` headers from `first` to the end, returning every page's
/// entries under `key` and the links that were followed.
async fn follow(server: &TestServer, first: &str, key: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let mut pages = Vec::new();
    let mut links = Vec::new();
    let mut path = first.to_owned();
    loop {
        let r = get(server, &path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let next = next_link(&r);
        let body: Value = r.json().await.unwrap();
        let page: Vec<String> = serde_json::from_value(body[key].clone()).unwrap();
        pages.push(page);
        match next {
            Some(next) => {
                assert!(pages.len() < 100, "pagination does not end");
                links.push(next.clone());
                path = next;
            }
            None => return (pages, links),
        }
    }
}

#[tokio::test]
async fn tags_are_listed_in_lexical_order() {
    let server = TestServer::start().await;
    let repo = "library/sorted";
    // Pushed out of order, with digits, separators and upper case.
    push_tags(
        &server,
        repo,
        &["v2", "B", "latest", "10", "a", "v1.0", "_x", "C-rc", "1"],
    )
    .await;

    let r = get(&server, &format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()
            .get(header::CONTENT_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(r.headers().get(header::LINK).is_none(), "one page, no Link");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["name"], repo);
    // The spec's order: "lexical order (i.e. case-insensitive alphanumeric order)".
    assert_eq!(
        body["tags"],
        json!(["1", "10", "_x", "a", "B", "C-rc", "latest", "v1.0", "v2"])
    );
}

#[tokio::test]
async fn tags_paginate_with_n_last_and_link() {
    let server = TestServer::start().await;
    let repo = "paged/repo";
    let all = ["a", "b", "c", "d", "e", "f", "g"];
    push_tags(&server, repo, &all).await;

    // n=3: three full pages of 3, 3, 1, each pointing at the next.
    let (pages, links) = follow(&server, &format!("/v2/{repo}/tags/list?n=3"), "tags").await;
    assert_eq!(
        pages,
        vec![vec!["a", "b", "c"], vec!["d", "e", "f"], vec!["g"]]
    );
    assert_eq!(
        links,
        vec![
            format!("/v2/{repo}/tags/list?n=3&last=c"),
            format!("/v2/{repo}/tags/list?n=3&last=f"),
        ]
    );

    // A page that ends exactly at the last tag has no Link.
    let r = get(&server, &format!("/v2/{repo}/tags/list?n=7")).await;
    assert!(next_link(&r).is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["tags"], json!(all));
    let r = get(&server, &format!("/v2/{repo}/tags/list?n=2&last=e")).await;
    assert!(next_link(&r).is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["f", "g"]));

    // n larger than the list: everything, no Link.
    let r = get(&server, &format!("/v2/{repo}/tags/list?n=100")).await;
    assert!(next_link(&r).is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(all));

    // n=0: an empty list and no Link (spec: MUST NOT include one).
    let r = get(&server, &format!("/v2/{repo}/tags/list?n=0")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(next_link(&r).is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!([]));

    // `last` alone: everything after it, exclusive; `last` need not be a tag.
    for (last, want) in [
        ("d", json!(["e", "f", "g"])),
        ("cc", json!(["d", "e", "f", "g"])),
        ("g", json!([])),
        ("zzz", json!([])),
        ("0", json!(all)),
    ] {
        let r = get(&server, &format!("/v2/{repo}/tags/list?last={last}")).await;
        assert_eq!(r.status(), StatusCode::OK, "last={last}");
        assert!(next_link(&r).is_none(), "last={last}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["tags"],
            want,
            "last={last}"
        );
    }
}

#[tokio::test]
async fn tag_pagination_follows_the_case_insensitive_order() {
    let server = TestServer::start().await;
    let repo = "paged/case";
    push_tags(&server, repo, &["b", "A", "c", "D"]).await;
    let (pages, links) = follow(&server, &format!("/v2/{repo}/tags/list?n=1"), "tags").await;
    assert_eq!(pages, vec![vec!["A"], vec!["b"], vec!["c"], vec!["D"]]);
    assert_eq!(links.len(), 3);
    let r = get(&server, &format!("/v2/{repo}/tags/list?last=b")).await;
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["c", "D"]));
}

#[tokio::test]
async fn unknown_repositories_are_name_unknown() {
    let server = TestServer::start().await;
    let r = get(&server, "/v2/nobody/here/tags/list").await;
    assert_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;

    // A repository that has blobs but no tags exists: an empty list.
    server.push_blob("blobs/only", b"layer").await;
    let r = get(&server, "/v2/blobs/only/tags/list").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["name"], "blobs/only");
    assert_eq!(body["tags"], json!([]));

    // A prefix of a repository is not a repository.
    push_tags(&server, "deep/er/repo", &["t"]).await;
    let r = get(&server, "/v2/deep/er/tags/list").await;
    assert_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;

    // Deleting the last tag leaves an existing repository with no tags.
    let r = server
        .client
        .delete(server.at("/v2/deep/er/repo/manifests/t"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = get(&server, "/v2/deep/er/repo/tags/list").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!([]));
}

#[tokio::test]
async fn invalid_page_sizes_are_refused() {
    let server = TestServer::start().await;
    push_tags(&server, "numbers", &["t"]).await;
    for n in [
        "-1",
        "abc",
        "1.5",
        "",
        "99999999999999999999999",
        "0x10",
        "%201",
    ] {
        let r = get(&server, &format!("/v2/numbers/tags/list?n={n}")).await;
        assert_error(r, StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID").await;
        let r = get(&server, &format!("/v2/_catalog?n={n}")).await;
        assert_error(r, StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID").await;
    }
    // Other methods on the list endpoints are not supported.
    let r = server
        .client
        .post(server.at("/v2/numbers/tags/list"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    let r = server
        .client
        .delete(server.at("/v2/_catalog"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
}

#[tokio::test]
async fn catalog_lists_repositories_of_any_depth() {
    let server = TestServer::start().await;

    // An empty registry has an empty catalog.
    let r = get(&server, "/v2/_catalog").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(next_link(&r).is_none());
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"repositories": []})
    );

    // Nested names: `a` and `a/b` are both repositories; `x/y` is only a
    // prefix of `x/y/z/w`; `blobs/only` has no manifests.
    for repo in [
        "z",
        "a/b",
        "a",
        "x/y/z/w",
        "library/alpine",
        "a/b/c/d/e/f/g/h",
        "a-b.c_d/e",
    ] {
        push_tags(&server, repo, &["latest"]).await;
    }
    server.push_blob("blobs/only", b"layer").await;
    let all = [
        "a",
        "a-b.c_d/e",
        "a/b",
        "a/b/c/d/e/f/g/h",
        "blobs/only",
        "library/alpine",
        "x/y/z/w",
        "z",
    ];

    let r = get(&server, "/v2/_catalog").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(next_link(&r).is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["repositories"], json!(all));

    // Pages of 3, following Link: `last` is a name with slashes, encoded.
    let (pages, links) = follow(&server, "/v2/_catalog?n=3", "repositories").await;
    assert_eq!(pages.concat(), all);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![3, 3, 2]
    );
    assert_eq!(links[0], "/v2/_catalog?n=3&last=a%2Fb");
    assert_eq!(links[1], "/v2/_catalog?n=3&last=library%2Falpine");

    // `last` given by hand, encoded or not.
    for last in ["a%2Fb", "a/b"] {
        let r = get(&server, &format!("/v2/_catalog?n=2&last={last}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            next_link(&r).as_deref(),
            Some("/v2/_catalog?n=2&last=blobs%2Fonly")
        );
        assert_eq!(
            r.json::<Value>().await.unwrap()["repositories"],
            json!(["a/b/c/d/e/f/g/h", "blobs/only"])
        );
    }

    // n=0 is empty with no Link.
    let r = get(&server, "/v2/_catalog?n=0").await;
    assert!(next_link(&r).is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["repositories"], json!([]));
}

#[tokio::test]
async fn leftover_temporary_files_are_never_listed() {
    if crate::STORAGE_ON_S3 {
        // It writes a crash's leftovers into the data directory; the S3
        // driver's own are covered by the driver suite.
        return;
    }
    let server = TestServer::start().await;
    push_tags(&server, "kept", &["v1"]).await;
    let digest = server.push_blob("gone", b"layer").await;
    let r = server
        .client
        .delete(server.at(&format!("/v2/gone/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let dir = server.stop().await;

    // What a crash during atomic writes leaves: `.tmp-*` siblings of the
    // objects being written, young enough that nothing may sweep them yet.
    let repositories = dir.path().join("data/repositories");
    let subject = "a".repeat(64);
    for parent in [
        "gone/_layers/sha256",
        "notags/_manifests/tags",
        "kept/_manifests/tags",
        &format!("kept/_referrers/sha256/{subject}"),
    ] {
        let parent = repositories.join(parent);
        std::fs::create_dir_all(&parent).unwrap();
        std::fs::write(parent.join(".tmp-6a1f0e2c-leftover"), b"x").unwrap();
    }

    let server = TestServer::start_in(dir).await;
    let r = get(&server, "/v2/_catalog").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["repositories"],
        json!(["kept"])
    );
    let r = get(&server, "/v2/kept/tags/list").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["v1"]));
    assert_error(
        get(&server, "/v2/notags/tags/list").await,
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    )
    .await;
    let r = get(&server, &format!("/v2/kept/referrers/sha256:{subject}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["manifests"], json!([]));
}
