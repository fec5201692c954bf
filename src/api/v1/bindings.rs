//! Which repository a v1 image belongs to, decided where pushes and pulls
//! begin, since the backend does not know: with a read token for one
//! repository, a client of docker-registry 0.9 reads any layer.
//!
//! - **A push** (`PUT /v1/repositories/<r>/`, authorized for push) declares
//!   the image ids it will send. Each is bound to `<r>` when it is new (no
//!   binding, not in the backend), or when the pusher may already pull a
//!   repository it is bound to (a shared base layer). An id that exists
//!   elsewhere and that the pusher may not read stays unbound, so declaring
//!   someone else's id opens nothing: its reads answer 404, its writes 403.
//! - **A tag** (`PUT …/tags/<t>`) may only name an image bound to its
//!   repository, so no push can tag its way to another repository's image.
//! - **A pull** (`GET …/images`, where engines and other clients start
//!   one, authorized for pull) binds
//!   the ancestry of every tag the backend holds for the repository: what
//!   was pushed before Portcullis stood in front, and tags set through
//!   Portcullis, which were checked as above.
//!
//! Image calls are then authorized from the bindings alone
//! (`authorize::needs`).

use std::net::IpAddr;

use serde::Deserialize;

use super::proxy::Backend;
use crate::AppState;
use crate::api::authorize::{self, Grant};
use crate::api::endpoint::{Access, Action};
use crate::error::{ApiError, ErrorCode};
use crate::reference::{ImageId, RepoName};

/// One entry of a push's image list.
#[derive(Deserialize)]
struct Declared {
    id: String,
}

/// Binds what the push to `name` declares in `list` (its body), as the
/// module says. A body that is no image list binds nothing: the backend
/// answers it.
pub async fn declare(
    state: &AppState,
    backend: &Backend,
    name: &RepoName,
    list: &[u8],
    grant: &Grant,
    addr: Option<IpAddr>,
) -> Result<(), ApiError> {
    let declared: Vec<Declared> = serde_json::from_slice(list).unwrap_or_default();
    for id in declared.iter().filter_map(|d| ImageId::parse(&d.id)) {
        let bound = state.storage.v1_bindings(&id).await?;
        if bound.contains(name) {
            continue;
        }
        let ours = if bound.is_empty() {
            backend
                .get_json(&format!("/v1/images/{id}/json"))
                .await?
                .is_none()
        } else {
            bound.iter().any(|repo| may_pull(state, grant, addr, repo))
        };
        if ours {
            state.storage.v1_bind(&id, name).await?;
        } else {
            tracing::info!(
                image = id.as_str(),
                repository = name.as_str(),
                "v1 push declared an image of another repository: not bound"
            );
        }
    }
    Ok(())
}

/// Refuses a tag of `name` whose body (a JSON string) names an image not
/// bound to `name`.
pub async fn check_tagged(state: &AppState, name: &RepoName, body: &[u8]) -> Result<(), ApiError> {
    let id = serde_json::from_slice::<String>(body)
        .ok()
        .and_then(|id| ImageId::parse(&id))
        .ok_or_else(|| {
            ApiError::new(ErrorCode::TagInvalid)
                .message("a tag's body is the image id as a JSON string")
        })?;
    if state.storage.v1_bindings(&id).await?.contains(name) {
        return Ok(());
    }
    Err(ApiError::new(ErrorCode::Denied).message("the image is not part of this repository"))
}

/// Binds the ancestry of every tag of `name` that the backend holds.
pub async fn bind_tagged(
    state: &AppState,
    backend: &Backend,
    name: &RepoName,
) -> Result<(), ApiError> {
    let Some(tags) = backend
        .get_json(&format!("/v1/repositories/{name}/tags"))
        .await?
    else {
        return Ok(());
    };
    let tagged = tags.as_object().into_iter().flat_map(|t| t.values());
    for id in tagged.filter_map(|v| v.as_str().and_then(ImageId::parse)) {
        let Some(ancestry) = backend
            .get_json(&format!("/v1/images/{id}/ancestry"))
            .await?
        else {
            continue;
        };
        let ancestors = ancestry.as_array().into_iter().flatten();
        for ancestor in ancestors.filter_map(|v| v.as_str().and_then(ImageId::parse)) {
            if !state.storage.v1_bindings(&ancestor).await?.contains(name) {
                state.storage.v1_bind(&ancestor, name).await?;
            }
        }
    }
    Ok(())
}

/// Whether the caller `grant` stands for may pull `repo`, by the same
/// checks as the authorization of a request.
pub fn may_pull(state: &AppState, grant: &Grant, addr: Option<IpAddr>, repo: &RepoName) -> bool {
    let access = Access::Repository {
        name: repo.clone(),
        actions: vec![Action::Pull],
    };
    match (grant, &state.auth) {
        (Grant::Open, _) => true,
        (Grant::Login(identity), Some(authority)) => {
            let caller = crate::auth::caller(identity.as_ref(), addr);
            authorize::allows(&authority.policy(), &caller, &access)
        }
        (Grant::Token(claims), _) => authorize::covers(claims, &access),
        _ => false,
    }
}
