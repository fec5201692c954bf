//! Files that change under a running server (users, policies, signing keys):
//! reloaded when their fingerprint changes, and kept as they were when the
//! new content is bad, so that a typo in a policy never opens or closes the
//! registry.
//!
//! The files are looked at on use and, so that a bad edit is reported when
//! it is made rather than at the next request, by a task that checks every
//! [`CHECK_EVERY`] (`state.rs`), and at once on `SIGHUP`. Each change is
//! logged once: a good version with what it holds, a bad one with its file,
//! line, column and message.
//!
//! A new version replaces the old one whole ([`Current`]): a request holds
//! the `Arc` it started with and finishes on it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How often the files are looked at, at most: a stat per token request
/// would be cheap, but there is no need to do it a thousand times a second.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What a reload log line says a value holds (`3 users`, `12 rules`).
pub trait Summary {
    fn summary(&self) -> String;
}

impl Summary for crate::auth::users::Users {
    fn summary(&self) -> String {
        format!("{} users", self.len())
    }
}

impl Summary for crate::policy::Policy {
    fn summary(&self) -> String {
        format!("{} rules", self.len())
    }
}

impl Summary for crate::auth::keys::KeyRing {
    fn summary(&self) -> String {
        let standby = self.keys().iter().filter(|k| k.standby).count();
        let signer = self.signer();
        let count = self.keys().len();
        format!(
            "{count} key{} ({standby} on standby), signing with {} ({})",
            if count == 1 { "" } else { "s" },
            signer.libtrust_id,
            signer.file.display()
        )
    }
}

/// What is in force of a value that can be replaced while it is used: a
/// reader gets the whole current `Arc` and keeps it for as long as it needs
/// (a request finishes on the version it started with); a replacement is
/// one pointer swap, never a change in place.
pub struct Current<T: ?Sized>(RwLock<Arc<T>>);

impl<T: ?Sized> Current<T> {
    pub fn new(value: Arc<T>) -> Self {
        Self(RwLock::new(value))
    }

    pub fn get(&self) -> Arc<T> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

impl<T: ?Sized> std::fmt::Debug for Current<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("current version")
    }
}

/// Names, sizes and modification times of the watched files: any edit,
/// addition or removal changes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Fingerprint {
    /// Of one file (absent counts as a state too).
    pub fn of_file(path: &Path) -> Self {
        let entry = match std::fs::metadata(path) {
            Ok(m) => (path.to_owned(), m.len(), m.modified().ok()),
            Err(_) => (path.to_owned(), u64::MAX, None),
        };
        Self(vec![entry])
    }

    /// Of every `*.toml` in a directory.
    pub fn of_dir(dir: &Path) -> Self {
        Self::of_dir_matching(dir, |p| p.extension().is_some_and(|e| e == "toml"))
    }

    /// Of the signing keys in a key directory: every `token-*` key,
    /// certificate and standby marker (not `bundle.crt`, which keygen writes
    /// from them, nor temporary files).
    pub fn of_key_dir(dir: &Path) -> Self {
        Self::of_dir_matching(dir, |p| {
            let token = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("token-"));
            token
                && p.extension()
                    .is_some_and(|e| e == "key" || e == "crt" || e == "standby")
        })
    }

    fn of_dir_matching(dir: &Path, keep: impl Fn(&Path) -> bool) -> Self {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| keep(p))
            .filter_map(|p| {
                let m = std::fs::metadata(&p).ok()?;
                Some((p, m.len(), m.modified().ok()))
            })
            .collect();
        entries.sort();
        Self(entries)
    }
}

type Loader<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;
type Reaction<T> = Box<dyn Fn(&T) + Send + Sync>;

/// A value loaded from files, reloaded when they change.
pub struct Watched<T> {
    what: &'static str,
    load: Loader<T>,
    fingerprint: Box<dyn Fn() -> Fingerprint + Send + Sync>,
    check_every: Duration,
    current: Current<T>,
    seen: Mutex<(Instant, Fingerprint)>,
    /// Run on every version a reload puts in force, whoever looked (a
    /// request or the watcher task), so nothing that depends on a new
    /// version can be skipped by the other path.
    on_reload: Option<Reaction<T>>,
}

