//! Per-session locks within this process.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use super::UploadId;

/// One lock per session in use, serializing work on that session within
/// this process. A lock is held while a chunk's body streams in, which may
/// take as long as the client likes, so sessions must never share one (a
/// slow client would stall unrelated uploads); an entry lives only while
/// someone holds or waits for it.
#[derive(Default)]
pub(in crate::storage) struct Locks(std::sync::Mutex<HashMap<UploadId, Arc<Mutex<()>>>>);

/// Holds a session's lock; dropping it releases the lock and forgets the
/// entry when nobody else wants it.
pub(in crate::storage) struct SessionGuard<'a> {
    locks: &'a Locks,
    id: UploadId,
    held: Option<OwnedMutexGuard<()>>,
}

impl Locks {
    pub(super) async fn lock(&self, id: UploadId) -> SessionGuard<'_> {
        let mutex = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(map.entry(id).or_default())
        };
        let held = mutex.lock_owned().await;
        SessionGuard {
            locks: self,
            id,
            held: Some(held),
        }
    }

    /// The session's lock if nobody holds it now: work on it (a chunk
    /// streaming in) means it is in use.
    pub(super) fn try_lock(&self, id: UploadId) -> Option<SessionGuard<'_>> {
        let mutex = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(map.entry(id).or_default())
        };
        // Through a guard either way, so that its drop forgets the entry
        // when nobody else wants it.
        let held = Arc::clone(&mutex).try_lock_owned().ok();
        drop(mutex);
        let guard = SessionGuard {
            locks: self,
            id,
            held,
        };
        guard.held.is_some().then_some(guard)
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        // Counted under the map lock, so no one can be about to clone it:
        // only the map's own reference left means no holder, no waiter.
        if map.get(&self.id).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_held_session_never_blocks_another_and_entries_go_away() {
        let locks = Locks::default();
        let ids: Vec<UploadId> = (0..200).map(|_| UploadId::new()).collect();
        let first = locks.lock(ids[0]).await;
        // Whatever their ids, other sessions lock at once (the bound only
        // turns a hang into a failure).
        for id in &ids[1..] {
            let guard = tokio::time::timeout(std::time::Duration::from_secs(5), locks.lock(*id));
            assert!(
                guard.await.is_ok(),
                "session {id} waited for another session"
            );
        }
        // The same session waits…
        let mut waiting = Box::pin(locks.lock(ids[0]));
        assert!((&mut waiting).now_or_never().is_none());
        drop(first);
        // …and gets it once released; the entry survives while it is held.
        let second = waiting.await;
        assert_eq!(locks.0.lock().unwrap().len(), 1);
        drop(second);
        assert!(
            locks.0.lock().unwrap().is_empty(),
            "entries must not pile up"
        );
    }
}
