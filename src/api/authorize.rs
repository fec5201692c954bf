//! The one authorization check of every `/v2/` request: the bearer token
//! must carry every access the parsed endpoint requires. Handlers never
//! check permissions themselves.

use axum::http::{HeaderMap, header};
use serde_json::json;

use super::endpoint::{Access, Endpoint};
use crate::AppState;
use crate::auth::Authority;
use crate::auth::token::Claims;
use crate::error::{ApiError, ErrorCode};

/// What the request was allowed on.
pub enum Grant {
    /// Authentication is disabled: everything is allowed.
    Open,
    /// A verified token that covers the request.
    Token(Claims),
}

pub fn authorize(
    state: &AppState,
    endpoint: &Endpoint,
    headers: &HeaderMap,
) -> Result<Grant, ApiError> {
    let Some(authority) = &state.auth else {
        return Ok(Grant::Open);
    };
    let required = endpoint.required_access();
    let challenge = |error: Option<&str>| challenge(state, authority, headers, &required, error);
    let Some(token) = bearer(headers) else {
        return Err(challenge(None));
    };
    let claims = match authority.verify_bearer(token) {
        Ok(claims) => claims,
        Err(e) => {
            tracing::debug!(error = %e, "bearer token refused");
            return Err(challenge(Some("invalid_token")));
        }
    };
    if required.iter().all(|access| covers(&claims, access)) {
        Ok(Grant::Token(claims))
    } else {
        Err(challenge(Some("insufficient_scope")))
    }
}

/// The token from `Authorization: Bearer …`, if that is what was sent.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn covers(claims: &Claims, access: &Access) -> bool {
    match access {
        Access::Authenticated => true,
        Access::Catalog => claims.access.iter().any(|a| {
            a.kind == "registry" && a.name == "catalog" && a.actions.iter().any(|x| x == "*")
        }),
        Access::Repository { name, actions } => actions.iter().all(|action| {
            claims.access.iter().any(|a| {
                a.kind == "repository"
                    && a.name == name.as_str()
                    && a.actions.iter().any(|x| x == action.as_str() || x == "*")
            })
        }),
    }
}

/// `401` with the challenge that tells the client where to get a token and
/// for what, and the spec's `UNAUTHORIZED` body listing the access needed.
fn challenge(
    state: &AppState,
    authority: &Authority,
    headers: &HeaderMap,
    required: &[Access],
    error: Option<&str>,
) -> ApiError {
    let scopes: Vec<String> = required.iter().filter_map(scope_of).collect();
    let mut value = format!(
        "Bearer realm=\"{}/token\",service=\"{}\"",
        public_base(state, headers),
        authority.settings.service
    );
    if !scopes.is_empty() {
        value.push_str(&format!(",scope=\"{}\"", scopes.join(" ")));
    }
    if let Some(error) = error {
        value.push_str(&format!(",error=\"{error}\""));
    }
    let detail: Vec<serde_json::Value> = required
        .iter()
        .flat_map(|access| match access {
            Access::Authenticated => vec![],
            Access::Catalog => vec![json!({"Type": "registry", "Name": "catalog", "Action": "*"})],
            Access::Repository { name, actions } => actions
                .iter()
                .map(|a| json!({"Type": "repository", "Name": name.as_str(), "Action": a.as_str()}))
                .collect(),
        })
        .collect();
    let message = match error {
        Some("insufficient_scope") => "access to the requested resource is not authorized",
        Some(_) => "invalid or expired token",
        None => "authentication required",
    };
    let mut e = ApiError::new(ErrorCode::Unauthorized)
        .message(message)
        .header(header::WWW_AUTHENTICATE, value);
    if !detail.is_empty() {
        e = e.detail(json!(detail));
    }
    e
}

fn scope_of(access: &Access) -> Option<String> {
    match access {
        Access::Authenticated => None,
        Access::Catalog => Some("registry:catalog:*".to_owned()),
        Access::Repository { name, actions } => Some(format!(
            "repository:{name}:{}",
            actions
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )),
    }
}

/// Where clients reach us: the configured public URL, else the scheme and
/// host of this request (so that the embedded default works from any
/// address it is reached at).
pub fn public_base(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.config.server.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        // A Host that could break out of the quoted realm is not echoed.
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| state.config.server.listen.to_string());
    format!("http://{host}")
}
