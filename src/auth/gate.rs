//! The bound on concurrent password verifications.
//!
//! An argon2id verification holds its memory cost (19 MiB at the current
//! parameters) for its whole run, and the decoy run for unknown accounts
//! costs the same, so unauthenticated requests could otherwise drive the
//! server's memory without bound. At most `max_concurrent` verifications run
//! at once; up to `queue` more wait for a slot, each at most `wait`; anything
//! beyond is refused at once. Refused attempts never reach the hash, so they
//! cost neither memory nor CPU. A credential found in the verification cache
//! never comes here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Memory one verification holds at the current argon2id parameters, for
/// sizing the default bound.
const VERIFICATION_BYTES: u64 = 19 << 20;
/// Share of the machine's memory the default bound lets verifications hold.
const MEMORY_SHARE: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("too many logins being verified, retry in {} s", .0.as_secs().max(1))]
    Busy(Duration),
}

pub struct VerifyGate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
    wait: Duration,
}

impl VerifyGate {
    /// `max_concurrent` 0: the default for this machine ([`default_concurrency`]).
    pub fn new(max_concurrent: usize, queue: usize, wait: Duration) -> Self {
        let max = if max_concurrent == 0 {
            default_concurrency()
        } else {
            max_concurrent
        };
        Self {
            slots: Arc::new(Semaphore::new(max)),
            waiting: AtomicUsize::new(0),
            queue,
            wait,
        }
    }

    /// A slot for one verification, held until the permit is dropped.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, GateError> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(permit);
        }
        // Take a place in the queue, or be refused when it is full.
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(GateError::Busy(Duration::from_secs(1)));
        }
        let _place = QueuePlace(&self.waiting);
        match tokio::time::timeout(self.wait, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out (or, never, closed).
            _ => Err(GateError::Busy(Duration::from_secs(1))),
        }
    }
}

/// Leaves the queue however the wait ends (a cancelled request included).
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One verification per core, but no more than a sixteenth of the memory
/// in verifications: the CPU is the bottleneck of a login burst, and a
/// small machine must not be pushed into swap or the OOM killer by one.
pub fn default_concurrency() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_memory = total_memory().map_or(usize::MAX, |bytes| {
        (bytes / MEMORY_SHARE / VERIFICATION_BYTES) as usize
    });
    cores.min(by_memory).max(1)
}

/// `MemTotal` of `/proc/meminfo`, in bytes (Linux); `None` elsewhere.
fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_then_a_bounded_queue_then_refusal() {
        let gate = Arc::new(VerifyGate::new(1, 1, Duration::from_secs(30)));
        let held = gate.enter().await.unwrap();
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.enter().await.map(drop) }
        });
        while gate.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        // The queue's one place is taken: refused without waiting.
        assert!(matches!(gate.enter().await, Err(GateError::Busy(_))));
        drop(held);
        assert!(waiting.await.unwrap().is_ok());
        // A short wait gives up.
        let gate = VerifyGate::new(1, 4, Duration::from_millis(20));
        let _held = gate.enter().await.unwrap();
        assert!(matches!(gate.enter().await, Err(GateError::Busy(_))));
        assert!(default_concurrency() >= 1);
    }
}
