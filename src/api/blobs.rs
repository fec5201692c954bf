//! Blob reads (whole and ranged) and deletes.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{CONTENT_DIGEST, empty};
use crate::error::{ApiError, ErrorCode};
use crate::reference::{Digest, RepoName};
use crate::serve::zero_copy;
use crate::storage::Storage;

pub async fn get(
    storage: &Storage,
    name: &RepoName,
    digest: &Digest,
    head: bool,
    headers: &HeaderMap,
    zero_copy: Option<zero_copy::Sender>,
) -> Result<Response, ApiError> {
    let blob = storage.blob_open(name, digest).await?;
    let size = blob.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) => match parse_range(value, size) {
            RangeRequest::Satisfiable(start, end) => Some((start, end)),
            RangeRequest::Unsatisfiable => {
                return Err(ApiError::new(ErrorCode::RangeInvalid)
                    .message("requested range not satisfiable")
                    .header(header::CONTENT_RANGE, format!("bytes */{size}")));
            }
            // A header we do not understand (several ranges, other units) is
            // ignored, as HTTP allows: the whole blob is sent.
            RangeRequest::Ignored => None,
        },
        None => None,
    };
    if !head && let Some(location) = blob.redirect().await? {
        // Authorized already: the store serves the bytes (and the range,
        // which the client sends again) from an address valid briefly.
        let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
        let h = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&location) {
            h.insert(header::LOCATION, v);
        }
        if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
            h.insert(CONTENT_DIGEST, v);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        return Ok(response);
    }
    let (status, offset, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, size),
    };
    let relayed = match (&zero_copy, head) {
        (Some(sender), false) => match blob.relayed(offset, len) {
            Some(read) => zero_copy::ranges(sender.clone(), read).await,
            None => None,
        },
        _ => None,
    };
    let body = if let Some(relayed) = relayed {
        Body::from_stream(relayed)
    } else if head || len == 0 {
        Body::empty()
    } else {
        let content = blob.read(offset, Some(len)).await?;
        Body::from_stream(zero_copy::body(content, zero_copy))
    };
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert(CONTENT_DIGEST, v);
    }
    if let Some((start, end)) = range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

pub async fn delete(
    storage: &Storage,
    name: &RepoName,
    digest: &Digest,
) -> Result<Response, ApiError> {
    storage.blob_delete(name, digest).await?;
    Ok(empty(
        StatusCode::ACCEPTED,
        &[(CONTENT_DIGEST, digest.to_string())],
    ))
}

#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// Inclusive byte offsets, within the blob.
    Satisfiable(u64, u64),
    Unsatisfiable,
    Ignored,
}

/// A single `bytes=` range against a blob of `size` bytes (RFC 9110 §14.1).
///
/// What the grammar accepts (`first-pos "-" [last-pos]`, `"-" suffix-length`,
/// each `1*DIGIT`) is answered: a range starting at or past the end, an
/// empty suffix or a last position before the first (§14.1.1: "invalid")
/// is unsatisfiable, 416, as distribution answers them. Digits too many for
/// a `u64` are still digits: a first position that large lies past any
/// blob, a last position or suffix that large covers the rest of it. Only
/// what the grammar does not accept (other units, no digits, stray
/// characters) and several ranges, which this server does not serve, are
/// ignored, as §14.2 allows: the whole blob is sent.
fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignored;
    };
    if spec.contains(',') {
        return RangeRequest::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignored;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return match position(last) {
            // `bytes=-n`: the last n bytes.
            Some(n) if n > 0 && size > 0 => {
                RangeRequest::Satisfiable(size.saturating_sub(n), size - 1)
            }
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Ignored,
        };
    }
    let Some(start) = position(first) else {
        return RangeRequest::Ignored;
    };
    let end = if last.is_empty() {
        None
    } else {
        match position(last) {
            Some(end) => Some(end),
            None => return RangeRequest::Ignored,
        }
    };
    match end {
        Some(end) if end < start => RangeRequest::Unsatisfiable,
        _ if start >= size => RangeRequest::Unsatisfiable,
        Some(end) => RangeRequest::Satisfiable(start, end.min(size - 1)),
        None => RangeRequest::Satisfiable(start, size - 1),
    }
}

/// A `1*DIGIT` position; `u64::MAX` for one too large to hold (it lies past
/// the end of any blob either way). `None` when it is not digits.
fn position(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Satisfiable(0, 9));
        assert_eq!(parse_range("bytes=90-200", 100), Satisfiable(90, 99));
        assert_eq!(parse_range("bytes=10-", 100), Satisfiable(10, 99));
        assert_eq!(parse_range("bytes=-10", 100), Satisfiable(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Satisfiable(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=500-0", 1000), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=99999999999999999999-", 100),
            Unsatisfiable
        );
        assert_eq!(
            parse_range("bytes=0-99999999999999999999", 100),
            Satisfiable(0, 99)
        );
        assert_eq!(
            parse_range("bytes=-99999999999999999999", 100),
            Satisfiable(0, 99)
        );
        assert_eq!(parse_range("bytes=+1-2", 100), Ignored);
        assert_eq!(parse_range("bytes=1-+2", 100), Ignored);
        assert_eq!(parse_range("bytes=-", 100), Ignored);
        assert_eq!(parse_range("bytes=", 100), Ignored);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignored);
        assert_eq!(parse_range("items=0-1", 100), Ignored);
        assert_eq!(parse_range("bytes=x-y", 100), Ignored);
    }
}
