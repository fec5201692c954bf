//! One event in distribution's envelope format
//! (`application/vnd.docker.distribution.events.v1+json`): what happened
//! (`action`, `target`), the request that did it, who (`actor`) and which
//! server (`source`). Built from what the request log holds, never from a
//! credential.

use serde::Serialize;

/// The media type of a POSTed envelope (`{"events":[…]}`).
pub const MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// A UUID made once, when the event is: the same in every attempt and
    /// after a restart, so a receiver can drop a duplicate.
    pub id: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// `push`, `pull`, `mount` or `delete`.
    pub action: &'static str,
    pub target: Target,
    pub request: RequestInfo,
    pub actor: Actor,
    pub source: Source,
}

/// What the action was done to: a manifest, a blob, or a tag.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The same as `size` (distribution sends both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    pub repository: String,
    /// Where the content is served (`<base>/v2/<name>/manifests/<digest>`
    /// or `…/blobs/<digest>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A mount's source repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_repository: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestInfo {
    /// See [`request_id`].
    pub id: String,
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub useragent: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Actor {
    /// The account that was granted the request; absent for anonymous
    /// access or an open registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Source {
    /// The address this server is configured to listen on
    /// (`server.listen`).
    pub addr: String,
    /// This process' id, made at start.
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

/// The id of the request an event came from: the request log's own
/// (`X-Request-Id` of the answer, the audit line's `request_id`), so that a
/// receiver's event can be found in the logs; a fresh UUID outside a
/// request, which no event is made from today.
pub fn request_id() -> String {
    match crate::api::request_id::current() {
        Some(id) => id.to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    }
}
