//! File users: names, password hashes (argon2id, or bcrypt from `htpasswd -B`)
//! and groups.
//!
//! The users file is TOML, one table per user:
//!
//! ```toml
//! [users.alice]
//! password = "$argon2id$v=19$m=19456,t=2,p=1$…"
//! groups = ["admins"]
//! ```
//!
//! `stamp` (written by `portcullis user add` and `passwd`) names the account's
//! identity: refresh tokens carry it and die with it, so a deleted and
//! re-created user, or a changed password, voids them. An entry without one
//! (an older file, an htpasswd line) stands for a digest of its password
//! hash, which also changes with every `add` and `passwd` (a new salt).
//!
//! `unlocked_at` (written by `portcullis user unlock`, seconds since the
//! epoch) clears a failed-login lockout: when a running server (re)loads the
//! file, it forgets the account's failures recorded up to that second. It
//! changes neither the password nor the stamp.
//!
//! A user name must be able to stand as one repository path component
//! (lower case, `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`), or `${user}` in a
//! policy could never match it: `portcullis user add` and `import-htpasswd`
//! refuse other names. A file that already has one still loads (the server
//! warns, naming the account), so that no operator is locked out by an
//! upgrade.
//!
//! `robot = true` (written by `portcullis user add --robot`) makes an account
//! with no password: it logs in only with its personal access tokens
//! (`portcullis token create`), for deploy systems.
//!
//! An Apache `htpasswd` file of bcrypt hashes (`name:$2y$…` per line) is read
//! too. Verification is deliberately slow (that is the point of these
//! hashes): callers run it on the blocking pool, and [`VerifyCache`] spares a
//! client that asks for a token per request from paying it every time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::Deserialize;

use crate::auth::identity::{CredentialSlots, Identity};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
    #[error(
        "invalid user name `{0}`: 1–128 characters, no spaces, `:`, `/`, `*` or control characters"
    )]
    Name(String),
    #[error(
        "user name `{name}` cannot be a repository path component ({PATH_COMPONENT}), so `${{user}}/**` rules could never match it{}",
        suggestion.as_ref().map(|s| format!("; use `{s}`")).unwrap_or_default()
    )]
    NotPath {
        name: String,
        /// The lower-case form, when that one is valid.
        suggestion: Option<String>,
    },
    #[error("password hashing failed")]
    Hash,
}

/// A successful password check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub account: Identity,
    /// The hash the password was checked against.
    pub hash: String,
    /// The hash is bcrypt or argon2 with weaker than the current parameters:
    /// it should be replaced by a current one.
    pub outdated: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Empty for a robot.
    #[serde(default)]
    password: String,
    #[serde(default)]
    robot: bool,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    stamp: Option<String>,
    #[serde(default)]
    unlocked_at: Option<u64>,
}

impl Entry {
    fn account(&self, name: &str) -> Identity {
        Identity {
            name: name.to_owned(),
            source: crate::auth::identity::file::NAME,
            dn: None,
            credential: Default::default(),
            claims: Default::default(),
            narrowed: None,
            groups: self.groups.clone(),
            stamp: self
                .stamp
                .clone()
                .unwrap_or_else(|| fallback_stamp(&self.password)),
        }
    }
}

/// The stamp of an entry that has none: a digest of its password hash.
pub fn fallback_stamp(hash: &str) -> String {
    let digest = Sha256::digest(format!("portcullis stamp\0{hash}").as_bytes());
    format!("h-{}", hex::encode(&digest[..16]))
}

/// A fresh stamp, for a new identity or a new password.
pub fn new_stamp() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, Entry>,
}

/// The users of one file.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: BTreeMap<String, Entry>,
}

/// An argon2id hash at the current parameters of a password nobody has,
/// verified for unknown users, and after a wrong password for a user with an
/// outdated hash, so that every refusal costs one current verification: the
/// time of a refusal tells neither whether the account exists nor what kind
/// of hash it has (an outdated hash only adds its own, shorter, time).
static DECOY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password(&new_stamp()).expect("hashing a random password cannot fail"));

/// What verifying a password against a current hash costs, spent on the
/// decoy: a refusal's time then tells nothing.
pub fn spend_a_verification(password: &str) {
    let _ = verify_hash(&DECOY_HASH, password);
}

