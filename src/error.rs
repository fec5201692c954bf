//! The wire errors: every error code with its HTTP status and message, declared
//! once, and the one place module errors become responses.
//!
//! Modules below `api/` have their own error enums and know nothing of HTTP;
//! the `From` impls at the bottom of this file are the whole mapping. Internal
//! causes (I/O errors, paths) are logged here and never sent to the client.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::reference::ReferenceError;
use crate::storage::StorageError;

macro_rules! error_codes {
    ($($variant:ident => ($code:literal, $status:ident, $message:literal),)*) => {
        /// The error catalogue of the distribution spec (plus the Docker API's
        /// extras), each with its status and default message.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode { $($variant,)* }

        impl ErrorCode {
            pub fn code(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }
            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)* }
            }
            pub fn message(self) -> &'static str {
                match self { $(ErrorCode::$variant => $message,)* }
            }
        }
    };
}

error_codes! {
    BlobUnknown => ("BLOB_UNKNOWN", NOT_FOUND, "blob unknown to registry"),
    BlobUploadInvalid => ("BLOB_UPLOAD_INVALID", BAD_REQUEST, "blob upload invalid"),
    BlobUploadUnknown => ("BLOB_UPLOAD_UNKNOWN", NOT_FOUND, "blob upload unknown to registry"),
    DigestInvalid => ("DIGEST_INVALID", BAD_REQUEST, "provided digest did not match uploaded content"),
    ManifestBlobUnknown => ("MANIFEST_BLOB_UNKNOWN", BAD_REQUEST, "manifest references a manifest or blob unknown to registry"),
    ManifestInvalid => ("MANIFEST_INVALID", BAD_REQUEST, "manifest invalid"),
    ManifestTooLarge => ("MANIFEST_INVALID", PAYLOAD_TOO_LARGE, "manifest exceeds the size limit"),
    ManifestUnknown => ("MANIFEST_UNKNOWN", NOT_FOUND, "manifest unknown to registry"),
    NameInvalid => ("NAME_INVALID", BAD_REQUEST, "invalid repository name"),
    NameUnknown => ("NAME_UNKNOWN", NOT_FOUND, "repository name not known to registry"),
    PaginationInvalid => ("PAGINATION_NUMBER_INVALID", BAD_REQUEST, "invalid number of results requested"),
    RangeInvalid => ("RANGE_INVALID", RANGE_NOT_SATISFIABLE, "invalid content range"),
    SizeInvalid => ("SIZE_INVALID", BAD_REQUEST, "provided length did not match content length"),
    TagInvalid => ("TAG_INVALID", BAD_REQUEST, "manifest tag did not match URI"),
    Unauthorized => ("UNAUTHORIZED", UNAUTHORIZED, "authentication required"),
    Denied => ("DENIED", FORBIDDEN, "requested access to the resource is denied"),
    Unsupported => ("UNSUPPORTED", METHOD_NOT_ALLOWED, "the operation is unsupported"),
    NotFound => ("UNSUPPORTED", NOT_FOUND, "no such endpoint"),
    TooManyRequests => ("TOOMANYREQUESTS", TOO_MANY_REQUESTS, "too many requests"),
    // Not in the spec either: a backend (an identity source) is down.
    Unavailable => ("UNAVAILABLE", SERVICE_UNAVAILABLE, "service unavailable"),
    Internal => ("UNKNOWN", INTERNAL_SERVER_ERROR, "internal error"),
    // Not in the spec, which has no code for it; clients show the message.
    StorageFull => ("STORAGE_FULL", INSUFFICIENT_STORAGE, "the registry's storage is full"),
    // The token endpoint's own: a request it cannot make sense of.
    TokenRequestInvalid => ("INVALID_REQUEST", BAD_REQUEST, "invalid token request"),
}

