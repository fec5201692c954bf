//! Portcullis' own credentials at an upstream registry: what its challenge
//! asks for (nothing, Basic, or a bearer token from its token server), and
//! the tokens fetched for each scope, kept until shortly before they
//! expire. Never the client's credentials: the client was authorized by
//! Portcullis, and the upstream sees Portcullis' account.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use data_encoding::BASE64;

/// What an upstream's `WWW-Authenticate` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`: the account's name and password on every request.
    Basic,
    /// `Bearer realm=…,service=…`: a token from `realm` per scope.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value; `None` for a scheme Portcullis
    /// cannot answer.
    pub fn parse(value: &str) -> Option<Self> {
        let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Self::Basic),
            "bearer" => {
                let params = parameters(params);
                let realm = params.get("realm")?.clone();
                // A realm that is not a URL Portcullis can ask is no realm.
                if !(realm.starts_with("https://") || realm.starts_with("http://")) {
                    return None;
                }
                Some(Self::Bearer {
                    realm,
                    service: params.get("service").cloned(),
                })
            }
            _ => None,
        }
    }
}

/// `key="value", key=value` pairs of a challenge, keys lowercased.
fn parameters(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => {
                // A quoted string, with `\` escaping the next character.
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, next)) = chars.next() {
                                value.push(next);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end.min(quoted.len())..])
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            }
        };
        out.insert(key, value);
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// Portcullis' account at the upstream.
#[derive(Clone)]
pub struct Account {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of every log line and panic message.
        f.debug_struct("Account")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Account {
    pub fn basic(&self) -> HeaderValue {
        let credentials = BASE64.encode(format!("{}:{}", self.username, self.password).as_bytes());
        let mut value = HeaderValue::from_str(&format!("Basic {credentials}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        value.set_sensitive(true);
        value
    }
}

/// A token is used until this long before its end, so that it does not
/// expire on its way.
const EARLY: Duration = Duration::from_secs(10);

/// What the token server's answer says, as distribution's clients read it.
#[derive(serde::Deserialize)]
pub struct TokenAnswer {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Seconds; 60 when absent (the token specification's default).
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// Tokens per scope, bounded: emptied when full (scopes are repositories
/// times actions, and the next request fetches again).
#[derive(Default)]
pub struct Tokens {
    entries: Mutex<HashMap<String, (Instant, HeaderValue)>>,
}

const MAX_TOKENS: usize = 4096;

impl Tokens {
    pub fn get(&self, scope: &str) -> Option<HeaderValue> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(scope)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, value)| value.clone())
    }

    /// Keeps the token of `answer` for `scope`; returns its header value.
    pub fn put(&self, scope: &str, answer: TokenAnswer) -> Option<HeaderValue> {
        let token = answer.token.or(answer.access_token)?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).max(1));
        let until = Instant::now() + lifetime.saturating_sub(EARLY);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_TOKENS {
            entries.clear();
        }
        entries.insert(scope.to_owned(), (until, value.clone()));
        Some(value)
    }

    /// Forgets `scope`'s token (the upstream refused it).
    pub fn forget(&self, scope: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_as_distribution_and_docker_hub_write_them() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm="http://10.0.0.1:5001/token", service = "a \"b\"""#),
            Some(Challenge::Bearer {
                realm: "http://10.0.0.1:5001/token".into(),
                service: Some("a \"b\"".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(r#"Bearer realm="file:///etc/passwd""#),
            None
        );
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn tokens_are_kept_per_scope_until_shortly_before_they_expire() {
        let tokens = Tokens::default();
        let answer = |expires_in| TokenAnswer {
            token: Some("abc".into()),
            access_token: None,
            expires_in: Some(expires_in),
        };
        tokens.put("repository:a:pull", answer(300)).unwrap();
        assert_eq!(tokens.get("repository:a:pull").unwrap(), "Bearer abc");
        assert!(tokens.get("repository:b:pull").is_none());
        // Ten seconds of life or less is no life.
        tokens.put("repository:c:pull", answer(5)).unwrap();
        assert!(tokens.get("repository:c:pull").is_none());
        tokens.forget("repository:a:pull");
        assert!(tokens.get("repository:a:pull").is_none());
    }
}
