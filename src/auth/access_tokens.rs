//! Personal access tokens: long-lived secrets a person (or a robot account)
//! hands to `docker login` in place of a password they may not have (an SSO
//! account) or must not spread (a deploy system).
//!
//! A token reads `pcat_<id>_<secret>`: the id (16 hex digits) names its
//! record in storage, so that every replica knows it and a revocation holds
//! everywhere at once; the secret (32 random bytes, hex) is kept only as its
//! SHA-256 and compared in constant time. The record says whose token it
//! is, what it may be narrowed to (`scopes`: repository globs and actions),
//! when it expires, and the account's stamp, so that a token dies with its
//! account (deleted, re-created, its password changed), as refresh tokens
//! do.
//!
//! A token never grants more than its owner's policy allows at the time of
//! use: the owner is looked up again in the identity sources (their groups
//! now) and the policy decides as for a password login; the scopes only
//! narrow that. An owner who signed in through an OpenID issuer cannot be
//! looked up anywhere, so their record keeps the groups they had when they
//! made the token, and the policy of the day decides on those.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::identity::{Credential, Identity};
use super::scope::Action;
use crate::policy::RepoPattern;
use crate::storage::Storage;
use crate::storage::paths::AccessTokenId;

/// What every token starts with, so that a password can be told from one
/// without a lookup (and secret scanners can find leaked ones).
pub const PREFIX: &str = "pcat_";

const SECRET_BYTES: usize = 32;

/// How often one process records a token's use: "last used" is for people
/// deciding which tokens to revoke, and a write per pull would cost more
/// than it tells.
const USE_RECORDED_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AccessTokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("access token record {0} unreadable: {1}")]
    Unreadable(AccessTokenId, String),
}

/// A token as a client sent it, split but not yet checked.
#[derive(Debug)]
pub struct Presented<'a> {
    pub id: AccessTokenId,
    secret: &'a str,
}

impl<'a> Presented<'a> {
    /// `None`: not shaped like one of our tokens (a password, another
    /// issuer's token).
    pub fn parse(password: &'a str) -> Option<Self> {
        let rest = password.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let id = AccessTokenId::parse(id)?;
        (secret.len() == SECRET_BYTES * 2 && secret.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(Self { id, secret })
    }
}

/// One repository glob and the actions a token may use on it.
#[derive(Debug, Clone)]
pub struct TokenScope {
    text: String,
    repositories: RepoPattern,
    actions: Vec<Action>,
}

impl PartialEq for TokenScope {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for TokenScope {}

impl TokenScope {
    /// `REPO_GLOB:ACTIONS`, e.g. `ci/**:pull,push` or `team/app:*`.
    pub fn parse(text: &str) -> Result<Self, AccessTokenError> {
        let invalid = |why: &str| {
            AccessTokenError::Invalid(format!(
                "scope `{text}`: {why} (expected REPO_GLOB:ACTIONS, e.g. `ci/**:pull,push`)"
            ))
        };
        let (glob, actions) = text.rsplit_once(':').ok_or_else(|| invalid("no actions"))?;
        let repositories = RepoPattern::parse(glob).map_err(|e| invalid(&e))?;
        let mut parsed = Vec::new();
        for action in actions.split(',') {
            match action.trim() {
                "*" => parsed.extend(Action::ALL),
                a => parsed.push(Action::parse(a).ok_or_else(|| invalid("unknown action"))?),
            }
        }
        parsed.sort();
        parsed.dedup();
        Ok(Self {
            text: text.to_owned(),
            repositories,
            actions: parsed,
        })
    }

    /// Whether this scope lets a token do `action` on repository `name`.
    pub fn allows(&self, name: &str, action: Action) -> bool {
        self.repositories.matches(name) && self.actions.contains(&action)
    }
}

/// A token as kept in storage. Never holds the secret, only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub name: String,
    pub user: String,
    /// The identity source that vouched for the owner when the token was
    /// made.
    pub source: String,
    /// The owner's stamp then, for sources that can look the owner up.
    #[serde(default)]
    pub stamp: String,
    /// The owner's groups then, used only where the owner cannot be looked
    /// up (an OpenID sign-in).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Empty: whatever the owner's policy allows.
    #[serde(default)]
    pub scopes: Vec<String>,
    pub created: u64,
    #[serde(default)]
    pub expires: Option<u64>,
    pub secret_sha256: String,
}

impl Record {
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    pub fn scopes(&self) -> Result<Vec<TokenScope>, AccessTokenError> {
        self.scopes.iter().map(|s| TokenScope::parse(s)).collect()
    }
}

/// A token just made: the one time its secret is known.
pub struct Created {
    pub token: String,
    pub record: Record,
}

/// What a new token is for.
pub struct NewToken<'a> {
    pub owner: &'a Identity,
    pub name: &'a str,
    pub scopes: &'a [TokenScope],
    pub expires: Option<u64>,
}

