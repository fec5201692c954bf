//! The token endpoint: `GET /token` (Docker token authentication) and the
//! OAuth2 `POST /token`, plus the public keys at `/.well-known/jwks.json`.
//!
//! Credentials are read here and handed to [`Authority`]; nothing here
//! logs them. Every request is logged once, at `info`, when it is answered:
//! who (or `anonymous`), from where, what was asked, what was granted and,
//! for each refusal, the policy rule that decided (see [`Record`]).

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::json_response;
use crate::AppState;
use crate::auth::identity::{Credential, Identity};
use crate::auth::scope::{AccessEntry, ResourceScope};
use crate::auth::{AuthError, Authority, caller};
use crate::error::{ApiError, ErrorCode};
use crate::serve::Peer;
use crate::serve::tls::ClientCert;

/// Largest form body accepted by `POST /token`.
const MAX_FORM: usize = 64 << 10;

pub async fn get(state: Arc<AppState>, request: Request) -> Response {
    let Some(authority) = &state.auth else {
        return ApiError::new(ErrorCode::NotFound).into_response();
    };
    let peer = peer(&request);
    let mut record = Record::new(peer.map(|p| p.addr.ip()));
    let certificate = peer.and_then(|p| p.client_cert.clone());
    let (parts, _) = request.into_parts();
    let asked = Asked {
        headers: &parts.headers,
        query: parts.uri.query(),
        certificate: certificate.as_deref(),
    };
    let result = get_token(&state, authority, asked, &mut record).await;
    record.log(&result, &state.metrics);
    record.audit(&result, &state.audit);
    result.unwrap_or_else(IntoResponse::into_response)
}

pub async fn post(state: Arc<AppState>, request: Request) -> Response {
    let Some(authority) = &state.auth else {
        return ApiError::new(ErrorCode::NotFound).into_response();
    };
    let mut record = Record::new(peer(&request).map(|p| p.addr.ip()));
    let body = request.into_body();
    let result = post_token(&state, authority, body, &mut record).await;
    record.log(&result, &state.metrics);
    record.audit(&result, &state.audit);
    result.unwrap_or_else(IntoResponse::into_response)
}

pub fn jwks(state: &AppState) -> Response {
    let Some(authority) = &state.auth else {
        return ApiError::new(ErrorCode::NotFound).into_response();
    };
    let body = serde_json::to_string(&authority.keys().jwks()).unwrap_or_default();
    json_response(StatusCode::OK, "application/json", body)
}

fn peer(request: &Request) -> Option<&Peer> {
    request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| &c.0)
}

/// One token request as the log tells it, filled in as the request is read
/// and written as one line when it is answered. Holds no credential: the
/// password and tokens never enter it.
struct Record {
    addr: Option<IpAddr>,
    /// How the caller identified: `anonymous`, `basic` or `certificate` (a
    /// TLS client certificate; `GET`), `password` or `refresh_token` (`POST`).
    grant: &'static str,
    /// The name the caller gave or the refresh token named; `None`: anonymous.
    user: Option<String>,
    /// The identity source that vouched for `user`, once one did.
    source: Option<&'static str>,
    /// The kind of credential, when it was not a password (`oidc`, `pat`).
    credential: Option<&'static str>,
    /// The subject of the connection's client certificate, when it was the
    /// credential.
    subject: Option<String>,
    service: Option<String>,
    /// The scopes as sent, space-separated.
    asked: String,
    granted: String,
    refused: String,
    /// Why the request was refused, when the answer alone does not say it
    /// well enough for the log.
    reason: Option<&'static str>,
}

impl Record {
    fn new(addr: Option<IpAddr>) -> Self {
        Self {
            addr,
            grant: "anonymous",
            user: None,
            source: None,
            credential: None,
            subject: None,
            service: None,
            asked: String::new(),
            granted: String::new(),
            refused: String::new(),
            reason: None,
        }
    }

