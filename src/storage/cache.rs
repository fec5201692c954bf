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
//! Bounded in bytes (`storage.metadata_cache_mib`), counting each entry's
//! key, value and bookkeeping; past the bound it is emptied and refills
//! with what is asked for next, which costs one read per entry and keeps
//! the bookkeeping to a map. What is larger than the bound alone is not
//! kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// What an entry costs beyond its key's and value's bytes: the map's slot
/// (key and entry, with the table's spare room) and the key's allocation.
const ENTRY_OVERHEAD: usize = 128;

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
    max_bytes: usize,
    entries: Mutex<Entries>,
}

/// What an entry of `key` and `value` counts against the bound.
fn cost(key: &str, value: &Bytes) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Cache {
    /// A cache whose entries are served for `staleness` after they were
    /// read, holding at most `max_bytes`; zero in either keeps nothing.
    pub fn new(staleness: Duration, max_bytes: usize) -> Self {
        Self {
            staleness,
            max_bytes,
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
        let size = cost(key, &value);
        let mut entries = self.lock();
        if let Some(old) = entries.map.remove(key) {
            entries.bytes -= cost(key, &old.value);
        }
        if self.staleness.is_zero() || size > self.max_bytes {
            return;
        }
        if entries.bytes + size > self.max_bytes {
            entries.map.clear();
            entries.bytes = 0;
        }
        let entry = Entry {
            value,
            at: Instant::now(),
        };
        entries.map.insert(key.to_owned(), entry);
        entries.bytes += size;
    }

    /// Forgets `key` (this replica deleted it, or does not know whether its
    /// write landed).
    pub fn forget(&self, key: &str) {
        let mut entries = self.lock();
        if let Some(old) = entries.map.remove(key) {
            entries.bytes -= cost(key, &old.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_served_until_stale_or_forgotten() {
        let cache = Cache::new(Duration::from_secs(60), 1 << 20);
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

        let off = Cache::new(Duration::ZERO, 1 << 20);
        off.set("k", Bytes::new());
        assert_eq!(off.get("k"), None);
    }

    #[test]
    fn it_stays_within_its_bytes() {
        let max = 64 << 20;
        let cache = Cache::new(Duration::from_secs(60), max);
        let big = Bytes::from(vec![0u8; 4 << 20]);
        for i in 0..40 {
            cache.set(&format!("m{i}"), big.clone());
            assert!(cache.lock().bytes <= max);
        }
        // Small entries count their keys and bookkeeping too.
        for i in 0..1_000_000 {
            cache.set(
                &format!("some/repository/_manifests/tags/t{i}"),
                Bytes::new(),
            );
        }
        assert!(cache.lock().bytes <= max);
        cache.set("m39", Bytes::new());
        cache.forget("m38");
        let entries = cache.lock();
        let counted: usize = entries.map.iter().map(|(k, e)| cost(k, &e.value)).sum();
        assert_eq!(entries.bytes, counted);
        drop(entries);

        // What is larger than the bound is not kept, and replaces nothing
        // stale: the old value is forgotten.
        let small = Cache::new(Duration::from_secs(60), 4096);
        small.set("k", Bytes::from_static(b"old"));
        small.set("k", Bytes::from(vec![0u8; 8192]));
        assert_eq!(small.get("k"), None);
        assert_eq!(small.lock().bytes, 0);
    }
}
