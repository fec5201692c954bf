//! The authorization-code flow with PKCE (RFC 7636), for the sign-in page:
//! the browser is sent to the issuer's authorization endpoint with a
//! `state`, a `nonce` and the challenge of a fresh verifier, and comes back
//! with a code, which Portcullis redeems at the token endpoint (with the
//! verifier, and the client secret when there is one) for an ID token. The
//! ID token is verified exactly as one sent to `/token` is, and must carry
//! the nonce of this sign-in, so that a token from another one cannot be
//! slipped in.
//!
//! The endpoints come from the issuer's discovery document, read at each
//! sign-in (sign-ins are rare; the keys, read on every login, are cached
//! in [`super::keys`]).

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Identity, Issuer, OidcError};

/// Portcullis as a client of the issuer.
pub struct Client {
    pub id: String,
    /// `None`: a public client (PKCE alone).
    pub secret: Option<String>,
    pub scopes: Vec<String>,
}

/// A sign-in begun: where to send the browser, and what to keep until it
/// comes back (in a signed cookie, so that any replica can finish it).
pub struct Started {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

#[derive(Deserialize)]
struct Endpoints {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

/// 32 random bytes, base64url: a state, a nonce, a PKCE verifier (43
/// characters, within RFC 7636's 43 to 128).
fn random_text() -> Result<String, OidcError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| OidcError::Unavailable("no randomness available".into()))?;
    Ok(data_encoding::BASE64URL_NOPAD.encode(&bytes))
}

impl Issuer {
    async fn endpoints(&self) -> Result<Endpoints, OidcError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let fetcher = self.keys.fetcher();
        let found: Endpoints = fetcher.json(&url).await.map_err(OidcError::Unavailable)?;
        if found.issuer != self.config.issuer {
            return Err(OidcError::Unavailable(format!(
                "{url} names the issuer `{}`",
                found.issuer
            )));
        }
        for endpoint in [&found.authorization_endpoint, &found.token_endpoint] {
            if !fetcher.allows(endpoint) {
                return Err(OidcError::Unavailable(format!(
                    "{url}: endpoint `{endpoint}` is not https"
                )));
            }
        }
        Ok(found)
    }

    /// Begins a sign-in: the authorization URL and the secrets it needs
    /// back.
    /// The browser comes back to `redirect_uri`.
    pub async fn start_sign_in(
        &self,
        client: &Client,
        redirect_uri: &str,
    ) -> Result<Started, OidcError> {
        let endpoints = self.endpoints().await?;
        let (state, nonce, verifier) = (random_text()?, random_text()?, random_text()?);
        let challenge = data_encoding::BASE64URL_NOPAD.encode(&Sha256::digest(verifier.as_bytes()));
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(client.scopes.iter().filter(|s| *s != "openid").cloned());
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let endpoint = &endpoints.authorization_endpoint;
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        Ok(Started {
            url: format!("{endpoint}{separator}{query}"),
            state,
            nonce,
            verifier,
        })
    }

    /// Finishes a sign-in: redeems `code` with the verifier and returns
    /// the identity of the ID token, which must carry `nonce`.
    /// `redirect_uri` is the one the sign-in began with.
    pub async fn finish_sign_in(
        &self,
        client: &Client,
        redirect_uri: &str,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Identity, OidcError> {
        let endpoints = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        // A public client names itself in the form; a confidential one
        // authenticates with Basic (client_secret_basic, the default).
        let basic = match &client.secret {
            Some(secret) => Some((client.id.as_str(), secret.as_str())),
            None => {
                form.push(("client_id", client.id.as_str()));
                None
            }
        };
        let answer: TokenAnswer = self
            .keys
            .fetcher()
            .post_form(&endpoints.token_endpoint, &form, basic)
            .await
            // The issuer refused the code (expired, used, wrong verifier) or
            // could not be reached: either way this sign-in is over.
            .map_err(OidcError::Refused)?;
        let id_token = answer
            .id_token
            .ok_or_else(|| OidcError::Refused("the token endpoint gave no ID token".into()))?;
        let identity = self.verify_token(&id_token).await?;
        let carried = identity.claims.get("nonce").map_or("", String::as_str);
        if !crate::auth::same_secret(carried.as_bytes(), nonce.as_bytes()) {
            return Err(OidcError::Refused(
                "the ID token is not from this sign-in (nonce)".into(),
            ));
        }
        Ok(identity)
    }
}
