//! Garbage collection: what no tag (or, by default, no manifest) of any
//! repository still needs is removed, while servers keep serving and
//! accepting pushes over the same store.
//!
//! **Mark.** In each repository the kept manifests are: every tagged one,
//! every other one too unless `delete_untagged`, every one written within
//! the grace period, and from each kept manifest the manifests its index
//! lists and the referrers whose subject it is. A kept manifest keeps its
//! bytes' blob and the blobs it references (config, layers); those links
//! stay, and so does any link written within the grace period.
//!
//! **Sweep**, in this order, each removal checked against the grace
//! period right before it is made:
//! 1. the manifests and blob links not kept, repository by repository;
//! 2. a pause as long as the servers' metadata cache may keep a link
//!    (`storage.staleness_secs`), so that no server can still believe a
//!    removed link exists;
//! 3. a second look at every link: anything linked now (a push or mount
//!    made during the run) keeps its blob;
//! 4. the blobs neither look found linked.
//!
//! **Why it is safe while pushes go on** (a grace period by age, no locks,
//! so any number of replicas may keep serving): a push writes its blob,
//! then links it, then writes its manifest, then its tag, each a fresh
//! object. Whatever a push wrote after the run began is younger than the
//! grace period and is never removed. A push that reuses stored content
//! writes it again (an upload's bytes are moved over the equal blob, a
//! manifest's bytes are rewritten), so reused content is young too. A mount
//! writes only a link, and needs a link in its source repository: a source
//! link still there after step 1 keeps its blob; one removed in step 1 can
//! no longer be mounted from once the pause of step 2 is over; a mount made
//! before then is found by step 3. The one window left is between the age
//! check of one object and its removal (a few milliseconds), in which a
//! push would have to write exactly that unreferenced object again. The
//! grace period (one hour by default) must be longer than any push takes
//! from its first blob to its manifest; uploads in progress are not blobs
//! yet and are never touched (the servers' own sweep ends idle ones).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, TryStreamExt};

use super::inventory::{Contents, IN_FLIGHT, Unreadable};
use super::manifests::ignore_missing;
use super::{DriverError, Result, Storage, paths};
use crate::reference::{Digest, RepoName};

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Report what would go, remove nothing.
    pub dry_run: bool,
    /// Manifests no tag reaches go too (by default only unreferenced blobs
    /// and links go, as distribution's collector does without `-m`).
    pub delete_untagged: bool,
    /// Nothing written within this long before the run began is removed.
    pub grace: Duration,
    /// How long a server may believe a removed link still exists: the
    /// servers' `storage.staleness_secs` (step 2 above).
    pub settle: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dry_run: false,
            delete_untagged: false,
            grace: DEFAULT_GRACE,
            settle: Duration::from_secs(5),
        }
    }
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What a run did (or, dry, would do).
#[derive(Debug, Default)]
pub struct Report {
    pub repositories: usize,
    pub manifests_kept: usize,
    /// `repository@digest` of each manifest removed.
    pub manifests_removed: Vec<String>,
    pub links_removed: usize,
    pub blobs: usize,
    pub blobs_kept: usize,
    pub blobs_removed: usize,
    pub bytes_removed: u64,
    /// Unreferenced, but written within the grace period (or found linked
    /// by the second look): left for a later run.
    pub young: usize,
    /// Links no manifest references, kept as written within the grace
    /// period (a push in progress, most likely).
    pub young_links: usize,
}

/// Progress, for a bar or a log.
#[derive(Debug, Clone)]
pub enum Event {
    /// Marking starts over this many repositories.
    Marking {
        repositories: usize,
    },
    Marked {
        repository: String,
    },
    /// Blobs are looked at: this many stored.
    Sweeping {
        blobs: usize,
    },
    Swept {
        blobs: usize,
    },
    /// Waiting for the servers' caches (step 2).
    Settling(Duration),
}

/// What marking decided of one repository.
struct Marks {
    repo: RepoName,
    kept: BTreeSet<Digest>,
    /// Revisions that go (untagged, old).
    doomed: Vec<Digest>,
    /// `(subject, referrer)` entries of doomed referrers.
    doomed_entries: Vec<(Digest, Digest)>,
    /// Links that go (unreferenced, old).
    unlinked: Vec<Digest>,
    /// Unreferenced links kept for their age.
    young_links: usize,
}

