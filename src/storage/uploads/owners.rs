//! Who holds which upload sessions, for the per-account limit.
//!
//! The sessions themselves live in storage (their `info` names the owner);
//! this is this process's index of them, filled by the sweep (which reads
//! every session, at start and periodically) and kept up by starts and
//! removals here. Sessions another replica removed linger in it until the
//! limit is reached, when the owner's entries are checked against storage
//! before anything is refused ([`super::Storage::upload_start`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::UploadId;

#[derive(Default)]
pub(in crate::storage) struct Owners(Mutex<HashMap<String, HashSet<UploadId>>>);

impl Owners {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<UploadId>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many sessions are held, by every owner.
    pub(in crate::storage) fn total(&self) -> usize {
        self.map().values().map(HashSet::len).sum()
    }

    /// Records `id` for `owner` if the owner holds fewer than `limit`
    /// sessions; checked and recorded at once, so concurrent starts cannot
    /// all pass the check.
    pub(super) fn reserve(&self, owner: &str, id: UploadId, limit: usize) -> bool {
        let mut map = self.map();
        let held = map.entry(owner.to_owned()).or_default();
        if held.len() >= limit {
            return false;
        }
        held.insert(id);
        true
    }

    pub(in crate::storage) fn insert(&self, owner: &str, id: UploadId) {
        self.map().entry(owner.to_owned()).or_default().insert(id);
    }

    pub(in crate::storage) fn remove(&self, owner: &str, id: UploadId) {
        let mut map = self.map();
        if let Some(held) = map.get_mut(owner) {
            held.remove(&id);
            if held.is_empty() {
                map.remove(owner);
            }
        }
    }

    pub(super) fn sessions(&self, owner: &str) -> Vec<UploadId> {
        self.map()
            .get(owner)
            .map(|held| held.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_removals_free_a_slot() {
        let owners = Owners::default();
        let ids: Vec<UploadId> = (0..3).map(|_| UploadId::new()).collect();
        assert!(owners.reserve("alice", ids[0], 2));
        assert!(owners.reserve("alice", ids[1], 2));
        assert!(!owners.reserve("alice", ids[2], 2));
        assert!(owners.reserve("bob", ids[2], 2), "limits are per owner");
        owners.remove("alice", ids[0]);
        assert!(owners.reserve("alice", ids[2], 2));
        assert_eq!(owners.sessions("alice").len(), 2);
    }
}
