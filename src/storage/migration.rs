//! What `portcullis migrate --from-v1` has already copied: one record per
//! legacy image, written only after the image's layer is stored as a blob.
//! A second run (or one resumed after an interruption) reads the record
//! instead of downloading the layer again; a record whose blob has gone (a
//! garbage collection, a lost disk) counts as absent.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{DriverError, Result, Storage, paths};
use crate::reference::{Digest, ImageId};

/// A legacy image's layer as it is stored in v2 form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigratedLayer {
    /// The stored blob (the layer as the manifest lists it).
    pub digest: Digest,
    /// The SHA-256 of the uncompressed layer (the config's `diff_ids`).
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
    /// The layer holds no files (an image made by `ENV`, `CMD` …): the
    /// manifest leaves it out and the history marks it `empty_layer`.
    pub empty: bool,
    /// The repository the blob was first linked to; others mount it from there.
    pub repository: String,
}

impl Storage {
    /// The record of `id`, when its blob is still stored.
    pub async fn migrated_layer(&self, id: &ImageId) -> Result<Option<MigratedLayer>> {
        let record = match self.driver.get(&paths::v1_migrated(id)).await {
            Ok(bytes) => bytes,
            Err(DriverError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // An unreadable record is one to write again, not a reason to stop.
        let Ok(layer) = serde_json::from_slice::<MigratedLayer>(&record) else {
            return Ok(None);
        };
        match self.driver.stat(&paths::blob_data(&layer.digest)).await {
            Ok(_) => Ok(Some(layer)),
            Err(DriverError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put_migrated_layer(&self, id: &ImageId, layer: &MigratedLayer) -> Result<()> {
        let record = serde_json::to_vec(layer).expect("plain struct serializes");
        Ok(self
            .driver
            .put(&paths::v1_migrated(id), Bytes::from(record))
            .await?)
    }
}