    /// The audit line of this request (`token`): the same facts as the log
    /// line, as JSON.
    fn audit(&self, result: &Result<Response, ApiError>, audit: &crate::audit::Audit) {
        if !audit.enabled() {
            return;
        }
        fn none_if_empty(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        let credential = match self.grant {
            "anonymous" => None,
            "certificate" => Some("certificate"),
            "refresh_token" => Some("refresh_token"),
            _ => Some(self.credential.unwrap_or("password")),
        };
        let (outcome, status, reason) = match result {
            Ok(_) => ("granted", 200, None),
            Err(e) => (
                "refused",
                e.code.status().as_u16(),
                Some(
                    self.reason
                        .or(e.message.as_deref())
                        .unwrap_or(e.code.message()),
                ),
            ),
        };
        audit.record(&crate::audit::Line {
            event: "token",
            result: outcome,
            status,
            user: self.user.as_deref(),
            source: self.source,
            credential,
            certificate: self.subject.as_deref(),
            addr: self.addr,
            route: "token",
            asked: none_if_empty(&self.asked),
            granted: none_if_empty(&self.granted),
            refusals: none_if_empty(&self.refused),
            reason,
            ..Default::default()
        });
    }

    fn log(&self, result: &Result<Response, ApiError>, metrics: &crate::metrics::Metrics) {
        match result {
            Ok(_) => metrics.token("granted", "none"),
            Err(e) => metrics.token(
                "refused",
                match e.code.status().as_u16() {
                    400 => "invalid_request",
                    401 => "bad_credentials",
                    429 => "throttled",
                    503 => "unavailable",
                    _ => "error",
                },
            ),
        }
        // A credential that named no one yet (a refused refresh token, a
        // form without a name) is not an anonymous request.
        let nobody = match self.grant {
            "anonymous" => "anonymous",
            _ => "unknown",
        };
        let user = self.user.as_deref().unwrap_or(nobody);
        let addr = self
            .addr
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let service = self.service.as_deref().unwrap_or("");
        match result {
            Ok(_) => tracing::info!(
                user,
                source = self.source,
                credential = self.credential,
                certificate = self.subject.as_deref(),
                addr,
                grant = self.grant,
                service,
                asked = self.asked,
                granted = self.granted,
                refused = self.refused,
                "token issued"
            ),
            Err(e) => tracing::info!(
                user,
                certificate = self.subject.as_deref(),
                addr,
                grant = self.grant,
                service,
                asked = self.asked,
                status = e.code.status().as_u16(),
                reason = self
                    .reason
                    .or(e.message.as_deref())
                    .unwrap_or(e.code.message()),
                "token refused"
            ),
        }
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::TokenRequestInvalid)
        .message(message)
        .oauth("invalid_request")
}

/// The query of `GET /token`.
#[derive(Default)]
struct TokenQuery {
    service: Option<String>,
    scopes: Vec<String>,
    account: Option<String>,
    offline_token: bool,
}

impl TokenQuery {
    fn parse(query: Option<&str>) -> Self {
        let mut q = TokenQuery::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "service" => q.service = Some(value.into_owned()),
                "scope" => q.scopes.push(value.into_owned()),
                "account" => q.account = Some(value.into_owned()),
                "offline_token" => q.offline_token = value.eq_ignore_ascii_case("true"),
                // client_id is for auditing only; unknown keys are ignored
                // as OAuth2 asks.
                _ => {}
            }
        }
        q
    }
}

/// What a `GET /token` brings: its headers and query, and the client
/// certificate of its connection.
struct Asked<'a> {
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    certificate: Option<&'a ClientCert>,
}

async fn get_token(
    state: &AppState,
    authority: &Authority,
    asked: Asked<'_>,
    record: &mut Record,
) -> Result<Response, ApiError> {
    let q = TokenQuery::parse(asked.query);
    record.service = q.service.clone();
    record.asked = q.scopes.join(" ");
    check_service(authority, q.service.as_deref(), false)?;
    let scopes = parse_scopes(q.scopes.iter().map(String::as_str))?;
    // Credentials in the request come first; a client certificate stands
    // for its subject only in a request that carries none.
    let (account, refreshable) = match (basic_credentials(asked.headers)?, asked.certificate) {
        (Some((user, password)), _) => {
            record.grant = "basic";
            record.user = Some(user.clone());
            if q.account.as_deref().is_some_and(|a| a != user) {
                return Err(invalid("account does not match the credentials"));
            }
            let identity = login(state, authority, &user, &password, record).await?;
            // A token login gets no refresh token: the client keeps the
            // issuer's token, which expires on the issuer's terms.
            let refreshable = identity.credential == Credential::Password;
            (Some(identity), refreshable)
        }
        (None, Some(certificate)) => {
            record.grant = "certificate";
            let identity = certificate_identity(authority, certificate, record).await?;
            if q.account.as_deref().is_some_and(|a| a != identity.name) {
                return Err(invalid("account does not match the client certificate"));
            }
            // No refresh token: the certificate is the credential, checked
            // in every handshake, and a refresh token would outlive it.
            (Some(identity), false)
        }
        (None, None) => (None, false),
    };
    let refresh = match &account {
        Some(account) if q.offline_token && refreshable => Some(authority.issue_refresh(account)?),
        _ => None,
    };
    respond(authority, account.as_ref(), record, &scopes, refresh, false)
}

