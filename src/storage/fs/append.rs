//! Appending to a file object: how an upload's bytes reach the disk.
//!
//! The request body's frames are gathered into [`BATCH`]-byte batches, and a
//! batch is written on the blocking pool while the next ones fill, so
//! receiving and hashing overlap with writing; [`IN_FLIGHT`] writes at most
//! are under way, so memory stays at `IN_FLIGHT + 1` batches per upload
//! (pages of a batch are touched only as far as bytes fill it: a small
//! upload costs little).
//!
//! Batches go to the disk with `O_DIRECT` when the append starts on a block
//! boundary (every upload's first chunk, and every chunk of a client that
//! sends round sizes). An upload is written once and synced at once, so the
//! page cache gives it nothing and costs it much: a copy into freshly
//! allocated cache pages, their accounting and their writeback. Measured on
//! the benchmark machine (a VM), a buffered write + fsync of 1 GiB took 1.4
//! CPU-seconds of kernel time, a direct one 0.16, against 0.6 for hashing
//! the same bytes. A direct write goes from the batch's (aligned, reused)
//! buffer to the device. The last, partial batch's unaligned tail is written
//! through the cache, as is everything where the filesystem refuses
//! `O_DIRECT` (tmpfs, some network filesystems), or when the append starts
//! mid-block; then writeback is started per batch, so that the final sync
//! has only the tail left.
//!
//! The price: a freshly pushed blob is not in the page cache, so its first
//! pull reads it from the disk.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{blocking, sync_dir};
use crate::storage::buffer::MappedBuffer;
use crate::storage::driver::{Assembler, Assembly, Result};

/// Bytes gathered before they are written: large, because a direct write
/// waits for the device and the device is fastest with large requests
/// (`dd oflag=direct` on the benchmark machine: 1 MiB 0.9–1.2 GB/s, 2 MiB
/// and more 1.5–2 GB/s). A multiple of [`BLOCK`].
pub(super) const BATCH: usize = 4 << 20;
/// Alignment of direct writes: offset, length and buffer address. 4 KiB
/// covers the logical block size of nearly every device (512 or 4096).
const BLOCK: usize = 4096;

/// How the file is being written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    /// `O_DIRECT`: block-aligned writes straight to the device.
    Direct,
    /// Through the page cache, writeback started per batch.
    Cached,
}