/// An error on its way to the client: a code, an optional more specific
/// message and detail, and headers the spec asks for with it (`Range` on a
/// 416 upload answer, `WWW-Authenticate` on a 401, …).
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: Option<String>,
    pub detail: Option<serde_json::Value>,
    pub headers: Box<HeaderMap>,
    /// On token endpoint answers, the OAuth2 error (RFC 6749 §5.2), written
    /// beside the registry-style `errors` so that both kinds of client read it.
    pub oauth: Option<&'static str>,
    /// Whom enforcement refused (a token's subject, a logged-in account),
    /// for the audit line; never written to the answer.
    pub refused: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: None,
            detail: None,
            headers: Box::default(),
            oauth: None,
            refused: None,
        }
    }

    /// Says whom the refusal was for (the audit trail's `user`).
    pub fn refusing(mut self, subject: &str) -> Self {
        self.refused = Some(subject.to_owned());
        self
    }

    pub fn oauth(mut self, error: &'static str) -> Self {
        self.oauth = Some(error);
        self
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn header(mut self, name: HeaderName, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.insert(name, v);
        }
        self
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        ApiError::new(code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({
            "code": self.code.code(),
            "message": self.message.as_deref().unwrap_or(self.code.message()),
        });
        match (self.detail, crate::api::request_id::current()) {
            (Some(detail), None) => error["detail"] = detail,
            (detail, Some(id)) => error["detail"] = with_request_id(detail, id),
            (None, None) => {}
        }
        let mut body = json!({ "errors": [error] });
        if let Some(oauth) = self.oauth {
            body["error"] = json!(oauth);
            body["error_description"] = error["message"].clone();
        }
        let body = body.to_string();
        let mut response = (
            self.code.status(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        response.headers_mut().extend(*self.headers);
        response
    }
}

impl From<ReferenceError> for ApiError {
    fn from(e: ReferenceError) -> Self {
        match e {
            ReferenceError::Name => ErrorCode::NameInvalid.into(),
            ReferenceError::Tag => ApiError::new(ErrorCode::TagInvalid).message("invalid tag"),
            ReferenceError::Digest => {
                ApiError::new(ErrorCode::DigestInvalid).message("invalid digest")
            }
            ReferenceError::Algorithm => ApiError::new(ErrorCode::DigestInvalid)
                .message("unsupported digest algorithm (sha256 and sha512 are)"),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        use axum::http::header::RANGE;
        match e {
            StorageError::BlobUnknown(d) => {
                ApiError::new(ErrorCode::BlobUnknown).detail(json!({ "digest": d.to_string() }))
            }
            StorageError::ManifestUnknown(r) => {
                ApiError::new(ErrorCode::ManifestUnknown).detail(json!({ "reference": r }))
            }
            StorageError::NameUnknown(n) => {
                ApiError::new(ErrorCode::NameUnknown).detail(json!({ "name": n.to_string() }))
            }
            StorageError::UploadUnknown => ErrorCode::BlobUploadUnknown.into(),
            StorageError::UploadDataMissing => ApiError::new(ErrorCode::BlobUploadInvalid)
                .message("the upload is complete or its data is gone: finish it or start again"),
            // 429 rather than DENIED: the caller may push, just not open more
            // sessions now; clients report it as a limit (and some retry),
            // where a 403 reads as a missing permission.
            StorageError::TooManyUploads { limit } => ApiError::new(ErrorCode::TooManyRequests)
                .message("too many open upload sessions for this account: finish or cancel some")
                .detail(json!({ "limit": limit })),
            StorageError::UploadMemoryFull => ApiError::new(ErrorCode::TooManyRequests)
                .message(
                    "the registry receives as many uploads as its memory allows: try again shortly",
                )
                .header(axum::http::header::RETRY_AFTER, "1"),
            StorageError::DigestMismatch { expected, actual } => ApiError::new(
                ErrorCode::DigestInvalid,
            )
            .detail(json!({ "expected": expected.to_string(), "actual": actual.to_string() })),
            StorageError::RangeMismatch { current } => ApiError::new(ErrorCode::RangeInvalid)
                .message("chunk does not start at the end of the upload")
                .header(RANGE, upload_range(current)),
            StorageError::SizeMismatch { declared, received } => {
                ApiError::new(ErrorCode::SizeInvalid)
                    .detail(json!({ "declared": declared, "received": received }))
            }
            StorageError::ManifestInvalid(reason) => {
                ApiError::new(ErrorCode::ManifestInvalid).detail(json!({ "reason": reason }))
            }
            StorageError::ManifestTooLarge { limit } => {
                ApiError::new(ErrorCode::ManifestTooLarge).detail(json!({ "limit": limit }))
            }
            StorageError::ManifestBlobUnknown(d) => ApiError::new(ErrorCode::ManifestBlobUnknown)
                .detail(json!({ "digest": d.to_string() })),
            StorageError::BodyRead(cause) => {
                // The client's body broke off or was refused mid-stream: its
                // fault, and nothing was kept of it.
                tracing::debug!(error = %cause, "request body ended early");
                ApiError::new(ErrorCode::BlobUploadInvalid).message("request body ended early")
            }
            StorageError::Driver(cause) if cause.is_storage_full() => {
                tracing::warn!(error = %cause, "storage full");
                ErrorCode::StorageFull.into()
            }
            StorageError::Driver(crate::storage::DriverError::Unavailable(cause)) => {
                tracing::error!(error = %cause, "storage unavailable");
                ApiError::new(ErrorCode::Unavailable)
                    .message("storage unavailable, retry later")
                    .header(axum::http::header::RETRY_AFTER, "5")
            }
            StorageError::Driver(cause) => {
                tracing::error!(error = %cause, "storage failure");
                ErrorCode::Internal.into()
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        use axum::http::header::RETRY_AFTER;
        match e {
            AuthError::BadCredentials { .. } => ApiError::new(ErrorCode::Unauthorized)
                .message(e.to_string())
                .oauth("invalid_grant"),
            AuthError::BadRefreshToken
            | AuthError::UnknownAccount
            | AuthError::BadIdToken(_)
            | AuthError::BadAccessToken(_) => ApiError::new(ErrorCode::Unauthorized)
                .message(e.to_string())
                .oauth("invalid_grant"),
            AuthError::TooManyFailures(wait) => ApiError::new(ErrorCode::TooManyRequests)
                .message(e.to_string())
                .oauth("invalid_request")
                .header(
                    RETRY_AFTER,
                    crate::auth::ratelimit::retry_after_secs(wait).to_string(),
                ),
            AuthError::Busy(crate::auth::gate::GateError::Busy(wait)) => {
                ApiError::new(ErrorCode::TooManyRequests)
                    .message(e.to_string())
                    .oauth("temporarily_unavailable")
                    .header(
                        RETRY_AFTER,
                        crate::auth::ratelimit::retry_after_secs(wait).to_string(),
                    )
            }
            AuthError::SourceUnavailable(_) => {
                // The cause is for the operator; the client learns only
                // that logins cannot be checked now.
                tracing::error!(error = %e, "login not checked");
                ApiError::new(ErrorCode::Unavailable)
                    .message("identity source unavailable, retry later")
                    .oauth("temporarily_unavailable")
            }
            AuthError::Storage(cause) => ApiError::from(cause),
            AuthError::Token(_) | AuthError::Internal(_) => {
                tracing::error!(error = %e, "token authority failure");
                ErrorCode::Internal.into()
            }
        }
    }
}

/// An error's detail with the request's id in it, so that a user's error
/// message leads to the request's log lines: an object gains the key
/// `request_id`; a list (the access entries of a 401, in distribution's
/// form) keeps its entries where clients look for them and gains the object
/// `{"request_id": …}` at its end.
fn with_request_id(
    detail: Option<serde_json::Value>,
    id: crate::api::request_id::RequestId,
) -> serde_json::Value {
    use serde_json::Value;
    let id = Value::from(id.as_str());
    match detail {
        None => json!({ "request_id": id }),
        Some(Value::Object(mut fields)) => {
            fields.insert("request_id".to_owned(), id);
            Value::Object(fields)
        }
        Some(Value::Array(mut entries)) => {
            entries.push(json!({ "request_id": id }));
            Value::Array(entries)
        }
        Some(other) => json!([other, { "request_id": id }]),
    }
}

/// The `Range` header value describing an upload of `size` bytes. The spec's
/// form is `0-<last byte offset>`; an empty upload reads `0-0`, as distribution
/// answers and every client expects.
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}
