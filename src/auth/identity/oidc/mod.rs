//! OpenID Connect issuers as identity sources (`[[identity.oidc]]`): an ID
//! token (or a JWT access token) from a configured issuer, sent as the
//! password at `/token`, is the credential. A Docker client cannot run a
//! browser flow; a CI job holds such a token already (GitHub Actions,
//! GitLab CI), and a person gets one from their provider.
//!
//! A token goes to the issuer its (not yet verified) `iss` names, and to
//! that issuer alone ([`Issuers::route`]); nothing it says is believed
//! before its signature checks out. Verification is strict: the header may
//! not carry its own key (`jwk`, `jku`, `x5u`, `x5c`) or critical
//! extensions, `alg: none` and HMAC are refused outright, the algorithm
//! must be one the issuer's key (found by `kid` among the keys the issuer
//! publishes: [`keys`]) is for, and `iss`, `aud`, `exp` (required), `nbf`
//! and `iat` are checked with the configured leeway.
//!
//! The identity: the configured claim names the user (`email` only when
//! `email_verified` is not false), the groups claim gives the groups, both
//! prefixed; the token's other string, number and boolean claims are kept
//! for policy rules that match claims (a CI job's repository and branch).
//! A token verified once is remembered until it expires, for a minute at
//! most, so that a pipeline logging in for every repository costs one
//! signature check.

mod fetch;
pub mod flow;
pub mod keys;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Credential, Identity};
use crate::config::OidcConfig;
use keys::KeySet;

/// Longest token looked at: ID tokens are one or two kilobytes.
const MAX_TOKEN: usize = 16 << 10;
/// Claims kept for policy rules, at most, and the longest value kept.
const MAX_CLAIMS: usize = 64;
const MAX_CLAIM_VALUE: usize = 1024;
/// Groups kept from one token, at most.
const MAX_GROUPS: usize = 256;
/// How long a verified token is remembered, at most.
const REMEMBER: Duration = Duration::from_secs(60);
const REMEMBERED_CAPACITY: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The token is not good (the client's failure; counted by the
    /// failed-login limiter). The reason is safe to tell the client.
    #[error("{0}")]
    Refused(String),
    /// The issuer could not be asked for its keys.
    #[error("{0}")]
    Unavailable(String),
}

/// The configured issuers.
#[derive(Default)]
pub struct Issuers {
    issuers: Vec<Arc<Issuer>>,
}

impl Issuers {
    pub fn new(configs: &[OidcConfig]) -> Result<Self, String> {
        let mut issuers = Vec::new();
        for config in configs {
            issuers.push(Arc::new(Issuer::new(config)?));
            tracing::info!(source = %config.name, issuer = %config.issuer, "OIDC identity source configured");
        }
        Ok(Self { issuers })
    }

    /// The issuer configured under `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<Issuer>> {
        self.issuers.iter().find(|i| i.name == name)
    }

    /// The issuer a password that looks like a JWT names in its `iss`, and
    /// the `sub` it claims (for the failed-login limiter, which counts per
    /// account). `None` for anything else: a password, a token of an issuer
    /// not configured.
    pub fn route(&self, password: &str) -> Option<(Arc<Issuer>, String)> {
        if self.issuers.is_empty() || password.len() > MAX_TOKEN {
            return None;
        }
        let mut parts = password.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let json = data_encoding::BASE64URL_NOPAD
            .decode(payload.as_bytes())
            .ok()?;
        #[derive(serde::Deserialize)]
        struct Unverified {
            iss: String,
            #[serde(default)]
            sub: String,
        }
        let claimed: Unverified = serde_json::from_slice(&json).ok()?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == claimed.iss)?;
        Some((Arc::clone(issuer), claimed.sub))
    }
}

/// One issuer: its settings, its keys, and the tokens it vouched for lately.
pub struct Issuer {
    name: &'static str,
    config: OidcConfig,
    keys: KeySet,
    remembered: Mutex<HashMap<[u8; 32], (Instant, Identity)>>,
}

