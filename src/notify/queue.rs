//! One endpoint's durable queue: segment files in its directory, each a
//! batch of events (one JSON object a line) as the writer received them,
//! named by a sequence number so that their order is their names' order.
//!
//! ```text
//! <queue_dir>/<endpoint>/
//! ├── 00000000000000000007.events   a batch, whole: written as .writing-…, fsync'd, renamed
//! ├── 00000000000000000008.events
//! └── .writing-00000000000000000009 a batch being written (a crash leaves it; removed at start)
//! ```
//!
//! A segment is written whole and renamed into place, then the directory
//! is fsync'd: after a crash a segment is there with every event or not at
//! all. It is deleted only after the receiver acknowledged its events
//! (a 2xx), so a restart resends exactly the segments not acknowledged.
//! Calls block (file I/O): the tasks run them with `spawn_blocking`.

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const SUFFIX: &str = ".events";
/// Not the storage's `.tmp-`: its sweep of `storage.root` (where the
/// queues are by default) must leave these alone.
const TMP: &str = ".writing-";

/// A segment: its sequence number and how many events it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub seq: u64,
    pub events: u64,
}

pub struct Queue {
    dir: PathBuf,
    segments: Mutex<VecDeque<Segment>>,
    /// The next segment's number (the writer's alone).
    next: AtomicU64,
    /// Events in the segments.
    pending: AtomicU64,
}

impl Queue {
    /// Opens (creating, `0700`) the directory, removes what a crash left
    /// half-written and counts the segments kept.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let fail = |e: std::io::Error| format!("notifications queue {}: {e}", dir.display());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP) {
                // Never renamed into place: its events were not yet kept.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(seq) = name
                .strip_suffix(SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let text = fs::read_to_string(entry.path()).map_err(fail)?;
            let events = text.lines().filter(|l| !l.is_empty()).count() as u64;
            found.push(Segment { seq, events });
        }
        found.sort_by_key(|s| s.seq);
        let next = found.last().map_or(0, |s| s.seq + 1);
        let pending = found.iter().map(|s| s.events).sum();
        Ok(Self {
            dir: dir.to_owned(),
            segments: Mutex::new(found.into()),
            next: AtomicU64::new(next),
            pending: AtomicU64::new(pending),
        })
    }

    /// Events kept, undelivered.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Keeps `lines` (events, one JSON object each) as one new segment,
    /// durably (the file and the directory fsync'd) before it returns.
    pub fn append(&self, lines: &[String]) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{TMP}{seq:020}"));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut text = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
            for line in lines {
                text.push_str(line);
                text.push('\n');
            }
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, self.path(seq))?;
            fs::File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
            return written;
        }
        let events = lines.len() as u64;
        self.lock().push_back(Segment { seq, events });
        self.pending.fetch_add(events, Ordering::Relaxed);
        Ok(())
    }

    /// The oldest segments, as many as hold `events` events together (at
    /// least one, however large); none when the queue is empty.
    pub fn oldest(&self, events: u64) -> Vec<Segment> {
        let segments = self.lock();
        let mut taken = Vec::new();
        let mut count = 0;
        for segment in segments.iter() {
            if !taken.is_empty() && count + segment.events > events {
                break;
            }
            count += segment.events;
            taken.push(*segment);
        }
        taken
    }

    /// A segment's events.
    pub fn read(&self, segment: Segment) -> std::io::Result<Vec<String>> {
        let text = fs::read_to_string(self.path(segment.seq))?;
        Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Takes the oldest segment off the queue (delivered, or unreadable)
    /// and deletes its file. If the file cannot be deleted it is still
    /// taken off, so that delivery goes on; a restart sends it again.
    pub fn remove(&self, segment: Segment) -> std::io::Result<()> {
        {
            let mut segments = self.lock();
            if segments.front() == Some(&segment) {
                segments.pop_front();
                self.pending.fetch_sub(segment.events, Ordering::Relaxed);
            }
        }
        match fs::remove_file(self.path(segment.seq)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Segment>> {
        // A panic while holding it leaves the list whole (one push or pop).
        self.segments.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_survive_a_reopen_in_order_and_half_written_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        queue
            .append(&["{\"a\":1}".into(), "{\"a\":2}".into()])
            .unwrap();
        queue.append(&["{\"a\":3}".into()]).unwrap();
        assert_eq!(queue.pending(), 3);
        std::fs::write(dir.path().join(".writing-00000000000000000002"), "{\"a\":").unwrap();
        drop(queue);

        let queue = Queue::open(dir.path()).unwrap();
        assert_eq!(queue.pending(), 3);
        assert!(!dir.path().join(".writing-00000000000000000002").exists());
        let [first] = queue.oldest(1)[..] else {
            panic!("one segment")
        };
        assert_eq!(queue.read(first).unwrap(), ["{\"a\":1}", "{\"a\":2}"]);
        queue.remove(first).unwrap();
        assert_eq!(queue.pending(), 1);
        // New segments come after the kept ones; several small ones are
        // taken together.
        queue.append(&["{\"a\":4}".into()]).unwrap();
        let [second, third] = queue.oldest(2)[..] else {
            panic!("two segments")
        };
        assert!(third.seq > second.seq);
        assert_eq!(queue.read(second).unwrap(), ["{\"a\":3}"]);
        assert_eq!(queue.read(third).unwrap(), ["{\"a\":4}"]);
        queue.remove(second).unwrap();
        queue.remove(third).unwrap();
        assert_eq!((queue.pending(), queue.oldest(10).len()), (0, 0));
    }
}
