//! The metadata cache: small objects (tag and revision links, layer links,
//! manifest bytes) this replica read or wrote, so that a pull by tag costs
//! no storage request while they are fresh. On an object store each one
//! is a round trip; on the filesystem a syscall or two.
//!
//! What it may serve is bounded by its staleness (`storage.staleness_secs`):
//! an entry is used only that long after it was read, so another replica's change (a moved
//! or deleted tag) shows here within it. This replica's own writes and
//! deletes replace their entries at once: they are never stale. Absence is
//! not cached: a blob or tag another replica is pushing right now must be
//! found by the next step of that push, wherever it lands.
//!
//! Bounded in entries and bytes; past either, it is emptied and refills
//! with what is asked for next, which costs one read per entry and keeps
//! the bookkeeping to a map.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Entries kept at most.
const MAX_ENTRIES: usize = 50_000;
/// Bytes of cached content kept at most (manifests are up to 4 MiB).
const MAX_BYTES: usize = 64 << 20;

struct Entry {
    value: Bytes,
    at: Instant,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Entry>,
    bytes: usize,
}

pub struct Cache {
    staleness: Duration,
    entries: Mutex<Entries>,
}

impl Cache {
    /// A cache whose entries are served for `staleness` after they were
    /// read; zero keeps nothing.
    pub fn new(staleness: Duration) -> Self {
        Self {
            staleness,
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `key` held, if that is known and fresh.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        if self.staleness.is_zero() {
            return None;
        }
        let entries = self.lock();
        let entry = entries.map.get(key)?;
        (entry.at.elapsed() < self.staleness).then(|| entry.value.clone())
    }

    /// Records what `key` holds now (a read's answer, or this replica's
    /// own write).
    pub fn set(&self, key: &str, value: Bytes) {
        if self.staleness.is_zero() {
            return;
        }
        let size = value.len();
        let mut entries = self.lock();
        if entries.map.len() >= MAX_ENTRIES || entries.bytes + size > MAX_BYTES {
            entries.map.clear();
            entries.bytes = 0;
        }
        let entry = Entry {
            value,
            at: Instant::now(),
        };
        if let Some(old) = entries.map.insert(key.to_owned(), entry) {
            entries.bytes -= old.value.len();
        }
        entries.bytes += size;
    }

    /// Forgets `key` (this replica deleted it, or does not know whether its
    /// write landed).
    pub fn forget(&self, key: &str) {
        let mut entries = self.lock();
        if let Some(old) = entries.map.remove(key) {
            entries.bytes -= old.value.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_served_until_stale_or_forgotten() {
        let cache = Cache::new(Duration::from_secs(60));
        cache.set("a/tag", Bytes::from_static(b"d1"));
        cache.set("a/tag2", Bytes::new());
        assert_eq!(cache.get("a/tag"), Some(Bytes::from_static(b"d1")));
        cache.forget("a/tag");
        assert_eq!(cache.get("a/tag"), None);
        assert_eq!(cache.get("a/tag2"), Some(Bytes::new()));

        // Read longer ago than the staleness allows.
        cache.set("k", Bytes::new());
        if let Some(entry) = cache.lock().map.get_mut("k") {
            entry.at -= Duration::from_secs(61);
        }
        assert_eq!(cache.get("k"), None);

        let off = Cache::new(Duration::ZERO);
        off.set("k", Bytes::new());
        assert_eq!(off.get("k"), None);
    }

    #[test]
    fn it_stays_within_its_bytes() {
        let cache = Cache::new(Duration::from_secs(60));
        let big = Bytes::from(vec![0u8; 4 << 20]);
        for i in 0..40 {
            cache.set(&format!("m{i}"), big.clone());
            assert!(cache.lock().bytes <= MAX_BYTES);
        }
        cache.set("m39", Bytes::new());
        cache.forget("m38");
        let entries = cache.lock();
        let counted: usize = entries.map.values().map(|e| e.value.len()).sum();
        assert_eq!(entries.bytes, counted);
    }
}
