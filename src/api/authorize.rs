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

use super::endpoint::Action;
use super::endpoint::{Access, Endpoint};
use super::route::{Credentials, Route};
use super::v1::V1Endpoint;
use crate::AppState;
use crate::auth::identity::Identity;
use crate::auth::token::Claims;
use crate::auth::{AuthError, Authority};
use crate::error::{ApiError, ErrorCode};

/// What the request was allowed on.
pub enum Grant {
    /// The route takes no credentials (`/token` checks its own).
    Public,
    /// Authentication is disabled: everything is allowed.
    Open,
    /// Basic credentials checked now (`None`: none sent, anonymous), and
    /// the policy allows them what the route requires.
    Login(Option<Identity>),
    /// A verified token that covers the request.
    Token(std::sync::Arc<Claims>),
}

/// Checks the request `parts` (from `addr`) against what `route` requires.
pub async fn authorize(
    state: &AppState,
    route: &Route,
    parts: &Parts,
    addr: Option<IpAddr>,
) -> Result<Grant, ApiError> {
    let credentials = route.credentials();
    if credentials == Credentials::None {
        return Ok(Grant::Public);
    }
    let Some(authority) = &state.auth else {
        return Ok(Grant::Open);
    };
    match credentials {
        Credentials::Basic => basic(state, authority, route, parts, addr).await,
        _ => bearer_grant(state, authority, route, parts, addr),
    }
}

/// A route that takes a name and password on each request (the legacy v1
/// protocol): the identity sources check them, through the failed-login
/// limiter, and the policy decides what that identity, or an anonymous
/// caller, may do. Refused: 401 with a Basic challenge when the caller
/// could do better by logging in, 403 when a logged-in caller may not.
async fn basic(
    state: &AppState,
    authority: &Authority,
    route: &Route,
    parts: &Parts,
    addr: Option<IpAddr>,
) -> Result<Grant, ApiError> {
    let (method, path) = (parts.method.as_str(), parts.uri.path());
    let shown = addr.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let challenge = |message: &str| basic_challenge(authority, message);
    // A v1 token of ours: what it carries must cover the route.
    if let Some(token) = credential(&parts.headers, "token") {
        let refused = |reason: &str| {
            tracing::info!(method, path, addr = shown, reason, "request refused");
            challenge("invalid or insufficient token")
        };
        let claims = authority
            .verify_v1(token)
            .map_err(|e| refused(&e.to_string()))?;
        let need = needs(state, route).await?;
        if need.met_by(|access| covers(&claims, access)) {
            return Ok(Grant::Token(claims.into()));
        }
        return Err(need
            .unmet()
            .unwrap_or_else(|| refused("the token lacks the access")));
    }
    let identity = basic_login(state, authority, parts, addr).await?;
    let caller = crate::auth::caller(identity.as_ref(), addr);
    let policy = authority.policy();
    let need = needs(state, route).await?;
    if need.met_by(|access| allows(&policy, &caller, access)) {
        return Ok(Grant::Login(identity));
    }
    let subject = identity.as_ref().map_or("anonymous", |i| i.name.as_str());
    let required: Vec<String> = need.accesses().iter().filter_map(scope_of).collect();
    tracing::info!(
        method,
        path,
        addr = shown,
        subject,
        reason = "the policy does not allow it",
        required = required.join(" "),
        "request refused"
    );
    let refusal = need.unmet().unwrap_or_else(|| match identity {
        None => challenge("authentication required"),
        Some(_) => ApiError::new(ErrorCode::Denied),
    });
    Err(match &identity {
        Some(identity) => refusal.refusing(&identity.name),
        None => refusal,
    })
}

/// `401` with a Basic challenge, as v1 clients expect it.
pub(super) fn basic_challenge(authority: &Authority, message: &str) -> ApiError {
    let value = format!("Basic realm=\"{}\"", authority.settings.service);
    ApiError::new(ErrorCode::Unauthorized)
        .message(message)
        .header(header::WWW_AUTHENTICATE, value)
}