async fn post_token(
    state: &AppState,
    authority: &Authority,
    body: Body,
    record: &mut Record,
) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| invalid("form body too large or unreadable"))?;
    let mut form = std::collections::HashMap::new();
    for (key, value) in form_urlencoded::parse(&bytes) {
        form.entry(key.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    let field = |name: &str| form.get(name).map(String::as_str);
    record.service = field("service").map(str::to_owned);
    record.asked = field("scope").unwrap_or("").to_owned();
    check_service(authority, field("service"), true)?;
    if field("client_id").is_none_or(str::is_empty) {
        return Err(invalid("client_id is required"));
    }
    let scopes = parse_scopes(field("scope").into_iter())?;
    let offline = field("access_type") == Some("offline");
    let (account, refresh) = match field("grant_type") {
        Some("password") => {
            record.grant = "password";
            record.user = field("username").map(str::to_owned);
            let (Some(user), Some(password)) = (field("username"), field("password")) else {
                return Err(invalid("username and password are required"));
            };
            let account = login(state, authority, user, password, record).await?;
            let refresh = if offline && account.credential == Credential::Password {
                Some(authority.issue_refresh(&account)?)
            } else {
                None
            };
            (account, refresh)
        }
        Some("refresh_token") => {
            record.grant = "refresh_token";
            let Some(refresh) = field("refresh_token") else {
                return Err(invalid("refresh_token is required"));
            };
            let account = authority.redeem_refresh(&state.storage, refresh).await?;
            record.user = Some(account.name.clone());
            record.source = Some(account.source);
            // The same refresh token goes back: docker never stores a
            // rotated one.
            (account, Some(refresh.to_owned()))
        }
        Some(_) => {
            return Err(invalid("unsupported grant_type").oauth("unsupported_grant_type"));
        }
        None => return Err(invalid("grant_type is required")),
    };
    respond(authority, Some(&account), record, &scopes, refresh, true)
}

/// Verifies credentials, through the failed-login limiter.
async fn login(
    state: &AppState,
    authority: &Authority,
    user: &str,
    password: &str,
    record: &mut Record,
) -> Result<Identity, ApiError> {
    // Without a peer address (never the case over TCP) all such callers
    // share one limiter slot: stricter, never looser.
    let addr = record.addr.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let started = std::time::Instant::now();
    let result = authority.login(&state.storage, user, password, addr).await;
    let (source, credential, outcome) = match &result {
        Ok(identity) => (
            identity.source,
            identity.credential.claim().unwrap_or("password"),
            "ok",
        ),
        Err(e) => (
            "unknown",
            "unknown",
            match e {
                AuthError::TooManyFailures(_) => "throttled",
                AuthError::Busy(_) => "busy",
                AuthError::SourceUnavailable(_) | AuthError::Storage(_) => "unavailable",
                AuthError::Internal(_) | AuthError::Token(_) => "error",
                _ => "refused",
            },
        ),
    };
    state
        .metrics
        .login(source, credential, outcome, started.elapsed());
    match result {
        Ok(identity) => {
            record.source = Some(identity.source);
            record.credential = identity.credential.claim();
            if identity.credential != Credential::Password {
                // The name sent (`oauth2accesstoken`) is not who it is.
                record.user = Some(identity.name.clone());
            }
            Ok(identity)
        }
        Err(e @ AuthError::BadCredentials { unknown_user }) => {
            // The client is told the same thing either way (no account
            // enumeration), but the log says which, as distribution's and
            // docker_auth's do: the person reading it is the operator, who
            // needs to tell a typo in a name (`Frank`) from a forgotten
            // password. The log holds the name tried, never the password.
            record.reason = Some(match unknown_user {
                true => "unknown user",
                false => "wrong password",
            });
            Err(e.into())
        }
        Err(e @ AuthError::BadAccessToken(refusal)) => {
            record.reason = Some(refusal.as_str());
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The identity a verified client certificate stands for: the account its
/// subject's common name names, from the identity sources, with that
/// account's groups. A certificate without a CN, or whose CN names no
/// account, is refused (401), not served as anonymous: its holder meant to
/// be someone.
async fn certificate_identity(
    authority: &Authority,
    certificate: &ClientCert,
    record: &mut Record,
) -> Result<Identity, ApiError> {
    let refused = || {
        ApiError::new(ErrorCode::Unauthorized)
            .message("the client certificate names no account")
            .oauth("invalid_grant")
    };
    record.subject = Some(certificate.subject.clone());
    let Some(name) = &certificate.name else {
        record.reason = Some("client certificate subject has no common name");
        return Err(refused());
    };
    record.user = Some(name.clone());
    match authority.lookup(name).await? {
        Some(identity) => {
            record.source = Some(identity.source);
            Ok(identity)
        }
        None => {
            record.reason = Some("client certificate names an unknown user");
            Err(refused())
        }
    }
}

/// A token request names the service it wants a token for; a token for
/// another service would be useless (wrong audience), so say so.
fn check_service(
    authority: &Authority,
    service: Option<&str>,
    required: bool,
) -> Result<(), ApiError> {
    match service {
        Some(s) if s == authority.settings.service => Ok(()),
        Some(s) => Err(invalid(format!("unknown service `{s}`"))),
        None if required => Err(invalid("service is required")),
        None => Ok(()),
    }
}

fn parse_scopes<'a>(raw: impl Iterator<Item = &'a str>) -> Result<Vec<ResourceScope>, ApiError> {
    let mut scopes = Vec::new();
    for value in raw {
        // Several scopes may share one parameter, space-separated.
        let parsed = ResourceScope::parse_list(value)
            .map_err(|e| invalid(e.to_string()).oauth("invalid_scope"))?;
        scopes.extend(parsed);
    }
    Ok(scopes)
}

/// `Authorization: Basic …` as (user, password); `None` when absent.
pub(super) fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(ErrorCode::Unauthorized)
            .message("malformed Basic credentials")
            .oauth("invalid_request")
    };
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = data_encoding::BASE64
        .decode(encoded.trim().as_bytes())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some((user.to_owned(), password.to_owned())))
}

