//! The sign-in page (`[login]`): people sign in through the configured
//! OpenID issuer (the authorization-code flow with PKCE,
//! [`crate::auth::identity::oidc::flow`]) and get what `docker login` can
//! use, a personal access token, along with their groups and what the
//! policy lets them do.
//!
//! | route                      | what it does                                         |
//! |----------------------------|------------------------------------------------------|
//! | `GET /login`               | the page, or a "sign in" link when no one is         |
//! | `GET /login/start`         | to the issuer, with a sign-in cookie                 |
//! | `GET /login/callback`      | back from the issuer: the code redeemed, a session   |
//! | `POST /login/tokens`       | a new token, shown once                              |
//! | `POST /login/tokens/revoke`| one of the person's tokens revoked                   |
//! | `POST /login/logout`       | the session ended                                    |
//!
//! Nothing here is stored but the tokens: the sign-in and the session are
//! signed cookies ([`session`]), so any replica serves any step.

mod page;
mod session;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::access_tokens::{self, NewToken, TokenScope};
use crate::auth::identity::oidc::{OidcError, flow};
use crate::auth::{Authority, caller, same_secret};
use crate::config::LoginConfig;
use crate::error::{ApiError, ErrorCode};
use session::{SESSION, SIGN_IN, Session, SignIn};

/// Largest form the page takes.
const MAX_FORM: usize = 16 << 10;

/// The page's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRoute {
    Page,
    Start,
    Callback,
    CreateToken,
    RevokeToken,
    Logout,
}

impl LoginRoute {
    /// `None`: not a path of the page (or not its method).
    pub fn parse(method: &Method, path: &str) -> Option<Result<Self, ApiError>> {
        let (route, post) = match path {
            "/login" => (LoginRoute::Page, false),
            "/login/start" => (LoginRoute::Start, false),
            "/login/callback" => (LoginRoute::Callback, false),
            "/login/tokens" => (LoginRoute::CreateToken, true),
            "/login/tokens/revoke" => (LoginRoute::RevokeToken, true),
            "/login/logout" => (LoginRoute::Logout, true),
            _ => return None,
        };
        let fits = match post {
            true => *method == Method::POST,
            false => *method == Method::GET || *method == Method::HEAD,
        };
        Some(match fits {
            true => Ok(route),
            false => Err(ErrorCode::Unsupported.into()),
        })
    }
}

/// The page's settings, read at start.
pub struct SignInPage {
    config: LoginConfig,
    client: flow::Client,
}

impl SignInPage {
    pub fn new(config: &LoginConfig) -> Result<Self, String> {
        let secret = match &config.client_secret_file {
            Some(file) => Some(crate::config::read_secret(
                "login.client_secret_file",
                file,
            )?),
            None => None,
        };
        Ok(Self {
            client: flow::Client {
                id: config.client_id.clone(),
                secret,
                scopes: config.scopes.clone(),
            },
            config: config.clone(),
        })
    }
}

/// Where the browser reaches us, and so where the issuer sends it back.
struct Here {
    base: String,
}

impl Here {
    fn of(state: &AppState, parts: &Parts) -> Self {
        Self {
            base: super::authorize::public_base(state, parts),
        }
    }

    fn redirect_uri(&self) -> String {
        format!("{}/login/callback", self.base)
    }

    /// Cookies are `Secure` when the page is https.
    fn secure(&self) -> bool {
        self.base.starts_with("https://")
    }

    /// `host[:port]`, for the `docker login` shown.
    fn registry_host(&self) -> &str {
        self.base
            .split_once("://")
            .map_or(&self.base, |(_, host)| host)
    }
}