impl Users {
    /// Reads a users file: TOML (`[users.<name>]`), or an htpasswd file when
    /// its name does not end in `.toml`.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            file: file.clone(),
            source,
        })?;
        let users = if path.extension().is_some_and(|e| e == "toml") {
            Self::from_toml(&file, &text)?
        } else {
            Self::from_htpasswd(&file, &text)?
        };
        for name in users.not_path_names() {
            tracing::warn!(
                file = %file,
                user = name,
                "user name cannot be a repository path component: `${{user}}` policy rules never match it (rename the account)"
            );
        }
        Ok(users)
    }

    /// Names that [`check_path_name`] refuses, which an older file may hold.
    pub fn not_path_names(&self) -> impl Iterator<Item = &str> {
        self.users
            .keys()
            .map(String::as_str)
            .filter(|name| check_path_name(name).is_err())
    }

    /// The accounts whose lockout was cleared, with when (seconds since the
    /// epoch).
    pub fn unlocks(&self) -> impl Iterator<Item = (&str, u64)> {
        self.users
            .iter()
            .filter_map(|(name, entry)| Some((name.as_str(), entry.unlocked_at?)))
    }

    pub fn from_toml(file: &str, text: &str) -> Result<Self, UsersError> {
        let parsed: UsersFile = toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map_or((1, 1), |s| crate::config::line_col(text, s.start));
            UsersError::Invalid {
                file: file.to_owned(),
                line,
                col,
                message: e.message().trim_end().to_owned(),
            }
        })?;
        for (name, entry) in &parsed.users {
            check_name(name)?;
            let problem = match (entry.robot, entry.password.is_empty()) {
                (true, false) => {
                    Some("a robot account has no password (it logs in with its tokens)")
                }
                (false, _) if !is_supported_hash(&entry.password) => Some(
                    "password must be an argon2id or bcrypt hash (see `portcullis user passwd`)",
                ),
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(UsersError::Invalid {
                    file: file.to_owned(),
                    line: line_of(text, name),
                    col: 1,
                    message: format!("user `{name}`: {problem}"),
                });
            }
        }
        Ok(Self {
            users: parsed.users,
        })
    }

    /// `name:hash` lines; blank lines and `#` comments are skipped. Only
    /// bcrypt (`htpasswd -B`) and argon2id hashes are accepted: the MD5,
    /// SHA-1 and crypt variants are too weak to keep.
    pub fn from_htpasswd(file: &str, text: &str) -> Result<Self, UsersError> {
        let mut users = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid = |message: String| UsersError::Invalid {
                file: file.to_owned(),
                line: index + 1,
                col: 1,
                message,
            };
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| invalid("expected `name:hash`".to_owned()))?;
            check_name(name)?;
            if !is_supported_hash(hash) {
                return Err(invalid(format!(
                    "user `{name}`: only bcrypt (htpasswd -B) and argon2id hashes are accepted"
                )));
            }
            users.insert(
                name.to_owned(),
                Entry {
                    password: hash.to_owned(),
                    robot: false,
                    groups: Vec::new(),
                    stamp: None,
                    unlocked_at: None,
                },
            );
        }
        Ok(Self { users })
    }

    /// Checks a password. Slow by design: call it off the async threads.
    pub fn verify(&self, name: &str, password: &str) -> Option<Verified> {
        let Some(entry) = self.users.get(name).filter(|e| !e.robot) else {
            // A robot refuses every password, in a wrong password's time.
            spend_a_verification(password);
            return None;
        };
        let outdated = !is_current(&entry.password);
        if verify_hash(&entry.password, password) {
            return Some(Verified {
                account: entry.account(name),
                hash: entry.password.clone(),
                outdated,
            });
        }
        if outdated {
            spend_a_verification(password);
        }
        None
    }

    /// The account of a user, without a password (refresh tokens re-check
    /// that the account still exists and what its groups are now).
    pub fn account(&self, name: &str) -> Option<Identity> {
        self.users.get(name).map(|entry| entry.account(name))
    }

    /// The stored hash of a user (for `portcullis user import-htpasswd`,
    /// which moves bcrypt hashes into the TOML file unchanged).
    pub fn password_hash(&self, name: &str) -> Option<&str> {
        self.users
            .get(name)
            .filter(|entry| !entry.robot)
            .map(|entry| entry.password.as_str())
    }

    /// Whether `name` is a robot account (no password; tokens only).
    pub fn is_robot(&self, name: &str) -> bool {
        self.users.get(name).is_some_and(|entry| entry.robot)
    }

    pub fn names(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.users
            .iter()
            .map(|(name, entry)| (name.as_str(), entry.groups.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn line_of(text: &str, name: &str) -> usize {
    let header = format!("[users.{name}]");
    text.lines()
        .position(|l| l.trim() == header || l.contains(&format!("\"{name}\"")))
        .map_or(1, |i| i + 1)
}

pub fn check_name(name: &str) -> Result<(), UsersError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 128
        && !name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, ':' | '/' | '*'));
    if ok {
        Ok(())
    } else {
        Err(UsersError::Name(name.to_owned()))
    }
}