/// Opens the object for an append at `at`: for direct writes when `at` is on
/// a block boundary and the filesystem allows them.
pub(super) fn open(path: &Path, at: u64, create: bool) -> io::Result<(File, Mode)> {
    let plain = || {
        let mut options = OpenOptions::new();
        options.write(true).create(create).truncate(false);
        options
    };
    #[cfg(target_os = "linux")]
    if at % BLOCK as u64 == 0 {
        use std::os::unix::fs::OpenOptionsExt;
        match plain().custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => return Ok((file, Mode::Direct)),
            // The filesystem does not do direct I/O: use the cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((plain().open(path)?, Mode::Cached))
}

/// A batch buffer: a mapping of its own (see [`MappedBuffer`]), so its
/// bytes start on a page (hence [`BLOCK`]) boundary as direct writes need,
/// and a recycled one is not zeroed again.
type Batch = MappedBuffer;

/// The open file and how it is written, shared by the writes in flight.
struct Target {
    file: File,
    direct: AtomicBool,
}

impl Target {
    fn new(file: File, mode: Mode) -> Self {
        Self {
            file,
            direct: AtomicBool::new(mode == Mode::Direct),
        }
    }

    fn mode(&self) -> Mode {
        if self.direct.load(Ordering::Relaxed) {
            Mode::Direct
        } else {
            Mode::Cached
        }
    }

    /// Writes `data` at `offset`: its block-aligned part directly when in
    /// direct mode, the rest (and everything after a refused direct write)
    /// through the cache.
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        if self.mode() == Mode::Direct {
            let aligned = data.len() / BLOCK * BLOCK;
            match self.file.write_all_at(&data[..aligned], offset) {
                Ok(()) => done = aligned,
                // Stricter alignment than ours (or a filesystem that only
                // refuses at write time): the positional write is simply
                // repeated through the cache below.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
            if done < data.len() {
                // A tail that is not a whole block (only the last, partial
                // batch has one) or a refused write: direct writing ends.
                self.uncached()?;
            }
        }
        let rest = &data[done..];
        if !rest.is_empty() {
            let at = offset + done as u64;
            self.file.write_all_at(rest, at)?;
            start_writeback(&self.file, at, rest.len());
        }
        Ok(())
    }

    /// Leaves direct mode: clears `O_DIRECT` on the descriptor.
    fn uncached(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = self.file.as_raw_fd();
            // SAFETY: fcntl on a descriptor `self.file` keeps open for the
            // duration of both calls; F_GETFL/F_SETFL take plain integers.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.direct.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// Asks the kernel to start writing a range to disk now, without waiting.
/// Left alone, a large upload written through the cache stays dirty until
/// the final `fdatasync`, which then stalls the request while the whole blob
/// goes to disk; started early, the writeback overlaps with receiving, and
/// the final sync has only the tail left. Advisory: errors surface at the
/// sync.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range takes plain integers; the descriptor is open
    // (borrowed from `file`) for the duration of the call.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: usize) {}

/// A batch being written on the blocking pool; it gives the buffer back.
type BatchWrite = tokio::task::JoinHandle<io::Result<Batch>>;

/// Batches being written at once, at most. 1 GiB pushes alternated between
/// builds on the benchmark machine (ext4 on a virtual disk, ten rounds
/// each): medians of 770 MB/s for 4 MiB × 2 in flight, 727 for 2 MiB × 2,
/// 694 for 2 MiB × 1; a second write keeps the device busy while the first
/// completes. Once receiving and hashing got cheaper, the push waited on
/// the disk's slow moments (up to 0.9 s of a 1.5 s push in one round); with
/// a third write in flight the benchmark's push median went from 969 to
/// 1,238 MB/s, for 4 MiB more per upload.
const IN_FLIGHT: usize = 3;

/// The most one appender holds: its batches in flight and the one filling.
pub const MEMORY: usize = (IN_FLIGHT + 1) * BATCH;

/// Appends through a ring of batch buffers; see the module comment.
pub(super) struct FsAppender {
    target: Arc<Target>,
    /// Batches being written, oldest first.
    in_flight: VecDeque<BatchWrite>,
    /// Set when a write failed: nothing more is written.
    failed: bool,
    /// The object's path, for syncing its directory.
    path: PathBuf,
    start: u64,
    /// The object's size with every byte taken so far: the bytes handed to
    /// the writers, then those in `batch`.
    size: u64,
    batch: Option<Batch>,
    spare: Vec<Batch>,
}

impl FsAppender {
    pub(super) fn new(file: File, mode: Mode, path: PathBuf, at: u64) -> Self {
        Self {
            target: Arc::new(Target::new(file, mode)),
            in_flight: VecDeque::new(),
            failed: false,
            path,
            start: at,
            size: at,
            batch: None,
            spare: Vec::new(),
        }
    }

    /// Waits for the oldest batch in flight.
    async fn settle_one(&mut self) -> io::Result<()> {
        if let Some(handle) = self.in_flight.pop_front() {
            match handle.await.map_err(io::Error::other).and_then(|r| r) {
                Ok(mut batch) => {
                    batch.clear();
                    self.spare.push(batch);
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn settle_all(&mut self) -> io::Result<()> {
        let mut outcome = Ok(());
        while !self.in_flight.is_empty() {
            if let Err(e) = self.settle_one().await {
                outcome = outcome.and(Err(e));
            }
        }
        outcome
    }

    /// Sends the current batch to be written, once a writer is free.
    async fn submit(&mut self) -> io::Result<()> {
        while self.in_flight.len() >= IN_FLIGHT {
            self.settle_one().await?;
        }
        if self.failed {
            return Err(io::Error::other("appender poisoned by an earlier failure"));
        }
        let Some(batch) = self.batch.take_if(|b| !b.is_empty()) else {
            return Ok(());
        };
        self.batch = self.spare.pop();
        // The batch holds the last bytes taken.
        let offset = self.size - batch.len() as u64;
        let target = Arc::clone(&self.target);
        self.in_flight
            .push_back(tokio::task::spawn_blocking(move || {
                target.write(offset, batch.bytes())?;
                Ok(batch)
            }));
        Ok(())
    }
}

#[async_trait]
impl Assembler for FsAppender {
    fn size(&self) -> u64 {
        self.size
    }

    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let batch = match &mut self.batch {
                Some(batch) => batch,
                None => self.batch.insert(Batch::new(BATCH)?),
            };
            let taken = batch.fill(rest);
            self.size += taken as u64;
            rest = &rest[taken..];
            if batch.is_full() {
                self.submit().await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Assembly> {
        match self.write_out().await {
            Ok(size) => Ok(Assembly {
                size,
                parts: serde_json::Value::Null,
            }),
            Err(e) => {
                // A failed write may have taken blocks (a full disk stays
                // full otherwise): the object goes back to where it was.
                if let Err(undo) = self.abort().await {
                    tracing::warn!(error = %undo, "could not roll back a failed commit");
                }
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        // Whatever the writes in flight did, the object goes back to `start`.
        let _ = self.settle_all().await;
        let start = self.start;
        let target = Arc::clone(&self.target);
        blocking(move || target.file.set_len(start)).await?;
        Ok(())
    }
}

impl FsAppender {
    /// Writes every byte taken and syncs them; on failure, nothing is left
    /// in flight.
    async fn write_out(&mut self) -> Result<u64> {
        if let Err(e) = self.submit().await {
            let _ = self.settle_all().await;
            return Err(e.into());
        }
        self.settle_all().await?;
        // An appender from byte 0 may have created the file: its directory
        // entry must be durable too, or a power loss could lose a chunk the
        // caller has already recorded.
        let created_dir = (self.start == 0)
            .then(|| self.path.parent().map(Path::to_owned))
            .flatten();
        let target = Arc::clone(&self.target);
        blocking(move || {
            // Direct writes skip the cache, not the device's own cache nor
            // the file's size and extents: the sync is still needed.
            target.file.sync_data()?;
            match created_dir {
                Some(dir) => sync_dir(&dir),
                None => Ok(()),
            }
        })
        .await?;
        Ok(self.size)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn direct_flag(file: &File) -> bool {
        // SAFETY: F_GETFL on an open descriptor borrowed from `file`.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        flags & libc::O_DIRECT != 0
    }

    #[test]
    fn aligned_appends_write_directly_and_the_tail_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let (file, mode) = open(&path, 0, true).unwrap();
        if mode == Mode::Cached {
            // This filesystem has no direct I/O: nothing to check here.
            return;
        }
        assert!(direct_flag(&file), "Direct mode without O_DIRECT");
        let target = Target::new(file, mode);
        let data: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 251) as u8).collect();
        let mut batch = Batch::new(BATCH).unwrap();
        batch.fill(&data);
        target.write(0, &batch.bytes()[..2 * BLOCK]).unwrap();
        assert_eq!(target.mode(), Mode::Direct, "whole blocks stay direct");
        target
            .write(2 * BLOCK as u64, &batch.bytes()[2 * BLOCK..])
            .unwrap();
        assert_eq!(
            target.mode(),
            Mode::Cached,
            "a partial block ends direct mode"
        );
        assert!(
            !direct_flag(&target.file),
            "O_DIRECT still set after the tail"
        );
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_refused_direct_write_is_repeated_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let (file, mode) = open(&path, 0, true).unwrap();
        let target = Target::new(file, mode);
        // A buffer one byte off a block boundary: the kernel refuses it
        // for O_DIRECT (EINVAL), and the write must still land.
        let mut batch = Batch::new(BATCH).unwrap();
        let data: Vec<u8> = (0..2 * BLOCK + 1).map(|i| (i % 13) as u8).collect();
        batch.fill(&data);
        target.write(0, &batch.bytes()[1..]).unwrap();
        assert_eq!(target.mode(), Mode::Cached);
        assert_eq!(std::fs::read(&path).unwrap(), &data[1..]);
    }

    #[test]
    fn appends_off_a_block_boundary_use_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, [7u8; 10]).unwrap();
        let (file, mode) = open(&path, 10, false).unwrap();
        assert_eq!(mode, Mode::Cached);
        assert!(!direct_flag(&file));
        // On a boundary, as direct as the filesystem allows at byte 0.
        let (_, at_zero) = open(&dir.path().join("other"), 0, true).unwrap();
        let (file, at_block) = open(&path, BLOCK as u64, false).unwrap();
        assert_eq!(at_block, at_zero);
        assert_eq!(direct_flag(&file), at_block == Mode::Direct);
    }
}
