//! The registry's notification events ([`crate::notify`]): what a request
//! did to a manifest or a blob, gathered in `dispatch` from the route, the
//! grant and the request before the handler runs, and made into an event
//! from the answer (its status, `Docker-Content-Digest`, `Content-Type`,
//! `Content-Length`) once it succeeded.

use std::net::IpAddr;

use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::Response;

use super::authorize::Grant;
use super::endpoint::{Endpoint, UploadStart};
use super::route::Route;
use crate::AppState;
use crate::notify::event::{self, Actor, Event, RequestInfo, Target};
use crate::reference::Reference;

/// A blob's size, put on a handler's answer for its event (the `201` of a
/// finished upload declares no length of its own).
#[derive(Debug, Clone, Copy)]
pub struct BlobSize(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    Blob,
}

/// What one request may have to tell the endpoints.
pub struct Notified {
    action: &'static str,
    kind: Kind,
    repository: String,
    tag: Option<String>,
    /// The digest the request names (the answer's takes precedence).
    digest: Option<String>,
    from_repository: Option<String>,
    /// What a push declared: its media type and length.
    pushed_type: Option<String>,
    pushed_length: Option<u64>,
    /// `<scheme>://<host>` clients reach the registry at.
    base: String,
    request: RequestInfo,
    actor: Option<String>,
}

impl Notified {
    /// `None` when nobody is told of this request (not a content change or
    /// pull, or no endpoint wants it).
    pub fn of(
        state: &AppState,
        route: &Route,
        grant: &Grant,
        parts: &Parts,
        addr: Option<IpAddr>,
    ) -> Option<Self> {
        let (Route::Registry(endpoint) | Route::Upstream(endpoint, _)) = route else {
            return None;
        };
        let mut tag = None;
        let mut digest = None;
        let mut from_repository = None;
        let mut by = |reference: &Reference| match reference {
            Reference::Tag(t) => tag = Some(t.to_string()),
            Reference::Digest(d) => digest = Some(d.to_string()),
        };
        let (action, kind, name) = match endpoint {
            Endpoint::GetManifest {
                name,
                reference,
                head: false,
            } => {
                by(reference);
                ("pull", Kind::Manifest, name)
            }
            Endpoint::PutManifest { name, reference } => {
                by(reference);
                ("push", Kind::Manifest, name)
            }
            Endpoint::DeleteManifest { name, reference } => {
                by(reference);
                ("delete", Kind::Manifest, name)
            }
            Endpoint::GetBlob {
                name,
                digest: d,
                head: false,
            } => {
                digest = Some(d.to_string());
                ("pull", Kind::Blob, name)
            }
            Endpoint::DeleteBlob { name, digest: d } => {
                digest = Some(d.to_string());
                ("delete", Kind::Blob, name)
            }
            Endpoint::FinishUpload {
                name, digest: d, ..
            } => {
                digest = Some(d.to_string());
                ("push", Kind::Blob, name)
            }
            Endpoint::StartUpload { name, start } => match start {
                UploadStart::Monolithic(d) => {
                    digest = Some(d.to_string());
                    ("push", Kind::Blob, name)
                }
                UploadStart::Mount { digest: d, from } => {
                    digest = Some(d.to_string());
                    from_repository = Some(from.to_string());
                    ("mount", Kind::Blob, name)
                }
                UploadStart::Session => return None,
            },
            _ => return None,
        };
        if !state.notifier.wants(action, name.as_str()) {
            return None;
        }
        let text = |name| header_text(&parts.headers, name);
        let pushed = action == "push" && kind == Kind::Manifest;
        Some(Self {
            action,
            kind,
            repository: name.to_string(),
            tag,
            digest,
            from_repository,
            pushed_type: text(header::CONTENT_TYPE).filter(|_| pushed),
            pushed_length: super::content_length(&parts.headers).filter(|_| pushed),
            base: super::authorize::public_base(state, parts),
            request: RequestInfo {
                id: event::request_id(),
                addr: addr.map(|a| a.to_string()),
                host: text(header::HOST),
                method: parts.method.to_string(),
                useragent: text(header::USER_AGENT),
            },
            actor: actor(grant),
        })
    }

    /// Makes the event if the answer says the request succeeded: `201` for
    /// a blob push or mount (a `202` mount is a new session, nothing
    /// moved), any 2xx otherwise.
    pub fn record(self, state: &AppState, response: &Response) {
        let status = response.status();
        let done = match (self.action, self.kind) {
            ("push" | "mount", Kind::Blob) => status.as_u16() == 201,
            _ => status.is_success(),
        };
        if !done {
            return;
        }
        let headers = response.headers();
        let digest = header_text(headers, super::CONTENT_DIGEST).or(self.digest);
        let (media_type, size) = match (self.action, self.kind) {
            ("push", Kind::Manifest) => (self.pushed_type, self.pushed_length),
            ("pull", _) => (
                header_text(headers, header::CONTENT_TYPE),
                super::content_length(headers),
            ),
            ("push" | "mount", Kind::Blob) => {
                (None, response.extensions().get::<BlobSize>().map(|s| s.0))
            }
            _ => (None, None),
        };
        let url = digest.as_ref().map(|d| {
            let resource = match self.kind {
                Kind::Manifest => "manifests",
                Kind::Blob => "blobs",
            };
            format!("{}/v2/{}/{resource}/{d}", self.base, self.repository)
        });
        let event = Event {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: crate::audit::now(),
            action: self.action,
            target: Target {
                media_type,
                size,
                digest,
                length: size,
                repository: self.repository,
                url,
                tag: self.tag,
                from_repository: self.from_repository,
            },
            request: self.request,
            actor: Actor { name: self.actor },
            source: state.notifier.source().clone(),
        };
        state.notifier.record(&event);
    }
}

/// The account the grant was made to; none for anonymous access.
fn actor(grant: &Grant) -> Option<String> {
    match grant {
        Grant::Token(claims) if !claims.sub.is_empty() => Some(claims.sub.clone()),
        Grant::Login(Some(identity)) => Some(identity.name.clone()),
        _ => None,
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
