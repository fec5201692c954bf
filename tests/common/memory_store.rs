//! `object_store`'s in-memory store with S3's multipart semantics, so the
//! S3 driver's logic runs in the shared driver suite without a server.
//!
//! The in-memory store's own multipart uploads complete with every part
//! they hold, numbered from 0 without gaps, whatever list of parts they are
//! given; S3 completes with exactly the parts named, by number and ETag,
//! which is what the driver relies on when a commit was aborted or never
//! recorded. This stand-in keeps parts as S3 does and puts the completed
//! object into the in-memory store; everything else is the real in-memory
//! store, and the same suite runs on a real Garage (`storage_driver::on_garage`).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, ObjectStoreExt, PutPayload, PutResult};

/// A multipart upload's parts: index → (ETag, bytes).
type Parts = BTreeMap<usize, (String, Bytes)>;

#[derive(Default)]
pub struct S3Multipart {
    pub objects: Arc<InMemory>,
    /// By upload id.
    uploads: Mutex<HashMap<String, Parts>>,
    next: AtomicU64,
}

fn missing(id: &str) -> object_store::Error {
    object_store::Error::NotFound {
        path: id.to_owned(),
        source: "NoSuchUpload".into(),
    }
}

impl S3Multipart {
    /// Uploads neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.uploads.lock().unwrap().len()
    }
}

#[async_trait]
impl MultipartStore for S3Multipart {
    async fn create_multipart(&self, _path: &Path) -> object_store::Result<MultipartId> {
        let id = format!("upload-{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.uploads
            .lock()
            .unwrap()
            .insert(id.clone(), BTreeMap::new());
        Ok(id)
    }

    async fn put_part(
        &self,
        _path: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        let etag = format!("etag-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let bytes: Bytes = data.into();
        let mut uploads = self.uploads.lock().unwrap();
        let parts = uploads.get_mut(id).ok_or_else(|| missing(id))?;
        parts.insert(part_idx, (etag.clone(), bytes));
        Ok(PartId { content_id: etag })
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> object_store::Result<PutResult> {
        let held = self
            .uploads
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| missing(id))?;
        let mut content = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            match held.get(&index) {
                Some((etag, bytes)) if *etag == part.content_id => content.extend_from_slice(bytes),
                _ => {
                    return Err(object_store::Error::Generic {
                        store: "S3Multipart",
                        source: format!("InvalidPart: part {index} is not {}", part.content_id)
                            .into(),
                    });
                }
            }
        }
        self.objects.put(path, content.into()).await
    }

    async fn abort_multipart(&self, _path: &Path, id: &MultipartId) -> object_store::Result<()> {
        self.uploads
            .lock()
            .unwrap()
            .remove(id)
            .map(drop)
            .ok_or_else(|| missing(id))
    }
}
