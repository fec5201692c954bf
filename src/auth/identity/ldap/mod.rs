//! A directory (LDAP, Active Directory) as an identity source
//! (`[[identity.ldap]]`).
//!
//! A login searches the user with the service account (or, with
//! `bind_dn_template`, names the DN directly), binds as the found DN with
//! the password, and reads the groups: from a user attribute (`memberOf`),
//! or a group search, optionally nested (AD's in-chain rule, or a bounded,
//! cycle-safe walk of groups of groups). User names enter filters escaped
//! per RFC 4515 and DNs per RFC 4514, so no name widens a search; a search
//! that finds several entries is refused; an empty password never reaches a
//! bind (it would be an unauthenticated bind, which succeeds).
//!
//! Connections are pooled and reused, in two pools: service connections,
//! bound once as the service account, which run every search, and bind
//! connections, which run user binds and nothing else. A user bind so never
//! changes what a search runs as, and no rebind is needed. The bind and the
//! group search run at once, on their two connections, and the groups are
//! kept only when the bind succeeds: a login is two round trips after the
//! user search, not three. A connection that failed is dropped, not
//! returned. At most `pool_size` logins or look-ups run at once (each on
//! at most one connection of each pool), each operation under
//! `operation_timeout_secs`. When the
//! directory cannot be reached, its users get an "unavailable" answer (503,
//! not counted as a failed login), the log says so once, and the next
//! request that gets through says it is reachable again.

pub mod filter;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::{CredentialSlots, Identity, IdentityError, Login, Source};
use crate::config::{GroupsFrom, LdapConfig, Nested};

/// LDAP result code for a wrong password (or an unknown bind DN).
const INVALID_CREDENTIALS: u32 = 49;

pub struct LdapSource {
    name: &'static str,
    config: LdapConfig,
    bind_password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Idle connections bound as the service account.
    idle: Mutex<Vec<Ldap>>,
    /// Idle connections for user binds (bound as the last user, or not).
    binders: Mutex<Vec<Ldap>>,
    running: Semaphore,
    cache: LoginCache,
    /// The directory was found unreachable and not reached since: the next
    /// success logs the recovery, further failures log nothing.
    down: AtomicBool,
}

/// Why an operation failed: the directory said no, or could not be asked.
enum Failure {
    /// The directory answered with this result code.
    Refused(u32),
    Unreachable(String),
}

impl From<LdapError> for Failure {
    fn from(e: LdapError) -> Self {
        match e {
            LdapError::LdapResult { result } => Failure::Refused(result.rc),
            other => Failure::Unreachable(other.to_string()),
        }
    }
}

type Attempt<T> = Result<T, Failure>;

/// What is asked of the directory on one service connection.
#[derive(Clone, Copy)]
enum Op<'a> {
    Login { name: &'a str, password: &'a str },
    Lookup { name: &'a str },
}

enum Outcome {
    Login(Login),
    Lookup(Option<Identity>),
}

/// What a user search found.
enum Found {
    None,
    One(SearchEntry),
    /// More than one entry: refused, since a filter that is not specific
    /// enough must not pick one.
    Several,
}

