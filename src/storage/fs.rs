//! Filesystem driver: one file per object under a root directory.
//!
//! Atomicity comes from the filesystem: whole objects are written to a hidden
//! `.tmp-<uuid>` sibling, synced and renamed over their key, so a reader sees
//! the old content or the new, never a prefix, even after a crash. Names that
//! start with `.` are the driver's own and never listed.
//!
//! An assembly (an upload's bytes) is one file appended to in place: its
//! recorded state is just its size, and finishing it only cuts off what a
//! crash left past that size.
//!
//! Blocking file calls run on tokio's blocking pool; appenders (`assemble`)
//! batch the request body's small frames into large, direct writes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::driver::{
    Assembler, Assembly, ByteStream, Driver, DriverError, FileRanges, Meta, Precondition, Result,
    Version, valid_key,
};
use super::file_range::FileRange;

mod append;
use append::FsAppender;
/// What one upload's appender holds (its write batches).
pub use append::MEMORY as ASSEMBLY_MEMORY;

/// Names of the temporaries whole-object writes go through before their
/// rename; a crash mid-write leaves one behind for [`Driver::sweep_temporaries`].
const TMP_PREFIX: &str = ".tmp-";

/// How often a write retries when a concurrent delete removed its (empty)
/// parent directory between creating it and using it.
const PARENT_RACE_RETRIES: usize = 8;

pub struct FsDriver {
    root: PathBuf,
}

impl FsDriver {
    pub async fn new(root: &Path) -> io::Result<Self> {
        tokio::fs::create_dir_all(root).await?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The file behind a key. Keys are built from validated names, but the
    /// driver is the last line before the filesystem, so it checks again that
    /// nothing can leave the root.
    fn path(&self, key: &str) -> Result<PathBuf> {
        if valid_key(key) {
            Ok(self.root.join(key))
        } else {
            Err(DriverError::InvalidKey(key.to_owned()))
        }
    }
}

/// Maps "no such object" (missing, or a directory where an object was
/// expected, or a file where a directory was) to `NotFound`.
fn not_found(key: &str, e: io::Error) -> DriverError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => {
            DriverError::NotFound(key.to_owned())
        }
        _ => DriverError::Io(e),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Runs `op` after creating `path`'s parent, again if a concurrent delete
/// pruned that parent in between.
fn with_parent<T>(path: &Path, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let parent = path.parent().expect("keys have a parent under the root");
    let mut tries = 0;
    loop {
        fs::create_dir_all(parent)?;
        match op() {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < PARENT_RACE_RETRIES => {
                tries += 1
            }
            other => return other,
        }
    }
}

/// Removes the directories above `path` that are left empty, up to the root,
/// so listings (tags, catalog) do not show ghosts: a prefix exists only while
/// it holds objects. A concurrent writer that loses its parent here recreates
/// it (see `with_parent`).
fn prune_empty_parents(path: &Path, root: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| *d != root && d.starts_with(root)) {
        if fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Removes the `.tmp-*` files under `root` last modified before `older_than`
/// ago, and the directories that leaves empty. A temporary lives for the
/// milliseconds of one write, so an old one is a crash's: nothing will ever
/// rename it. Unreadable entries are skipped (logged): a sweep never fails
/// the server.
fn sweep_temporaries(root: &Path, older_than: std::time::Duration) -> usize {
    let mut removed = 0;
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "sweep skips a directory");
                continue;
            }
        };
        for entry in entries.flatten() {
            // Not followed: symbolic links were not made by us.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file()
                && entry
                    .file_name()
                    .as_encoded_bytes()
                    .starts_with(TMP_PREFIX.as_bytes())
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|at| at.elapsed().is_ok_and(|age| age >= older_than))
            {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        removed += 1;
                        prune_empty_parents(&path, root);
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "could not remove a stale temporary")
                    }
                }
            }
        }
    }
    removed
}

/// Whether `dir` holds an object at any depth: a file whose name is not the
/// driver's own (`.`-prefixed). Stops at the first one, so a directory of
/// objects costs one read. A directory that vanishes meanwhile holds nothing.
fn holds_object(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let visible = entry
            .file_name()
            .to_str()
            .is_some_and(|n| !n.starts_with('.'));
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => visible && holds_object(&entry.path()),
            Ok(_) => visible,
            Err(_) => false,
        }
    })
}