/// The rule for a repository path component, in words.
pub const PATH_COMPONENT: &str =
    "lower-case letters and digits, separated by `.`, `_`, `__` or `-`";

/// A name for a new user: besides [`check_name`], one repository path
/// component, as `${user}` stands for in policies (`${user}/**`).
pub fn check_path_name(name: &str) -> Result<(), UsersError> {
    check_name(name)?;
    // `check_name` refuses `/`, so a valid repository name here is exactly
    // one component.
    if crate::reference::RepoName::parse(name).is_ok() {
        return Ok(());
    }
    let lower = name.to_lowercase();
    Err(UsersError::NotPath {
        name: name.to_owned(),
        suggestion: crate::reference::RepoName::parse(&lower)
            .is_ok()
            .then_some(lower),
    })
}

fn is_supported_hash(hash: &str) -> bool {
    hash.starts_with("$argon2id$") || ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// Whether a hash is argon2id (v1.3) with at least the current parameters.
/// Stronger ones count as current: an administrator chose them.
pub fn is_current(hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let params = argon2::Params::DEFAULT;
    let at_least = |key: &str, min: u32| parsed.params.get_decimal(key).is_some_and(|v| v >= min);
    parsed.algorithm.as_str() == "argon2id"
        && parsed.version == Some(0x13)
        && at_least("m", params.m_cost())
        && at_least("t", params.t_cost())
        && at_least("p", params.p_cost())
}

fn verify_hash(hash: &str, password: &str) -> bool {
    if hash.starts_with("$argon2") {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), hash)
            .is_ok()
    } else {
        bcrypt::verify(password, hash).unwrap_or(false)
    }
}

/// A new argon2id hash with the crate's default (OWASP-recommended) cost.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| UsersError::Hash)
}

/// Recently verified credentials, keyed by a keyed hash of name and
/// password so that the cache never holds a password, and useless to anyone
/// who reads memory without the per-process key. An entry holds a digest of
/// the hash it was verified against and counts only while the user still has
/// that hash, so a changed password or a removed user voids it at once,
/// while a reload that left the user alone (another user's edit, a rehash
/// already recorded here) keeps it.
pub struct VerifyCache {
    slots: CredentialSlots,
    ttl: Duration,
    /// Slot → (expiry, digest of the hash verified against).
    entries: Mutex<HashMap<[u8; 32], Remembered>>,
}

type Remembered = (Instant, [u8; 32]);

/// Entries kept at most; the cache is emptied when full (simple, and a full
/// cache only costs re-verification).
const CACHE_CAPACITY: usize = 10_000;

fn hash_digest(hash: &str) -> [u8; 32] {
    Sha256::digest(hash.as_bytes()).into()
}

