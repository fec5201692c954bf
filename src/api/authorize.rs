//! The one authorization check of every request, from its [`Route`]: a
//! route that takes no credentials passes; a `/v2/` endpoint needs a bearer
//! token carrying every access it requires. Handlers never check
//! permissions themselves.
//!
//! Every refusal is logged once, at `info`, with what was required and what
//! the token carried; never the token itself.

use std::net::IpAddr;

use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde_json::json;

use super::endpoint::{Access, Endpoint};
use super::route::{Credentials, Route};
use crate::AppState;
use crate::auth::Authority;
use crate::auth::token::Claims;
use crate::error::{ApiError, ErrorCode};

/// What the request was allowed on.
pub enum Grant {
    /// The route takes no credentials (`/token` checks its own).
    Public,
    /// Authentication is disabled: everything is allowed.
    Open,
    /// A verified token that covers the request.
    Token(Claims),
}

/// Checks the request `parts` (from `addr`) against what `route` requires.
pub fn authorize(
    state: &AppState,
    route: &Route,
    parts: &Parts,
    addr: Option<IpAddr>,
) -> Result<Grant, ApiError> {
    if route.credentials() == Credentials::None {
        return Ok(Grant::Public);
    }
    let Some(authority) = &state.auth else {
        return Ok(Grant::Open);
    };
    let headers = &parts.headers;
    let required = route.required_access();
    let refuse = |reason: &str, claims: Option<&Claims>, error: Option<&str>| {
        // Scopes as the challenge names them, computed once for it and the log.
        let scopes: Vec<String> = required.iter().filter_map(scope_of).collect();
        let subject = match claims {
            Some(c) if c.sub.is_empty() => "anonymous",
            Some(c) => c.sub.as_str(),
            None => "none",
        };
        let carried = claims.map_or_else(String::new, |c| super::token::scope_string(&c.access));
        let addr = addr.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        // The path without its query: a query may hold what a client
        // should not have put there, and the route is in the path.
        let path = parts.uri.path();
        let method = parts.method.as_str();
        // Every client starts with an unauthenticated `GET /v2/` to learn
        // where tokens come from; logging that 401 at `info` would make
        // half the log noise, so it is `debug`.
        if claims.is_none() && error.is_none() && *route == Route::Registry(Endpoint::Base) {
            tracing::debug!(method, path, addr, reason, "request refused");
        } else {
            tracing::info!(
                method,
                path,
                addr,
                subject,
                reason,
                required = scopes.join(" "),
                carried,
                "request refused"
            );
        }
        challenge(state, authority, parts, &required, &scopes, error)
    };
    let Some(token) = bearer(headers) else {
        return Err(refuse("no token", None, None));
    };
    let claims = match authority.verify_bearer(token) {
        Ok(claims) => claims,
        Err(e) => {
            let reason = e.to_string();
            return Err(refuse(&reason, None, Some("invalid_token")));
        }
    };
    if required.iter().all(|access| covers(&claims, access)) {
        Ok(Grant::Token(claims))
    } else {
        Err(refuse(
            "the token lacks the access",
            Some(&claims),
            Some("insufficient_scope"),
        ))
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
    parts: &Parts,
    required: &[Access],
    scopes: &[String],
    error: Option<&str>,
) -> ApiError {
    let mut value = format!(
        "Bearer realm=\"{}/token\",service=\"{}\"",
        public_base(state, parts),
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

/// Where clients reach us: the configured public URL, else our scheme
/// (https with `[server.tls]`) and the host of this request (so that the embedded default works from any
/// address it is reached at). HTTP/2 requests carry the host as the URI's
/// authority (`:authority`) rather than a `Host` header.
pub fn public_base(state: &AppState, parts: &Parts) -> String {
    if let Some(url) = &state.config.server.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        // A Host that could break out of the quoted realm is not echoed.
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| state.config.server.listen.to_string());
    format!("{}://{host}", state.config.server.scheme())
}
