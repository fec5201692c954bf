//! The sweep: what crashes and abandoned clients leave in storage goes away.
//!
//! Run at start and then periodically (`state.rs`). It removes
//! - upload sessions idle past [`UploadLimits::max_idle`] (no chunk since),
//!   as distribution's upload purging does;
//! - session directories without a readable `info` and `hashstate`: a crash
//!   while a session started, or a session some other way broken, which no
//!   client can continue;
//! - the driver's own temporaries older than [`STALE_TEMPORARY`]
//!   ([`super::super::Driver::sweep_temporaries`]).
//!
//! A session being worked on in this process is never touched (its lock is
//! held), and a starting session holds its lock until both files exist, so
//! the sweep cannot take it for a leftover.

use std::time::Duration;

use super::super::{DriverError, Result, Storage, StorageError, paths};
use super::{UploadId, now_secs};

/// Age past which a temporary is a crash's leftover: a whole-object write
/// takes milliseconds, and an hour leaves room for any stalled disk.
pub const STALE_TEMPORARY: Duration = Duration::from_secs(60 * 60);

/// What one sweep of `uploads/` removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UploadSweep {
    /// Sessions idle past the limit.
    pub expired: usize,
    /// Session directories no client could continue.
    pub broken: usize,
}

impl Storage {
    /// Sweeps `uploads/` (see the module comment) and indexes the sessions
    /// kept by owner, for the per-account limit.
    pub async fn sweep_uploads(&self) -> Result<UploadSweep> {
        let mut swept = UploadSweep::default();
        let names = match self.driver.list(paths::UPLOADS).await {
            Ok(names) => names,
            Err(DriverError::NotFound(_)) => return Ok(swept),
            Err(e) => return Err(e.into()),
        };
        let max_idle = self.upload_limits.max_idle.as_secs();
        let now = now_secs();
        for name in names {
            // Not a name we hand out: not ours to remove.
            let Some(id) = UploadId::parse(&name) else {
                continue;
            };
            let Some(_guard) = self.upload_locks.try_lock(id) else {
                continue;
            };
            match self.read_session(id).await {
                Ok((_, session)) if now.saturating_sub(session.active_at) > max_idle => {
                    self.remove_session(id, session.owner.as_deref(), Some(&session))
                        .await;
                    swept.expired += 1;
                }
                Ok((_, session)) => {
                    if let Some(owner) = &session.owner {
                        self.upload_owners.insert(owner, id);
                    }
                }
                Err(StorageError::UploadUnknown) => {
                    // Its assembly's state is unreadable: what it holds in an
                    // object store is left to the bucket's expiry of
                    // incomplete multipart uploads.
                    self.remove_session(id, None, None).await;
                    swept.broken += 1;
                }
                // One unreadable session (a storage fault) stops nothing
                // else; the next sweep tries again.
                Err(e) => {
                    tracing::warn!(upload = %id, error = %e, "sweep could not read a session")
                }
            }
        }
        Ok(swept)
    }

    /// Removes stale temporaries of the driver; returns how many.
    pub async fn sweep_temporaries(&self) -> Result<usize> {
        // Listings never count temporaries, so removing one changes none.
        Ok(self.driver.sweep_temporaries(STALE_TEMPORARY).await?)
    }

    /// One whole sweep, logged; a failure is logged and retried next time.
    pub async fn sweep(&self) {
        self.sweep_uploads_logged().await;
        self.sweep_temporaries_logged().await;
    }

    pub async fn sweep_uploads_logged(&self) {
        match self.sweep_uploads().await {
            Ok(UploadSweep {
                expired: 0,
                broken: 0,
            }) => {}
            Ok(swept) => tracing::info!(
                expired = swept.expired,
                broken = swept.broken,
                "removed upload sessions"
            ),
            Err(e) => tracing::warn!(error = %e, "upload sweep failed"),
        }
    }

    pub async fn sweep_temporaries_logged(&self) {
        match self.sweep_temporaries().await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed stale temporaries"),
            Err(e) => tracing::warn!(error = %e, "temporaries sweep failed"),
        }
    }
}
