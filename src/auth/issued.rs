//! The access tokens issued in the current second, by whom they were issued
//! to and what they carry. A fleet asking at once with one account for the
//! same scope (the CI jobs of a pipeline, the nodes of a cluster pulling an
//! image) gets one token, signed once: such tokens would differ only in
//! their `jti`, since `iat`, `nbf` and `exp` count whole seconds. The
//! signature is most of what issuing a token costs. Nothing outlives its
//! second, so what a token carries is always what the policy granted in
//! that second, and a token is handed out only while the key ring that
//! signed it is in force: entries are kept per second and per ring
//! ([`crate::auth::keys::KeyRing::id`]), so a reloaded ring (a key
//! activated or retired) signs the next token itself.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Issued;
use super::identity::Credential;
use super::scope::AccessEntry;

/// Distinct (account, access) pairs kept for one second at most; past it
/// the next tokens are signed on their own.
const CAPACITY: usize = 10_000;

type Key = (String, Credential, Vec<AccessEntry>);

#[derive(Default)]
pub struct IssuedThisSecond {
    /// The second and the ring the entries belong to.
    second: Mutex<((u64, u64), HashMap<Key, Issued>)>,
}

impl IssuedThisSecond {
    /// The token issued in second `now` with key ring `ring` to `subject`
    /// for `access`, or the one `sign` makes (kept for the rest of the
    /// second, while that ring is in force).
    pub fn get_or_sign<E>(
        &self,
        now: u64,
        ring: u64,
        subject: &str,
        credential: Credential,
        access: Vec<AccessEntry>,
        sign: impl FnOnce(Vec<AccessEntry>) -> Result<Issued, E>,
    ) -> Result<Issued, E> {
        let key = (subject.to_owned(), credential, access);
        {
            let mut second = self.second.lock().unwrap_or_else(|e| e.into_inner());
            if second.0 != (now, ring) {
                *second = ((now, ring), HashMap::new());
            }
            if let Some(issued) = second.1.get(&key) {
                return Ok(issued.clone());
            }
        }
        // Signed outside the lock: two callers racing sign twice, which is
        // only the cost of not sharing.
        let (subject, credential, access) = key;
        let issued = sign(access.clone())?;
        // Kept only for the second its claims were made in.
        let made = issued.claims.iat;
        let mut second = self.second.lock().unwrap_or_else(|e| e.into_inner());
        if second.0 == (made, ring) && second.1.len() < CAPACITY {
            second
                .1
                .insert((subject, credential, access), issued.clone());
        }
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::Claims;

    fn entry(name: &str) -> Vec<AccessEntry> {
        vec![AccessEntry {
            kind: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        }]
    }

    /// A "signature" that counts itself and dates its claims `at`.
    fn signer(
        at: u64,
        count: &std::cell::Cell<u32>,
    ) -> impl FnOnce(Vec<AccessEntry>) -> Result<Issued, ()> + '_ {
        move |access| {
            count.set(count.get() + 1);
            let mut claims = Claims::new("i", "s", "a", std::time::Duration::from_secs(60), access);
            claims.iat = at;
            Ok(Issued {
                token: format!("token-{}", count.get()),
                claims,
            })
        }
    }

    #[test]
    fn one_signature_per_account_access_and_second() {
        let cache = IssuedThisSecond::default();
        let signed = std::cell::Cell::new(0);
        let get = |now, subject, name| {
            cache
                .get_or_sign(
                    now,
                    1,
                    subject,
                    Credential::Password,
                    entry(name),
                    signer(now, &signed),
                )
                .unwrap()
                .token
        };
        let first = get(100, "alice", "a/app");
        assert_eq!(get(100, "alice", "a/app"), first);
        assert_eq!(signed.get(), 1);
        // Another account, other access, the next second: signed anew.
        assert_ne!(get(100, "bob", "a/app"), first);
        assert_ne!(get(100, "alice", "a/other"), first);
        assert_ne!(get(101, "alice", "a/app"), first);
        assert_eq!(signed.get(), 4);
        // An anonymous caller's token is not an account's.
        assert_ne!(get(101, "", "a/app"), get(101, "alice", "a/app"));
    }

    #[test]
    fn a_token_made_in_another_second_is_not_kept() {
        let cache = IssuedThisSecond::default();
        let signed = std::cell::Cell::new(0);
        // Asked in second 100, its claims made in 101 (the clock moved).
        let late = |now| {
            cache
                .get_or_sign(
                    now,
                    1,
                    "alice",
                    Credential::Password,
                    entry("a/app"),
                    signer(101, &signed),
                )
                .unwrap()
        };
        late(100);
        late(100);
        assert_eq!(signed.get(), 2);
    }

    #[test]
    fn a_token_made_from_another_kind_of_credential_is_signed_on_its_own() {
        let cache = IssuedThisSecond::default();
        let signed = std::cell::Cell::new(0);
        let get = |credential| {
            cache
                .get_or_sign(
                    100,
                    1,
                    "alice",
                    credential,
                    entry("a/app"),
                    signer(100, &signed),
                )
                .unwrap()
                .token
        };
        let password = get(Credential::Password);
        let oidc = get(Credential::OidcToken);
        assert_ne!(password, oidc, "their claims differ in `credential`");
        assert_eq!(get(Credential::OidcToken), oidc);
        assert_eq!(signed.get(), 2);
    }

    #[test]
    fn a_reloaded_key_ring_signs_anew_within_the_second() {
        let cache = IssuedThisSecond::default();
        let signed = std::cell::Cell::new(0);
        let get = |ring| {
            cache
                .get_or_sign(
                    100,
                    ring,
                    "alice",
                    Credential::Password,
                    entry("a/app"),
                    signer(100, &signed),
                )
                .unwrap()
                .token
        };
        let before = get(1);
        let after = get(2);
        assert_ne!(before, after, "the new ring's key signs");
        assert_eq!(get(2), after);
        assert_eq!(signed.get(), 2);
    }
}
