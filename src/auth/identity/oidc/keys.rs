//! An issuer's signing keys. Discovery
//! (`<issuer>/.well-known/openid-configuration`) names the key set
//! (`jwks_uri`); the set is kept for `jwks_cache_secs`, fetched again at
//! once for a token that names a key the set lacks (the issuer rotated),
//! but never more often than every `jwks_min_refresh_secs`, so that tokens
//! naming made-up keys cannot make Portcullis hammer the issuer. One fetch
//! runs at a time; logins waiting for it use its result.
//!
//! A key is used only for the algorithms it is for: the JWK's own `alg`, or
//! what its type and curve allow (EC P-256: ES256, P-384: ES384; RSA: RS*
//! and PS*; Ed25519: EdDSA). Symmetric keys (`kty: oct`) and encryption
//! keys are never kept: an issuer's key is public, and an HMAC keyed with a
//! public value proves nothing.
//!
//! When the issuer cannot be reached, the keys fetched before stay in use
//! (with a warning) until it can; with no keys at all its logins are
//! "unavailable", not refused.

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::OidcError;
use super::fetch::Fetcher;
use crate::config::OidcConfig;

/// Keys kept from one set at most: issuers publish a handful.
const MAX_KEYS: usize = 32;

pub struct Key {
    pub kid: Option<String>,
    pub decoding: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct Known {
    keys: Vec<Arc<Key>>,
    /// When the keys were last fetched successfully.
    fetched: Option<Instant>,
    /// When a fetch was last tried, and why it failed if it did.
    attempted: Option<Instant>,
    failure: Option<String>,
}

impl Known {
    fn matching(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<Key>> {
        self.keys
            .iter()
            .filter(|k| k.algorithms.contains(&alg))
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .cloned()
            .collect()
    }
}

pub struct KeySet {
    source: &'static str,
    issuer: String,
    fetcher: Fetcher,
    known: RwLock<Known>,
    fetching: tokio::sync::Mutex<()>,
    cache: Duration,
    min_refresh: Duration,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    pub fn new(source: &'static str, config: &OidcConfig) -> Result<Self, String> {
        Ok(Self {
            source,
            issuer: config.issuer.clone(),
            fetcher: Fetcher::new(config).map_err(|e| format!("identity.oidc `{source}`: {e}"))?,
            known: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
            cache: Duration::from_secs(config.jwks_cache_secs),
            min_refresh: Duration::from_secs(config.jwks_min_refresh_secs),
        })
    }

    /// The client the issuer is reached with.
    pub(super) fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// The keys that may have signed a token with this header: the one its
    /// `kid` names (every key for `alg` when it names none). Answers from
    /// memory, without waiting, while the set is fresh and holds the key.
    pub async fn keys_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Arc<Key>>, OidcError> {
        if let Some(decided) = self.decide(kid, alg, false) {
            return decided;
        }
        let _turn = self.fetching.lock().await;
        // A fetch may have ended while this login waited for its turn.
        if let Some(decided) = self.decide(kid, alg, false) {
            return decided;
        }
        let fetched = self.fetch().await;
        let now = Instant::now();
        {
            let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
            known.attempted = Some(now);
            match fetched {
                Ok(keys) => {
                    tracing::info!(
                        source = self.source,
                        keys = keys.len(),
                        "issuer keys fetched"
                    );
                    known.keys = keys;
                    known.fetched = Some(now);
                    known.failure = None;
                }
                Err(e) => {
                    tracing::warn!(source = self.source, error = %e, "issuer keys not fetched");
                    known.failure = Some(e);
                }
            }
        }
        self.decide(kid, alg, true)
            .expect("a decision once a fetch was tried")
    }