impl<T: Summary + Send + Sync + 'static> Watched<T> {
    /// Loads the value once; an error here is an error at start.
    pub fn new(
        what: &'static str,
        fingerprint: impl Fn() -> Fingerprint + Send + Sync + 'static,
        load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        // The fingerprint is taken before reading, so that an edit racing
        // the read is seen as a change by the next check.
        let before = fingerprint();
        let value = load()?;
        Ok(Self {
            what,
            load: Box::new(load),
            fingerprint: Box::new(fingerprint),
            check_every: CHECK_EVERY,
            current: Current::new(Arc::new(value)),
            seen: Mutex::new((Instant::now(), before)),
            on_reload: None,
        })
    }

    /// What to do with each version a reload brings (not the first load).
    pub fn on_reload(mut self, react: impl Fn(&T) + Send + Sync + 'static) -> Self {
        self.on_reload = Some(Box::new(react));
        self
    }

    /// Looks at the files on every access (tests).
    pub fn check_always(mut self) -> Self {
        self.check_every = Duration::ZERO;
        self
    }

    /// Puts a value in force now that the process itself just wrote to the
    /// files (a rehashed password). The fingerprint is left as it was, so the
    /// next check still reloads from the files: an edit by someone else right
    /// after ours is never missed.
    pub fn install(&self, value: T) {
        self.current.set(Arc::new(value));
    }

    /// The current value, after reloading it if its files changed.
    pub fn get(&self) -> Arc<T> {
        self.check(false);
        self.current.get()
    }

    /// The value in force, without looking at the files: for the hot
    /// paths whose files only the watcher task (and `SIGHUP`) looks at.
    pub fn current(&self) -> Arc<T> {
        self.current.get()
    }

    /// Looks at the files now (the watcher task, which paces itself) and
    /// reloads if they changed.
    pub fn check_now(&self) {
        self.check(true);
    }

    fn check(&self, now: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !now && seen.0.elapsed() < self.check_every {
            return;
        }
        seen.0 = Instant::now();
        let fingerprint = (self.fingerprint)();
        if fingerprint == seen.1 {
            return;
        }
        // Remembered whatever the outcome: a bad version is reported once,
        // not at every check until it is fixed.
        seen.1 = fingerprint;
        match (self.load)() {
            Ok(value) => {
                tracing::info!(
                    what = self.what,
                    "{} reloaded: {}",
                    self.what,
                    value.summary()
                );
                // Under the `seen` lock: the reaction to one version ends
                // before another check can bring the next.
                if let Some(react) = &self.on_reload {
                    react(&value);
                }
                self.current.set(Arc::new(value));
            }
            Err(e) => {
                // One line for the whole refusal, however many problems
                // the files have: a log line per problem would interleave
                // with other lines, and a raw newline splits the record.
                tracing::error!(
                    what = self.what,
                    error = %e.replace('\n', "; "),
                    "{} reload refused, the previous version stays in force",
                    self.what
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    impl Summary for u32 {
        fn summary(&self) -> String {
            self.to_string()
        }
    }

    #[test]
    fn reloads_on_change_and_keeps_the_old_value_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.txt");
        std::fs::write(&file, "1").unwrap();
        let path = file.clone();
        let reloads = Arc::new(AtomicUsize::new(0));
        let watched = Watched::new(
            "number",
            {
                let file = file.clone();
                move || Fingerprint::of_file(&file)
            },
            move || {
                let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                text.trim().parse::<u32>().map_err(|e| e.to_string())
            },
        )
        .unwrap()
        .check_always()
        .on_reload({
            let reloads = Arc::clone(&reloads);
            move |_| {
                reloads.fetch_add(1, Ordering::SeqCst);
            }
        });
        assert_eq!(*watched.get(), 1);
        assert_eq!(
            reloads.load(Ordering::SeqCst),
            0,
            "the first load is no reload"
        );
        std::fs::write(&file, "22").unwrap();
        assert_eq!(*watched.get(), 22);
        assert_eq!(reloads.load(Ordering::SeqCst), 1);
        std::fs::write(&file, "not a number").unwrap();
        assert_eq!(*watched.get(), 22);
        assert_eq!(
            reloads.load(Ordering::SeqCst),
            1,
            "a refused version brings no reaction"
        );
        std::fs::write(&file, "333").unwrap();
        assert_eq!(*watched.get(), 333);
        assert_eq!(reloads.load(Ordering::SeqCst), 2);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            *watched.get(),
            333,
            "a vanished file keeps the last good value"
        );
    }

    #[test]
    fn a_key_directory_changes_with_its_keys_not_with_the_bundle_or_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("token-1.key", "k");
        write("token-1.crt", "c");
        let before = Fingerprint::of_key_dir(dir.path());
        write("bundle.crt", "b");
        write(".token-2.key.tmp", "half");
        write("token-2.tmp", "half");
        assert_eq!(Fingerprint::of_key_dir(dir.path()), before);
        write("token-2.standby", "marker");
        let standby = Fingerprint::of_key_dir(dir.path());
        assert_ne!(standby, before);
        std::fs::remove_file(dir.path().join("token-2.standby")).unwrap();
        assert_eq!(Fingerprint::of_key_dir(dir.path()), before);
        write("token-1.key", "another key");
        assert_ne!(Fingerprint::of_key_dir(dir.path()), before);
    }
}