impl Issuer {
    pub fn new(config: &OidcConfig) -> Result<Self, String> {
        // Identities name their source for as long as the process runs.
        let name: &'static str = Box::leak(config.name.clone().into_boxed_str());
        Ok(Self {
            name,
            config: config.clone(),
            keys: KeySet::new(name, config)?,
            remembered: Mutex::default(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Verifies `token`, sent with the Basic user name `user`, and returns
    /// the identity it stands for.
    pub async fn verify(&self, user: &str, token: &str) -> Result<Identity, OidcError> {
        if let Some(required) = &self.config.username {
            if user != required {
                return Err(OidcError::Refused(format!(
                    "a token of this issuer is sent with the user name `{required}`"
                )));
            }
        }
        self.verify_token(token).await
    }

    /// Verifies `token` (see the module's introduction) and returns the
    /// identity it stands for.
    pub async fn verify_token(&self, token: &str) -> Result<Identity, OidcError> {
        let slot: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.recall(&slot) {
            return Ok(identity);
        }
        let (alg, kid) = checked_header(token)?;
        let keys = self.keys.keys_for(kid.as_deref(), alg).await?;
        let mut validation = Validation::new(alg);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut refusal = OidcError::Refused("no key to check the signature with".into());
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
                Ok(data) => {
                    let (identity, exp) = self.identity(data.claims)?;
                    self.remember(slot, exp, &identity);
                    return Ok(identity);
                }
                Err(e) => refusal = OidcError::Refused(reason(&e)),
            }
        }
        Err(refusal)
    }

    /// The identity a verified token's claims stand for, and when the token
    /// expires (seconds since the epoch).
    fn identity(&self, claims: Map<String, Value>) -> Result<(Identity, u64), OidcError> {
        let refused = |why: String| Err(OidcError::Refused(why));
        let now = crate::auth::token::now();
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        if claims
            .get("iat")
            .and_then(Value::as_u64)
            .is_some_and(|iat| iat > now + self.config.leeway_secs)
        {
            return refused("the token is issued in the future".into());
        }
        let claim = &self.config.username_claim;
        let Some(user) = claims.get(claim).and_then(Value::as_str) else {
            return refused(format!("the token has no `{claim}` claim to name the user"));
        };
        if claim == "email" && claims.get("email_verified") == Some(&Value::Bool(false)) {
            return refused("the token's email is not verified".into());
        }
        if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
            return refused(format!("the token's `{claim}` is not a usable user name"));
        }
        let prefix = &self.config.prefix;
        let groups = match self
            .config
            .groups_claim
            .as_ref()
            .and_then(|c| claims.get(c))
        {
            Some(Value::String(one)) => vec![format!("{prefix}{one}")],
            Some(Value::Array(many)) => many
                .iter()
                .filter_map(Value::as_str)
                .take(MAX_GROUPS)
                .map(|g| format!("{prefix}{g}"))
                .collect(),
            _ => Vec::new(),
        };
        let mut kept = BTreeMap::new();
        for (key, value) in &claims {
            if kept.len() == MAX_CLAIMS {
                break;
            }
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            if text.len() <= MAX_CLAIM_VALUE {
                kept.insert(key.clone(), text);
            }
        }
        let identity = Identity {
            name: format!("{prefix}{user}"),
            groups,
            // Nothing to bind a refresh token to: none is issued for a
            // token login (the token expires; the client sends a new one).
            stamp: String::new(),
            source: self.name,
            dn: None,
            credential: Credential::OidcToken,
            claims: kept,
            narrowed: None,
        };
        Ok((identity, exp))
    }

    fn recall(&self, slot: &[u8; 32]) -> Option<Identity> {
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        match remembered.get(slot) {
            Some((until, identity)) if Instant::now() < *until => Some(identity.clone()),
            Some(_) => {
                remembered.remove(slot);
                None
            }
            None => None,
        }
    }

    fn remember(&self, slot: [u8; 32], exp: u64, identity: &Identity) {
        let left = Duration::from_secs(exp.saturating_sub(crate::auth::token::now()));
        let until = Instant::now() + left.min(REMEMBER);
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= REMEMBERED_CAPACITY {
            let now = Instant::now();
            remembered.retain(|_, (until, _)| *until > now);
            if remembered.len() >= REMEMBERED_CAPACITY {
                remembered.clear();
            }
        }
        remembered.insert(slot, (until, identity.clone()));
    }
}

/// The header's algorithm and `kid`, once the header is found to ask for nothing
/// Portcullis refuses: its own key, critical extensions, no signature, or
/// an HMAC (whose key would have to be a secret Portcullis and the issuer
/// share; keyed with the issuer's public key it proves nothing).
fn checked_header(token: &str) -> Result<(Algorithm, Option<String>), OidcError> {
    let refused = |why: &str| OidcError::Refused(why.to_owned());
    let encoded = token.split('.').next().unwrap_or("");
    let json = data_encoding::BASE64URL_NOPAD
        .decode(encoded.as_bytes())
        .map_err(|_| refused("malformed token header"))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|_| refused("malformed token header"))?;
    for key in ["jwk", "jku", "x5u", "x5c"] {
        if header.contains_key(key) {
            return Err(refused(
                "the token names its own key (jwk, jku, x5u or x5c): only the issuer's published keys are used",
            ));
        }
    }
    if header.contains_key("crit") {
        return Err(refused("the token has critical header extensions"));
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        None => Err(refused("the token header has no alg")),
        Some(alg) if alg.eq_ignore_ascii_case("none") => Err(refused("unsigned token (alg none)")),
        Some(alg) if alg.starts_with("HS") => Err(refused(
            "HMAC-signed token: an issuer signs with its private key",
        )),
        Some(alg) => alg
            .parse::<Algorithm>()
            .map_err(|_| refused("the token's algorithm is not supported")),
    }?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(refused("malformed token header")),
    };
    Ok((alg, kid))
}