/// Token names: what `token list` shows and `token revoke --name` takes.
pub fn check_name(name: &str) -> Result<(), AccessTokenError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        AccessTokenError::Invalid(format!(
            "token name `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`"
        ))
    })
}

/// Makes a token for `new.owner` and stores its record. A name the owner
/// already gave a live token is refused, so that revoking by name revokes
/// the token meant.
pub async fn create(storage: &Storage, new: NewToken<'_>) -> Result<Created, AccessTokenError> {
    check_name(new.name)?;
    let now = super::token::now();
    if new.expires.is_some_and(|e| e <= now) {
        return Err(AccessTokenError::Invalid(
            "the expiry is in the past".into(),
        ));
    }
    if list(storage)
        .await?
        .iter()
        .any(|(_, r)| r.user == new.owner.name && r.name == new.name)
    {
        return Err(AccessTokenError::Invalid(format!(
            "{} already has a token named `{}` (revoke it first, or choose another name)",
            new.owner.name, new.name
        )));
    }
    let mut secret = [0u8; SECRET_BYTES];
    aws_lc_rs::rand::fill(&mut secret)
        .map_err(|_| AccessTokenError::Invalid("no randomness available".into()))?;
    let secret = hex::encode(secret);
    let id = AccessTokenId::new();
    let record = Record {
        name: new.name.to_owned(),
        user: new.owner.name.clone(),
        source: new.owner.source.to_owned(),
        stamp: new.owner.stamp.clone(),
        groups: new.owner.groups.clone(),
        scopes: new.scopes.iter().map(|s| s.text.clone()).collect(),
        created: now,
        expires: new.expires,
        secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
    };
    let json =
        serde_json::to_vec_pretty(&record).map_err(|e| AccessTokenError::Invalid(e.to_string()))?;
    storage.create_access_token(&id, Bytes::from(json)).await?;
    Ok(Created {
        token: format!("{PREFIX}{id}_{secret}"),
        record,
    })
}

/// Every token kept, by id; records that cannot be read are logged and
/// left out.
pub async fn list(storage: &Storage) -> Result<Vec<(AccessTokenId, Record)>, AccessTokenError> {
    let mut all = Vec::new();
    for id in storage.access_token_ids().await? {
        match load(storage, &id).await {
            Ok(Some(record)) => all.push((id, record)),
            Ok(None) => {}
            Err(AccessTokenError::Unreadable(id, why)) => {
                tracing::warn!(%id, why, "access token record unreadable: skipped");
            }
            Err(e) => return Err(e),
        }
    }
    all.sort_by(|a, b| (&a.1.user, &a.1.name).cmp(&(&b.1.user, &b.1.name)));
    Ok(all)
}

pub async fn load(
    storage: &Storage,
    id: &AccessTokenId,
) -> Result<Option<Record>, AccessTokenError> {
    let Some(bytes) = storage.access_token(id).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| AccessTokenError::Unreadable(id.clone(), e.to_string()))
}

/// Revokes `user`'s token named `name`; whether there was one.
pub async fn revoke(storage: &Storage, user: &str, name: &str) -> Result<bool, AccessTokenError> {
    let mut found = false;
    for (id, record) in list(storage).await? {
        if record.user == user && record.name == name {
            storage.delete_access_token(&id).await?;
            found = true;
        }
    }
    Ok(found)
}

/// Why a presented token was refused. The client hears one answer for all
/// of them; the log tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such id, or the secret does not match: revoked, never made, or
    /// forged.
    Unknown,
    Expired,
    /// The owner is gone or is no longer the identity that made it.
    AccountChanged,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown or revoked access token",
            Refusal::Expired => "access token expired",
            Refusal::AccountChanged => "access token's account changed or was removed",
        }
    }
}

