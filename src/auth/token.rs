//! Registry bearer tokens (JWT): claims, signing, strict verification.
//!
//! Verification trusts nothing in the token before its signature checks
//! out: the key is looked up by `kid` among our own keys only (never taken
//! from `x5c` or `jwk` in the token), the algorithm must be the one that key
//! signs with (so `none`, or HS256 keyed with our public key, cannot pass),
//! and issuer, audience, expiry and not-before are checked with a small
//! leeway for clock drift between replicas.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Validation;
use serde::{Deserialize, Serialize};

use super::keys::KeyRing;
use super::scope::AccessEntry;

/// Clock drift tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The account name; empty for an anonymous caller.
    pub sub: String,
    /// One string, not an array: distribution 2.8 accepts nothing else.
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub access: Vec<AccessEntry>,
    /// Refresh tokens only: the stamp of the identity they were issued to
    /// (see `users`), so that they die with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    /// What the caller proved their identity with, when it was not a
    /// password: `oidc` (an OpenID issuer's token). For the audit trail;
    /// registries ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signed with an unknown key")]
    UnknownKey,
    #[error("token algorithm not accepted")]
    Algorithm,
    #[error("token signature invalid")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer not accepted")]
    Issuer,
    #[error("token audience not accepted")]
    Audience,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Seconds since the epoch as RFC 3339 in UTC (`2026-12-04T20:31:07Z`),
/// for token answers, the sign-in page and `token list`; the number itself
/// if it is out of range.
pub fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Claims {
    /// Claims for a token valid from now for `lifetime`.
    pub fn new(
        issuer: &str,
        subject: &str,
        audience: &str,
        lifetime: Duration,
        access: Vec<AccessEntry>,
    ) -> Self {
        let now = now();
        Self {
            iss: issuer.to_owned(),
            sub: subject.to_owned(),
            aud: audience.to_owned(),
            exp: now + lifetime.as_secs(),
            // Slightly in the past, so that a registry whose clock is a
            // little behind ours accepts the token at once.
            nbf: now.saturating_sub(LEEWAY_SECS),
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
            stamp: None,
            credential: None,
        }
    }
}

/// Signs claims with the ring's current key; the header names the key by
/// its libtrust id and carries the certificate in `x5c`.
pub fn sign(keys: &KeyRing, claims: &impl Serialize) -> Result<String, TokenError> {
    let json = serde_json::to_vec(claims).map_err(|e| TokenError::Sign(e.to_string()))?;
    keys.signer().sign_jwt(&json).map_err(TokenError::Sign)
}

/// Verifies a token and returns its claims.
pub fn verify(
    keys: &KeyRing,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<Claims, TokenError> {
    verify_as(keys, token, issuer, audience)
}

/// Verifies a token of ours whose claims are `T` (the sign-in page's
/// cookies): the same checks, `exp`, `nbf`, `iss`, `aud` and `sub`
/// required.
pub fn verify_as<T: serde::de::DeserializeOwned>(
    keys: &KeyRing,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<T, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
    let key = keys.find(kid).ok_or(TokenError::UnknownKey)?;
    if header.alg != key.kind.algorithm() {
        return Err(TokenError::Algorithm);
    }
    let mut validation = Validation::new(key.kind.algorithm());
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    use jsonwebtoken::errors::ErrorKind;
    jsonwebtoken::decode::<T>(token, &key.decoding, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
            ErrorKind::InvalidSignature => TokenError::Signature,
            _ => TokenError::Malformed,
        })
}

#[cfg(test)]
mod tests;
