//! Identity and tokens: who is asking (the identity sources of
//! [`identity`]), what the policy lets them do, and the tokens that carry
//! it. [`Authority`] is the one object the HTTP layer talks to; it knows
//! nothing of HTTP itself.

pub mod access_tokens;
pub mod gate;
pub mod identity;
mod issued;
pub mod keys;
pub mod ratelimit;
pub mod reload;
pub mod scope;
pub mod token;
pub mod users;
pub mod users_file;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::policy::{Caller, Policy, RuleOrigin};
use crate::storage::Storage;
use gate::{GateError, VerifyGate};
use identity::file::FileSource;
use identity::oidc::{Issuers, OidcError};
use identity::{Chain, Credential, Identity, IdentityError, Login};
use keys::{KeyKind, KeyRing};
use ratelimit::{LimitConfig, LoginLimiter, Refusal, Reservation};
use reload::{Current, Fingerprint, Watched};
use scope::{AccessEntry, Action, ResourceScope};
use token::{Claims, TokenError};
use users::{Users, VerifyCache};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The client is told the same either way (no account enumeration);
    /// `unknown_user` is for the operator's log.
    #[error("incorrect username or password")]
    BadCredentials { unknown_user: bool },
    /// A token of a configured OpenID issuer, refused; the reason is the
    /// client's to read (expired, wrong audience …).
    #[error("identity token refused: {0}")]
    BadIdToken(String),
    /// A personal access token refused; the client hears one answer for
    /// every reason, the log the reason itself.
    #[error("access token invalid, expired or revoked")]
    BadAccessToken(access_tokens::Refusal),
    #[error("too many failed logins, retry in {} s", ratelimit::retry_after_secs(*.0))]
    TooManyFailures(Duration),
    #[error(transparent)]
    Busy(#[from] GateError),
    #[error("identity source unavailable: {0}")]
    SourceUnavailable(String),
    #[error("refresh token invalid, expired or revoked")]
    BadRefreshToken,
    #[error("the account no longer exists")]
    UnknownAccount,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<IdentityError> for AuthError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Busy(busy) => AuthError::Busy(busy),
            failed @ IdentityError::Failed { .. } => {
                AuthError::SourceUnavailable(failed.to_string())
            }
        }
    }
}

/// Token settings, from the configuration.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub service: String,
    pub lifetime: Duration,
    pub refresh_lifetime: Duration,
}

/// An access token as handed to a client.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub claims: Claims,
}

/// The policy's answer to a token request.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// What the token will carry.
    pub access: Vec<AccessEntry>,
    /// What was asked for and not granted.
    pub refused: Vec<Refused>,
}

/// Access asked for and refused, with the rule that decided (`None`: no
/// rule matched, the default deny).
#[derive(Debug, Clone)]
pub struct Refused {
    pub scope: AccessEntry,
    pub rule: Option<RuleOrigin>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.scope;
        write!(f, "{}:{}:{} by ", s.kind, s.name, s.actions.join(","))?;
        match &self.rule {
            Some(rule) => write!(f, "{rule}"),
            None => f.write_str("no rule matched"),
        }
    }
}

pub struct Authority {
    pub settings: TokenSettings,
    /// The key directory, reloaded when it changes: a key activated signs
    /// at once, a retired one stops verifying.
    keys: Watched<KeyRing>,
    /// The password sources in force; replaced whole when `SIGHUP` brings
    /// a new `[identity]` (a login finishes on the chain it started with).
    identities: Current<Chain>,
    /// What a new chain is built from: the users file's source (kept across
    /// reconfigurations, with its cache and its bound on verifications) and
    /// the directories of the chain in force, each with the settings it was
    /// made from (an unchanged one is kept, with its connections).
    file_source: Arc<dyn identity::Source>,
    directories: Mutex<Vec<Directory>>,
    oidc: Issuers,
    policy: Watched<Policy>,
    verified_tokens: TokenCache,
    issued: issued::IssuedThisSecond,
    limiter: Arc<LoginLimiter>,
    access_token_uses: Arc<access_tokens::Uses>,
    /// How long an attempt waits for the attempts in flight before it.
    in_flight_wait: Duration,
}