/// Checks a presented token against its record: the secret in constant
/// time, then the expiry.
pub fn check(presented: &Presented<'_>, record: &Record, now: u64) -> Result<(), Refusal> {
    let sent = hex::encode(Sha256::digest(presented.secret.as_bytes()));
    if !super::same_secret(sent.as_bytes(), record.secret_sha256.as_bytes()) {
        return Err(Refusal::Unknown);
    }
    if record.expired(now) {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// A token's owner at the time of use.
pub enum Owner {
    /// As the identity sources know them now (`None`: no longer there).
    Now(Option<Identity>),
    /// As the record keeps them: the owner's source, an OpenID issuer,
    /// cannot look anyone up.
    Kept(&'static str),
}

/// The identity a checked token stands for.
pub fn identity(
    record: &Record,
    scopes: Vec<TokenScope>,
    owner: Owner,
) -> Result<Identity, Refusal> {
    let mut identity = match owner {
        Owner::Now(Some(owner)) if owner.stamp == record.stamp => owner,
        Owner::Now(_) => return Err(Refusal::AccountChanged),
        Owner::Kept(source) => Identity {
            name: record.user.clone(),
            groups: record.groups.clone(),
            stamp: record.stamp.clone(),
            source,
            dn: None,
            credential: Credential::AccessToken,
            claims: BTreeMap::new(),
            narrowed: None,
        },
    };
    identity.credential = Credential::AccessToken;
    // A token grants no claim-matched access: claims belong to the token
    // that proved them (a pipeline's run), not to the person later.
    identity.claims.clear();
    identity.narrowed = (!record.scopes.is_empty()).then(|| Arc::from(scopes));
    Ok(identity)
}

/// When each token was last recorded as used by this process.
#[derive(Default)]
pub struct Uses(Mutex<HashMap<AccessTokenId, Instant>>);

const USES_CAPACITY: usize = 10_000;

impl Uses {
    /// Whether this use should be written down (at most once a minute per
    /// token and process).
    pub fn due(&self, id: &AccessTokenId) -> bool {
        let now = Instant::now();
        let mut uses = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if uses
            .get(id)
            .is_some_and(|at| now.duration_since(*at) < USE_RECORDED_EVERY)
        {
            return false;
        }
        if uses.len() >= USES_CAPACITY {
            uses.retain(|_, at| now.duration_since(*at) < USE_RECORDED_EVERY);
        }
        uses.insert(id.clone(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_allow_only_their_repositories_and_actions() {
        let scope = TokenScope::parse("ci/**:pull,push").unwrap();
        assert!(scope.allows("ci/app", Action::Push));
        assert!(scope.allows("ci/a/b", Action::Pull));
        assert!(!scope.allows("ci/app", Action::Delete));
        assert!(!scope.allows("other", Action::Pull));
    }

    #[test]
    fn scope_syntax_is_checked() {
        assert!(TokenScope::parse("ci/**:*").unwrap().actions.len() == Action::ALL.len());
        for bad in ["ci/**", "ci/**:fly", "ci//x:pull", ":pull", "ci/**:"] {
            assert!(TokenScope::parse(bad).is_err(), "{bad}");
        }
    }

    fn record(secret: &str, expires: Option<u64>) -> Record {
        Record {
            name: "ci".into(),
            user: "alice".into(),
            source: "file".into(),
            stamp: "s1".into(),
            groups: vec!["old".into()],
            scopes: Vec::new(),
            created: 1,
            expires,
            secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        }
    }

    #[test]
    fn secret_expiry_and_account_are_checked() {
        let secret = "cd".repeat(SECRET_BYTES);
        let token = format!("pcat_0123456789abcdef_{secret}");
        let presented = Presented::parse(&token).unwrap();
        assert_eq!(check(&presented, &record(&secret, Some(100)), 99), Ok(()));
        assert_eq!(
            check(&presented, &record(&secret, Some(100)), 100),
            Err(Refusal::Expired)
        );
        let other = "ef".repeat(SECRET_BYTES);
        assert_eq!(
            check(&presented, &record(&other, None), 1),
            Err(Refusal::Unknown)
        );

        let owner = |stamp: &str| Identity {
            name: "alice".into(),
            groups: vec!["now".into()],
            stamp: stamp.into(),
            source: "file",
            dn: None,
            credential: Credential::Password,
            claims: BTreeMap::new(),
            narrowed: None,
        };
        let r = record(&secret, None);
        let now = identity(&r, Vec::new(), Owner::Now(Some(owner("s1")))).unwrap();
        assert_eq!(now.groups, ["now"], "groups as the source has them now");
        assert_eq!(now.credential, Credential::AccessToken);
        assert_eq!(
            identity(&r, Vec::new(), Owner::Now(Some(owner("s2")))),
            Err(Refusal::AccountChanged)
        );
        assert_eq!(
            identity(&r, Vec::new(), Owner::Now(None)),
            Err(Refusal::AccountChanged)
        );
        let kept = identity(&r, Vec::new(), Owner::Kept("sso")).unwrap();
        assert_eq!(
            kept.groups,
            ["old"],
            "an unlookable owner keeps the groups of the day"
        );
    }
}