impl Storage {
    /// Collects garbage (see the module's documentation).
    pub async fn collect_garbage(
        &self,
        options: &Options,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report> {
        let began = SystemTime::now();
        let cutoff = began.checked_sub(options.grace).unwrap_or(began);
        let mut report = Report::default();
        let mut marked: HashSet<Digest> = HashSet::new();

        let repos = self.repository_names().await?;
        report.repositories = repos.len();
        events(Event::Marking {
            repositories: repos.len(),
        });
        let mut plans = Vec::with_capacity(repos.len());
        for repo in repos {
            let marks = self
                .mark_repository(&repo, options, cutoff, &mut marked)
                .await?;
            events(Event::Marked {
                repository: repo.to_string(),
            });
            report.manifests_kept += marks.kept.len();
            report.young_links += marks.young_links;
            plans.push(marks);
        }

        for marks in &plans {
            let (removed, links) = match options.dry_run {
                true => (marks.doomed.clone(), marks.unlinked.len()),
                false => self.sweep_repository(marks, cutoff, &mut marked).await?,
            };
            report
                .manifests_removed
                .extend(removed.iter().map(|d| format!("{}@{d}", marks.repo)));
            report.links_removed += links;
        }
        if !options.dry_run {
            // The links removed above may still be believed in for a while
            // by a server's cache; then look again at what is linked now.
            events(Event::Settling(options.settle));
            tokio::time::sleep(options.settle).await;
            let seen: HashSet<(String, Digest)> = plans
                .iter()
                .flat_map(|m| m.kept.iter().map(|d| (m.repo.to_string(), d.clone())))
                .collect();
            self.mark_linked_now(&seen, &mut marked).await?;
        }

        let blobs = self.blob_digests().await?;
        report.blobs = blobs.len();
        events(Event::Sweeping { blobs: blobs.len() });
        let candidates: Vec<Digest> = blobs
            .into_iter()
            .filter(|d| {
                let keep = marked.contains(d);
                report.blobs_kept += usize::from(keep);
                !keep
            })
            .collect();
        let outcomes: Vec<Option<u64>> = futures_util::stream::iter(candidates)
            .map(|digest| async move {
                let key = paths::blob_data(&digest);
                let meta = match self.driver.stat(&key).await {
                    Ok(meta) => meta,
                    Err(DriverError::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                if meta.modified >= cutoff {
                    return Ok(None);
                }
                if !options.dry_run {
                    ignore_missing(self.driver.delete(&key).await)?;
                }
                Ok::<_, super::StorageError>(Some(meta.size))
            })
            .buffer_unordered(IN_FLIGHT)
            .inspect(|_| events(Event::Swept { blobs: 1 }))
            .try_collect()
            .await?;
        for outcome in outcomes {
            match outcome {
                Some(size) => {
                    report.blobs_removed += 1;
                    report.bytes_removed += size;
                }
                None => report.young += 1,
            }
        }
        Ok(report)
    }

    async fn mark_repository(
        &self,
        repo: &RepoName,
        options: &Options,
        cutoff: SystemTime,
        marked: &mut HashSet<Digest>,
    ) -> Result<Marks> {
        let contents = self.contents(repo).await?;
        let revisions: BTreeSet<Digest> = contents.revisions.iter().cloned().collect();
        let mut roots: Vec<Digest> = contents
            .tags
            .values()
            .flatten()
            .filter(|d| revisions.contains(*d))
            .cloned()
            .collect();
        if !options.delete_untagged {
            roots.extend(revisions.iter().cloned());
        }
        let referrers = referrers_by_subject(&contents);
        let mut kept = BTreeSet::new();
        let mut references = BTreeSet::new();
        self.keep_closure(
            repo,
            roots,
            &revisions,
            &referrers,
            &mut kept,
            &mut references,
        )
        .await?;
        // Untagged and unreached: young ones stay (an index's children are
        // pushed before it, by digest), and what they reach with them.
        let untagged: Vec<Digest> = revisions.difference(&kept).cloned().collect();
        let young = self
            .young(repo, untagged.clone(), cutoff, paths::manifest_revision)
            .await?;
        self.keep_closure(
            repo,
            young,
            &revisions,
            &referrers,
            &mut kept,
            &mut references,
        )
        .await?;
        let doomed: Vec<Digest> = untagged.into_iter().filter(|d| !kept.contains(d)).collect();
        let doomed_set: BTreeSet<&Digest> = doomed.iter().collect();
        let doomed_entries = contents
            .referrers
            .iter()
            .filter(|(_, referrer)| doomed_set.contains(referrer))
            .cloned()
            .collect();

        let unreferenced: Vec<Digest> = contents
            .layers
            .iter()
            .filter(|d| !references.contains(*d))
            .cloned()
            .collect();
        let young_links = self
            .young(repo, unreferenced.clone(), cutoff, paths::layer_link)
            .await?;
        let young_links: BTreeSet<Digest> = young_links.into_iter().collect();
        let unlinked = unreferenced
            .into_iter()
            .filter(|d| !young_links.contains(d))
            .collect();
        marked.extend(references);
        let young_count = young_links.len();
        marked.extend(young_links);
        Ok(Marks {
            repo: repo.clone(),
            kept,
            doomed,
            doomed_entries,
            unlinked,
            young_links: young_count,
        })
    }

    /// Keeps `roots` and everything they reach in `repo`; `references`
    /// gathers the blobs the kept manifests need (their bytes included).
    async fn keep_closure(
        &self,
        repo: &RepoName,
        roots: Vec<Digest>,
        revisions: &BTreeSet<Digest>,
        referrers: &BTreeMap<Digest, Vec<Digest>>,
        kept: &mut BTreeSet<Digest>,
        references: &mut BTreeSet<Digest>,
    ) -> Result<()> {
        let mut pending = roots;
        while !pending.is_empty() {
            let batch: Vec<Digest> = pending
                .drain(..)
                .filter(|d| revisions.contains(d) && kept.insert(d.clone()))
                .collect();
            let read: Vec<_> = futures_util::stream::iter(batch)
                .map(|d| async move { self.read_revision(repo, &d).await.map(|r| (d, r)) })
                .buffer_unordered(IN_FLIGHT)
                .try_collect()
                .await?;
            for (digest, revision) in read {
                if let Some(children) = referrers.get(&digest) {
                    pending.extend(children.iter().cloned());
                }
                // A manifest that cannot be read back keeps what it can:
                // its bytes, if they are there. `fsck` reports it.
                match revision {
                    Ok(read) => {
                        references.insert(read.content);
                        references.extend(read.manifest.blobs);
                        pending.extend(read.manifest.children);
                    }
                    Err(Unreadable::Content(content)) | Err(Unreadable::Manifest(content, _)) => {
                        references.insert(content);
                    }
                    Err(Unreadable::Link) => {}
                }
            }
        }
        Ok(())
    }

    /// Those of `digests` whose object (`key` of it) was written since `cutoff`.
    async fn young(
        &self,
        repo: &RepoName,
        digests: Vec<Digest>,
        cutoff: SystemTime,
        key: fn(&RepoName, &Digest) -> String,
    ) -> Result<Vec<Digest>> {
        let checked: Vec<(Digest, bool)> = futures_util::stream::iter(digests)
            .map(|d| async move {
                let young = self.written_since(&key(repo, &d), cutoff).await?;
                Ok::<_, super::StorageError>((d, young))
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(checked
            .into_iter()
            .filter_map(|(d, young)| young.then_some(d))
            .collect())
    }

    /// Removes what marking doomed in one repository, each object only if it
    /// is still old; returns the manifests removed and how many links went.
    /// A manifest found young
    /// again (pushed anew during the run) stays, with what it references.
    async fn sweep_repository(
        &self,
        marks: &Marks,
        cutoff: SystemTime,
        marked: &mut HashSet<Digest>,
    ) -> Result<(Vec<Digest>, usize)> {
        let repo = &marks.repo;
        let mut removed = Vec::new();
        let mut links = 0;
        for digest in &marks.doomed {
            let key = paths::manifest_revision(repo, digest);
            if self.written_since(&key, cutoff).await? {
                if let Ok(Ok(read)) = self.read_revision(repo, digest).await {
                    marked.insert(read.content);
                    marked.extend(read.manifest.blobs);
                }
                continue;
            }
            for (subject, referrer) in &marks.doomed_entries {
                if referrer == digest {
                    ignore_missing(
                        self.driver
                            .delete(&paths::referrer(repo, subject, referrer))
                            .await,
                    )?;
                }
            }
            ignore_missing(self.driver.delete(&key).await)?;
            removed.push(digest.clone());
        }
        for digest in &marks.unlinked {
            let key = paths::layer_link(repo, digest);
            if self.written_since(&key, cutoff).await? {
                marked.insert(digest.clone());
                continue;
            }
            ignore_missing(self.driver.delete(&key).await)?;
            links += 1;
        }
        Ok((removed, links))
    }

    /// The second look (step 3): every blob linked now, and what every
    /// manifest not seen by marking references, is kept.
    async fn mark_linked_now(
        &self,
        seen: &HashSet<(String, Digest)>,
        marked: &mut HashSet<Digest>,
    ) -> Result<()> {
        for repo in self.repository_names().await? {
            let contents = self.links(&repo).await?;
            marked.extend(contents.layers);
            let name = repo.to_string();
            let new: Vec<Digest> = contents
                .revisions
                .into_iter()
                .filter(|d| !seen.contains(&(name.clone(), d.clone())))
                .collect();
            let read: Vec<_> = futures_util::stream::iter(new)
                .map(|d| {
                    let repo = &repo;
                    async move { self.read_revision(repo, &d).await }
                })
                .buffer_unordered(IN_FLIGHT)
                .try_collect()
                .await?;
            for revision in read.into_iter().flatten() {
                marked.insert(revision.content);
                marked.extend(revision.manifest.blobs);
            }
        }
        Ok(())
    }
}

/// The referrers of each subject, from a repository's entries.
fn referrers_by_subject(contents: &Contents) -> BTreeMap<Digest, Vec<Digest>> {
    let mut by_subject: BTreeMap<Digest, Vec<Digest>> = BTreeMap::new();
    for (subject, referrer) in &contents.referrers {
        by_subject
            .entry(subject.clone())
            .or_default()
            .push(referrer.clone());
    }
    by_subject
}
