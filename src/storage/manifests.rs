//! Manifests, tags and referrers.
//!
//! A manifest's bytes are stored as a blob (content-addressed, immutable); the
//! repository holds a revision link naming its media type, tags naming its
//! digest, and for a manifest with a `subject`, a referrer entry under that
//! subject. Links are written after the content they point at, so a crash
//! never leaves a tag or revision pointing at nothing.
//!
//! A signed schema 1 manifest is named by the digest of its payload, not of
//! the bytes pushed (which carry the signatures), so its bytes are stored as
//! the blob of their own digest and its revision link names that digest on a
//! second line: `blobs/` stays content-addressed.

use bytes::Bytes;

use super::{DriverError, OrUnknown, Page, Result, Storage, StorageError, paths};
use crate::manifest::{self, Descriptor, MAX_MANIFEST_BYTES};
use crate::reference::{Digest, Reference, RepoName, Tag};

/// A manifest as stored: its digest, media type and exact bytes.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Bytes,
}

/// What a manifest push stored.
#[derive(Debug, Clone)]
pub struct ManifestPut {
    pub digest: Digest,
    /// The `subject` the manifest refers to, for the `OCI-Subject` header.
    pub subject: Option<Digest>,
}

impl Storage {
    /// The digest a reference names and its revision link.
    pub(super) async fn revision(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, Revision)> {
        let unknown = || StorageError::ManifestUnknown(reference.to_string());
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => {
                let target = self
                    .cached_get(&paths::tag(repo, tag))
                    .await
                    .or_unknown(unknown)?;
                let target = std::str::from_utf8(&target).map_err(|_| unknown())?;
                Digest::parse(target.trim()).map_err(|_| unknown())?
            }
        };
        let media_type = self
            .cached_get(&paths::manifest_revision(repo, &digest))
            .await
            .or_unknown(unknown)?;
        let revision = std::str::from_utf8(&media_type)
            .ok()
            .and_then(|r| Revision::parse(r, &digest))
            .ok_or_else(unknown)?;
        Ok((digest, revision))
    }

    /// The digest, media type and size of the manifest a reference names.
    pub async fn manifest_head(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, String, u64)> {
        let (digest, revision) = self.revision(repo, reference).await?;
        let size = self
            .cached_size(&paths::blob_data(&revision.content))
            .await
            .or_unknown(|| StorageError::ManifestUnknown(reference.to_string()))?;
        Ok((digest, revision.media_type, size))
    }

    pub async fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let (digest, revision) = self.revision(repo, reference).await?;
        let content = self
            .cached_get(&paths::blob_data(&revision.content))
            .await
            .or_unknown(|| StorageError::ManifestUnknown(reference.to_string()))?;
        Ok(StoredManifest {
            digest,
            media_type: revision.media_type,
            content,
        })
    }

    /// Checks and stores a manifest under a tag or a digest.
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<ManifestPut> {
        self.manifest_store(repo, reference, content_type, body, References::Present)
            .await
    }

    /// Stores a manifest of a pull-through cache: checked like a pushed
    /// one, but what it references need not be here yet (the cache fetches
    /// each blob when it is first pulled).
    pub async fn manifest_put_cached(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<ManifestPut> {
        self.manifest_store(repo, reference, content_type, body, References::Later)
            .await
    }

    async fn manifest_store(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
        references: References,
    ) -> Result<ManifestPut> {
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(StorageError::ManifestTooLarge {
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let parsed = manifest::parse(content_type, &body)
            .map_err(|e| StorageError::ManifestInvalid(e.to_string()))?;
        // What names the manifest: the signed payload of a schema 1 one.
        let named: &[u8] = parsed.schema1.as_ref().map_or(&body, |s| &s.payload);
        if let Some(s) = &parsed.schema1
            && s.name != repo.as_str()
        {
            return Err(StorageError::ManifestInvalid(format!(
                "schema 1: the manifest's name {:?} is not the repository {repo:?}",
                s.name
            )));
        }
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = expected.algorithm().digest_of(named);
                if &actual != expected {
                    return Err(StorageError::DigestMismatch {
                        expected: expected.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => crate::reference::Algorithm::Sha256.digest_of(named),
        };
        let revision = Revision {
            media_type: parsed.media_type.clone(),
            content: if named.len() == body.len() {
                digest.clone()
            } else {
                crate::reference::Algorithm::Sha256.digest_of(&body)
            },
        };

        let blobs = match references {
            References::Present => &parsed.blobs[..],
            References::Later => &[],
        };
        let children = match references {
            References::Present => &parsed.children[..],
            References::Later => &[],
        };
        for blob in blobs {
            match self.blob_size(repo, blob).await {
                Err(StorageError::BlobUnknown(d)) => {
                    return Err(StorageError::ManifestBlobUnknown(d));
                }
                other => other?,
            };
        }
        for child in children {
            let exists = self
                .driver
                .stat(&paths::manifest_revision(repo, child))
                .await;
            if let Err(DriverError::NotFound(_)) = exists {
                return Err(StorageError::ManifestBlobUnknown(child.clone()));
            }
            exists?;
        }

        let size = body.len() as u64;
        // Written even when stored already: the write makes it young, so a
        // garbage collection that found it unreferenced leaves it alone
        // (`gc.rs`: nothing written within the grace period is swept).
        self.cached_put(&paths::blob_data(&revision.content), body)
            .await?;
        self.cached_put(
            &paths::manifest_revision(repo, &digest),
            Bytes::from(revision.to_string_for(&digest)),
        )
        .await?;
        self.catalog.insert(repo.as_str());
        if let Reference::Tag(tag) = reference {
            self.cached_put(&paths::tag(repo, tag), Bytes::from(digest.to_string()))
                .await?;
            if let Some(tags) = self.tags.kept(repo) {
                tags.insert(tag.as_str());
            }
        }
        // The subject need not exist (yet): referrers are listed by the
        // subject's digest whether or not it is ever pushed.
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        if let Some(subject) = &subject {
            let entry = parsed.referrer_descriptor(digest.clone(), size);
            self.driver
                .put(
                    &paths::referrer(repo, subject, &digest),
                    serde_json::to_vec(&entry)
                        .expect("descriptor serializes")
                        .into(),
                )
                .await?;
        }
        Ok(ManifestPut { digest, subject })
    }

    /// Deleting a tag removes just the tag; deleting a digest removes the
    /// manifest from the repository with every tag pointing at it and its
    /// referrer entry.
    pub async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let deleted = self.delete_manifest_or_tag(repo, reference).await;
        // Removing the last link may have removed the repository.
        self.catalog_recheck(repo).await;
        deleted
    }

    async fn delete_manifest_or_tag(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let unknown = || StorageError::ManifestUnknown(reference.to_string());
        let digest = match reference {
            Reference::Tag(tag) => {
                let deleted = self
                    .cached_delete(&paths::tag(repo, tag))
                    .await
                    .or_unknown(unknown);
                self.tag_recheck(repo, tag).await;
                return deleted;
            }
            Reference::Digest(d) => d,
        };
        let stored = self.manifest_get(repo, reference).await?;
        for tag in self.tag_names(repo).await? {
            let Ok(tag) = Tag::parse(&tag) else { continue };
            let key = paths::tag(repo, &tag);
            match self.driver.get(&key).await {
                Ok(target) if target.as_ref() == digest.to_string().as_bytes() => {
                    ignore_missing(self.cached_delete(&key).await)?;
                    self.tag_recheck(repo, &tag).await;
                }
                Ok(_) | Err(DriverError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Ok(parsed) = manifest::parse(Some(&stored.media_type), &stored.content)
            && let Some(subject) = parsed.subject
        {
            ignore_missing(
                self.driver
                    .delete(&paths::referrer(repo, &subject.digest, digest))
                    .await,
            )?;
        }
        self.cached_delete(&paths::manifest_revision(repo, digest))
            .await
            .or_unknown(unknown)
    }

    /// Up to `n` tags of a repository after `last`, in the spec's list
    /// order. `NameUnknown` when the repository does not exist.
    pub async fn tags_page(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Page> {
        let tags = self.tags.listed(repo);
        tags.refresh(self.tag_names(repo), self.listing_staleness)
            .await?;
        if tags.is_empty() && !self.repository_exists(repo).await? {
            self.tags.forget(repo);
            return Err(StorageError::NameUnknown(repo.clone()));
        }
        Ok(tags.page(last, n, |_| true))
    }

    /// A change that may have removed `tag` happened. When that cannot be
    /// checked, the tags are read again at the next listing.
    async fn tag_recheck(&self, repo: &RepoName, tag: &Tag) {
        let Some(tags) = self.tags.kept(repo) else {
            return;
        };
        let exists = async {
            match self.driver.stat(&paths::tag(repo, tag)).await {
                Ok(_) => Ok(true),
                Err(DriverError::NotFound(_)) => Ok(false),
                Err(e) => Err(StorageError::from(e)),
            }
        };
        if let Err(e) = tags.recheck(tag.as_str(), exists).await {
            tracing::warn!(repository = %repo, tag = tag.as_str(), error = %e, "tag not re-checked");
            tags.invalidate();
        }
    }

    /// Every tag of `repo`, read from storage.
    async fn tag_names(&self, repo: &RepoName) -> Result<Vec<String>> {
        self.count_listing_read();
        match self.driver.list(&paths::tags(repo)).await {
            Ok(tags) => Ok(tags),
            Err(DriverError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Descriptors of the manifests in `repo` whose subject is `subject`,
    /// sorted by digest. Empty (not an error) when there are none.
    pub async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>> {
        let dir = paths::referrers(repo, subject);
        let entries = match self.driver.list(&dir).await {
            Ok(entries) => entries,
            Err(DriverError::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut found = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(referrer) = paths::parse_referrer_entry_name(&entry) else {
                continue;
            };
            let content = match self
                .driver
                .get(&paths::referrer(repo, subject, &referrer))
                .await
            {
                Ok(c) => c,
                // Deleted between list and get.
                Err(DriverError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            match serde_json::from_slice::<Descriptor>(&content) {
                Ok(d) => found.push(d),
                Err(e) => tracing::warn!(entry, error = %e, "unreadable referrer entry skipped"),
            }
        }
        found.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(found)
    }
}

/// A revision link's content: the media type, and when the manifest's bytes
/// are not the blob of its own digest (a signed schema 1 manifest), the
/// digest they are stored under on a second line.
pub(super) struct Revision {
    pub(super) media_type: String,
    pub(super) content: Digest,
}

impl Revision {
    fn parse(link: &str, digest: &Digest) -> Option<Self> {
        let mut lines = link.lines();
        let media_type = lines.next()?.trim().to_owned();
        let content = match lines.next() {
            Some(d) => Digest::parse(d.trim()).ok()?,
            None => digest.clone(),
        };
        Some(Self {
            media_type,
            content,
        })
    }

    /// The link as written: one line unless the bytes are stored apart, so
    /// other manifests' links are as before.
    fn to_string_for(&self, digest: &Digest) -> String {
        if &self.content == digest {
            self.media_type.clone()
        } else {
            format!("{}\n{}", self.media_type, self.content)
        }
    }
}

pub(super) fn ignore_missing(r: std::result::Result<(), DriverError>) -> Result<()> {
    match r {
        Err(DriverError::NotFound(_)) => Ok(()),
        other => Ok(other?),
    }
}

/// Whether a stored manifest's blobs and child manifests must be in the
/// repository already.
#[derive(Clone, Copy)]
enum References {
    Present,
    Later,
}