impl LdapSource {
    /// Reads the service password and the CA file now: a bad one is an
    /// error at start, not at the first login.
    pub fn new(config: &LdapConfig) -> Result<Self, String> {
        let bind_password = match &config.bind_password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("identity.ldap `{}`: {}: {e}", config.name, path.display())
                })?;
                Some(text.lines().next().unwrap_or("").to_owned())
            }
            None => None,
        };
        let needs_tls = config.starttls || config.urls.iter().any(|u| u.starts_with("ldaps://"));
        let tls =
            match (needs_tls, &config.ca_file) {
                (true, Some(ca)) => Some(client_tls(ca).map_err(|e| {
                    format!("identity.ldap `{}`: {}: {e}", config.name, ca.display())
                })?),
                _ => None,
            };
        if config.insecure_skip_verify {
            tracing::warn!(
                source = %config.name,
                "identity.ldap insecure_skip_verify: the directory's certificate is NOT verified; anyone on the path can read every password"
            );
        }
        Ok(Self {
            // Named once per process start: identities carry the name as
            // `&'static str`, like the file source's.
            name: Box::leak(config.name.clone().into_boxed_str()),
            running: Semaphore::new(config.pool_size),
            cache: LoginCache::new(Duration::from_secs(config.cache_secs)),
            config: config.clone(),
            bind_password,
            tls,
            idle: Mutex::new(Vec::new()),
            binders: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.operation_timeout_secs)
    }

    /// A new connection to the first URL that answers, not yet bound.
    async fn connect(&self) -> Attempt<Ldap> {
        let mut last = String::from("no URL");
        for url in &self.config.urls {
            // The timeout below covers the TCP connect, the TLS handshake
            // and StartTLS alike.
            let mut settings = LdapConnSettings::new()
                .set_starttls(self.config.starttls)
                .set_no_tls_verify(self.config.insecure_skip_verify);
            if let Some(tls) = &self.tls {
                settings = settings.set_config(Arc::clone(tls));
            }
            let connected = tokio::time::timeout(
                Duration::from_secs(self.config.connect_timeout_secs),
                LdapConnAsync::with_settings(settings, url),
            )
            .await;
            match connected {
                Ok(Ok((conn, ldap))) => {
                    ldap3::drive!(conn);
                    return Ok(ldap);
                }
                Ok(Err(e)) => last = format!("{url}: {e}"),
                Err(_) => last = format!("{url}: connect timed out"),
            }
        }
        Err(Failure::Unreachable(last))
    }

    /// Binds `ldap` as the service account (anonymous without one).
    async fn bind_service(&self, ldap: &mut Ldap) -> Attempt<()> {
        let (dn, password) = match (&self.config.bind_dn, &self.bind_password) {
            (Some(dn), Some(password)) => (dn.as_str(), password.as_str()),
            _ => ("", ""),
        };
        ldap.with_timeout(self.timeout())
            .simple_bind(dn, password)
            .await?
            .success()?;
        Ok(())
    }

    /// A pooled service connection (`true`), or a new one bound as the
    /// service (`false`).
    async fn service(&self) -> Attempt<(Ldap, bool)> {
        if let Some(ldap) = take(&self.idle) {
            return Ok((ldap, true));
        }
        let mut ldap = self.connect().await?;
        self.bind_service(&mut ldap).await?;
        Ok((ldap, false))
    }

    fn give_back(&self, pool: &Mutex<Vec<Ldap>>, ldap: Ldap) {
        let mut idle = pool.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.config.pool_size {
            idle.push(ldap);
        }
    }

    /// Binds as `dn` with `password` on a bind connection: `true` when the
    /// directory accepts the password, `false` when it refuses it.
    async fn bind_user(&self, dn: &str, password: &str) -> Attempt<bool> {
        loop {
            let (mut ldap, pooled) = match take(&self.binders) {
                Some(ldap) => (ldap, true),
                None => (self.connect().await?, false),
            };
            let result = ldap
                .with_timeout(self.timeout())
                .simple_bind(dn, password)
                .await;
            return match result {
                Ok(result) => {
                    self.give_back(&self.binders, ldap);
                    match result.rc {
                        0 => Ok(true),
                        INVALID_CREDENTIALS => Ok(false),
                        rc => Err(Failure::Refused(rc)),
                    }
                }
                // A pooled connection may have died idle: once more on a
                // new one.
                Err(_) if pooled => continue,
                Err(e) => Err(e.into()),
            };
        }
    }

    /// Runs `op` on a service connection under the bound on concurrent
    /// operations and the operation timeout; the connection goes back to
    /// the pool only when the directory answered.
    async fn with_service(&self, op: Op<'_>) -> Result<Outcome, IdentityError> {
        let failed = |reason: String| IdentityError::Failed {
            source_name: self.name,
            reason,
        };
        let permit = tokio::time::timeout(self.timeout(), self.running.acquire())
            .await
            .map_err(|_| failed("too many directory operations waiting".into()))?
            .map_err(|_| failed("closed".into()))?;
        let result = tokio::time::timeout(self.timeout() * 4, async {
            loop {
                let (mut ldap, pooled) = self.service().await?;
                let out = self.run(&mut ldap, op).await;
                match &out {
                    // A pooled connection may have died idle (a directory
                    // restarted): once more on a new one.
                    Err(Failure::Unreachable(_)) if pooled => continue,
                    Err(Failure::Unreachable(_)) => {}
                    _ => self.give_back(&self.idle, ldap),
                }
                return out;
            }
        })
        .await
        .unwrap_or_else(|_| Err(Failure::Unreachable("directory operation timed out".into())));
        drop(permit);
        match result {
            Ok(value) => {
                self.reached();
                Ok(value)
            }
            Err(Failure::Unreachable(reason)) => {
                self.unreachable(&reason);
                Err(failed(reason))
            }
            Err(Failure::Refused(rc)) => {
                self.reached();
                Err(failed(format!(
                    "the directory refused the operation (result code {rc})"
                )))
            }
        }
    }

    fn reached(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(source = self.name, "directory reachable again");
        }
    }

    fn unreachable(&self, reason: &str) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::error!(
                source = self.name,
                reason,
                "directory unreachable: its users get `identity source unavailable` until it answers again"
            );
        }
    }

    /// The user's entry.
    async fn find_user(&self, ldap: &mut Ldap, username: &str) -> Attempt<Found> {
        let c = &self.config;
        let mut filter = filter::fill(&c.user_filter, username, "");
        if c.active_directory {
            filter = filter::enabled_only(&filter);
        }
        let mut attrs = vec![c.user_attribute.as_str()];
        if c.groups.from == GroupsFrom::MemberOf {
            attrs.push(c.groups.attribute.as_str());
        }
        let (base, scope) = match &c.bind_dn_template {
            Some(template) => (filter::bind_dn(template, username), Scope::Base),
            None => (c.user_base.clone(), Scope::Subtree),
        };
        let found = ldap
            .with_timeout(self.timeout())
            .search(&base, scope, &filter, attrs)
            .await?;
        let (entries, result) = (found.0, found.1);
        // 32: no such object (a direct DN that does not exist).
        if result.rc == 32 {
            return Ok(Found::None);
        }
        result.success()?;
        match entries.len() {
            0 => Ok(Found::None),
            1 => Ok(entries
                .into_iter()
                .next()
                .map_or(Found::None, |e| Found::One(SearchEntry::construct(e)))),
            n => {
                tracing::warn!(
                    source = self.name,
                    user = username,
                    entries = n,
                    "user search matched several entries: refused (make user_filter specific)"
                );
                Ok(Found::Several)
            }
        }
    }

    /// The identity of a found entry, with its groups.
    async fn identity(
        &self,
        ldap: &mut Ldap,
        username: &str,
        entry: &SearchEntry,
    ) -> Attempt<Identity> {
        let c = &self.config;
        let name = entry
            .attrs
            .get(&c.user_attribute)
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_else(|| username.to_owned());
        let groups = self.groups(ldap, username, entry).await?;
        let stamp = format!(
            "ldap-{}",
            hex::encode(&Sha256::digest(entry.dn.to_ascii_lowercase().as_bytes())[..12])
        );
        Ok(Identity {
            name,
            groups,
            stamp,
            source: self.name,
            dn: Some(entry.dn.clone()),
            credential: Default::default(),
            claims: Default::default(),
            narrowed: None,
        })
    }

    async fn groups(
        &self,
        ldap: &mut Ldap,
        username: &str,
        entry: &SearchEntry,
    ) -> Attempt<Vec<String>> {
        let g = &self.config.groups;
        let base = g
            .base
            .clone()
            .unwrap_or_else(|| self.config.user_base.clone());
        // The user's own groups, each a DN and, when it came from a search,
        // the name attribute's value.
        let mut direct: Vec<(String, Option<String>)> = Vec::new();
        match g.from {
            GroupsFrom::None => return Ok(Vec::new()),
            GroupsFrom::MemberOf => {
                let dns = entry.attrs.get(&g.attribute).into_iter().flatten();
                direct.extend(dns.map(|dn| (dn.clone(), None)));
                if g.nested == Nested::InChain {
                    let filter = filter::in_chain(&entry.dn);
                    direct.extend(self.search_groups(ldap, &base, &filter).await?);
                }
            }
            GroupsFrom::Search => {
                let filter = match g.nested {
                    Nested::InChain => filter::in_chain(&entry.dn),
                    _ => filter::fill(&g.filter, username, &entry.dn),
                };
                direct = self.search_groups(ldap, &base, &filter).await?;
            }
        }
        // Level by level, the user's own groups first: each DN counts once
        // (cycles end), named by its name attribute, else by its DN's first
        // RDN value. With the walk, the groups that list a group of one
        // level as a member make the next, at most `max_depth` levels up.
        let walk = g.nested == Nested::Walk;
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut level = direct;
        for depth in 0..=g.max_depth {
            let mut next = Vec::new();
            for (dn, name) in level {
                if !seen.insert(dn.to_ascii_lowercase()) {
                    continue;
                }
                names.extend(name.or_else(|| filter::first_rdn_value(&dn)));
                if walk && depth < g.max_depth {
                    let filter = filter::fill(&g.filter, "", &dn);
                    next.extend(self.search_groups(ldap, &base, &filter).await?);
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        Ok(names
            .into_iter()
            .filter(|n| g.allow.is_empty() || g.allow.iter().any(|a| a == n))
            .map(|n| format!("{}{n}", g.prefix))
            .collect())
    }

    /// Groups matching `filter` under `base`: each DN and its name.
    async fn search_groups(
        &self,
        ldap: &mut Ldap,
        base: &str,
        filter: &str,
    ) -> Attempt<Vec<(String, Option<String>)>> {
        let attr = self.config.groups.name_attribute.as_str();
        let found = ldap
            .with_timeout(self.timeout())
            .search(base, Scope::Subtree, filter, vec![attr])
            .await?
            .success()?;
        Ok(found
            .0
            .into_iter()
            .map(SearchEntry::construct)
            .map(|e| {
                let name = e.attrs.get(attr).and_then(|v| v.first()).cloned();
                (e.dn, name)
            })
            .collect())
    }

    async fn run(&self, ldap: &mut Ldap, op: Op<'_>) -> Attempt<Outcome> {
        match op {
            Op::Login { name, password } => {
                Ok(Outcome::Login(self.check(ldap, name, password).await?))
            }
            Op::Lookup { name } => Ok(Outcome::Lookup(match self.find_user(ldap, name).await? {
                Found::One(entry) => Some(self.identity(ldap, name, &entry).await?),
                Found::None | Found::Several => None,
            })),
        }
    }

    /// The whole login: find the user on the service connection, then bind
    /// as the user on a bind connection while the groups are read on the
    /// service one (kept only when the bind succeeds).
    async fn check(&self, ldap: &mut Ldap, username: &str, password: &str) -> Attempt<Login> {
        let entry = match self.find_user(ldap, username).await? {
            Found::One(entry) => entry,
            Found::None => return Ok(Login::Unknown),
            Found::Several => return Ok(Login::Refused),
        };
        let (bound, identity) = tokio::join!(
            self.bind_user(&entry.dn, password),
            self.identity(ldap, username, &entry)
        );
        match bound? {
            true => Ok(Login::Verified(identity?)),
            false => Ok(Login::Refused),
        }
    }
}

/// A connection from `pool` that is not known to be closed.
fn take(pool: &Mutex<Vec<Ldap>>) -> Option<Ldap> {
    let mut idle = pool.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(mut ldap) = idle.pop() {
        if !ldap.is_closed() {
            return Some(ldap);
        }
    }
    None
}

#[async_trait]
impl Source for LdapSource {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn login(&self, name: &str, password: &str) -> Result<Login, IdentityError> {
        // An empty password would make an unauthenticated bind, which
        // directories answer with success.
        if password.is_empty() || name.is_empty() {
            return Ok(Login::Refused);
        }
        if let Some(identity) = self.cache.get(name, password) {
            return Ok(Login::Verified(identity));
        }
        let Outcome::Login(login) = self.with_service(Op::Login { name, password }).await? else {
            unreachable!("a login answers a login");
        };
        if let Login::Verified(identity) = &login {
            self.cache.insert(name, password, identity);
        }
        Ok(login)
    }

    async fn lookup(&self, name: &str) -> Result<Option<Identity>, IdentityError> {
        if name.is_empty() {
            return Ok(None);
        }
        match self.with_service(Op::Lookup { name }).await? {
            Outcome::Lookup(found) => Ok(found),
            Outcome::Login(_) => unreachable!("a lookup answers a lookup"),
        }
    }
}

/// A rustls client configuration trusting only the certificates in `ca`.
fn client_tls(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    for cert in certs {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Good directory logins for a short while ([`CredentialSlots`]: neither
/// the name nor the password is kept). Bounded: emptied when full.
struct LoginCache {
    slots: CredentialSlots,
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (Instant, Identity)>>,
}

const CACHE_CAPACITY: usize = 10_000;

impl LoginCache {
    fn new(ttl: Duration) -> Self {
        Self {
            slots: CredentialSlots::new(),
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, name: &str, password: &str) -> Option<Identity> {
        let slot = self.slots.slot(name, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&slot) {
            Some((expires, identity)) if *expires > Instant::now() => Some(identity.clone()),
            Some(_) => {
                entries.remove(&slot);
                None
            }
            None => None,
        }
    }

    fn insert(&self, name: &str, password: &str, identity: &Identity) {
        if self.ttl.is_zero() {
            return;
        }
        let slot = self.slots.slot(name, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(slot, (Instant::now() + self.ttl, identity.clone()));
    }
}
