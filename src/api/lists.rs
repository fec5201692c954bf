//! Tag lists and the catalog, with `n`/`last` pagination and `Link` headers.

use std::cmp::Ordering;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::endpoint::Page;
use super::json_response;
use crate::error::ApiError;
use crate::reference::RepoName;
use crate::storage::Storage;

/// The most entries one page returns, whatever `n` asks: clients follow `Link`.
const MAX_PAGE: usize = 10_000;

pub async fn tags(storage: &Storage, name: &RepoName, page: Page) -> Result<Response, ApiError> {
    let all = storage.tags(name).await?;
    let (items, next) = paginate(all, &page);
    let body = json!({ "name": name.as_str(), "tags": items }).to_string();
    let path = format!("/v2/{name}/tags/list");
    Ok(with_link(
        json_response(StatusCode::OK, "application/json", body),
        &path,
        next,
    ))
}

/// Which catalog entries a caller may see.
pub type Visible = Box<dyn Fn(&str) -> bool + Send + Sync>;

pub async fn catalog(
    storage: &Storage,
    page: Page,
    visible: Option<Visible>,
) -> Result<Response, ApiError> {
    let mut all: Vec<String> = storage.catalog().await?.to_vec();
    if let Some(visible) = visible {
        all.retain(|name| visible(name));
    }
    let (items, next) = paginate(all, &page);
    let body = json!({ "repositories": items }).to_string();
    Ok(with_link(
        json_response(StatusCode::OK, "application/json", body),
        "/v2/_catalog",
        next,
    ))
}

/// The spec's list order: "lexical order (i.e. case-insensitive alphanumeric
/// order)". `A` and `a` are distinct tags, so ties fall back to byte order: the
/// order is total and `last` names one position in it.
fn lexical(a: &str, b: &str) -> Ordering {
    let folded = |s: &str| {
        s.bytes()
            .map(|c| c.to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    folded(a).cmp(&folded(b)).then_with(|| a.cmp(b))
}

/// A page of a list in [`lexical`] order: the entries after `last`, at most
/// `n`, and the `(n, last)` of the next page when entries remain.
fn paginate(mut all: Vec<String>, page: &Page) -> (Vec<String>, Option<(usize, String)>) {
    all.sort_by(|a, b| lexical(a, b));
    let sorted = all;
    let start = match &page.last {
        Some(last) => sorted.partition_point(|item| lexical(item, last) != Ordering::Greater),
        None => 0,
    };
    let n = page.n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let mut rest = sorted.into_iter().skip(start);
    let items: Vec<String> = rest.by_ref().take(n).collect();
    let more = rest.next().is_some();
    let next = match items.last() {
        Some(last) if more => Some((n, last.clone())),
        _ => None,
    };
    (items, next)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages() {
        let all = list(&["a", "b", "c", "d"]);
        let page = |n, last: Option<&str>| Page {
            n,
            last: last.map(str::to_owned),
        };
        assert_eq!(
            paginate(all.clone(), &page(None, None)),
            (all.clone(), None)
        );
        assert_eq!(
            paginate(all.clone(), &page(Some(2), None)),
            (list(&["a", "b"]), Some((2, "b".into())))
        );
        assert_eq!(
            paginate(all.clone(), &page(Some(2), Some("b"))),
            (list(&["c", "d"]), None)
        );
        assert_eq!(
            paginate(all.clone(), &page(None, Some("bb"))),
            (list(&["c", "d"]), None)
        );
        assert_eq!(paginate(all.clone(), &page(Some(0), None)), (vec![], None));
        assert_eq!(paginate(all, &page(Some(9), Some("z"))), (vec![], None));
        let mixed = list(&["b", "a", "B", "_", "A"]);
        assert_eq!(
            paginate(mixed.clone(), &page(None, None)).0,
            list(&["_", "A", "a", "B", "b"])
        );
        assert_eq!(
            paginate(mixed, &page(Some(1), Some("a"))),
            (list(&["B"]), Some((1, "B".into())))
        );
    }
}
