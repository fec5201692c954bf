//! Assemblies on an object store: a multipart upload of the object, made of
//! equal parts, and the bytes not yet enough for a part in a small object
//! of the driver's own beside it (the *tail*).
//!
//! S3 wants every part but the last to be at least 5 MiB, and chunks of a
//! chunked upload can be any size, so only whole parts are uploaded; what is
//! left of a chunk goes to `.<name>-tail-<size>` next to the object, keyed by
//! the assembly's size so that a new tail never replaces the one a recorded
//! state still needs. The next assembler reads it back in front of its own
//! bytes; finishing uploads it as the last part (or, when the assembly is
//! smaller than one part, puts it as the whole object).
//!
//! The state the caller records (`Assembly::parts`) is the upload's id, the
//! part size and the parts' ETags, which is all another process needs:
//! the multipart upload lives in the store. Parts past a recorded state
//! (an aborted or unrecorded commit) are overwritten by the next ones or
//! left out when the upload completes, since completion names its parts.
//!
//! Memory: one part filling and [`PartLimits::in_flight`] being uploaded,
//! each in a mapping of its own ([`MappedBuffer`]): the request body's
//! frames are copied in and freed at once, and a part's memory goes back to
//! the system as soon as its upload is done.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{Store, store_error};
use crate::storage::buffer::MappedBuffer;
use crate::storage::driver::{Assembler, Assembly, DriverError, Result};

/// `Assembly::parts` of this driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Parts {
    /// The multipart upload's id.
    upload: String,
    /// Bytes in each part; kept with the state, so that a change of the
    /// configured size never misreads an assembly under way.
    part_size: u64,
    /// ETags of the uploaded parts, in order.
    etags: Vec<String>,
}

impl Parts {
    fn read(state: &Assembly, key: &str) -> Result<Self> {
        serde_json::from_value(state.parts.clone())
            .map_err(|_| DriverError::InvalidKey(format!("{key}: not an object store's assembly")))
    }

    fn record(&self, size: u64) -> Assembly {
        Assembly {
            size,
            parts: serde_json::to_value(self).expect("plain struct serializes"),
        }
    }

    /// Bytes of a state of `size` bytes that are in the tail.
    fn tail_len(&self, size: u64, key: &str) -> Result<u64> {
        size.checked_sub(self.etags.len() as u64 * self.part_size)
            .filter(|tail| *tail < self.part_size.max(1))
            .ok_or_else(|| DriverError::InvalidKey(format!("{key}: inconsistent assembly state")))
    }
}

/// The key of the tail a state of `size` bytes keeps, beside `key`.
fn tail_key(key: &str, size: u64) -> String {
    match key.rsplit_once('/') {
        Some((parent, name)) => format!("{parent}/.{name}-tail-{size}"),
        None => format!(".{key}-tail-{size}"),
    }
}

/// Whether `name` (a file name beside `key`) is one of `key`'s tails.
fn is_tail_of(name: &str, key: &str) -> bool {
    let own = key.rsplit_once('/').map_or(key, |(_, name)| name);
    name.strip_prefix('.')
        .and_then(|n| n.strip_prefix(own))
        .and_then(|n| n.strip_prefix("-tail-"))
        .is_some_and(|size| size.parse::<u64>().is_ok())
}

pub(super) async fn start(store: &Store, key: &str, path: &Path) -> Result<Assembly> {
    let upload = store
        .multipart
        .create_multipart(path)
        .await
        .map_err(|e| store_error(key, e))?;
    Ok(Parts {
        upload,
        part_size: store.parts.size as u64,
        etags: Vec::new(),
    }
    .record(0))
}

/// A state's tail bytes; `NotFound` when they are gone.
async fn read_tail(store: &Store, key: &str, size: u64, len: u64) -> Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let tail = store.own_path(&tail_key(key, size));
    let got = store.objects.get(&tail).await;
    let bytes = got
        .map_err(|e| store_error(key, e))?
        .bytes()
        .await
        .map_err(|e| store_error(key, e))?;
    if bytes.len() as u64 != len {
        return Err(DriverError::Io(std::io::Error::other(format!(
            "{key}: pending bytes are {} long, the state says {len}",
            bytes.len()
        ))));
    }
    Ok(bytes)
}

/// Deletes `key`'s tails except the one of `keep` bytes (none for `None`):
/// the others belong to superseded or never recorded states.
async fn delete_tails(store: &Store, key: &str, keep: Option<u64>) -> Result<()> {
    let dir = key.rsplit_once('/').map(|(parent, _)| parent);
    let listed = store
        .objects
        .list_with_delimiter(dir.map(|d| store.own_path(d)).as_ref())
        .await
        .map_err(|e| store_error(key, e))?;
    let kept = keep.map(|size| tail_key(key, size));
    for object in listed.objects {
        let Some(name) = object.location.filename() else {
            continue;
        };
        let own = match dir {
            Some(dir) => format!("{dir}/{name}"),
            None => name.to_owned(),
        };
        if is_tail_of(name, key) && kept.as_deref() != Some(own.as_str()) {
            match store.objects.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(key, e)),
            }
        }
    }
    Ok(())
}