/// Answers one of the page's routes.
pub async fn serve(state: &Arc<AppState>, route: LoginRoute, parts: Parts, body: Body) -> Response {
    let (Some(page), Some(authority)) = (&state.sign_in, &state.auth) else {
        return ApiError::new(ErrorCode::NotFound).into_response();
    };
    let here = Here::of(state, &parts);
    let answer = match route {
        LoginRoute::Page => show(state, page, authority, &parts, &here, None).await,
        LoginRoute::Start => start(page, authority, &here).await,
        LoginRoute::Callback => callback(page, authority, &parts, &here).await,
        LoginRoute::CreateToken => create(state, page, authority, &parts, &here, body).await,
        LoginRoute::RevokeToken => revoke(state, authority, &parts, body).await,
        LoginRoute::Logout => Ok(logout(&here)),
    };
    let mut response = answer
        .unwrap_or_else(|message| page::html(StatusCode::BAD_REQUEST, page::problem(&message)));
    // The page holds a secret once, and acts on clicks: no cache keeps it,
    // no other site frames it, and it runs no script at all.
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The page: signed in, what the person is and may do, their tokens, and
/// `created` (a token just made, shown this once).
async fn show(
    state: &AppState,
    page: &SignInPage,
    authority: &Authority,
    parts: &Parts,
    here: &Here,
    created: Option<page::Created>,
) -> Result<Response, String> {
    let Some(session) = Session::read(authority, &parts.headers) else {
        return Ok(page::html(
            StatusCode::OK,
            page::signed_out(&page.config.issuer),
        ));
    };
    let source = authority
        .issuer(&session.source)
        .map_or("unknown", |issuer| issuer.name());
    let identity = session.identity(source);
    let rules = authority
        .policy()
        .applicable(&caller(Some(&identity), None));
    let mut tokens = Vec::new();
    for (id, record) in access_tokens::list(&state.storage)
        .await
        .map_err(|e| unavailable(&e.to_string()))?
    {
        if record.user == session.sub {
            let used = state.storage.access_token_used(&id).await.ok().flatten();
            tokens.push((record, used));
        }
    }
    let view = page::SignedIn {
        session: &session,
        rules: &rules,
        tokens: &tokens,
        created: created.as_ref(),
        registry: here.registry_host(),
        max_days: page.config.token_max_days,
    };
    Ok(page::html(StatusCode::OK, page::signed_in(&view)))
}

/// The message a person sees when the store or the issuer failed; the
/// log has the cause.
fn unavailable(cause: &str) -> String {
    tracing::warn!(cause, "sign-in page: a dependency failed");
    "The sign-in service is unavailable right now; try again in a moment.".to_owned()
}

async fn start(page: &SignInPage, authority: &Authority, here: &Here) -> Result<Response, String> {
    let issuer = authority
        .issuer(&page.config.issuer)
        .ok_or_else(|| unavailable("the sign-in issuer is not configured"))?;
    let started = issuer
        .start_sign_in(&page.client, &here.redirect_uri())
        .await
        .map_err(|e| unavailable(&oidc_message(&e)))?;
    let sign_in = SignIn::new(authority, started.state, started.nonce, started.verifier);
    let cookie = session::sign(authority, &sign_in).ok_or_else(|| unavailable("signing"))?;
    let mut response = redirect(&started.url);
    if let Some(value) =
        session::set_cookie(SIGN_IN, Some((&cookie, sign_in.lifetime())), here.secure())
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

fn oidc_message(e: &OidcError) -> String {
    match e {
        OidcError::Refused(why) | OidcError::Unavailable(why) => why.clone(),
    }
}

async fn callback(
    page: &SignInPage,
    authority: &Authority,
    parts: &Parts,
    here: &Here,
) -> Result<Response, String> {
    let query = form(parts.uri.query().unwrap_or("").as_bytes());
    if let Some(error) = query.get("error") {
        // The issuer says why (the person cancelled, the client is not
        // allowed): a message for the person, nothing secret.
        let said = query.get("error_description").unwrap_or(error);
        return Err(format!("The sign-in did not complete: {said}"));
    }
    let again = "This sign-in expired or was not started here: sign in again.";
    let sign_in = SignIn::read(authority, &parts.headers).ok_or(again)?;
    let state = query.get("state").map_or("", String::as_str);
    if !same_secret(state.as_bytes(), sign_in.state.as_bytes()) {
        return Err(again.to_owned());
    }
    let code = query.get("code").ok_or("The issuer sent no code back.")?;
    let issuer = authority
        .issuer(&page.config.issuer)
        .ok_or_else(|| unavailable("the sign-in issuer is not configured"))?;
    let identity = issuer
        .finish_sign_in(
            &page.client,
            &here.redirect_uri(),
            code,
            &sign_in.verifier,
            &sign_in.nonce,
        )
        .await
        .map_err(|e| match e {
            OidcError::Refused(why) => {
                tracing::info!(reason = why, "sign-in refused");
                format!("The sign-in was refused: {why}")
            }
            OidcError::Unavailable(why) => unavailable(&why),
        })?;
    tracing::info!(
        user = identity.name,
        source = identity.source,
        "signed in on the sign-in page"
    );
    let lifetime = Duration::from_secs(page.config.session_secs);
    let session = Session::new(authority, &identity, lifetime);
    let cookie = session::sign(authority, &session).ok_or_else(|| unavailable("signing"))?;
    let mut response = redirect("/login");
    let secure = here.secure();
    let headers = response.headers_mut();
    for value in [
        session::set_cookie(SESSION, Some((&cookie, session.lifetime_left())), secure),
        session::set_cookie(SIGN_IN, None, secure),
    ]
    .into_iter()
    .flatten()
    {
        headers.append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// A form posted by the page, with the session it belongs to; refused when
/// there is none or the form token is not the session's.
async fn posted(
    authority: &Authority,
    parts: &Parts,
    body: Body,
) -> Result<(Session, HashMap<String, String>), String> {
    let session = Session::read(authority, &parts.headers)
        .ok_or("Your sign-in has expired: sign in again.")?;
    let bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| "The form is too large.")?;
    let fields = form(&bytes);
    let sent = fields.get("form_token").map_or("", String::as_str);
    if !same_secret(sent.as_bytes(), session.form_token.as_bytes()) {
        return Err("This form is not from your current sign-in: reload the page.".into());
    }
    Ok((session, fields))
}

async fn create(
    state: &AppState,
    page: &SignInPage,
    authority: &Authority,
    parts: &Parts,
    here: &Here,
    body: Body,
) -> Result<Response, String> {
    let (session, fields) = posted(authority, parts, body).await?;
    let field = |name: &str| fields.get(name).map_or("", |v| v.trim());
    let name = field("name");
    let days: u64 = field("expires_days")
        .parse()
        .map_err(|_| "The lifetime must be a number of days.")?;
    if !(1..=page.config.token_max_days).contains(&days) {
        return Err(format!(
            "The lifetime must be between 1 and {} days.",
            page.config.token_max_days
        ));
    }
    let scopes = field("scopes")
        .split_whitespace()
        .map(TokenScope::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let source = authority
        .issuer(&session.source)
        .ok_or("Your sign-in's issuer is no longer configured: sign in again.")?;
    let owner = session.identity(source.name());
    let new = NewToken {
        owner: &owner,
        name,
        scopes: &scopes,
        expires: Some(crate::auth::token::now() + days * 86_400),
    };
    let created = access_tokens::create(&state.storage, new)
        .await
        .map_err(|e| match e {
            access_tokens::AccessTokenError::Invalid(why) => why,
            other => unavailable(&other.to_string()),
        })?;
    tracing::info!(
        user = owner.name,
        name,
        "access token made on the sign-in page"
    );
    let created = page::Created {
        name: name.to_owned(),
        token: created.token,
    };
    show(state, page, authority, parts, here, Some(created)).await
}

async fn revoke(
    state: &AppState,
    authority: &Authority,
    parts: &Parts,
    body: Body,
) -> Result<Response, String> {
    let (session, fields) = posted(authority, parts, body).await?;
    let name = fields.get("name").map_or("", String::as_str);
    access_tokens::revoke(&state.storage, &session.sub, name)
        .await
        .map_err(|e| unavailable(&e.to_string()))?;
    tracing::info!(
        user = session.sub,
        name,
        "access token revoked on the sign-in page"
    );
    Ok(redirect("/login"))
}

fn logout(here: &Here) -> Response {
    let mut response = redirect("/login");
    if let Some(value) = session::set_cookie(SESSION, None, here.secure()) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn form(bytes: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    for (key, value) in form_urlencoded::parse(bytes) {
        fields
            .entry(key.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    fields
}