fn respond(
    authority: &Authority,
    account: Option<&Identity>,
    record: &mut Record,
    scopes: &[ResourceScope],
    refresh: Option<String>,
    oauth: bool,
) -> Result<Response, ApiError> {
    let caller = caller(account, record.addr);
    let grant = authority.grant(&caller, scopes);
    let subject = account.map_or("", |a| a.name.as_str());
    record.granted = scope_string(&grant.access);
    record.refused = grant
        .refused
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let credential = account.map_or(Credential::Password, |a| a.credential);
    let issued = authority.issue(subject, credential, grant.access)?;
    let issued_at = crate::auth::token::rfc3339(issued.claims.iat);
    let body = TokenBody {
        token: &issued.token,
        access_token: &issued.token,
        expires_in: issued.claims.exp - issued.claims.iat,
        issued_at,
        scope: oauth.then(|| scope_string(&issued.claims.access)),
        refresh_token: refresh,
    };
    let body = serde_json::to_string(&body).map_err(|_| ApiError::new(ErrorCode::Internal))?;
    let mut response = json_response(StatusCode::OK, "application/json", body);
    // Tokens are credentials: no cache may keep them.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// A token answer: both names of the token (Docker's and OAuth2's), the
/// granted scope for OAuth2 clients, and a refresh token when one was asked
/// for. A struct rather than a JSON tree: it is written on every issuance.
#[derive(serde::Serialize)]
struct TokenBody<'a> {
    token: &'a str,
    access_token: &'a str,
    expires_in: u64,
    issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

/// Access in scope syntax, space-separated.
pub(super) fn scope_string(access: &[AccessEntry]) -> String {
    access
        .iter()
        .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}
