//! Which repositories a legacy v1 image belongs to. The legacy backend
//! binds no image to a repository (a read token for one repository reads
//! any layer), so Portcullis keeps the bindings, in this storage: they
//! survive a restart and every replica sees them. Each binding is an empty
//! object of its own, so concurrent pushes never lose one to the other.

use bytes::Bytes;

use super::{DriverError, Result, Storage, paths};
use crate::reference::{ImageId, RepoName};

impl Storage {
    /// Binds `id` to `repo` (idempotent).
    pub async fn v1_bind(&self, id: &ImageId, repo: &RepoName) -> Result<()> {
        Ok(self
            .driver
            .put(&paths::v1_binding(id, repo), Bytes::new())
            .await?)
    }

    /// The repositories `id` is bound to (none for an image never seen).
    pub async fn v1_bindings(&self, id: &ImageId) -> Result<Vec<RepoName>> {
        match self.driver.list(&paths::v1_image(id)).await {
            Ok(names) => Ok(names
                .iter()
                .filter_map(|n| paths::parse_v1_binding(n))
                .collect()),
            Err(DriverError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::fs::FsDriver;

    #[tokio::test]
    async fn bindings_are_kept_per_repository_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(Arc::new(FsDriver::new(dir.path()).await.unwrap()));
        let id = ImageId::parse(&"ab".repeat(32)).unwrap();
        assert!(storage.v1_bindings(&id).await.unwrap().is_empty());
        let (a, b) = (
            RepoName::parse("alice/app").unwrap(),
            RepoName::parse("library/busybox").unwrap(),
        );
        for repo in [&a, &b, &a] {
            storage.v1_bind(&id, repo).await.unwrap();
        }
        assert_eq!(storage.v1_bindings(&id).await.unwrap(), [a, b]);
        let other = ImageId::parse(&"cd".repeat(32)).unwrap();
        assert!(storage.v1_bindings(&other).await.unwrap().is_empty());
    }
}
