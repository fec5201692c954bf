//! What the store holds, listed whole: every repository's tags, manifest
//! revisions, blob links and referrer entries, and every blob. Garbage
//! collection ([`super::gc`]) and the check ([`super::fsck`]) read the
//! store through this and nothing else, so the two agree on what exists.
//!
//! Listing reads names only (one directory listing per prefix, no object
//! reads); ages (`stat`) are asked for later, only of what might go.

use std::collections::BTreeMap;

use futures_util::{StreamExt, TryStreamExt};

use super::{DriverError, Result, Storage, StorageError, paths};
use crate::manifest::{self, Manifest};
use crate::reference::{Digest, RepoName, Tag};

/// How many small objects are read at once (an object store answers each
/// in a round trip; a filesystem in a blocking-pool task).
pub const IN_FLIGHT: usize = 16;

/// One repository's metadata, by name.
#[derive(Debug, Default)]
pub struct Contents {
    /// Tags and the digest each names (`None`: unreadable).
    pub tags: BTreeMap<Tag, Option<Digest>>,
    pub revisions: Vec<Digest>,
    pub layers: Vec<Digest>,
    /// `(subject, referrer)` pairs.
    pub referrers: Vec<(Digest, Digest)>,
}

/// A manifest revision read back: where its bytes are and what it points at.
pub struct ManifestRead {
    /// The blob holding its bytes (for a signed schema 1 manifest, not its
    /// own digest).
    pub content: Digest,
    pub manifest: Manifest,
}

/// Why a revision could not be read back.
pub enum Unreadable {
    /// The link is gone or does not parse.
    Link,
    /// Its content blob is gone.
    Content(Digest),
    /// Its bytes do not parse as the manifest the link says.
    Manifest(Digest, String),
}

impl Storage {
    /// Every repository now stored, sorted.
    pub async fn repository_names(&self) -> Result<Vec<RepoName>> {
        let mut names: Vec<RepoName> = self
            .walk_repositories()
            .await?
            .iter()
            .filter_map(|n| RepoName::parse(n).ok())
            .collect();
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    /// A repository's revisions and blob links (listed, nothing read): what
    /// the collector's second look needs. The other fields are empty.
    pub async fn links(&self, repo: &RepoName) -> Result<Contents> {
        let base = paths::repository(repo);
        let revisions = self
            .digests_under(&format!("{base}/{}/revisions", paths::MANIFESTS_DIR))
            .await?;
        let layers = self
            .digests_under(&format!("{base}/{}", paths::LAYERS_DIR))
            .await?;
        Ok(Contents {
            revisions,
            layers,
            ..Contents::default()
        })
    }

    /// A repository's tags (read), revisions, links and referrer entries (listed).
    pub async fn contents(&self, repo: &RepoName) -> Result<Contents> {
        let base = paths::repository(repo);
        let Contents {
            revisions, layers, ..
        } = self.links(repo).await?;
        let mut referrers = Vec::new();
        let referrers_dir = format!("{base}/{}", paths::REFERRERS_DIR);
        for subject in self.digests_under(&referrers_dir).await? {
            for name in self.names(&paths::referrers(repo, &subject)).await? {
                if let Some(referrer) = paths::parse_referrer_entry_name(&name) {
                    referrers.push((subject.clone(), referrer));
                }
            }
        }
        let tag_names: Vec<Tag> = self
            .names(&paths::tags(repo))
            .await?
            .iter()
            .filter_map(|t| Tag::parse(t).ok())
            .collect();
        let tags = futures_util::stream::iter(tag_names)
            .map(|tag| async move {
                match self.driver.get(&paths::tag(repo, &tag)).await {
                    Ok(target) => {
                        let target = std::str::from_utf8(&target)
                            .ok()
                            .and_then(|t| Digest::parse(t.trim()).ok());
                        Ok((tag, target))
                    }
                    // Deleted since the listing: not a tag any more.
                    Err(DriverError::NotFound(_)) => Ok((tag, None)),
                    Err(e) => Err(StorageError::from(e)),
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(Contents {
            tags,
            revisions,
            layers,
            referrers,
        })
    }

    /// Every stored blob's digest, sorted by key.
    pub async fn blob_digests(&self) -> Result<Vec<Digest>> {
        let mut found = Vec::new();
        for alg in self.names(paths::BLOBS).await? {
            let alg_dir = format!("{}/{alg}", paths::BLOBS);
            for shard in self.names(&alg_dir).await? {
                for hex in self.names(&format!("{alg_dir}/{shard}")).await? {
                    if let Ok(d) = Digest::parse(&format!("{alg}:{hex}"))
                        && d.hex().starts_with(&shard)
                    {
                        found.push(d);
                    }
                }
            }
        }
        Ok(found)
    }

    /// A revision's link and bytes, parsed.
    pub async fn read_revision(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<std::result::Result<ManifestRead, Unreadable>> {
        let reference = crate::reference::Reference::Digest(digest.clone());
        let revision = match self.revision(repo, &reference).await {
            Ok((_, revision)) => revision,
            Err(StorageError::ManifestUnknown(_)) => return Ok(Err(Unreadable::Link)),
            Err(e) => return Err(e),
        };
        let content = revision.content.clone();
        let bytes = match self.driver.get(&paths::blob_data(&content)).await {
            Ok(bytes) => bytes,
            Err(DriverError::NotFound(_)) => return Ok(Err(Unreadable::Content(content))),
            Err(e) => return Err(e.into()),
        };
        Ok(match manifest::parse(Some(&revision.media_type), &bytes) {
            Ok(manifest) => Ok(ManifestRead { content, manifest }),
            Err(e) => Err(Unreadable::Manifest(content, e.to_string())),
        })
    }

    /// Whether `key` was written at or after `since` (gone counts as not).
    pub async fn written_since(&self, key: &str, since: std::time::SystemTime) -> Result<bool> {
        match self.driver.stat(key).await {
            Ok(meta) => Ok(meta.modified >= since),
            Err(DriverError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Digests stored as `<prefix>/<alg>/<hex>`.
    async fn digests_under(&self, prefix: &str) -> Result<Vec<Digest>> {
        let mut found = Vec::new();
        for alg in self.names(prefix).await? {
            for hex in self.names(&format!("{prefix}/{alg}")).await? {
                if let Ok(d) = Digest::parse(&format!("{alg}:{hex}")) {
                    found.push(d);
                }
            }
        }
        Ok(found)
    }

    /// The names under a prefix; none when it holds nothing.
    async fn names(&self, prefix: &str) -> Result<Vec<String>> {
        match self.driver.list(prefix).await {
            Ok(names) => Ok(names),
            Err(DriverError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}
