//! The registry's lines of the audit trail ([`crate::audit`]): what a
//! request changed (a push, a tag moved, a delete), or that enforcement
//! refused it, with who asked, from the grant that let it through. Token
//! decisions are `api/token.rs`'s.

use std::net::IpAddr;

use axum::http::request::Parts;
use axum::response::Response;

use super::authorize::Grant;
use super::endpoint::Endpoint;
use super::route::Route;
use super::v1::{ImagePart, RepositoryCall, V1Endpoint};
use crate::audit::Audit;
use crate::reference::Reference;

/// What one request may have to say, gathered before its route is handed
/// to the handler.
#[derive(Default)]
pub struct Audited {
    /// `None`: nothing to say of it (a read, a probe).
    event: Option<&'static str>,
    route: &'static str,
    method: String,
    repository: Option<String>,
    reference: Option<String>,
    tag: Option<String>,
    user: Option<String>,
    credential: Option<String>,
    /// Whether the route takes registry credentials: only such a route's
    /// refusal is an enforcement decision.
    enforced: bool,
    /// A bare `GET /v2/` without credentials: every client's first
    /// request, refused by design; not worth a line.
    probe: bool,
}

impl Audited {
    pub fn of(route: &Route, grant: Option<&Grant>, parts: &Parts) -> Self {
        let endpoint = match route {
            Route::Registry(endpoint) | Route::Upstream(endpoint, _) => Some(endpoint),
            _ => None,
        };
        let (event, reference, tag) = match endpoint {
            Some(Endpoint::PutManifest { reference, .. }) => {
                let tag = match reference {
                    Reference::Tag(tag) => Some(tag.to_string()),
                    Reference::Digest(_) => None,
                };
                (Some("push"), Some(reference.to_string()), tag)
            }
            Some(Endpoint::DeleteManifest { reference, .. }) => {
                (Some("delete"), Some(reference.to_string()), None)
            }
            Some(Endpoint::DeleteBlob { digest, .. }) => {
                (Some("blob_delete"), Some(digest.to_string()), None)
            }
            Some(Endpoint::FinishUpload { digest, .. }) => {
                (Some("blob_push"), Some(digest.to_string()), None)
            }
            // A monolithic upload finishes in its first request.
            Some(Endpoint::StartUpload { .. }) => (Some("blob_push"), None, None),
            _ => v1_change(route),
        };
        let (user, credential) = match grant {
            Some(Grant::Token(claims)) => (
                (!claims.sub.is_empty()).then(|| claims.sub.clone()),
                Some(
                    claims
                        .credential
                        .clone()
                        .unwrap_or_else(|| "password".into()),
                ),
            ),
            Some(Grant::Login(Some(identity))) => (
                Some(identity.name.clone()),
                Some(identity.credential.claim().unwrap_or("password").to_owned()),
            ),
            _ => (None, None),
        };
        let has_credentials = parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION);
        Self {
            event,
            route: route.label(),
            method: parts.method.to_string(),
            repository: endpoint
                .and_then(Endpoint::name)
                .or(match route {
                    Route::V1(V1Endpoint::Repository { name, .. }) => Some(name),
                    _ => None,
                })
                .map(|n| n.as_str().to_owned()),
            reference,
            tag,
            user,
            credential,
            enforced: !matches!(route.credentials(), super::route::Credentials::None),
            probe: *route == Route::Registry(Endpoint::Base) && !has_credentials,
        }
    }

    /// Writes the line the answer calls for: the change when it succeeded
    /// (a blob push only when the upload finished, 201), the refusal when
    /// enforcement refused it.
    pub fn record(
        self,
        audit: &Audit,
        response: &Response,
        code: Option<&str>,
        refused_user: Option<&str>,
        addr: Option<IpAddr>,
    ) {
        let status = response.status();
        let refused = matches!(status.as_u16(), 401 | 403) && self.enforced && !self.probe;
        let changed = match self.event {
            Some("blob_push") if self.route != "v1" => status.as_u16() == 201,
            Some(_) => status.is_success(),
            None => false,
        };
        if !refused && !changed {
            return;
        }
        let digest = response
            .headers()
            .get(super::CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok());
        let event = if refused {
            "refused"
        } else {
            self.event.unwrap_or("change")
        };
        audit.record(&crate::audit::Line {
            event,
            result: if refused { "refused" } else { "ok" },
            status: status.as_u16(),
            user: self.user.as_deref().or(refused_user.filter(|_| refused)),
            credential: self.credential.as_deref(),
            addr,
            method: Some(&self.method),
            route: self.route,
            repository: self.repository.as_deref(),
            reference: self.reference.as_deref(),
            tag: self.tag.as_deref(),
            digest,
            reason: if refused { code } else { None },
            ..Default::default()
        });
    }
}

/// The changes of the legacy v1 protocol: a tag pushed (which is what
/// makes a v1 push visible) or deleted, a repository deleted, an image's
/// layer pushed (its id the reference: a v1 image belongs to no one
/// repository).
fn v1_change(route: &Route) -> (Option<&'static str>, Option<String>, Option<String>) {
    match route {
        Route::V1(V1Endpoint::Repository { call, .. }) => match call {
            RepositoryCall::PutTag(tag) => {
                (Some("push"), Some(tag.to_string()), Some(tag.to_string()))
            }
            RepositoryCall::DeleteTag(tag) => (Some("delete"), Some(tag.to_string()), None),
            RepositoryCall::Delete => (Some("delete"), None, None),
            _ => (None, None, None),
        },
        Route::V1(V1Endpoint::Image {
            id,
            part: ImagePart::Layer,
            write: true,
        }) => (Some("blob_push"), Some(id.to_string()), None),
        _ => (None, None, None),
    }
}
