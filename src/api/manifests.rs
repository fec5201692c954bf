//! Manifest reads (with `Accept` negotiation), pushes and deletes.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use super::{CONTENT_DIGEST, OCI_SUBJECT, content_length, empty};
use crate::error::{ApiError, ErrorCode};
use crate::manifest::{MAX_MANIFEST_BYTES, essence, schema1};
use crate::reference::{Reference, RepoName};
use crate::storage::{Storage, StorageError};

pub async fn get(
    storage: &Storage,
    name: &RepoName,
    reference: &Reference,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (digest, media_type, body, size) = if head {
        let (digest, media_type, size) = storage.manifest_head(name, reference).await?;
        (digest, media_type, Body::empty(), size)
    } else {
        let m = storage.manifest_get(name, reference).await?;
        let size = m.content.len() as u64;
        (m.digest, m.media_type, Body::from(m.content), size)
    };
    if !accepts(headers, &media_type) {
        if only_schema1(headers) {
            // Engines up to 1.9 read nothing else; converting the image (and
            // signing it with a key of the registry's) is not done, so say why
            // nothing is served rather than "unknown".
            return Err(ApiError::new(ErrorCode::ManifestUnknown)
                .message(
                    "this image is schema 2 / OCI; this client accepts only Docker schema 1 \
                     manifests, which this registry does not convert to (Docker 1.10 or \
                     later can pull it)",
                )
                .detail(json!({ "mediaType": media_type })));
        }
        return Err(ApiError::new(ErrorCode::ManifestUnknown)
            .message("the manifest's media type is not in the Accept header")
            .detail(json!({ "mediaType": media_type })));
    }
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert(CONTENT_DIGEST, v.clone());
        h.insert(header::ETAG, v);
    }
    Ok(response)
}

pub async fn put(
    storage: &Storage,
    name: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let too_large = || StorageError::ManifestTooLarge {
        limit: MAX_MANIFEST_BYTES,
    };
    // Refuse an announced oversize body before reading a byte of it.
    if content_length(headers).is_some_and(|l| l > MAX_MANIFEST_BYTES as u64) {
        return Err(too_large().into());
    }
    let bytes = match Limited::new(body, MAX_MANIFEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large().into()),
        Err(e) => return Err(StorageError::BodyRead(std::io::Error::other(e)).into()),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let put = storage
        .manifest_put(name, reference, content_type, bytes)
        .await?;
    let mut out = vec![
        (
            header::LOCATION,
            format!("/v2/{name}/manifests/{}", put.digest),
        ),
        (CONTENT_DIGEST, put.digest.to_string()),
    ];
    if let Some(subject) = put.subject {
        out.push((OCI_SUBJECT, subject.to_string()));
    }
    Ok(empty(StatusCode::CREATED, &out))
}

pub async fn delete(
    storage: &Storage,
    name: &RepoName,
    reference: &Reference,
) -> Result<Response, ApiError> {
    storage.manifest_delete(name, reference).await?;
    Ok(empty(StatusCode::ACCEPTED, &[]))
}

/// The media types in the client's `Accept` headers, without parameters.
fn offered(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(essence)
        .filter(|t| !t.is_empty())
}

/// Whether the client asks for schema 1 and for no other manifest type, as
/// engines up to 1.9 do (`…v1+prettyjws`, and `application/json`, which names
/// no manifest type).
fn only_schema1(headers: &HeaderMap) -> bool {
    offered(headers).any(schema1::is_schema1)
        && offered(headers).all(|t| schema1::is_schema1(t) || t == "application/json")
}

/// Whether the client's `Accept` headers admit `media_type`. No `Accept`
/// admits anything, as do `*/*` and `application/*`.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut offered = offered(headers).peekable();
    if offered.peek().is_none() {
        return true;
    }
    offered.any(|t| t == media_type || t == "*/*" || t == "application/*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn negotiation() {
        assert!(accepts(&accept(&[]), OCI_INDEX));
        assert!(accepts(&accept(&["*/*"]), OCI_INDEX));
        assert!(accepts(
            &accept(&[&format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.5")]),
            OCI_MANIFEST
        ));
        assert!(accepts(&accept(&[DOCKER_MANIFEST, OCI_INDEX]), OCI_INDEX));
        assert!(!accepts(
            &accept(&[DOCKER_MANIFEST, OCI_MANIFEST]),
            OCI_INDEX
        ));
    }

    #[test]
    fn schema1_only_clients() {
        let engine_1_9 = accept(&[schema1::SIGNED, "application/json"]);
        assert!(only_schema1(&engine_1_9));
        assert!(accepts(&engine_1_9, schema1::SIGNED));
        assert!(!accepts(&engine_1_9, DOCKER_MANIFEST));
        assert!(!only_schema1(&accept(&[schema1::SIGNED, DOCKER_MANIFEST])));
        assert!(!only_schema1(&accept(&[])));
        assert!(!only_schema1(&accept(&["application/json"])));
    }
}
