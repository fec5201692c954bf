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
//! An Apache `htpasswd` file of bcrypt hashes (`name:$2y$…` per line) is read
//! too. Verification is deliberately slow (that is the point of these
//! hashes): callers run it on the blocking pool, and [`VerifyCache`] spares a
//! client that asks for a token per request from paying it every time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
    #[error(
        "invalid user name `{0}`: 1–128 characters, no spaces, `:`, `/`, `*` or control characters"
    )]
    Name(String),
    #[error("password hashing failed")]
    Hash,
}

/// A verified user, as the policy sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    password: String,
    #[serde(default)]
    groups: Vec<String>,
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

/// A syntactically valid argon2id hash of a password nobody has, verified
/// for unknown users so that a missing account takes as long to refuse as a
/// wrong password (no user enumeration by timing).
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$lZgMqmbsNJx8uK2W4XbD5Qf1cXuN0Wm+9PFrVwZPlQ8";

impl Users {
    /// Reads a users file: TOML (`[users.<name>]`), or an htpasswd file when
    /// its name does not end in `.toml`.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            file: file.clone(),
            source,
        })?;
        if path.extension().is_some_and(|e| e == "toml") {
            Self::from_toml(&file, &text)
        } else {
            Self::from_htpasswd(&file, &text)
        }
    }

    pub fn from_toml(file: &str, text: &str) -> Result<Self, UsersError> {
        let parsed: UsersFile = toml::from_str(text).map_err(|e| UsersError::Invalid {
            file: file.to_owned(),
            line: e
                .span()
                .map_or(1, |s| crate::config::line_col(text, s.start).0),
            message: e.message().trim_end().to_owned(),
        })?;
        for (name, entry) in &parsed.users {
            check_name(name)?;
            if !is_supported_hash(&entry.password) {
                return Err(UsersError::Invalid {
                    file: file.to_owned(),
                    line: line_of(text, name),
                    message: format!(
                        "user `{name}`: password must be an argon2id or bcrypt hash (see `portcullis user passwd`)"
                    ),
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
                    groups: Vec::new(),
                },
            );
        }
        Ok(Self { users })
    }

    /// Checks a password. Slow by design: call it off the async threads.
    pub fn verify(&self, name: &str, password: &str) -> Option<Account> {
        match self.users.get(name) {
            Some(entry) => verify_hash(&entry.password, password).then(|| Account {
                name: name.to_owned(),
                groups: entry.groups.clone(),
            }),
            None => {
                let _ = verify_hash(DECOY_HASH, password);
                None
            }
        }
    }

    /// The account of a user, without a password (refresh tokens re-check
    /// that the account still exists and what its groups are now).
    pub fn account(&self, name: &str) -> Option<Account> {
        self.users.get(name).map(|entry| Account {
            name: name.to_owned(),
            groups: entry.groups.clone(),
        })
    }

    /// The stored hash of a user (for `portcullis user import-htpasswd`,
    /// which moves bcrypt hashes into the TOML file unchanged).
    pub fn password_hash(&self, name: &str) -> Option<&str> {
        self.users.get(name).map(|entry| entry.password.as_str())
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

fn is_supported_hash(hash: &str) -> bool {
    hash.starts_with("$argon2id$") || ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
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
/// who reads memory without the per-process key. Cleared whenever the users
/// file changes.
pub struct VerifyCache {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (Instant, Account)>>,
}

/// Entries kept at most; the cache is emptied when full (simple, and a full
/// cache only costs re-verification).
const CACHE_CAPACITY: usize = 10_000;

impl VerifyCache {
    pub fn new(ttl: Duration) -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self {
            key,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, name: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        // Lengths first, so that ("ab", "c") and ("a", "bc") differ.
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((password.len() as u64).to_be_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    pub fn get(&self, name: &str, password: &str) -> Option<Account> {
        let slot = self.slot(name, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&slot) {
            Some((expires, account)) if *expires > Instant::now() => Some(account.clone()),
            Some(_) => {
                entries.remove(&slot);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, name: &str, password: &str, account: Account) {
        let slot = self.slot(name, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(slot, (Instant::now() + self.ttl, account));
    }

    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
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
        let account = users.verify("alice", "s3cret").unwrap();
        assert_eq!(account.groups, ["admins"]);
        assert!(users.verify("alice", "wrong").is_none());
        assert!(users.verify("bob", "s3cret").is_none());
    }

    #[test]
    fn decoy_hash_parses() {
        // If it did not parse, unknown users would be refused faster.
        assert!(argon2::password_hash::phc::PasswordHash::new(DECOY_HASH).is_ok());
    }

    #[test]
    fn bcrypt_htpasswd_lines() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let text = format!("# comment\n\nbob:{hash}\n");
        let users = Users::from_htpasswd("htpasswd", &text).unwrap();
        assert!(users.verify("bob", "pw").is_some());
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
    fn cache_hits_only_the_same_name_and_password() {
        let cache = VerifyCache::new(Duration::from_secs(60));
        let account = Account {
            name: "a".into(),
            groups: vec![],
        };
        cache.insert("a", "bc", account.clone());
        assert_eq!(cache.get("a", "bc"), Some(account));
        assert_eq!(cache.get("ab", "c"), None);
        assert_eq!(cache.get("a", "bd"), None);
        cache.clear();
        assert_eq!(cache.get("a", "bc"), None);
        let expired = VerifyCache::new(Duration::ZERO);
        expired.insert(
            "a",
            "b",
            Account {
                name: "a".into(),
                groups: vec![],
            },
        );
        assert_eq!(expired.get("a", "b"), None);
    }
}
