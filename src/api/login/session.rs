//! The sign-in page's two cookies, each a JWT signed with the token
//! signing key (so that any replica can read what another wrote, and no
//! one can forge one), under an audience of its own so that neither is ever
//! taken for an access token, a refresh token, or the other:
//!
//! - `portcullis_sign_in`: a sign-in begun (state, nonce, PKCE verifier),
//!   for ten minutes, until the browser comes back from the issuer;
//! - `portcullis_session`: who signed in (name, source, groups) and the
//!   form token that the page's forms must send back (CSRF), for
//!   `login.session_secs`.
//!
//! Both are `HttpOnly`, `SameSite=Lax` (a cross-site form post carries
//! neither), limited to `/login`, and `Secure` when the page is https.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use serde::{Deserialize, Serialize};

use crate::auth::Authority;
use crate::auth::identity::{Credential, Identity};
use crate::auth::token;

pub const SESSION: &str = "portcullis_session";
pub const SIGN_IN: &str = "portcullis_sign_in";

/// How long a browser may take at the issuer.
const SIGN_IN_LIFETIME: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize, Deserialize)]
pub struct Session {
    iss: String,
    /// The person's name, as their identity source gives it.
    pub sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    pub source: String,
    pub groups: Vec<String>,
    /// Sent back by every form of the page.
    pub form_token: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SignIn {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

fn audience(authority: &Authority, what: &str) -> String {
    format!("{}#{what}", authority.settings.service)
}

/// The times of a cookie valid from now for `lifetime`.
fn times(lifetime: Duration) -> (u64, u64, u64) {
    let now = token::now();
    (
        now + lifetime.as_secs(),
        now.saturating_sub(token::LEEWAY_SECS),
        now,
    )
}

impl Session {
    pub fn new(authority: &Authority, identity: &Identity, lifetime: Duration) -> Self {
        let (exp, nbf, iat) = times(lifetime);
        Self {
            iss: authority.settings.issuer.clone(),
            sub: identity.name.clone(),
            aud: audience(authority, "login"),
            exp,
            nbf,
            iat,
            source: identity.source.to_owned(),
            groups: identity.groups.clone(),
            form_token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The identity the session stands for, as tokens made on the page
    /// record their owner.
    pub fn identity(&self, source: &'static str) -> Identity {
        Identity {
            name: self.sub.clone(),
            groups: self.groups.clone(),
            stamp: String::new(),
            source,
            dn: None,
            credential: Credential::OidcToken,
            claims: Default::default(),
            narrowed: None,
        }
    }

    pub fn read(authority: &Authority, headers: &HeaderMap) -> Option<Self> {
        read(authority, headers, SESSION, "login")
    }

    pub fn lifetime_left(&self) -> u64 {
        self.exp.saturating_sub(token::now())
    }
}

impl SignIn {
    pub fn new(authority: &Authority, state: String, nonce: String, verifier: String) -> Self {
        let (exp, nbf, iat) = times(SIGN_IN_LIFETIME);
        Self {
            iss: authority.settings.issuer.clone(),
            sub: String::new(),
            aud: audience(authority, "login-flow"),
            exp,
            nbf,
            iat,
            state,
            nonce,
            verifier,
        }
    }

    pub fn read(authority: &Authority, headers: &HeaderMap) -> Option<Self> {
        read(authority, headers, SIGN_IN, "login-flow")
    }

    pub fn lifetime(&self) -> u64 {
        SIGN_IN_LIFETIME.as_secs()
    }
}

fn read<T: serde::de::DeserializeOwned>(
    authority: &Authority,
    headers: &HeaderMap,
    name: &str,
    what: &str,
) -> Option<T> {
    let value = cookie(headers, name)?;
    let s = &authority.settings;
    token::verify_as(
        &authority.keys(),
        value,
        &s.issuer,
        &audience(authority, what),
    )
    .ok()
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` for `name`: `value` for `max_age` seconds, or (`None`)
/// removed.
pub fn set_cookie(name: &str, value: Option<(&str, u64)>, secure: bool) -> Option<HeaderValue> {
    let (value, max_age) = value.unwrap_or(("", 0));
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/login; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

/// Signs a cookie's claims.
pub fn sign(authority: &Authority, claims: &impl Serialize) -> Option<String> {
    token::sign(&authority.keys(), claims).ok()
}