impl Authority {
    /// Loads keys (generating the first on an empty key directory), users
    /// and policies. Any problem is an error at start, with its file.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let kind = KeyKind::parse(&config.token.key_type)
            .ok_or_else(|| format!("unknown key type {}", config.token.key_type))?;
        // A first key is generated at start only: a directory emptied later
        // is a refused reload, and the keys in force stay.
        KeyRing::load_or_generate(&config.token.key_dir, kind).map_err(|e| e.to_string())?;
        let key_dir = config.token.key_dir.clone();
        let keys = Watched::new(
            "signing keys",
            {
                let dir = key_dir.clone();
                move || Fingerprint::of_key_dir(&dir)
            },
            move || KeyRing::load(&key_dir).map_err(|e| e.to_string()),
        )?;
        let limiter = Arc::new(LoginLimiter::new(LimitConfig::from(&config.auth)));
        let users = Arc::new(watched_users(&config.users.file)?.on_reload({
            let limiter = Arc::clone(&limiter);
            move |users| carry_out_unlocks(&limiter, users)
        }));
        let policy_dir = config.policy.dir.clone();
        // Reloads choose the source again: a policy directory created later
        // replaces the embedded default.
        let policy = Watched::new(
            "policy",
            {
                let dir = policy_dir.clone();
                move || Fingerprint::of_dir(&dir)
            },
            move || {
                Policy::load_configured(&policy_dir)
                    .map(|(policy, _)| policy)
                    .map_err(|e| e.to_string())
            },
        )?;
        let dir = config.policy.dir.display();
        if std::fs::metadata(&config.policy.dir).is_err() {
            tracing::info!(%dir, "policy directory not found: using the embedded default policy (see `portcullis policy show`)");
        } else if policy.get().is_empty() {
            tracing::warn!(%dir, "no policy rules: every request will be denied");
        }
        let user_count = users.get().len();
        if user_count == 0 {
            tracing::warn!(
                file = %config.users.file.display(),
                "no users yet: add one with `portcullis user add NAME`"
            );
        }
        let file_source: Arc<dyn identity::Source> = Arc::new(file_source(config, users));
        let (identities, directories) = chain_of(&config.identity, &file_source, &[])?;
        let oidc = Issuers::new(&config.identity.oidc)?;
        let wait = Duration::from_millis(config.auth.verification_wait_ms);
        tracing::info!(
            service = %config.token.service,
            issuer = %config.token.issuer,
            users = user_count,
            rules = policy.get().len(),
            signing_key = %keys.current().signer().libtrust_id,
            "token authority ready"
        );
        Ok(Self {
            settings: TokenSettings {
                issuer: config.token.issuer.clone(),
                service: config.token.service.clone(),
                lifetime: Duration::from_secs(config.token.lifetime_secs),
                refresh_lifetime: Duration::from_secs(
                    config.token.refresh_lifetime_days.saturating_mul(86_400),
                ),
            },
            keys,
            identities: Current::new(Arc::new(identities)),
            file_source,
            directories: Mutex::new(directories),
            oidc,
            policy,
            verified_tokens: TokenCache::default(),
            issued: Default::default(),
            limiter,
            access_token_uses: Default::default(),
            in_flight_wait: wait,
        })
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.get()
    }

    /// The signing keys in force; keep the `Arc` for the whole of one
    /// signing or check. Every bearer token is checked with them, so they
    /// are not looked at on use: the watcher task does every second
    /// ([`Authority::check_files`]), and `SIGHUP` at once.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.current()
    }

    /// Builds the password sources `identity` names, without putting them
    /// in force: directories whose settings did not change are kept as they
    /// are, new or changed ones are made (their settings checked, their
    /// files read). [`Authority::install_identities`] puts the result in
    /// force; an error leaves everything as it was.
    pub fn prepare_identities(
        &self,
        identity: &crate::config::IdentityConfig,
    ) -> Result<PreparedIdentities, String> {
        let kept = self.directories.lock().unwrap_or_else(|e| e.into_inner());
        let (chain, directories) = chain_of(identity, &self.file_source, &kept)?;
        let order = chain.names().join(", ");
        Ok(PreparedIdentities {
            chain,
            directories,
            order,
        })
    }

    /// Puts prepared sources in force: new logins go through them, logins
    /// under way finish on the chain they started with.
    pub fn install_identities(&self, prepared: PreparedIdentities) {
        *self.directories.lock().unwrap_or_else(|e| e.into_inner()) = prepared.directories;
        self.identities.set(Arc::new(prepared.chain));
    }

    /// The OpenID issuer configured under `name` (the sign-in page's).
    pub fn issuer(&self, name: &str) -> Option<Arc<identity::oidc::Issuer>> {
        self.oidc.named(name).cloned()
    }

    /// Reloads the identity sources and the policy if their files changed
    /// (the watcher task in `state.rs`), logging each change.
    pub fn check_files(&self) {
        self.identities.get().reload_if_changed(true);
        self.policy.check_now();
        self.keys.check_now();
    }

    /// Checks a name and password from a client address. The attempt is
    /// first reserved with the failed-login limiter (refused at once, 429,
    /// while the account or the address is throttled; made to wait a little
    /// while attempts in flight fill a threshold), so a concurrent burst gets
    /// no more checks than the threshold. Then the identity sources, in
    /// order ([`Chain::login`]); each bounds its own slow work. A password
    /// that is a token of a configured OpenID issuer goes to that issuer
    /// alone ([`Authority::token_login`]), one that is a personal access
    /// token to its record in `storage` ([`Authority::access_token_login`]).
    pub async fn login(
        &self,
        storage: &Storage,
        name: &str,
        password: &str,
        addr: IpAddr,
    ) -> Result<Identity, AuthError> {
        if let Some(presented) = access_tokens::Presented::parse(password) {
            return self.access_token_login(storage, presented, addr).await;
        }
        if let Some((issuer, subject)) = self.oidc.route(password) {
            return self
                .token_login(issuer, &subject, name, password, addr)
                .await;
        }
        // The sources first: a reload may carry an unlock the limiter must
        // know of before it judges this attempt.
        let identities = self.identities.get();
        identities.reload_if_changed(false);
        let reservation = self.reserve(name, addr).await?;
        let (name, password) = (name.to_owned(), password.to_owned());
        settle(async move {
            match identities.login(&name, &password).await {
                Ok(Login::Verified(identity)) => {
                    reservation.success(Instant::now());
                    Ok(identity)
                }
                Ok(refused) => {
                    reservation.failure(Instant::now());
                    Err(AuthError::BadCredentials {
                        unknown_user: matches!(refused, Login::Unknown),
                    })
                }
                // Not the caller's failure: the reservation is released.
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// A login with a token of `issuer`, through the same limiter as a
    /// password: counted under the subject the token claims, so that forged
    /// tokens throttle their sender and that subject, not every caller of
    /// the issuer.
    async fn token_login(
        &self,
        issuer: Arc<identity::oidc::Issuer>,
        subject: &str,
        name: &str,
        token: &str,
        addr: IpAddr,
    ) -> Result<Identity, AuthError> {
        let account = format!("{}#{subject}", issuer.name());
        let reservation = self.reserve(&account, addr).await?;
        let (name, token) = (name.to_owned(), token.to_owned());
        settle(async move {
            match issuer.verify(&name, &token).await {
                Ok(identity) => {
                    reservation.success(Instant::now());
                    Ok(identity)
                }
                Err(OidcError::Refused(reason)) => {
                    reservation.failure(Instant::now());
                    Err(AuthError::BadIdToken(reason))
                }
                Err(OidcError::Unavailable(cause)) => Err(AuthError::SourceUnavailable(format!(
                    "identity source {}: {cause}",
                    issuer.name()
                ))),
            }
        })
        .await
    }

    /// A login with a personal access token, through the limiter under the
    /// token's id: its record read on every use (no cache, so that a
    /// revocation holds at once on every replica), its owner looked up as
    /// the sources know them now. The Basic user name is not checked: the
    /// token names its owner (whose name may hold a `:` that Basic cannot
    /// carry).
    async fn access_token_login(
        &self,
        storage: &Storage,
        presented: access_tokens::Presented<'_>,
        addr: IpAddr,
    ) -> Result<Identity, AuthError> {
        let reservation = self
            .reserve(&format!("token#{}", presented.id), addr)
            .await?;
        let record = match access_tokens::load(storage, &presented.id).await {
            Ok(record) => record,
            Err(access_tokens::AccessTokenError::Storage(e)) => return Err(e.into()),
            Err(e) => return Err(AuthError::Internal(e.to_string())),
        };
        let now = token::now();
        let checked = match &record {
            None => Err(access_tokens::Refusal::Unknown),
            Some(record) => access_tokens::check(&presented, record, now),
        };
        let record = match (record, checked) {
            (Some(record), Ok(())) => record,
            (_, checked) => {
                reservation.failure(Instant::now());
                let refusal = checked.err().unwrap_or(access_tokens::Refusal::Unknown);
                return Err(AuthError::BadAccessToken(refusal));
            }
        };
        let scopes = record
            .scopes()
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        // An owner an OpenID issuer vouched for cannot be looked up: the
        // record's groups stand. Any other owner is asked for again.
        let owner = match self.oidc.named(&record.source) {
            Some(issuer) => access_tokens::Owner::Kept(issuer.name()),
            None => access_tokens::Owner::Now(self.lookup(&record.user).await?),
        };
        match access_tokens::identity(&record, scopes, owner) {
            Ok(identity) => {
                reservation.success(Instant::now());
                // At most once a minute per token: a failed write costs the
                // record a little accuracy, never the login.
                if self.access_token_uses.due(&presented.id) {
                    if let Err(e) = storage.record_access_token_use(&presented.id, now).await {
                        tracing::warn!(id = %presented.id, error = %e, "could not record an access token's use");
                    }
                }
                Ok(identity)
            }
            Err(refusal) => {
                reservation.failure(Instant::now());
                Err(AuthError::BadAccessToken(refusal))
            }
        }
    }

    async fn reserve(&self, name: &str, addr: IpAddr) -> Result<Reservation, AuthError> {
        let deadline = tokio::time::Instant::now() + self.in_flight_wait;
        loop {
            // Registered before the attempt, so a resolution in between is
            // not missed.
            let resolved = self.limiter.resolved.notified();
            tokio::pin!(resolved);
            resolved.as_mut().enable();
            match self.limiter.reserve(name, addr, Instant::now()) {
                Ok(reservation) => return Ok(reservation),
                Err(Refusal::Failures(wait)) => return Err(AuthError::TooManyFailures(wait)),
                Err(Refusal::InFlight) => {
                    if tokio::time::timeout_at(deadline, resolved).await.is_err() {
                        // Not a failure of this caller's: the attempts
                        // before it are still being checked (a slow
                        // directory, a burst), so it is told to come back.
                        return Err(AuthError::Busy(GateError::Busy(Duration::from_secs(1))));
                    }
                }
            }
        }
    }

    /// The identity behind a name now, from the sources (its groups may
    /// have changed since a token was issued; a TLS client certificate
    /// vouches for a name, not for groups).
    pub async fn lookup(&self, name: &str) -> Result<Option<Identity>, AuthError> {
        let identities = self.identities.get();
        Ok(identities.lookup(name).await?)
    }

    /// What the policy grants `caller` of the requested scopes: for each
    /// scope, the intersection of the actions asked for and allowed. Scopes
    /// that grant nothing, and resource types we do not serve, are left out
    /// of the access; what the policy refused is listed with the rule that
    /// decided, so that the log can say why.
    pub fn grant(&self, caller: &Caller, requested: &[ResourceScope]) -> Grant {
        let policy = self.policy();
        let mut granted: BTreeMap<(String, String), Vec<Action>> = BTreeMap::new();
        let mut refused = Vec::new();
        let mut catalog = false;
        for scope in requested {
            match scope.kind.as_str() {
                "repository" => {
                    let wanted = expand_actions(&scope.actions);
                    let decision = policy.decide(caller, &scope.name, &wanted);
                    let mut denied: Vec<Action> = wanted
                        .iter()
                        .filter(|a| !decision.granted.contains(a))
                        .copied()
                        .collect();
                    denied.sort();
                    denied.dedup();
                    if !denied.is_empty() {
                        refused.push(Refused {
                            scope: AccessEntry {
                                kind: scope.kind.clone(),
                                name: scope.name.clone(),
                                actions: denied.iter().map(|a| a.as_str().to_owned()).collect(),
                            },
                            rule: decision.rule,
                        });
                    }
                    let entry = granted
                        .entry((scope.kind.clone(), scope.name.clone()))
                        .or_default();
                    entry.extend(decision.granted);
                }
                "registry" if scope.name == "catalog" && scope.actions.iter().any(|a| a == "*") => {
                    let decision = policy.decide_catalog(caller);
                    if decision.granted.is_empty() {
                        refused.push(Refused {
                            scope: catalog_entry(),
                            rule: decision.rule,
                        });
                    }
                    catalog |= !decision.granted.is_empty();
                }
                _ => {}
            }
        }
        let mut access: Vec<AccessEntry> = granted
            .into_iter()
            .filter(|(_, actions)| !actions.is_empty())
            .map(|((kind, name), mut actions)| {
                actions.sort();
                actions.dedup();
                AccessEntry {
                    kind,
                    name,
                    actions: actions.iter().map(|a| a.as_str().to_owned()).collect(),
                }
            })
            .collect();
        if catalog {
            access.push(catalog_entry());
        }
        Grant { access, refused }
    }

    /// Signs an access token for `subject` ("" for anonymous), or hands
    /// out the one signed for the same subject and access in this second.
    /// The token says which kind of credential made it when it was not a
    /// password (`credential`).
    pub fn issue(
        &self,
        subject: &str,
        credential: Credential,
        access: Vec<AccessEntry>,
    ) -> Result<Issued, AuthError> {
        let s = &self.settings;
        let keys = self.keys();
        self.issued.get_or_sign(
            token::now(),
            keys.id(),
            subject,
            credential,
            access,
            |access| {
                let mut claims = Claims::new(&s.issuer, subject, &s.service, s.lifetime, access);
                claims.credential = credential.claim().map(str::to_owned);
                let token = token::sign(&keys, &claims)?;
                Ok(Issued { token, claims })
            },
        )
    }

    /// Verifies a bearer token presented to the registry, remembering good
    /// ones until they expire (verifying a signature on every request of a
    /// pull would cost more than serving a small manifest).
    /// Shared: a token is checked on every request it comes with, and its
    /// claims are read, never changed.
    pub fn verify_bearer(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let keys = self.keys();
        if let Some(claims) = self.verified_tokens.get(token, keys.id()) {
            return Ok(claims);
        }
        let s = &self.settings;
        let claims = Arc::new(token::verify(&keys, token, &s.issuer, &s.service)?);
        self.verified_tokens.insert(token, keys.id(), &claims);
        Ok(claims)
    }

    /// A v1 token (`X-Docker-Token`, sent back as `Authorization: Token
    /// …`): an access token for a separate audience, so that neither kind
    /// is ever accepted as the other.
    pub fn issue_v1(&self, subject: &str, access: Vec<AccessEntry>) -> Result<String, AuthError> {
        let s = &self.settings;
        let claims = Claims::new(
            &s.issuer,
            subject,
            &v1_audience(&s.service),
            s.lifetime,
            access,
        );
        Ok(token::sign(&self.keys(), &claims)?)
    }

    /// Verifies a v1 token.
    pub fn verify_v1(&self, token: &str) -> Result<Claims, TokenError> {
        let s = &self.settings;
        token::verify(&self.keys(), token, &s.issuer, &v1_audience(&s.service))
    }

    /// A refresh token: a JWT for a separate audience (so it is never
    /// accepted as an access token) that names the subject and the stamp of
    /// its identity.
    pub fn issue_refresh(&self, account: &Identity) -> Result<String, AuthError> {
        let s = &self.settings;
        let mut claims = Claims::new(
            &s.issuer,
            &account.name,
            &refresh_audience(&s.service),
            s.refresh_lifetime,
            Vec::new(),
        );
        claims.stamp = Some(account.stamp.clone());
        Ok(token::sign(&self.keys(), &claims)?)
    }

    /// Checks a refresh token and returns the account it stands for, as it
    /// is now: revoked tokens, removed accounts, and accounts whose identity
    /// changed since (re-created, new password: another stamp) are refused.
    /// A token without a stamp (issued before stamps existed) cannot be told
    /// from one of a re-created account, so it is refused too.
    pub async fn redeem_refresh(
        &self,
        storage: &Storage,
        refresh: &str,
    ) -> Result<Identity, AuthError> {
        let s = &self.settings;
        let claims = token::verify(
            &self.keys(),
            refresh,
            &s.issuer,
            &refresh_audience(&s.service),
        )
        .map_err(|_| AuthError::BadRefreshToken)?;
        let revocations = Revocations::load(storage).await?;
        if revocations.revokes(&claims.sub, claims.iat) {
            return Err(AuthError::BadRefreshToken);
        }
        let account = self
            .lookup(&claims.sub)
            .await?
            .ok_or(AuthError::UnknownAccount)?;
        if claims.stamp.as_deref() != Some(account.stamp.as_str()) {
            return Err(AuthError::BadRefreshToken);
        }
        Ok(account)
    }
}

/// Runs a login attempt to its end whatever the client does, so that its
/// limiter reservation resolves even when the client hangs up mid-check: a
/// burst of abandoned attempts is still counted. An attempt the caches can
/// decide is decided in the first poll, here; one that must be checked
/// (a hash, a directory, an issuer's keys) goes on in a task of its own.
async fn settle(
    attempt: impl std::future::Future<Output = Result<Identity, AuthError>> + Send + 'static,
) -> Result<Identity, AuthError> {
    let mut attempt = Box::pin(attempt);
    if let Some(decided) = (&mut attempt).now_or_never() {
        return decided;
    }
    // In the request's span, so that what the sources log (a directory
    // unreachable, a hash upgraded) names the request.
    tokio::spawn(tracing::Instrument::in_current_span(attempt))
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?
}

/// The identity sources in `identity.order`: the users file (as `users`
/// watches it) and each directory. `portcullis identity test` builds the
/// same chain.
pub fn identity_chain(config: &Config, users: Arc<Watched<Users>>) -> Result<Chain, String> {
    let file: Arc<dyn identity::Source> = Arc::new(file_source(config, users));
    chain_of(&config.identity, &file, &[]).map(|(chain, _)| chain)
}

/// The users file as a source, with its verification cache and bound.
fn file_source(config: &Config, users: Arc<Watched<Users>>) -> FileSource {
    let wait = Duration::from_millis(config.auth.verification_wait_ms);
    FileSource::new(
        users,
        &config.users.file,
        VerifyCache::new(Duration::from_secs(config.users.cache_secs)),
        VerifyGate::new(
            config.auth.max_concurrent_verifications as usize,
            config.auth.verification_queue as usize,
            wait,
        ),
    )
}

/// A directory source and the settings it was made from.
#[derive(Clone)]
struct Directory {
    config: crate::config::LdapConfig,
    source: Arc<dyn identity::Source>,
}

/// Sources built by [`Authority::prepare_identities`], not yet in force.
pub struct PreparedIdentities {
    chain: Chain,
    directories: Vec<Directory>,
    /// The sources' names in order, for the log.
    pub order: String,
}

/// The chain `identity` names: `file` for the users file, each directory
/// taken from `kept` when its settings are the same, else made anew.
fn chain_of(
    identity: &crate::config::IdentityConfig,
    file: &Arc<dyn identity::Source>,
    kept: &[Directory],
) -> Result<(Chain, Vec<Directory>), String> {
    let mut file = Some(file);
    let mut sources: Vec<Arc<dyn identity::Source>> = Vec::new();
    let mut directories = Vec::new();
    for name in identity.order() {
        if name == crate::config::FILE_SOURCE {
            if let Some(file) = file.take() {
                sources.push(Arc::clone(file));
            }
            continue;
        }
        let ldap = identity
            .ldap
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| format!("identity.order names an unknown source `{name}`"))?;
        let directory = match kept.iter().find(|d| d.config == *ldap) {
            Some(same) => same.clone(),
            None => {
                let source = Arc::new(identity::ldap::LdapSource::new(ldap)?);
                tracing::info!(source = %name, urls = %ldap.urls.join(" "), "directory identity source configured");
                Directory {
                    config: ldap.clone(),
                    source,
                }
            }
        };
        sources.push(Arc::clone(&directory.source));
        directories.push(directory);
    }
    Ok((Chain::new(sources), directories))
}

/// Makes the limiter forget the failures of each unlocked account up to
/// its `unlocked_at` (wall-clock seconds, turned into the limiter's
/// monotonic time; an unlock "in the future" of a skewed clock is now).
fn carry_out_unlocks(limiter: &LoginLimiter, users: &Users) {
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    let cutoffs: Vec<(&str, Instant)> = users
        .unlocks()
        .filter_map(|(name, at)| {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(at);
            let ago = wall.duration_since(at).unwrap_or_default();
            // None: before this process's clock began, nothing to forget.
            Some((name, now.checked_sub(ago)?))
        })
        .collect();
    for name in limiter.forget_before(&cutoffs, now) {
        tracing::info!(
            user = name,
            "failed logins forgotten: unlocked with `portcullis user unlock`"
        );
    }
}

fn refresh_audience(service: &str) -> String {
    format!("{service}#refresh")
}

fn v1_audience(service: &str) -> String {
    format!("{service}#v1")
}

/// The users file, reloaded when it changes.
pub fn watched_users(file: &Path) -> Result<Watched<Users>, String> {
    let users_file = file.to_owned();
    Watched::new(
        "users",
        {
            let file = users_file.clone();
            move || Fingerprint::of_file(&file)
        },
        move || load_users(&users_file),
    )
}

fn load_users(file: &Path) -> Result<Users, String> {
    if !file.exists() {
        return Ok(Users::default());
    }
    Users::load(file).map_err(|e| e.to_string())
}

/// `*` asks for every action; unknown action names ask for nothing.
fn expand_actions(actions: &[String]) -> Vec<Action> {
    let mut wanted = Vec::new();
    for action in actions {
        if action == "*" {
            wanted.extend(Action::ALL);
        } else if let Some(a) = Action::parse(action) {
            wanted.push(a);
        }
    }
    wanted
}

fn catalog_entry() -> AccessEntry {
    AccessEntry {
        kind: "registry".into(),
        name: "catalog".into(),
        actions: vec!["*".into()],
    }
}

/// Whether a secret sent matches the one expected, in time that does not
/// depend on where they differ (a form token, a nonce, a scrape token, a
/// token's hash).
pub fn same_secret(sent: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(sent.ct_eq(expected))
}

/// Builds the policy's view of a caller.
pub fn caller(account: Option<&Identity>, addr: Option<IpAddr>) -> Caller {
    Caller {
        user: account.map(|a| a.name.clone()),
        groups: account.map(|a| a.groups.clone()).unwrap_or_default(),
        addr,
        source: account.map(|a| a.source),
        claims: account.map(|a| a.claims.clone()).unwrap_or_default(),
        narrowed: account.and_then(|a| a.narrowed.clone()),
    }
}

/// Refresh tokens issued at or before these times (seconds since the
/// epoch) are void: all of them, or one user's. Kept in storage so that
/// every replica honours a revocation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revocations {
    #[serde(default)]
    pub all_before: Option<u64>,
    #[serde(default)]
    pub users: BTreeMap<String, u64>,
}

impl Revocations {
    pub async fn load(storage: &Storage) -> Result<Self, AuthError> {
        match storage.revocations().await? {
            None => Ok(Self::default()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AuthError::Internal(format!("revocation record unreadable: {e}"))),
        }
    }

    /// Applies `change` to the stored record, without losing a revocation
    /// another writer made meanwhile (see [`Storage::update_revocations`]).
    pub async fn update(storage: &Storage, change: impl Fn(&mut Self)) -> Result<(), AuthError> {
        storage
            .update_revocations(|record| {
                let mut revocations: Self = match record {
                    None => Self::default(),
                    Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
                        AuthError::Internal(format!("revocation record unreadable: {e}"))
                    })?,
                };
                change(&mut revocations);
                let json = serde_json::to_vec_pretty(&revocations)
                    .map_err(|e| AuthError::Internal(e.to_string()))?;
                Ok(Bytes::from(json))
            })
            .await
    }

    fn revokes(&self, user: &str, issued_at: u64) -> bool {
        self.all_before.is_some_and(|t| issued_at <= t)
            || self.users.get(user).is_some_and(|t| issued_at <= *t)
    }

    /// Voids every refresh token of `user` issued until now.
    pub fn revoke_user(&mut self, user: &str) {
        self.users.insert(user.to_owned(), token::now());
    }

    /// Voids every refresh token issued until now.
    pub fn revoke_all(&mut self) {
        self.all_before = Some(token::now());
        self.users.clear();
    }
}

/// Verified access tokens until they expire, keyed by their SHA-256 (the
/// token itself is not kept), each under the id of the key ring that
/// verified it: a reloaded ring checks every token again, so a retired
/// key's tokens stop at once. Bounded: emptied when full.
#[derive(Default)]
struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Verified>>,
}

/// A token's claims and the id of the ring that verified them.
type Verified = (u64, Arc<Claims>);

const TOKEN_CACHE_CAPACITY: usize = 50_000;

impl TokenCache {
    fn get(&self, token: &str, ring: u64) -> Option<Arc<Claims>> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (verified_by, claims) = entries.get(&key)?;
        // Same leeway as a fresh verification.
        if *verified_by == ring && claims.exp + token::LEEWAY_SECS > token::now() {
            Some(Arc::clone(claims))
        } else {
            entries.remove(&key);
            None
        }
    }

    fn insert(&self, token: &str, ring: u64, claims: &Arc<Claims>) {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= TOKEN_CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(key, (ring, Arc::clone(claims)));
    }
}
