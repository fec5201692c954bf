//! `[login]`: the sign-in page at `/login`, where people sign in through an
//! OpenID issuer of `[[identity.oidc]]` and make personal access tokens.
//! The issuer sends people back to `<public URL>/login/callback`
//! (`server.public_url`, else the scheme and host the browser used), which
//! must be registered with it.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The `[[identity.oidc]]` people sign in with (its `name`).
    pub issuer: String,
    /// Portcullis' client id at the issuer; ID tokens carry it as their
    /// audience, so it must be one of the issuer's `audiences`.
    pub client_id: String,
    /// A file holding the client secret, for a confidential client
    /// (sent with HTTP Basic to the token endpoint). Unset: a public
    /// client, protected by PKCE alone.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The scopes asked for; `openid` is always among them.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// How long a sign-in lasts on the page, in seconds.
    #[serde(default = "default_session_secs")]
    pub session_secs: u64,
    /// The longest lifetime, in days, of a token made on the page.
    #[serde(default = "default_token_max_days")]
    pub token_max_days: u64,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}

fn default_session_secs() -> u64 {
    3600
}

fn default_token_max_days() -> u64 {
    90
}

impl LoginConfig {
    /// Problems with the values alone, as (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.client_id.is_empty() {
            problems.push(("client_id", "must not be empty".into()));
        }
        if !(60..=86_400).contains(&self.session_secs) {
            problems.push(("session_secs", "must be between 60 and 86400".into()));
        }
        if !(1..=3650).contains(&self.token_max_days) {
            problems.push(("token_max_days", "must be between 1 and 3650".into()));
        }
        problems
    }
}
