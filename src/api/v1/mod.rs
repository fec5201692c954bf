//! The legacy v1 protocol, as Docker engines up to 1.9 speak it, routed to
//! the configured legacy backend (`[v1] backend`): every `/v1/` request
//! parsed once into a [`V1Endpoint`] with the access it needs.
//!
//! Facts this relies on (docker-registry 0.9.1 and engines 1.5–1.9):
//! - `/v1/repositories/<namespace>/<repository>/…` names the repository; a
//!   single segment means `library/<repository>`. The repository itself is
//!   addressed with a trailing slash (`PUT /v1/repositories/ns/r/`), so a
//!   last segment `images`, `tags` or `json` is always a call, never a name.
//! - `/v1/images/<id>/{json,layer,ancestry,checksum}` carry only an image id
//!   (64 hex digits; 16 in the oldest clients' short form).
//! - `/v1/_ping` is public; `/v1/users/` is the login of `docker login`.

mod bindings;
pub mod engine;
pub mod proxy;

use std::net::IpAddr;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::authorize::Grant;
use super::endpoint::{Access, Action, only};
use crate::AppState;
use crate::auth::scope::AccessEntry;
use crate::error::{ApiError, ErrorCode};
use crate::reference::{ImageId, RepoName, Tag};
use crate::serve::zero_copy;

/// Tells an engine that this registry authenticates its own users (no
/// separate index): it then sends its credentials to it.
const STANDALONE: HeaderName = HeaderName::from_static("x-docker-registry-standalone");

/// What an image call reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagePart {
    Json,
    Layer,
    Ancestry,
    Checksum,
}

/// A call on one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryCall {
    /// `PUT …/`: a push starts, with the image ids it will send.
    Put,
    /// `DELETE …/`
    Delete,
    /// `GET …/images`: a pull starts (the image list).
    GetImages,
    /// `PUT …/images`: a push ends (the image list, checksums).
    PutImages,
    /// `GET …/tags`
    Tags,
    /// `GET …/json`: the repository's JSON.
    Json,
    GetTag(Tag),
    /// `GET …/tags/<tag>/json`: the tagged image's JSON (engines 1.8+).
    TagJson(Tag),
    PutTag(Tag),
    DeleteTag(Tag),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V1Endpoint {
    /// `GET /v1/_ping` (and `/_ping`)
    Ping,
    /// `GET /v1/users/` checks Basic credentials; `POST` is the account
    /// creation `docker login` tries first.
    Login { post: bool },
    Repository {
        name: RepoName,
        call: RepositoryCall,
    },
    Image {
        id: ImageId,
        part: ImagePart,
        write: bool,
    },
    /// `GET /v1/search?q=`
    Search,
}

impl V1Endpoint {
    /// Parses a request under `/v1` (or `/_ping`). `path` is the raw path.
    pub fn parse(method: &Method, path: &str) -> Result<V1Endpoint, ApiError> {
        let read = [Method::GET, Method::HEAD];
        if path == "/_ping" || path == "/v1/_ping" {
            return only(method, &read, V1Endpoint::Ping);
        }
        let rest = path.strip_prefix("/v1/").ok_or(ErrorCode::NotFound)?;
        if rest == "users" || rest == "users/" {
            return match *method {
                Method::POST => Ok(V1Endpoint::Login { post: true }),
                _ => only(method, &read, V1Endpoint::Login { post: false }),
            };
        }
        if rest == "search" {
            return only(method, &read, V1Endpoint::Search);
        }
        if let Some(image) = rest.strip_prefix("images/") {
            return image_call(method, image);
        }
        if let Some(repository) = rest.strip_prefix("repositories/") {
            return repository_call(method, repository);
        }
        Err(ErrorCode::NotFound.into())
    }

    /// Everything a caller must be allowed to do this. Image calls need
    /// the repositories the image is bound to, which only storage knows:
    /// they are authorized from those bindings, not from here.
    pub fn required_access(&self) -> Vec<Access> {
        let on = |name: &RepoName, action: Action| {
            vec![Access::Repository {
                name: name.clone(),
                actions: vec![action],
            }]
        };
        match self {
            V1Endpoint::Ping | V1Endpoint::Login { .. } | V1Endpoint::Search => Vec::new(),
            V1Endpoint::Image { .. } => Vec::new(),
            V1Endpoint::Repository { name, call } => match call {
                RepositoryCall::GetImages
                | RepositoryCall::Tags
                | RepositoryCall::Json
                | RepositoryCall::GetTag(_)
                | RepositoryCall::TagJson(_) => on(name, Action::Pull),
                RepositoryCall::Put | RepositoryCall::PutImages | RepositoryCall::PutTag(_) => {
                    on(name, Action::Push)
                }
                RepositoryCall::Delete | RepositoryCall::DeleteTag(_) => on(name, Action::Delete),
            },
        }
    }
}

