//! Ordered listings kept in memory: the catalog and the tags of recently
//! listed repositories, so that a page costs about its own size.
//!
//! An index is read from storage once (a walk of the tree, a read of a tag
//! directory) and then kept up to date by this process' own changes, one
//! name at a time, instead of being dropped by them. Another replica's
//! changes reach it when it is read again: by the first listing more than
//! its staleness (`storage.listing_staleness_secs`, [`REFRESH`] by
//! default) after the last read ended. A page seeks to `last` in
//! the ordered map and reads only what it returns.
//!
//! Races are settled per name: every change records a generation, and a
//! re-check of a name (after a delete, which may or may not have removed
//! it) applies its answer only if no other change to that name came in
//! meanwhile. Names changed here while a read of storage was under way keep
//! their live state over what that read saw.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How old an index may get by default before the next listing reads
/// storage again: the delay before another replica's changes show.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The spec's list order: "lexical order (i.e. case-insensitive alphanumeric
/// order)". `A` and `a` are distinct tags, so ties fall back to byte order:
/// the order is total and `last` names one position in it.
pub fn lexical(a: &str, b: &str) -> Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
        .then_with(|| a.cmp(b))
}

/// A name ordered by [`lexical`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Name(String);

impl Ord for Name {
    fn cmp(&self, other: &Self) -> Ordering {
        lexical(&self.0, &other.0)
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Default)]
struct State {
    /// Each name with the generation of the last change that set it.
    names: BTreeMap<Name, u64>,
    generation: u64,
    /// When the last read of storage ended; `None` before the first.
    read_at: Option<Instant>,
    /// While a read of storage is under way: the names changed meanwhile.
    changed_during_read: Option<HashSet<String>>,
}

impl State {
    fn tracking(&self) -> bool {
        self.read_at.is_some() || self.changed_during_read.is_some()
    }

    fn mark(&mut self, name: &str) {
        if let Some(changed) = &mut self.changed_during_read {
            changed.insert(name.to_owned());
        }
    }

    fn generation_of(&self, name: &str) -> Option<u64> {
        self.names.get(&Name(name.to_owned())).copied()
    }
}

/// One ordered listing (the catalog, or one repository's tags).
#[derive(Default)]
pub struct Index {
    state: RwLock<State>,
    /// One read of storage at a time; others wait for its result.
    reading: tokio::sync::Mutex<()>,
}

/// A page: the names after `last`, and whether more follow.
pub struct Page {
    pub names: Vec<String>,
    pub more: bool,
}

