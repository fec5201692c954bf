//! The identity seam: who a caller is, according to which source.
//!
//! A [`Source`] turns a name and password into an [`Identity`] (a login), and
//! looks an account up by name without a password (for refresh grants, for a
//! name that a TLS client certificate vouched for, for the catalog's view of
//! a token's subject). [`Chain`] asks its sources in their configured order.
//!
//! The users file ([`file::FileSource`]) and directories ([`ldap`]) are
//! password sources: they implement [`Source`] and are asked in the
//! configured order. OpenID Connect issuers ([`oidc`]) are not in the chain:
//! their credential is a token that names its issuer, so `Authority::login`
//! hands it to that issuer alone.
//!
//! What stays above the seam, in `Authority`, because it holds for every
//! source: the failed-login limiter, the policy, tokens and their stamps.

pub mod file;
pub mod ldap;
pub mod oidc;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::auth::gate::GateError;

/// A caller as a source vouched for them, and as the policy sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub groups: Vec<String>,
    /// The identity's stamp: refresh tokens are bound to it and die when it
    /// changes (an account re-created, a password changed).
    pub stamp: String,
    /// The source that vouched: `file` for the users file.
    pub source: &'static str,
    /// Where the source holds the account, when it has such a name (a
    /// directory entry's DN), for diagnostics.
    pub dn: Option<String>,
    /// What the caller proved the identity with.
    pub credential: Credential,
    /// Claims of the token that was the credential (an OIDC login), for
    /// policy rules that match them; empty otherwise.
    pub claims: BTreeMap<String, String>,
    /// What a personal access token narrows the identity's access to
    /// (`None`: not narrowed).
    pub narrowed: Option<Arc<[crate::auth::access_tokens::TokenScope]>>,
}

/// The kind of credential an identity was proven with; access tokens say
/// it (`credential`) when it is not a password.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A password (the users file, a directory), or a name vouched for by
    /// a TLS client certificate.
    #[default]
    Password,
    /// An ID token (or JWT access token) of an OpenID Connect issuer.
    OidcToken,
    /// A personal access token (`portcullis token create`, the sign-in
    /// page).
    AccessToken,
}

impl Credential {
    /// The name access tokens carry; `None` for a password.
    pub fn claim(self) -> Option<&'static str> {
        match self {
            Credential::Password => None,
            Credential::OidcToken => Some("oidc"),
            Credential::AccessToken => Some("pat"),
        }
    }
}

/// What a source says of a name and password.
#[derive(Debug)]
pub enum Login {
    Verified(Identity),
    /// The source knows the name and the password is wrong. It decides: a
    /// later source is not asked, so that an account cannot be taken over
    /// through a second source holding the same name.
    Refused,
    /// The source has no account of that name: the next one is asked.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The source could not take the check now (its bound on concurrent
    /// verifications is full).
    #[error(transparent)]
    Busy(#[from] GateError),
    #[error("identity source {source_name}: {reason}")]
    Failed {
        source_name: &'static str,
        reason: String,
    },
}

/// One identity source.
#[async_trait]
pub trait Source: Send + Sync {
    /// The name identities carry in [`Identity::source`] and logs show.
    fn name(&self) -> &'static str;

    /// Checks a password. Slow work (a hash, a network round trip) is this
    /// source's to bound and to keep off the async threads.
    async fn login(&self, name: &str, password: &str) -> Result<Login, IdentityError>;

    /// The account of `name` as the source has it now, without a password.
    async fn lookup(&self, name: &str) -> Result<Option<Identity>, IdentityError>;

    /// Called when the chain refuses a login that `decided_by` refused
    /// (`None`: no source knew the name). A source whose own refusals are
    /// slow by design (the users file's password hash) spends that time now
    /// unless it decided itself, so that the time of a refusal tells no one
    /// whether, or where, the name exists. Only refusals pay it: a good
    /// login answers as fast as the source that knew the name. A source
    /// too busy to pad says so ([`IdentityError::Busy`]), as it would for a
    /// login of its own: a refusal must not answer faster, or otherwise,
    /// under load. Nothing by default.
    async fn pad_refusal(
        &self,
        _password: &str,
        _decided_by: Option<&'static str>,
    ) -> Result<(), IdentityError> {
        Ok(())
    }