/// What a failed verification tells the client.
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet".into(),
        ErrorKind::InvalidAudience => "the token is not for this registry (aud)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted".into(),
        ErrorKind::InvalidSignature => "the token's signature is not valid".into(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
        _ => "malformed token".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn token(header: Value) -> String {
        let part = |v: Value| data_encoding::BASE64URL_NOPAD.encode(v.to_string().as_bytes());
        format!("{}.{}.c2ln", part(header), part(json!({"iss": "x"})))
    }

    fn refusal(header: Value) -> String {
        match checked_header(&token(header)) {
            Err(OidcError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_header_that_names_its_own_key_or_no_signature_is_refused() {
        for key in ["jwk", "jku", "x5u", "x5c"] {
            let why = refusal(json!({"alg": "ES256", "kid": "k", key: "x"}));
            assert!(why.contains("names its own key"), "{key}: {why}");
        }
        assert!(refusal(json!({"alg": "ES256", "crit": ["exp"]})).contains("critical"));
        assert!(refusal(json!({"alg": "none"})).contains("alg none"));
        assert!(refusal(json!({"alg": "NONE"})).contains("alg none"));
        for hmac in ["HS256", "HS384", "HS512"] {
            assert!(refusal(json!({"alg": hmac})).contains("HMAC"), "{hmac}");
        }
        assert!(refusal(json!({"kid": "k"})).contains("no alg"));
        assert!(refusal(json!({"alg": "ES999"})).contains("not supported"));
        assert!(refusal(json!({"alg": "ES256", "kid": 7})).contains("malformed"));
        assert!(matches!(
            checked_header("not a token"),
            Err(OidcError::Refused(_))
        ));
        let (alg, kid) = checked_header(&token(json!({"alg": "ES256", "kid": "k"}))).unwrap();
        assert_eq!((alg, kid.as_deref()), (Algorithm::ES256, Some("k")));
    }

    #[test]
    fn a_token_goes_to_the_issuer_its_iss_names_and_anything_else_nowhere() {
        let config = |name: &str, issuer: &str| OidcConfig {
            name: name.into(),
            issuer: issuer.into(),
            audiences: vec!["r".into()],
            username_claim: "sub".into(),
            groups_claim: None,
            prefix: String::new(),
            username: None,
            ca_file: None,
            allow_http: true,
            timeout_secs: 1,
            jwks_cache_secs: 60,
            jwks_min_refresh_secs: 1,
            leeway_secs: 30,
        };
        let issuers = Issuers::new(&[
            config("a", "http://a.example"),
            config("b", "http://b.example"),
        ])
        .unwrap();
        let jwt = |claims: Value| {
            let part = |v: Value| data_encoding::BASE64URL_NOPAD.encode(v.to_string().as_bytes());
            format!("{}.{}.c2ln", part(json!({"alg": "ES256"})), part(claims))
        };
        let (issuer, sub) = issuers
            .route(&jwt(json!({"iss": "http://b.example", "sub": "s"})))
            .unwrap();
        assert_eq!((issuer.name(), sub.as_str()), ("b", "s"));
        for password in [
            jwt(json!({"iss": "http://c.example"})),
            jwt(json!({"iss": "http://a.example/"})),
            jwt(json!({"sub": "s"})),
            "correct horse battery staple".to_owned(),
            "a.b.c".to_owned(),
            format!("{}.extra", jwt(json!({"iss": "http://a.example"}))),
        ] {
            assert!(issuers.route(&password).is_none(), "{password}");
        }
    }
}