    /// What is known now, or `None` when the keys must be fetched first
    /// (never when `fetched_now`).
    fn decide(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        fetched_now: bool,
    ) -> Option<Result<Vec<Arc<Key>>, OidcError>> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let fresh = known
            .fetched
            .is_some_and(|t| now.duration_since(t) < self.cache);
        let may_fetch = !fetched_now
            && known
                .attempted
                .is_none_or(|t| now.duration_since(t) >= self.min_refresh);
        let found = known.matching(kid, alg);
        if !found.is_empty() && (fresh || !may_fetch) {
            if !fresh {
                tracing::warn!(
                    source = self.source,
                    "issuer keys past their cache time, still used: the issuer could not be reached"
                );
            }
            return Some(Ok(found));
        }
        if may_fetch {
            return None;
        }
        Some(Err(match &known.failure {
            // The set the issuer publishes now lacks the key.
            None => OidcError::Refused(match kid {
                Some(_) => "signed with a key the issuer does not publish".into(),
                None => "no key of the issuer signs with this algorithm".into(),
            }),
            // The issuer could not be asked: the key may well be new.
            Some(failure) => OidcError::Unavailable(failure.clone()),
        }))
    }

    async fn fetch(&self) -> Result<Vec<Arc<Key>>, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self.fetcher.json(&url).await?;
        // OpenID Connect Discovery 1.0, 4.3: the document must name the
        // issuer it was fetched for, exactly.
        if discovery.issuer != self.issuer {
            return Err(format!(
                "{url} names the issuer `{}`, not `{}`",
                discovery.issuer, self.issuer
            ));
        }
        if !self.fetcher.allows(&discovery.jwks_uri) {
            return Err(format!(
                "{url}: jwks_uri `{}` is not https",
                discovery.jwks_uri
            ));
        }
        let set: JwkSet = self.fetcher.json(&discovery.jwks_uri).await?;
        let keys: Vec<Arc<Key>> = set
            .keys
            .into_iter()
            .filter_map(usable)
            .take(MAX_KEYS)
            .map(Arc::new)
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "{}: no usable signing key in the set",
                discovery.jwks_uri
            ));
        }
        Ok(keys)
    }
}

/// A published key as Portcullis uses it, or `None` for one it must not
/// (or cannot) verify signatures with.
pub fn usable(value: serde_json::Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        // `oct`: a shared secret, never an issuer's public key.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        // The key's own algorithm, when it is one its type can sign with.
        Some(alg) => {
            let alg = Algorithm::from_str(&alg.to_string()).ok()?;
            by_type.contains(&alg).then(|| vec![alg])?
        }
        None => by_type,
    };
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id,
        decoding,
        algorithms,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    // A P-256 public point (RFC 7515, A.3) and an RSA modulus stand-in:
    // `usable` only reads them into a key, it verifies nothing.
    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn algorithms(jwk: serde_json::Value) -> Option<Vec<Algorithm>> {
        usable(jwk).map(|k| k.algorithms)
    }

    #[test]
    fn a_key_is_used_only_for_what_its_type_and_alg_allow() {
        let ec = |extra: serde_json::Value| {
            let mut jwk = json!({"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "k"});
            jwk.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            jwk
        };
        assert_eq!(algorithms(ec(json!({}))), Some(vec![Algorithm::ES256]));
        assert_eq!(
            algorithms(ec(json!({"alg": "ES256", "use": "sig"}))),
            Some(vec![Algorithm::ES256])
        );
        assert_eq!(usable(ec(json!({}))).unwrap().kid.as_deref(), Some("k"));
        // An alg its type cannot sign with, HMAC included: not used at all.
        assert_eq!(algorithms(ec(json!({"alg": "RS256"}))), None);
        assert_eq!(algorithms(ec(json!({"alg": "HS256"}))), None);
        assert_eq!(algorithms(ec(json!({"use": "enc"}))), None);
        let rsa = json!({"kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"});
        assert_eq!(
            algorithms(rsa.clone()).map(|a| a.len()),
            Some(6),
            "RS* and PS*"
        );
        let mut rs256 = rsa;
        rs256["alg"] = json!("RS256");
        assert_eq!(algorithms(rs256), Some(vec![Algorithm::RS256]));
        // A shared secret is never an issuer's key.
        assert_eq!(
            algorithms(json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"})),
            None
        );
        assert_eq!(
            algorithms(json!({"kty": "EC", "crv": "P-521", "x": X, "y": Y})),
            None
        );
        assert_eq!(algorithms(json!({"kty": "what"})), None);
    }
}