/// The answer to an authorized v1 request (from `addr`, on a connection
/// that can take relayed bodies when `zero_copy` is given).
pub async fn serve(
    state: &AppState,
    endpoint: V1Endpoint,
    parts: &Parts,
    body: Body,
    grant: &Grant,
    addr: Option<IpAddr>,
    zero_copy: Option<zero_copy::Sender>,
) -> Result<Response, ApiError> {
    let Some(backend) = &state.v1 else {
        return Err(ErrorCode::NotFound.into());
    };
    match endpoint {
        // `docker login` (v1) first tries to create the account: "it
        // exists" sends it on to check the password with `GET`.
        V1Endpoint::Login { post: true } => Ok((
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            "\"Username or email already exists\"",
        )
            .into_response()),
        V1Endpoint::Login { post: false } => login(state, parts, addr).await,
        // Authorized from the image's bindings already. A layer pull is
        // the one big answer: spliced through when the connection can.
        V1Endpoint::Image {
            part: ImagePart::Layer,
            write: false,
            ..
        } if parts.method == Method::GET => {
            let public = super::authorize::public_base(state, parts);
            match zero_copy {
                Some(sender) => backend.forward_layer(parts, &public, sender).await,
                // TLS and HTTP/2 clients: the copied stream.
                None => backend.forward(parts, body, &public).await,
            }
        }
        V1Endpoint::Image { .. } => {
            let public = super::authorize::public_base(state, parts);
            backend.forward(parts, body, &public).await
        }
        V1Endpoint::Search => search(state, backend, parts, grant, addr).await,
        // Answered here: the backend's own ping describes its host and
        // the command line it was started with, its address included.
        V1Endpoint::Ping => Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (STANDALONE, "True"),
            ],
            "true",
        )
            .into_response()),
        V1Endpoint::Repository { name, call } => {
            let public = super::authorize::public_base(state, parts);
            let body = match call {
                RepositoryCall::Put => {
                    let list = read_small(body, MAX_IMAGE_LIST).await?;
                    bindings::declare(state, backend, &name, &list, grant, addr).await?;
                    Body::from(list)
                }
                RepositoryCall::PutTag(_) => {
                    let id = read_small(body, MAX_TAG_BODY).await?;
                    bindings::check_tagged(state, &name, &id).await?;
                    Body::from(id)
                }
                // Where every pull starts (engines, the npm client): the
                // ancestry lookups happen once per pull, not per tag read.
                RepositoryCall::GetImages => {
                    bindings::bind_tagged(state, backend, &name).await?;
                    body
                }
                _ => body,
            };
            // Asked before the forward: the token goes with the answer.
            let token = match wants_token(parts) {
                true => v1_token(state, &name, grant, addr)?,
                false => None,
            };
            let mut response = backend.forward(parts, body, &public).await?;
            if let Some(token) = token {
                let host = public.split_once("://").map_or(public.as_str(), |(_, h)| h);
                let headers = response.headers_mut();
                if let (Ok(token), Ok(host)) =
                    (HeaderValue::from_str(&token), HeaderValue::from_str(host))
                {
                    headers.insert(proxy::X_DOCKER_TOKEN, token);
                    headers.insert(proxy::X_DOCKER_ENDPOINTS, host);
                }
            }
            Ok(response)
        }
    }
}

/// Largest image list a push may declare (`PUT …/`): some hundred bytes
/// per image.
const MAX_IMAGE_LIST: usize = 1 << 20;
/// Largest tag body (`PUT …/tags/<tag>`): a quoted image id.
const MAX_TAG_BODY: usize = 1 << 10;

/// A request body Portcullis must read before it forwards it.
async fn read_small(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(ErrorCode::SizeInvalid).message(format!("the body exceeds {limit} bytes"))
    })
}

/// `GET /v1/search?q=`: the backend's answer, less what the caller may
/// not pull (a name is already more than such a caller should learn).
async fn search(
    state: &AppState,
    backend: &proxy::Backend,
    parts: &Parts,
    grant: &Grant,
    addr: Option<IpAddr>,
) -> Result<Response, ApiError> {
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut answer = backend
        .get_json(&format!("/v1/search{query}"))
        .await?
        .unwrap_or_else(|| serde_json::json!({"results": []}));
    let results = answer
        .get("results")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    let visible: Vec<serde_json::Value> = results
        .into_iter()
        .filter(|r| {
            r.get("name")
                .and_then(|n| n.as_str())
                .and_then(|n| RepoName::parse(n).ok())
                .is_some_and(|name| bindings::may_pull(state, grant, addr, &name))
        })
        .collect();
    answer["num_results"] = visible.len().into();
    answer["results"] = visible.into();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response())
}