/// A file's version: its identity and content's last change. Every write
/// of an object renames a new file over it, so any write changes it.
fn version(meta: &fs::Metadata) -> Version {
    use std::os::unix::fs::MetadataExt;
    Version(format!(
        "{}:{}:{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

/// The lock a compare-and-swap in `dir` holds while it compares and
/// renames: an exclusive `flock(2)` on the directory's `.cas-lock`, which
/// every process (and every open in this one) contends for alike.
struct CasLock {
    _held: File,
}

impl CasLock {
    fn take(dir: &Path) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".cas-lock"))?;
        // SAFETY: flock on a descriptor `file` owns; released when it closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { _held: file })
    }
}

/// Writes `content` to a fresh temporary beside `path`, synced; its path.
fn write_temporary(path: &Path, content: &[u8]) -> io::Result<PathBuf> {
    let parent = path.parent().expect("keys have a parent under the root");
    let tmp = parent.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
    with_parent(path, || {
        let mut file = File::create(&tmp)?;
        file.write_all(content)?;
        file.sync_data()
    })
    .inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    Ok(tmp)
}

/// Makes a rename or file creation in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait]
impl Driver for FsDriver {
    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(content) => Ok(Bytes::from(content)),
            Err(e) => Err(not_found(key, e)),
        }
    }

    async fn put(&self, key: &str, content: Bytes) -> Result<()> {
        let path = self.path(key)?;
        let root = self.root.clone();
        blocking(move || {
            let parent = path.parent().expect("parent").to_owned();
            let tmp = parent.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
            let written = with_parent(&path, || {
                let mut file = File::create(&tmp)?;
                file.write_all(&content)?;
                file.sync_data()?;
                fs::rename(&tmp, &path)
            });
            if written.is_err() {
                // Give back what the failed write took (on a full disk, the
                // temporary's pages), and the directories made for it: an
                // empty `_layers/` would list a repository that holds nothing.
                let _ = fs::remove_file(&tmp);
                prune_empty_parents(&tmp, &root);
            }
            written?;
            sync_dir(&parent)
        })
        .await
        .map_err(DriverError::Io)
    }

    async fn get_versioned(&self, key: &str) -> Result<(Bytes, Version)> {
        use std::io::Read as _;
        let path = self.path(key)?;
        let owned = key.to_owned();
        blocking(move || {
            // The version of the very file read: a write renames a new one
            // over the key, it never changes this one.
            let mut file = File::open(&path)?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(io::ErrorKind::NotFound.into());
            }
            let mut content = Vec::with_capacity(meta.len() as usize);
            file.read_to_end(&mut content)?;
            Ok((Bytes::from(content), version(&meta)))
        })
        .await
        .map_err(|e| not_found(&owned, e))
    }

    async fn put_if(&self, key: &str, content: Bytes, condition: Precondition) -> Result<()> {
        let path = self.path(key)?;
        let owned = key.to_owned();
        let written = blocking(move || {
            let tmp = write_temporary(&path, &content)?;
            let parent = path.parent().expect("parent").to_owned();
            let outcome = match condition {
                // A hard link fails when the name exists: creation and the
                // check are one step.
                Precondition::Absent => fs::hard_link(&tmp, &path).map(|()| true).or_else(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        Ok(false)
                    } else {
                        Err(e)
                    }
                }),
                Precondition::Matches(expected) => {
                    let _lock = CasLock::take(&parent)?;
                    match fs::metadata(&path) {
                        Ok(meta) if meta.is_file() && version(&meta) == expected => {
                            fs::rename(&tmp, &path).map(|()| true)
                        }
                        Ok(_) => Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            };
            let _ = fs::remove_file(&tmp);
            let written = outcome?;
            if written {
                sync_dir(&parent)?;
            }
            Ok(written)
        })
        .await
        .map_err(DriverError::Io)?;
        if written {
            Ok(())
        } else {
            Err(DriverError::PreconditionFailed(owned))
        }
    }

    fn conditional_writes(&self) -> bool {
        true
    }

    async fn read(&self, key: &str, offset: u64, len: Option<u64>) -> Result<ByteStream> {
        Ok(self.file_range(key, offset, len).await?.into_stream())
    }

    fn file_ranges(&self) -> Option<&dyn FileRanges> {
        Some(self)
    }

    async fn stat(&self, key: &str) -> Result<Meta> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Meta {
                size: meta.len(),
                modified: meta.modified()?,
            }),
            Ok(_) => Err(DriverError::NotFound(key.to_owned())),
            Err(e) => Err(not_found(key, e)),
        }
    }

    async fn start_assembly(&self, key: &str) -> Result<Assembly> {
        // The file is made by the first append: a session that never
        // receives a byte costs no file.
        self.path(key)?;
        Ok(Assembly::default())
    }

    async fn assemble(&self, key: &str, from: &Assembly) -> Result<Box<dyn Assembler>> {
        let path = self.path(key)?;
        let at = from.size;
        let owned_key = key.to_owned();
        let opened = {
            let path = path.clone();
            blocking(move || {
                let opened = if at == 0 {
                    with_parent(&path, || append::open(&path, at, true))
                } else {
                    // Only an empty object may be created: a missing one is
                    // shorter than `at`, and a refused append leaves no trace.
                    append::open(&path, at, false)
                };
                let (file, mode) = match opened {
                    Ok(opened) => opened,
                    Err(e) if at > 0 && e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                let len = file.metadata()?.len();
                if at > len {
                    return Ok(None);
                }
                if len > at {
                    // Residue of a crash after a write but before the caller
                    // recorded it: those bytes never counted.
                    file.set_len(at)?;
                }
                Ok(Some((file, mode)))
            })
            .await?
        };
        match opened {
            Some((file, mode)) => Ok(Box::new(FsAppender::new(file, mode, path, at))),
            // Shorter than recorded: moved into place, or lost.
            None => Err(DriverError::NotFound(owned_key)),
        }
    }

    async fn finish_assembly(&self, key: &str, state: &Assembly) -> Result<()> {
        // The bytes are in place already; what a crash left past the
        // recorded size goes, and an assembly that never received a byte
        // becomes an empty file.
        match self.stat(key).await {
            Ok(meta) if meta.size == state.size => Ok(()),
            Ok(_) | Err(DriverError::NotFound(_)) => {
                self.assemble(key, state).await?.commit().await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn discard_assembly(&self, _key: &str, _state: &Assembly) -> Result<()> {
        // Everything is in the file at the key, the caller's to delete.
        Ok(())
    }

    fn assembly_memory(&self) -> usize {
        ASSEMBLY_MEMORY
    }

    async fn sweep_temporaries(&self, older_than: std::time::Duration) -> Result<usize> {
        let root = self.root.clone();
        Ok(blocking(move || Ok(sweep_temporaries(&root, older_than))).await?)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let path = self.path(prefix)?;
        let owned = prefix.to_owned();
        blocking(move || {
            let mut names = Vec::new();
            for entry in fs::read_dir(&path)? {
                let entry = entry?;
                let name = entry.file_name();
                // Non-UTF-8 names were not written by us; skip them.
                let Some(name) = name.to_str().filter(|n| !n.starts_with('.')) else {
                    continue;
                };
                // A directory is a prefix only while it holds an object: one
                // left with nothing but a crashed write's `.tmp-*` is not.
                if entry.file_type()?.is_dir() && !holds_object(&entry.path()) {
                    continue;
                }
                names.push(name.to_owned());
            }
            names.sort_unstable();
            Ok(names)
        })
        .await
        .map_err(|e| not_found(&owned, e))
        .and_then(|names| {
            if names.is_empty() {
                Err(DriverError::NotFound(owned.clone()))
            } else {
                Ok(names)
            }
        })
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let source = self.path(from)?;
        let target = self.path(to)?;
        let root = self.root.clone();
        let owned = from.to_owned();
        blocking(move || {
            if !fs::metadata(&source)?.is_file() {
                return Err(io::ErrorKind::NotFound.into());
            }
            // A move writes the object at `to`: it is as old as the move,
            // as on an object store, where the copy is a new object. (A
            // rename keeps the file's time: an upload idle for a day and then
            // finished would make a blob a day old, which garbage
            // collection's grace period would not protect.)
            fs::File::open(&source)?.set_modified(std::time::SystemTime::now())?;
            with_parent(&target, || fs::rename(&source, &target))?;
            sync_dir(target.parent().expect("parent"))?;
            prune_empty_parents(&source, &root);
            Ok(())
        })
        .await
        .map_err(|e| not_found(&owned, e))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let root = self.root.clone();
        let owned = key.to_owned();
        blocking(move || {
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            prune_empty_parents(&path, &root);
            Ok(())
        })
        .await
        .map_err(|e| not_found(&owned, e))
    }
}

#[async_trait]
impl FileRanges for FsDriver {
    async fn file_range(&self, key: &str, offset: u64, len: Option<u64>) -> Result<FileRange> {
        let path = self.path(key)?;
        let owned = key.to_owned();
        let (file, size) = blocking(move || {
            let file = File::open(&path)?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(io::ErrorKind::NotFound.into());
            }
            Ok((file, meta.len()))
        })
        .await
        .map_err(|e| not_found(&owned, e))?;
        let end = match len {
            Some(len) => size.min(offset.saturating_add(len)),
            None => size,
        };
        Ok(FileRange::new(file, offset, end))
    }
}