impl VerifyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            slots: CredentialSlots::new(),
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The account, as `users` has it now, if this pair was verified
    /// recently against the hash the user still has.
    pub fn get(&self, users: &Users, name: &str, password: &str) -> Option<Identity> {
        let slot = self.slots.slot(name, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, verified) = entries.get(&slot)?;
        let current = users.users.get(name);
        match current {
            Some(entry)
                if *expires > Instant::now() && hash_digest(&entry.password) == *verified =>
            {
                Some(entry.account(name))
            }
            _ => {
                entries.remove(&slot);
                None
            }
        }
    }

    /// Remembers that `password` is right for `name` while its hash is `hash`.
    pub fn insert(&self, name: &str, password: &str, hash: &str) {
        let slot = self.slots.slot(name, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(slot, (Instant::now() + self.ttl, hash_digest(hash)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip_and_wrong_password() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let text = format!("[users.alice]\npassword = {hash:?}\ngroups = [\"admins\"]\n");
        let users = Users::from_toml("users.toml", &text).unwrap();
        let verified = users.verify("alice", "s3cret").unwrap();
        assert_eq!(verified.account.groups, ["admins"]);
        assert!(!verified.outdated);
        assert!(
            verified.account.stamp.starts_with("h-"),
            "no stamp: the fallback"
        );
        assert!(users.verify("alice", "wrong").is_none());
        assert!(users.verify("bob", "s3cret").is_none());
    }

    #[test]
    fn decoy_hash_is_current() {
        // If it were not, unknown users would be refused faster.
        assert!(is_current(&DECOY_HASH));
        assert!(!is_current(
            "$argon2id$v=19$m=4096,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$lZgMqmbsNJx8uK2W4XbD5Qf1cXuN0Wm+9PFrVwZPlQ8"
        ));
        assert!(!is_current(&bcrypt::hash("pw", 4).unwrap()));
    }

    #[test]
    fn bcrypt_htpasswd_lines() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let text = format!("# comment\n\nbob:{hash}\n");
        let users = Users::from_htpasswd("htpasswd", &text).unwrap();
        assert!(users.verify("bob", "pw").is_some_and(|v| v.outdated));
        assert!(users.verify("bob", "pw2").is_none());
        let weak = Users::from_htpasswd("htpasswd", "eve:$apr1$abc$def\n").unwrap_err();
        assert!(weak.to_string().starts_with("htpasswd:1:"), "{weak}");
    }

    #[test]
    fn plaintext_passwords_and_bad_names_are_refused() {
        let e = Users::from_toml("u.toml", "[users.a]\npassword = \"hunter2\"\n").unwrap_err();
        assert!(e.to_string().starts_with("u.toml:1:"), "{e}");
        assert!(Users::from_toml("u.toml", "[users.\"a b\"]\npassword = \"$2y$x\"\n").is_err());
        assert!(Users::from_toml("u.toml", "[users.a]\npasswd = \"x\"\n").is_err());
        for bad in ["", "a:b", "a/b", "*", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("alice@example.com").is_ok());
    }

    #[test]
    fn new_names_must_be_one_path_component() {
        for good in ["alice", "ci-bot", "a.b", "a__b", "x9"] {
            assert!(check_path_name(good).is_ok(), "{good}");
        }
        let e = check_path_name("Frank").unwrap_err();
        assert!(e.to_string().contains("use `frank`"), "{e}");
        let e = check_path_name("bob@example.com").unwrap_err();
        assert!(!e.to_string().contains("; use"), "{e}");
        for bad in ["-a", "a-", "_a", "a..b", "a/b"] {
            assert!(check_path_name(bad).is_err(), "{bad}");
        }
        // Still loaded, and told.
        let users = Users::from_toml("u.toml", "[users.Frank]\npassword = \"$2y$x\"\n").unwrap();
        assert_eq!(users.not_path_names().collect::<Vec<_>>(), ["Frank"]);
    }

    #[test]
    fn cache_hits_only_the_same_name_password_and_hash() {
        let hash = hash_password("bc").unwrap();
        let users =
            Users::from_toml("u.toml", &format!("[users.a]\npassword = {hash:?}\n")).unwrap();
        let cache = VerifyCache::new(Duration::from_secs(60));
        cache.insert("a", "bc", &hash);
        assert_eq!(
            cache.get(&users, "a", "bc").map(|a| a.name),
            Some("a".into())
        );
        assert_eq!(cache.get(&users, "ab", "c"), None);
        assert_eq!(cache.get(&users, "a", "bd"), None);
        // Another hash now (a changed password): the entry is void.
        let changed = format!("[users.a]\npassword = {:?}\n", hash_password("x").unwrap());
        let changed = Users::from_toml("u.toml", &changed).unwrap();
        assert_eq!(cache.get(&changed, "a", "bc"), None);
        assert_eq!(cache.get(&users, "a", "bc"), None, "removed once void");
        let expired = VerifyCache::new(Duration::ZERO);
        expired.insert("a", "bc", &hash);
        assert_eq!(expired.get(&users, "a", "bc"), None);
    }
}