pub(super) async fn finish(store: &Store, key: &str, path: &Path, state: &Assembly) -> Result<()> {
    match store.objects.head(path).await {
        // Finished from this state already.
        Ok(meta) if meta.size == state.size => return Ok(()),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(store_error(key, e)),
    }
    let parts = Parts::read(state, key)?;
    let tail_len = parts.tail_len(state.size, key)?;
    let tail = read_tail(store, key, state.size, tail_len).await?;
    if parts.etags.is_empty() {
        // Smaller than one part: the tail is the object, and the upload is
        // not needed. Gone when it was already completed or aborted (a
        // finish that moved its object away): then so is the tail, unless
        // the assembly is empty.
        store
            .objects
            .put(path, PutPayload::from_bytes(tail))
            .await
            .map_err(|e| store_error(key, e))?;
        abort_upload(store, key, path, &parts.upload).await?;
    } else {
        let mut ids: Vec<PartId> = parts
            .etags
            .iter()
            .map(|etag| PartId {
                content_id: etag.clone(),
            })
            .collect();
        if !tail.is_empty() {
            let last = store
                .multipart
                .put_part(path, &parts.upload, ids.len(), PutPayload::from_bytes(tail))
                .await
                .map_err(|e| store_error(key, e))?;
            ids.push(last);
        }
        store
            .multipart
            .complete_multipart(path, &parts.upload, ids)
            .await
            .map_err(|e| store_error(key, e))?;
    }
    // The object holds the bytes now: the pending ones are not needed.
    delete_tails(store, key, None).await
}

pub(super) async fn discard(store: &Store, key: &str, path: &Path, state: &Assembly) -> Result<()> {
    if let Ok(parts) = Parts::read(state, key) {
        abort_upload(store, key, path, &parts.upload).await?;
    }
    delete_tails(store, key, None).await
}

/// Aborts a multipart upload; one already completed or aborted is no error.
async fn abort_upload(store: &Store, key: &str, path: &Path, upload: &str) -> Result<()> {
    match store
        .multipart
        .abort_multipart(path, &upload.to_owned())
        .await
    {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(store_error(key, e)),
    }
}

type PartUpload = tokio::task::JoinHandle<object_store::Result<PartId>>;

/// Cuts written bytes into parts and uploads them, several at once.
pub(super) struct S3Assembler {
    store: Arc<Store>,
    key: String,
    path: Path,
    parts: Parts,
    /// Parts being uploaded, oldest first.
    in_flight: VecDeque<PartUpload>,
    /// The part being filled; made when the first byte comes.
    filling: Option<MappedBuffer>,
    size: u64,
}

impl S3Assembler {
    pub(super) async fn open(
        store: Arc<Store>,
        key: &str,
        path: Path,
        from: &Assembly,
    ) -> Result<Self> {
        let parts = Parts::read(from, key)?;
        let tail_len = parts.tail_len(from.size, key)?;
        let tail = read_tail(&store, key, from.size, tail_len).await?;
        if from.size > 0 {
            // The state continued is the one recorded last (the caller
            // serializes assemblers): every other tail is a leftover of a
            // superseded or never recorded state. Removed before any new
            // tail is written, which they could otherwise be taken for.
            delete_tails(&store, key, Some(from.size)).await?;
        }
        let filling = if tail.is_empty() {
            None
        } else {
            let mut part = MappedBuffer::new(parts.part_size as usize)?;
            part.fill(&tail);
            Some(part)
        };
        Ok(Self {
            store,
            key: key.to_owned(),
            path,
            parts,
            in_flight: VecDeque::new(),
            filling,
            size: from.size,
        })
    }

    /// Waits for the oldest part in flight and records its ETag.
    async fn settle_one(&mut self) -> Result<()> {
        if let Some(upload) = self.in_flight.pop_front() {
            let part = upload
                .await
                .map_err(|e| DriverError::Io(std::io::Error::other(e)))?
                .map_err(|e| store_error(&self.key, e))?;
            self.parts.etags.push(part.content_id);
        }
        Ok(())
    }

    /// Sends the filled part, once fewer than the limit are in flight.
    async fn submit(&mut self) -> Result<()> {
        while self.in_flight.len() >= self.store.parts.in_flight {
            self.settle_one().await?;
        }
        let Some(part) = self.filling.take() else {
            return Ok(());
        };
        let payload = PutPayload::from_bytes(Bytes::from_owner(part));
        let index = self.parts.etags.len() + self.in_flight.len();
        let store = Arc::clone(&self.store);
        let (path, upload) = (self.path.clone(), self.parts.upload.clone());
        self.in_flight.push_back(tokio::spawn(async move {
            store
                .multipart
                .put_part(&path, &upload, index, payload)
                .await
        }));
        Ok(())
    }

    fn cancel(&mut self) {
        for upload in self.in_flight.drain(..) {
            upload.abort();
        }
    }
}

impl Drop for S3Assembler {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[async_trait]
impl Assembler for S3Assembler {
    fn size(&self) -> u64 {
        self.size
    }

    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let part = match &mut self.filling {
                Some(part) => part,
                None => self
                    .filling
                    .insert(MappedBuffer::new(self.parts.part_size as usize)?),
            };
            let taken = part.fill(rest);
            self.size += taken as u64;
            rest = &rest[taken..];
            if part.is_full() {
                self.submit().await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Assembly> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        if let Some(part) = self.filling.take().filter(|p| !p.is_empty()) {
            let tail = PutPayload::from_bytes(Bytes::from_owner(part));
            let key = tail_key(&self.key, self.size);
            self.store
                .objects
                .put(&self.store.own_path(&key), tail)
                .await
                .map_err(|e| store_error(&self.key, e))?;
        }
        Ok(self.parts.record(self.size))
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        // Parts already uploaded are past the recorded state: the next
        // assembler overwrites them or completion leaves them out.
        self.cancel();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_named_beside_their_key_and_recognized() {
        assert_eq!(tail_key("uploads/u/data", 5), "uploads/u/.data-tail-5");
        assert_eq!(tail_key("data", 0), ".data-tail-0");
        assert!(is_tail_of(".data-tail-17", "uploads/u/data"));
        assert!(!is_tail_of(".data-tail-x", "uploads/u/data"));
        assert!(!is_tail_of(".database-tail-1", "uploads/u/data"));
        assert!(!is_tail_of("data", "uploads/u/data"));
    }
}