/// The identity of the request's Basic credentials, checked by the
/// identity sources through the failed-login limiter; `None` when it sent
/// none. Wrong ones are logged (the name tried, never the password) and
/// answered with [`basic_challenge`].
pub(super) async fn basic_login(
    state: &AppState,
    authority: &Authority,
    parts: &Parts,
    addr: Option<IpAddr>,
) -> Result<Option<Identity>, ApiError> {
    let Some((user, password)) = super::token::basic_credentials(&parts.headers)? else {
        return Ok(None);
    };
    // As for `/token`: callers without an address share one slot.
    let from = addr.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    match authority
        .login(&state.storage, &user, &password, from)
        .await
    {
        Ok(identity) => Ok(Some(identity)),
        Err(AuthError::BadCredentials { unknown_user }) => {
            let reason = match unknown_user {
                true => "unknown user",
                false => "wrong password",
            };
            let (method, path) = (parts.method.as_str(), parts.uri.path());
            let addr = addr.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
            tracing::info!(method, path, addr, user, reason, "request refused");
            Err(basic_challenge(authority, "invalid username or password"))
        }
        Err(e) => Err(e.into()),
    }
}

/// What a route needs: every one of its accesses, or (a v1 image, which
/// belongs to the repositories bound to it) any one.
enum Need {
    All(Vec<Access>),
    Any { accesses: Vec<Access>, write: bool },
}

impl Need {
    fn met_by(&self, allowed: impl Fn(&Access) -> bool) -> bool {
        match self {
            Need::All(accesses) => accesses.iter().all(allowed),
            Need::Any { accesses, .. } => accesses.iter().any(allowed),
        }
    }

    fn accesses(&self) -> &[Access] {
        match self {
            Need::All(accesses) | Need::Any { accesses, .. } => accesses,
        }
    }

    /// The refusal a v1 image call gets instead of a challenge: an image
    /// the caller may not read is unknown to them (its existence is
    /// already more than they should learn), and one bound to no
    /// repository must be declared by a push before it is written.
    fn unmet(&self) -> Option<ApiError> {
        match self {
            Need::Any { write: false, .. } => {
                Some(ApiError::new(ErrorCode::NotFound).message("image not found"))
            }
            Need::Any {
                accesses,
                write: true,
            } if accesses.is_empty() => Some(
                ApiError::new(ErrorCode::Denied)
                    .message("the image was not declared by a push to a repository"),
            ),
            _ => None,
        }
    }
}

/// What `route` needs; for a v1 image, from its bindings in storage.
async fn needs(state: &AppState, route: &Route) -> Result<Need, ApiError> {
    let Route::V1(V1Endpoint::Image { id, write, .. }) = route else {
        return Ok(Need::All(route.required_access()));
    };
    let action = match write {
        true => Action::Push,
        false => Action::Pull,
    };
    let accesses = state
        .storage
        .v1_bindings(id)
        .await?
        .into_iter()
        .map(|name| Access::Repository {
            name,
            actions: vec![action],
        })
        .collect();
    Ok(Need::Any {
        accesses,
        write: *write,
    })
}

/// Whether the policy lets `caller` do `access`.
pub(crate) fn allows(
    policy: &crate::policy::Policy,
    caller: &crate::policy::Caller,
    access: &Access,
) -> bool {
    match access {
        Access::Authenticated => caller.user.is_some(),
        Access::Catalog => false,
        Access::Repository { name, actions } => {
            let decision = policy.decide(caller, name.as_str(), actions);
            actions.iter().all(|a| decision.granted.contains(a))
        }
    }
}

/// A route that takes a bearer token: it must carry every access the
/// route requires.
fn bearer_grant(
    state: &AppState,
    authority: &Authority,
    route: &Route,
    parts: &Parts,
    addr: Option<IpAddr>,
) -> Result<Grant, ApiError> {
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
        let refusal = challenge(state, authority, parts, &required, &scopes, error);
        match claims {
            Some(c) if !c.sub.is_empty() => refusal.refusing(&c.sub),
            _ => refusal,
        }
    };
    let Some(token) = credential(headers, "bearer") else {
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

/// The credential of `Authorization: <scheme> …`, if that scheme is what
/// was sent: `Bearer` (v2 tokens), `Token` (how engines send back an
/// `X-Docker-Token`).
fn credential<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (sent, token) = value.trim().split_once(' ')?;
    sent.eq_ignore_ascii_case(scheme)
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether a token's claims carry `access`.
pub(crate) fn covers(claims: &Claims, access: &Access) -> bool {
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
