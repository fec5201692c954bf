//! Blob uploads: sessions, chunks, monolithic pushes and cross-repository mounts.

use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::endpoint::UploadStart;
use super::{CONTENT_DIGEST, UPLOAD_UUID, byte_stream, content_length, empty};
use crate::error::{ApiError, ErrorCode, upload_range};
use crate::reference::{Digest, RepoName};
use crate::storage::{Chunk, Storage, UploadId};

pub async fn start(
    storage: &Storage,
    name: &RepoName,
    start: UploadStart,
    owner: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    match start {
        UploadStart::Monolithic(digest) => {
            let chunk = Chunk {
                start: None,
                len: content_length(headers),
            };
            let size = storage
                .blob_put(name, owner, &digest, chunk, byte_stream(body))
                .await?;
            Ok(created(name, &digest, size))
        }
        UploadStart::Mount { digest, from } => {
            match storage.blob_mount(&from, name, &digest).await? {
                Some(size) => Ok(created(name, &digest, size)),
                None => new_session(storage, name, owner).await,
            }
        }
        UploadStart::Session => new_session(storage, name, owner).await,
    }
}

async fn new_session(
    storage: &Storage,
    name: &RepoName,
    owner: Option<&str>,
) -> Result<Response, ApiError> {
    let id = storage.upload_start(name, owner).await?;
    Ok(session_response(StatusCode::ACCEPTED, name, id, 0))
}

pub async fn status(
    storage: &Storage,
    name: &RepoName,
    id: UploadId,
) -> Result<Response, ApiError> {
    let size = storage.upload_size(name, id).await?;
    Ok(session_response(StatusCode::NO_CONTENT, name, id, size))
}

pub async fn patch(
    storage: &Storage,
    name: &RepoName,
    id: UploadId,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let result = async {
        let chunk = chunk_of(headers)?;
        Ok::<_, ApiError>(
            storage
                .upload_append(name, id, chunk, byte_stream(body))
                .await?,
        )
    }
    .await;
    match result {
        Ok(size) => Ok(session_response(StatusCode::ACCEPTED, name, id, size)),
        Err(e) => Err(refused_chunk(storage, name, id, e).await),
    }
}

pub async fn finish(
    storage: &Storage,
    name: &RepoName,
    id: UploadId,
    digest: &Digest,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // An empty body is the common "close the session" PUT: no chunk to append.
    let result = async {
        let last = if body.size_hint().exact() == Some(0) {
            None
        } else {
            Some((chunk_of(headers)?, byte_stream(body)))
        };
        Ok::<_, ApiError>(storage.upload_finish(name, id, digest, last).await?)
    }
    .await;
    match result {
        Ok(size) => Ok(created(name, digest, size)),
        Err(e) => Err(refused_chunk(storage, name, id, e).await),
    }
}

/// A refused chunk (416) tells the client where to resume, as a `202` would:
/// the session's `Location`, `Docker-Upload-UUID` and the `Range` received
/// so far (docker registry API, "Chunked Upload"). Other errors pass as they are.
async fn refused_chunk(storage: &Storage, name: &RepoName, id: UploadId, e: ApiError) -> ApiError {
    if e.code != ErrorCode::RangeInvalid {
        return e;
    }
    let mut e = e
        .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
        .header(UPLOAD_UUID, id.to_string());
    // An unreadable Content-Range is refused before the session is read.
    if !e.headers.contains_key(header::RANGE) {
        match storage.upload_size(name, id).await {
            Ok(size) => e = e.header(header::RANGE, upload_range(size)),
            // No such session after all: that is the answer then.
            Err(unknown) => return unknown.into(),
        }
    }
    e
}

pub async fn cancel(
    storage: &Storage,
    name: &RepoName,
    id: UploadId,
) -> Result<Response, ApiError> {
    storage.upload_cancel(name, id).await?;
    Ok(empty(StatusCode::NO_CONTENT, &[]))
}

/// A blob is there: where, and (for its notification) its size.
fn created(name: &RepoName, digest: &Digest, size: u64) -> Response {
    let mut response = empty(
        StatusCode::CREATED,
        &[
            (header::LOCATION, format!("/v2/{name}/blobs/{digest}")),
            (CONTENT_DIGEST, digest.to_string()),
        ],
    );
    response
        .extensions_mut()
        .insert(super::notify::BlobSize(size));
    response
}

fn session_response(status: StatusCode, name: &RepoName, id: UploadId, size: u64) -> Response {
    empty(
        status,
        &[
            (header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}")),
            (header::RANGE, upload_range(size)),
            (UPLOAD_UUID, id.to_string()),
        ],
    )
}

/// Where a chunk claims to start and how long it is, from `Content-Range`
/// (`<start>-<end>`, inclusive; a `bytes ` prefix or `/<total>` suffix is
/// tolerated) and `Content-Length`. The two must agree.
fn chunk_of(headers: &HeaderMap) -> Result<Chunk, ApiError> {
    let length = content_length(headers);
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(Chunk {
            start: None,
            len: length,
        });
    };
    let invalid = || ApiError::new(ErrorCode::RangeInvalid).message("invalid Content-Range");
    let value = value.to_str().map_err(|_| invalid())?.trim();
    let value = value
        .strip_prefix("bytes")
        .map(|v| v.trim_start_matches([' ', '=']))
        .unwrap_or(value);
    let value = value.split('/').next().unwrap_or(value);
    let (start, end) = value.split_once('-').ok_or_else(invalid)?;
    let start: u64 = start.trim().parse().map_err(|_| invalid())?;
    let end: u64 = end.trim().parse().map_err(|_| invalid())?;
    if end < start {
        return Err(invalid());
    }
    let len = end - start + 1;
    if let Some(length) = length
        && length != len
    {
        return Err(ApiError::new(ErrorCode::SizeInvalid)
            .message("Content-Length does not match Content-Range"));
    }
    Ok(Chunk {
        start: Some(start),
        len: Some(len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(range: Option<&str>, len: Option<u64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(r) = range {
            h.insert(header::CONTENT_RANGE, HeaderValue::from_str(r).unwrap());
        }
        if let Some(l) = len {
            h.insert(header::CONTENT_LENGTH, l.into());
        }
        h
    }

    #[test]
    fn content_ranges() {
        let c = chunk_of(&headers(Some("0-9"), Some(10))).unwrap();
        assert_eq!((c.start, c.len), (Some(0), Some(10)));
        let c = chunk_of(&headers(Some("bytes 10-19/*"), None)).unwrap();
        assert_eq!((c.start, c.len), (Some(10), Some(10)));
        let c = chunk_of(&headers(None, Some(5))).unwrap();
        assert_eq!((c.start, c.len), (None, Some(5)));
        assert_eq!(
            chunk_of(&headers(Some("9-0"), None)).unwrap_err().code,
            ErrorCode::RangeInvalid
        );
        assert_eq!(
            chunk_of(&headers(Some("x"), None)).unwrap_err().code,
            ErrorCode::RangeInvalid
        );
        assert_eq!(
            chunk_of(&headers(Some("0-9"), Some(3))).unwrap_err().code,
            ErrorCode::SizeInvalid
        );
    }
}