    /// Picks up changed files or settings: at once when `now` (the server's
    /// watcher, every second), else at the source's own pace (before each
    /// login, so that an unlock in a new users file is known before the
    /// failed-login limiter judges the attempt). Nothing by default.
    fn reload_if_changed(&self, _now: bool) {}
}

/// Where a cache of good logins keeps a name and password: a keyed hash of
/// both (the pair itself is never kept), under a key of this process, so
/// that the cache's keys tell nothing even to someone who reads memory
/// dumps of another run.
pub struct CredentialSlots {
    key: [u8; 32],
}

impl CredentialSlots {
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self { key }
    }

    pub fn slot(&self, name: &str, password: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.key);
        // Lengths first, so that ("ab", "c") and ("a", "bc") differ.
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((password.len() as u64).to_be_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }
}

impl Default for CredentialSlots {
    fn default() -> Self {
        Self::new()
    }
}

/// The configured sources, asked in order.
#[derive(Clone)]
pub struct Chain {
    sources: Vec<Arc<dyn Source>>,
}

impl Chain {
    pub fn new(sources: Vec<Arc<dyn Source>>) -> Self {
        Self { sources }
    }

    /// A login through the sources in order: the first that knows the name
    /// decides ([`Login`]). A source that fails is skipped, and its error
    /// returned only when no later source knew the name either, so that a
    /// source that is down never locks out the accounts of another. A
    /// refusal is padded ([`Source::pad_refusal`]) before it is answered.
    pub async fn login(&self, name: &str, password: &str) -> Result<Login, IdentityError> {
        let mut failed = None;
        for source in &self.sources {
            match source.login(name, password).await {
                Ok(Login::Unknown) => {}
                Ok(Login::Refused) => {
                    self.pad(password, Some(source.name())).await?;
                    return Ok(Login::Refused);
                }
                Ok(verified) => return Ok(verified),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => {
                self.pad(password, None).await?;
                Ok(Login::Unknown)
            }
        }
    }

    async fn pad(
        &self,
        password: &str,
        decided_by: Option<&'static str>,
    ) -> Result<(), IdentityError> {
        for source in &self.sources {
            source.pad_refusal(password, decided_by).await?;
        }
        Ok(())
    }

    /// The account of `name` from the first source that has one.
    pub async fn lookup(&self, name: &str) -> Result<Option<Identity>, IdentityError> {
        let mut failed = None;
        for source in &self.sources {
            match source.lookup(name).await {
                Ok(Some(identity)) => return Ok(Some(identity)),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(None), Err)
    }

    /// The sources' names, in the order they are asked.
    pub fn names(&self) -> Vec<&'static str> {
        self.sources.iter().map(|s| s.name()).collect()
    }

    pub fn reload_if_changed(&self, now: bool) {
        for source in &self.sources {
            source.reload_if_changed(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A source answering from a fixed list, for the chain's order rules.
    struct Fixed {
        name: &'static str,
        accounts: Vec<(&'static str, &'static str)>,
        down: bool,
        /// Refusals padded, as a slow source pads them.
        pads: AtomicUsize,
    }

    #[async_trait]
    impl Source for Fixed {
        fn name(&self) -> &'static str {
            self.name
        }

        async fn login(&self, name: &str, password: &str) -> Result<Login, IdentityError> {
            if self.down {
                return Err(IdentityError::Failed {
                    source_name: self.name,
                    reason: "down".into(),
                });
            }
            Ok(match self.accounts.iter().find(|(n, _)| *n == name) {
                Some((_, p)) if *p == password => {
                    Login::Verified(self.lookup(name).await?.expect("listed"))
                }
                Some(_) => Login::Refused,
                None => Login::Unknown,
            })
        }

        async fn lookup(&self, name: &str) -> Result<Option<Identity>, IdentityError> {
            if self.down {
                return Err(IdentityError::Failed {
                    source_name: self.name,
                    reason: "down".into(),
                });
            }
            Ok(self
                .accounts
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(n, _)| Identity {
                    name: (*n).to_owned(),
                    groups: Vec::new(),
                    stamp: String::new(),
                    source: self.name,
                    dn: None,
                    credential: Credential::Password,
                    claims: BTreeMap::new(),
                    narrowed: None,
                }))
        }

        async fn pad_refusal(
            &self,
            _password: &str,
            decided_by: Option<&'static str>,
        ) -> Result<(), IdentityError> {
            if decided_by != Some(self.name) {
                self.pads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    }

    fn chain(sources: Vec<Fixed>) -> Chain {
        Chain::new(
            sources
                .into_iter()
                .map(|s| Arc::new(s) as Arc<dyn Source>)
                .collect(),
        )
    }

    fn fixed(name: &'static str, accounts: &[(&'static str, &'static str)]) -> Fixed {
        Fixed {
            name,
            accounts: accounts.to_vec(),
            down: false,
            pads: AtomicUsize::new(0),
        }
    }

    #[tokio::test]
    async fn the_first_source_that_knows_a_name_decides() {
        let c = chain(vec![
            fixed("first", &[("alice", "a")]),
            fixed("second", &[("alice", "b"), ("bob", "b")]),
        ]);
        assert!(matches!(c.login("alice", "b").await, Ok(Login::Refused)));
        assert!(
            matches!(c.login("alice", "a").await, Ok(Login::Verified(i)) if i.source == "first")
        );
        assert!(
            matches!(c.login("bob", "b").await, Ok(Login::Verified(i)) if i.source == "second")
        );
        assert!(matches!(c.login("carol", "c").await, Ok(Login::Unknown)));
        let found = c.lookup("alice").await.unwrap().unwrap();
        assert_eq!(found.source, "first");
    }

    #[tokio::test]
    async fn refusals_are_padded_by_the_sources_that_did_not_decide_and_good_logins_are_not() {
        let first = Arc::new(fixed("file", &[("alice", "a")]));
        let second = Arc::new(fixed("directory", &[("bob", "b")]));
        let c = Chain::new(vec![first.clone(), second.clone()]);
        let pads = || {
            (
                first.pads.load(Ordering::Relaxed),
                second.pads.load(Ordering::Relaxed),
            )
        };
        assert!(matches!(c.login("bob", "b").await, Ok(Login::Verified(_))));
        assert!(matches!(
            c.login("alice", "a").await,
            Ok(Login::Verified(_))
        ));
        assert_eq!(pads(), (0, 0), "a good login is never padded");
        assert!(matches!(c.login("bob", "x").await, Ok(Login::Refused)));
        assert_eq!(pads(), (1, 0), "the directory refused: the file pads");
        assert!(matches!(c.login("alice", "x").await, Ok(Login::Refused)));
        assert_eq!(pads(), (1, 1), "the file refused: only the other pads");
        assert!(matches!(c.login("carol", "c").await, Ok(Login::Unknown)));
        assert_eq!(pads(), (2, 2), "nobody knew the name: all pad");
    }

    #[tokio::test]
    async fn a_source_that_is_down_fails_only_names_no_other_source_knows() {
        let mut down = fixed("directory", &[]);
        down.down = true;
        let c = chain(vec![down, fixed("file", &[("alice", "a")])]);
        assert!(matches!(
            c.login("alice", "a").await,
            Ok(Login::Verified(_))
        ));
        assert!(c.lookup("alice").await.unwrap().is_some());
        assert!(c.login("bob", "b").await.is_err());
        assert!(c.lookup("bob").await.is_err());
    }
}