/// Whether the client asks for a token with this request
/// (`X-Docker-Token: true`, on the first call of a push or a pull).
fn wants_token(parts: &Parts) -> bool {
    parts
        .headers
        .get(proxy::X_DOCKER_TOKEN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A v1 token for the caller `grant` stands for, carrying what the policy
/// lets them do on `name` (the repository the push or pull is about):
/// engines send it back as `Authorization: Token …` on the calls that
/// follow. `None` when authentication is off or the caller came with a
/// token already.
fn v1_token(
    state: &AppState,
    name: &RepoName,
    grant: &Grant,
    addr: Option<IpAddr>,
) -> Result<Option<String>, ApiError> {
    let (Some(authority), Grant::Login(identity)) = (&state.auth, grant) else {
        return Ok(None);
    };
    let caller = crate::auth::caller(identity.as_ref(), addr);
    let decision = authority.policy().decide(
        &caller,
        name.as_str(),
        &[Action::Pull, Action::Push, Action::Delete],
    );
    let access = vec![AccessEntry {
        kind: "repository".to_owned(),
        name: name.as_str().to_owned(),
        actions: decision
            .granted
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
    }];
    let subject = identity.as_ref().map_or("", |i| i.name.as_str());
    Ok(Some(authority.issue_v1(subject, access)?))
}

/// `GET /v1/users/`: whether the Basic credentials log in (200), from the
/// identity sources through the failed-login limiter, as `/token` checks
/// them.
async fn login(
    state: &AppState,
    parts: &Parts,
    addr: Option<IpAddr>,
) -> Result<Response, ApiError> {
    let ok = || {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "\"OK\"",
        )
    };
    let Some(authority) = &state.auth else {
        return Ok(ok().into_response());
    };
    match super::authorize::basic_login(state, authority, parts, addr).await? {
        Some(identity) => {
            tracing::info!(user = identity.name, source = identity.source, "v1 login");
            Ok(ok().into_response())
        }
        None => Err(super::authorize::basic_challenge(
            authority,
            "authentication required",
        )),
    }
}

fn image_call(method: &Method, rest: &str) -> Result<V1Endpoint, ApiError> {
    let (id, part) = rest.split_once('/').ok_or(ErrorCode::NotFound)?;
    let id = ImageId::parse(id).ok_or(ErrorCode::NotFound)?;
    let (part, writable) = match part {
        "json" => (ImagePart::Json, true),
        "layer" => (ImagePart::Layer, true),
        "checksum" => (ImagePart::Checksum, true),
        "ancestry" => (ImagePart::Ancestry, false),
        _ => return Err(ErrorCode::NotFound.into()),
    };
    let write = match *method {
        Method::GET | Method::HEAD => false,
        Method::PUT if writable => true,
        _ => return Err(ErrorCode::Unsupported.into()),
    };
    Ok(V1Endpoint::Image { id, part, write })
}

fn repository_call(method: &Method, rest: &str) -> Result<V1Endpoint, ApiError> {
    let segments: Vec<&str> = rest.split('/').collect();
    // The call is read off the end: `…/` (the repository), `…/images`,
    // `…/tags`, `…/tags/<tag>`, `…/json`; what comes before is the name.
    let (name, call) = match segments.as_slice() {
        [name @ .., "tags", tag, "json"] if !name.is_empty() => {
            let tag = Tag::parse(tag).map_err(|_| ErrorCode::TagInvalid)?;
            (
                name,
                only(
                    method,
                    &[Method::GET, Method::HEAD],
                    RepositoryCall::TagJson(tag),
                )?,
            )
        }
        [name @ .., "tags", tag] if !name.is_empty() && !tag.is_empty() => {
            let tag = Tag::parse(tag).map_err(|_| ErrorCode::TagInvalid)?;
            let call = match *method {
                Method::GET | Method::HEAD => RepositoryCall::GetTag(tag),
                Method::PUT => RepositoryCall::PutTag(tag),
                Method::DELETE => RepositoryCall::DeleteTag(tag),
                _ => return Err(ErrorCode::Unsupported.into()),
            };
            (name, call)
        }
        [name @ .., "tags"] | [name @ .., "tags", ""] => (
            name,
            only(method, &[Method::GET, Method::HEAD], RepositoryCall::Tags)?,
        ),
        [name @ .., "images"] => {
            let call = match *method {
                Method::GET | Method::HEAD => RepositoryCall::GetImages,
                Method::PUT => RepositoryCall::PutImages,
                _ => return Err(ErrorCode::Unsupported.into()),
            };
            (name, call)
        }
        [name @ .., "json"] => (
            name,
            only(method, &[Method::GET, Method::HEAD], RepositoryCall::Json)?,
        ),
        [name @ .., ""] => {
            let call = match *method {
                Method::PUT => RepositoryCall::Put,
                Method::DELETE => RepositoryCall::Delete,
                _ => return Err(ErrorCode::Unsupported.into()),
            };
            (name, call)
        }
        _ => return Err(ErrorCode::NotFound.into()),
    };
    let name = match name {
        [repository] => format!("library/{repository}"),
        [namespace, repository] => format!("{namespace}/{repository}"),
        _ => return Err(ErrorCode::NameInvalid.into()),
    };
    let name = RepoName::parse(&name).map_err(|_| ErrorCode::NameInvalid)?;
    Ok(V1Endpoint::Repository { name, call })
}

#[cfg(test)]
mod tests;