impl Index {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, max_age: Duration) -> bool {
        self.read().read_at.is_some_and(|at| at.elapsed() < max_age)
    }

    /// `name` now exists in storage (it was just written).
    pub fn insert(&self, name: &str) {
        let mut state = self.write();
        if !state.tracking() {
            return;
        }
        state.generation += 1;
        let generation = state.generation;
        state.names.insert(Name(name.to_owned()), generation);
        state.mark(name);
    }

    /// `name` may have stopped existing: asks `exists` and applies the
    /// answer, unless `name` changed meanwhile (then that change is newer).
    pub async fn recheck<E>(
        &self,
        name: &str,
        exists: impl Future<Output = Result<bool, E>>,
    ) -> Result<(), E> {
        let before = {
            let mut state = self.write();
            if !state.tracking() {
                return Ok(());
            }
            state.mark(name);
            state.generation_of(name)
        };
        let present = exists.await?;
        let mut state = self.write();
        if state.generation_of(name) != before {
            return Ok(());
        }
        if !present {
            state.names.remove(&Name(name.to_owned()));
        } else if before.is_none() {
            state.generation += 1;
            let generation = state.generation;
            state.names.insert(Name(name.to_owned()), generation);
        }
        state.mark(name);
        Ok(())
    }

    /// Forgets what was read: the next listing reads storage again. For a
    /// change whose effect on the index could not be checked.
    pub fn invalidate(&self) {
        self.write().read_at = None;
    }

    /// Reads storage again (`read` lists every name) unless the last read
    /// is younger than `max_age`; concurrent callers share one read.
    pub async fn refresh<E>(
        &self,
        read: impl Future<Output = Result<Vec<String>, E>>,
        max_age: Duration,
    ) -> Result<(), E> {
        if self.fresh(max_age) {
            return Ok(());
        }
        let _one = self.reading.lock().await;
        if self.fresh(max_age) {
            return Ok(());
        }
        self.write().changed_during_read = Some(HashSet::new());
        // Ends tracking however the read ends, also when the request that
        // runs it is dropped half-way.
        struct Tracking<'a>(&'a Index);
        impl Drop for Tracking<'_> {
            fn drop(&mut self) {
                self.0.write().changed_during_read = None;
            }
        }
        let tracking = Tracking(self);
        let listed = read.await?;
        let mut state = self.write();
        let changed = state.changed_during_read.take().unwrap_or_default();
        state.generation += 1;
        let generation = state.generation;
        let mut names: BTreeMap<Name, u64> = listed
            .into_iter()
            .filter(|name| !changed.contains(name))
            .map(|name| (Name(name), generation))
            .collect();
        for name in changed {
            if let Some(live) = state.generation_of(&name) {
                names.insert(Name(name), live);
            }
        }
        state.names = names;
        // Counted from the end of the read: a read slower than REFRESH (a
        // large tree under load) still serves the pages that follow it.
        state.read_at = Some(Instant::now());
        drop(state);
        drop(tracking);
        Ok(())
    }

    /// Up to `n` names after `last` that `keep` admits.
    pub fn page(&self, last: Option<&str>, n: usize, keep: impl Fn(&str) -> bool) -> Page {
        let state = self.read();
        let after = match last {
            Some(last) => Bound::Excluded(Name(last.to_owned())),
            None => Bound::Unbounded,
        };
        let mut admitted = state
            .names
            .range((after, Bound::Unbounded))
            .map(|(name, _)| name.0.as_str())
            .filter(|name| keep(name));
        let names: Vec<String> = admitted.by_ref().take(n).map(str::to_owned).collect();
        let more = !names.is_empty() && admitted.next().is_some();
        Page { names, more }
    }

    pub fn is_empty(&self) -> bool {
        self.read().names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(index: &Index) -> Vec<String> {
        index.page(None, usize::MAX, |_| true).names
    }

    async fn loaded(names: &[&str]) -> Index {
        let index = Index::default();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        index
            .refresh(async { Ok::<_, ()>(names) }, REFRESH)
            .await
            .unwrap();
        index
    }

    #[tokio::test]
    async fn pages_seek_past_last_in_lexical_order() {
        let index = loaded(&["b", "a", "B", "_", "A", "c"]).await;
        assert_eq!(all(&index), ["_", "A", "a", "B", "b", "c"]);
        let page = index.page(Some("a"), 2, |_| true);
        assert_eq!(page.names, ["B", "b"]);
        assert!(page.more);
        let page = index.page(Some("bb"), 2, |_| true);
        assert_eq!(page.names, ["c"]);
        assert!(!page.more);
        let page = index.page(None, 2, |n| n != "A" && n != "a");
        assert_eq!(page.names, ["_", "B"]);
        assert!(page.more);
        assert!(index.page(None, 0, |_| true).names.is_empty());
        assert!(!index.page(None, 0, |_| true).more);
    }

    #[tokio::test]
    async fn changes_apply_once_loaded() {
        let index = Index::default();
        // Not read yet: nothing to keep up to date.
        index.insert("x");
        assert!(index.is_empty());
        let index = loaded(&["a"]).await;
        index.insert("b");
        assert_eq!(all(&index), ["a", "b"]);
        index
            .recheck("a", async { Ok::<_, ()>(false) })
            .await
            .unwrap();
        index
            .recheck("b", async { Ok::<_, ()>(true) })
            .await
            .unwrap();
        assert_eq!(all(&index), ["b"]);
    }

    #[tokio::test]
    async fn a_recheck_overtaken_by_an_insert_keeps_the_name() {
        let index = loaded(&["a"]).await;
        // The check read storage before the name was written again.
        index
            .recheck("a", async {
                index.insert("a");
                Ok::<_, ()>(false)
            })
            .await
            .unwrap();
        assert_eq!(all(&index), ["a"]);
    }

    #[tokio::test]
    async fn changes_during_a_read_win_over_what_it_saw() {
        let index = loaded(&["old"]).await;
        // Force a new read; meanwhile `new` is written and `gone` removed,
        // after the read had seen the tree without `new` and with `gone`.
        index.write().read_at = None;
        index
            .refresh(
                async {
                    index.insert("new");
                    index.insert("gone");
                    index.recheck("gone", async { Ok::<_, ()>(false) }).await?;
                    Ok::<_, ()>(vec!["gone".to_owned(), "other".to_owned()])
                },
                REFRESH,
            )
            .await
            .unwrap();
        assert_eq!(all(&index), ["new", "other"]);
    }

    #[tokio::test]
    async fn a_failed_read_keeps_the_index_and_stops_tracking() {
        let index = loaded(&["a"]).await;
        index.write().read_at = None;
        assert!(index.refresh(async { Err(()) }, REFRESH).await.is_err());
        assert!(index.read().changed_during_read.is_none());
        assert_eq!(all(&index), ["a"]);
    }
}
