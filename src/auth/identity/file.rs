//! The users file as an identity source: argon2id (or bcrypt) hashes checked
//! on the blocking pool, behind the bound on concurrent verifications
//! ([`VerifyGate`]) and the cache of recent good logins ([`VerifyCache`]).
//! The file is reloaded when it changes; a login rewrites it only to replace
//! an outdated hash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Identity, IdentityError, Login, Source};
use crate::auth::gate::VerifyGate;
use crate::auth::reload::Watched;
use crate::auth::users::{self, Users, Verified, VerifyCache};
use crate::auth::users_file::{self, UsersFile};

/// The name file identities carry.
pub const NAME: &str = "file";

pub struct FileSource {
    users: Arc<Watched<Users>>,
    /// The users file, which a login rewrites to upgrade an outdated hash.
    file: PathBuf,
    cache: Arc<VerifyCache>,
    gate: VerifyGate,
}

impl FileSource {
    pub fn new(
        users: Arc<Watched<Users>>,
        file: &Path,
        cache: VerifyCache,
        gate: VerifyGate,
    ) -> Self {
        Self {
            users,
            file: file.to_owned(),
            cache: Arc::new(cache),
            gate,
        }
    }

    /// The users as loaded now. Remembered logins survive a reload: each is
    /// checked against the hash its user has now.
    pub fn users(&self) -> Arc<Users> {
        self.users.get()
    }
}

#[async_trait]
impl Source for FileSource {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A cache hit answers at once; a miss takes a slot among the bounded
    /// verifications (refused with [`IdentityError::Busy`] when none frees
    /// up in time) and runs the hash on the blocking pool, as argon2 is slow
    /// by design and must not stall the async threads. A name the file does
    /// not have is `Unknown` at once, for the next source to decide: when
    /// none knows it, [`Source::pad_refusal`] spends a wrong password's time.
    async fn login(&self, name: &str, password: &str) -> Result<Login, IdentityError> {
        let users = self.users();
        if let Some(identity) = self.cache.get(&users, name, password) {
            return Ok(Login::Verified(identity));
        }
        if users.account(name).is_none() {
            return Ok(Login::Unknown);
        }
        let permit = self.gate.enter().await?;
        let job = Verification {
            users,
            watched: Arc::clone(&self.users),
            file: self.file.clone(),
            cache: Arc::clone(&self.cache),
            name: name.to_owned(),
            password: password.to_owned(),
        };
        // What the check logs (a hash upgraded) names the request.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _in = span.enter();
            job.run()
        })
        .await
        .map_err(|e| IdentityError::Failed {
            source_name: NAME,
            reason: e.to_string(),
        })
    }

    async fn lookup(&self, name: &str) -> Result<Option<Identity>, IdentityError> {
        Ok(self.users().account(name))
    }

    /// A decoy verification, in a slot like any other.
    async fn pad_refusal(
        &self,
        password: &str,
        decided_by: Option<&'static str>,
    ) -> Result<(), IdentityError> {
        if decided_by == Some(NAME) {
            return Ok(());
        }
        let permit = self.gate.enter().await?;
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            users::spend_a_verification(&password);
        })
        .await
        .map_err(|e| IdentityError::Failed {
            source_name: NAME,
            reason: e.to_string(),
        })
    }

    fn reload_if_changed(&self, now: bool) {
        match now {
            true => self.users.check_now(),
            false => drop(self.users.get()),
        }
    }
}

/// One password check on the blocking pool, with what it needs to upgrade
/// an outdated hash.
struct Verification {
    users: Arc<Users>,
    watched: Arc<Watched<Users>>,
    file: PathBuf,
    cache: Arc<VerifyCache>,
    name: String,
    password: String,
}

impl Verification {
    fn run(self) -> Login {
        let Some(verified) = self.users.verify(&self.name, &self.password) else {
            return Login::Refused;
        };
        let hash = match verified.outdated {
            true => self.upgrade(&verified).unwrap_or(verified.hash),
            false => verified.hash,
        };
        // Remembered before the caller learns of it (and resolves its
        // failed-login reservation), so that the attempts of a burst waiting
        // on this one find it.
        self.cache.insert(&self.name, &self.password, &hash);
        Login::Verified(verified.account)
    }

    /// Replaces an outdated hash (bcrypt, weaker argon2) in the users file
    /// by one with the current parameters, and puts the result in force at
    /// once; the identity stamp stays. Returns the new hash; `None` when the
    /// file cannot be written (an htpasswd file) or changed meanwhile: the
    /// next login tries again.
    fn upgrade(&self, verified: &Verified) -> Option<String> {
        if self.file.extension().is_none_or(|e| e != "toml") {
            return None;
        }
        let name = self.name.as_str();
        let new = users::hash_password(&self.password).ok()?;
        let written = (|| {
            let mut file = UsersFile::open(&self.file)?;
            if !file.rehash(name, &verified.hash, &new)? {
                return Ok(None);
            }
            file.save()?;
            Ok::<_, users_file::EditError>(Some(file.render()))
        })();
        match written {
            Ok(Some(text)) => {
                match Users::from_toml(&self.file.display().to_string(), &text) {
                    Ok(users) => self.watched.install(users),
                    Err(e) => tracing::warn!(error = %e, "rehashed users file unreadable"),
                }
                tracing::info!(
                    user = name,
                    "password hash upgraded to the current argon2id parameters"
                );
                Some(new)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(user = name, error = %e, "password hash not upgraded");
                None
            }
        }
    }
}
