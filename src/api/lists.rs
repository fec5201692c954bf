//! Tag lists and the catalog, with `n`/`last` pagination and `Link` headers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::endpoint::Page;
use super::json_response;
use crate::error::ApiError;
use crate::reference::RepoName;
use crate::storage::{Page as StoredPage, Storage};

/// The most entries one page returns, whatever `n` asks: clients follow `Link`.
const MAX_PAGE: usize = 10_000;

pub async fn tags(storage: &Storage, name: &RepoName, page: Page) -> Result<Response, ApiError> {
    let n = page_size(&page);
    let found = storage.tags_page(name, page.last.as_deref(), n).await?;
    let next = next_page(n, &found);
    let body = json!({ "name": name.as_str(), "tags": found.names }).to_string();
    let path = format!("/v2/{name}/tags/list");
    Ok(with_link(
        json_response(StatusCode::OK, "application/json", body),
        &path,
        next,
    ))
}

/// Which catalog entries a caller may see.
pub type Visible = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// A page of the catalog: the built-in storage's repositories and
/// `upstream` (the upstreams' that are listed, in any order), merged.
pub async fn catalog(
    storage: &Storage,
    page: Page,
    visible: Option<Visible>,
    upstream: Vec<String>,
) -> Result<Response, ApiError> {
    let n = page_size(&page);
    let shown = |name: &str| visible.as_ref().is_none_or(|visible| visible(name));
    let mut found = storage
        .catalog_page(page.last.as_deref(), n, &shown)
        .await?;
    if !upstream.is_empty() {
        let after = |name: &String| page.last.as_deref().is_none_or(|last| name.as_str() > last);
        let mut names: Vec<String> = upstream
            .into_iter()
            .filter(|name| after(name) && shown(name))
            .collect();
        names.append(&mut found.names);
        names.sort();
        names.dedup();
        // The built-in page may have stopped short of names the upstream
        // listing holds beyond it: its `more` still counts.
        found.more |= names.len() > n;
        names.truncate(n);
        found.names = names;
    }
    let next = next_page(n, &found);
    let body = json!({ "repositories": found.names }).to_string();
    Ok(with_link(
        json_response(StatusCode::OK, "application/json", body),
        "/v2/_catalog",
        next,
    ))
}

fn page_size(page: &Page) -> usize {
    page.n.unwrap_or(MAX_PAGE).min(MAX_PAGE)
}

/// The `(n, last)` of the page after `found`, when entries remain.
fn next_page(n: usize, found: &StoredPage) -> Option<(usize, String)> {
    match found.names.last() {
        Some(last) if found.more => Some((n, last.clone())),
        _ => None,
    }
}

fn with_link(mut response: Response, path: &str, next: Option<(usize, String)>) -> Response {
    if let Some((n, last)) = next {
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        if let Ok(v) = HeaderValue::from_str(&format!("<{path}?n={n}&last={last}>; rel=\"next\"")) {
            response.headers_mut().insert(header::LINK, v);
        }
    }
    response
}
