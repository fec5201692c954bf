//! The referrers API: manifests whose `subject` is a given digest, as an OCI index.

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::{OCI_FILTERS_APPLIED, json_response};
use crate::error::ApiError;
use crate::manifest::OCI_INDEX;
use crate::reference::{Digest, RepoName};
use crate::storage::Storage;

pub async fn list(
    storage: &Storage,
    name: &RepoName,
    subject: &Digest,
    artifact_type: Option<String>,
) -> Result<Response, ApiError> {
    let mut manifests = storage.referrers(name, subject).await?;
    if let Some(wanted) = &artifact_type {
        manifests.retain(|d| d.artifact_type.as_deref() == Some(wanted));
    }
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    })
    .to_string();
    let mut response = json_response(StatusCode::OK, OCI_INDEX, body);
    if artifact_type.is_some() {
        response.headers_mut().insert(
            OCI_FILTERS_APPLIED,
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}
