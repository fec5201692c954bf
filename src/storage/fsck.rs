//! The store's check: every blob's bytes against its digest, every link
//! against what it points at, every manifest against what it references;
//! with `repair`, what is broken is removed so that clients push it again.
//!
//! Repairs remove, never invent: a corrupt blob is deleted (the next push of
//! it stores good bytes; a pull gets `BLOB_UNKNOWN`, not wrong bytes), a
//! link, tag or referrer entry pointing at nothing is deleted, a manifest
//! whose bytes are gone is deleted with its tags. A manifest that references
//! a missing blob is reported and left: its bytes are good, and pushing the
//! blob again makes it whole.
//!
//! Read-only without `repair`, so safe beside running servers. With it,
//! the check only removes what points at nothing, which a push never leaves
//! behind: a push writes what is pointed at before the pointer.

use std::collections::{BTreeMap, HashSet};

use futures_util::{StreamExt, TryStreamExt};

use super::inventory::{IN_FLIGHT, Unreadable};
use super::manifests::ignore_missing;
use super::{DriverError, Result, Storage, StorageError, paths};
use crate::reference::{Digest, RepoName, Tag};

/// What the check finds wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The bytes' digest is not the one they are stored under.
    CorruptBlob { digest: Digest, actual: Digest },
    /// A repository's link to a blob that is not stored.
    DanglingLink { repo: RepoName, digest: Digest },
    /// A manifest revision whose link or bytes cannot be read back.
    BrokenManifest {
        repo: RepoName,
        digest: Digest,
        why: String,
    },
    /// A tag naming a manifest the repository does not hold.
    DanglingTag {
        repo: RepoName,
        tag: Tag,
        target: Option<Digest>,
    },
    /// A referrer entry of a manifest the repository does not hold.
    DanglingReferrer {
        repo: RepoName,
        subject: Digest,
        referrer: Digest,
    },
    /// A manifest referencing a blob or manifest the repository lacks.
    MissingReference {
        repo: RepoName,
        manifest: Digest,
        missing: Digest,
    },
}

impl Problem {
    /// Whether `repair` removes it (else it needs a push).
    pub fn repairable(&self) -> bool {
        !matches!(self, Problem::MissingReference { .. })
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::CorruptBlob { digest, actual } => {
                write!(f, "corrupt blob {digest}: its bytes hash to {actual}")
            }
            Problem::DanglingLink { repo, digest } => {
                write!(f, "dangling link {repo}@{digest}: the blob is not stored")
            }
            Problem::BrokenManifest { repo, digest, why } => {
                write!(f, "broken manifest {repo}@{digest}: {why}")
            }
            Problem::DanglingTag { repo, tag, target } => match target {
                Some(target) => write!(f, "dangling tag {repo}:{tag}: no manifest {target}"),
                None => write!(f, "dangling tag {repo}:{tag}: it names no digest"),
            },
            Problem::DanglingReferrer {
                repo,
                subject,
                referrer,
            } => write!(
                f,
                "dangling referrer {repo}@{referrer} of {subject}: no such manifest"
            ),
            Problem::MissingReference {
                repo,
                manifest,
                missing,
            } => write!(
                f,
                "manifest {repo}@{manifest} references {missing}, which {repo} lacks (push it again)"
            ),
        }
    }
}

/// How a check runs.
pub struct Options<'a> {
    pub repair: bool,
    /// Repositories whose manifests may reference what is fetched on first
    /// pull (a pull-through cache's): a missing blob there is no problem.
    pub fetched_later: &'a (dyn Fn(&RepoName) -> bool + Sync),
}

#[derive(Debug, Default)]
pub struct Report {
    pub blobs: usize,
    pub bytes: u64,
    pub repositories: usize,
    pub links: usize,
    pub manifests: usize,
    /// Each problem, and whether it was repaired.
    pub problems: Vec<(Problem, bool)>,
}

/// Progress, for a bar or a log.
#[derive(Debug, Clone)]
pub enum Event {
    Hashing { blobs: usize, bytes: u64 },
    Hashed { bytes: u64 },
    Checking { repositories: usize },
    Checked { repository: String },
    Found(Problem),
}

impl Storage {
    /// Checks (and with `repair`, fixes) the store.
    pub async fn check(
        &self,
        options: &Options<'_>,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<Report> {
        let mut report = Report::default();
        let digests = self.blob_digests().await?;
        let sized: Vec<(Digest, u64)> = futures_util::stream::iter(digests)
            .map(|d| async move {
                match self.driver.stat(&paths::blob_data(&d)).await {
                    Ok(meta) => Ok(Some((d, meta.size))),
                    Err(DriverError::NotFound(_)) => Ok(None),
                    Err(e) => Err(StorageError::from(e)),
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_filter_map(|found| async move { Ok(found) })
            .try_collect()
            .await?;
        report.blobs = sized.len();
        report.bytes = sized.iter().map(|(_, size)| size).sum();
        events(Event::Hashing {
            blobs: report.blobs,
            bytes: report.bytes,
        });
        // A few at once: hashing is the CPU's, reading the store's.
        let hashed: Vec<(Digest, Option<Digest>)> = futures_util::stream::iter(sized)
            .map(|(digest, size)| async move {
                let key = paths::blob_data(&digest);
                let actual = match self.rehash(&key, digest.algorithm(), size).await {
                    Ok(actual) => Some(actual),
                    // Deleted since it was listed (a collection).
                    Err(StorageError::Driver(DriverError::NotFound(_))) => None,
                    Err(e) => return Err(e),
                };
                events(Event::Hashed { bytes: size });
                Ok((digest, actual))
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        // What the repositories' links may point at: a corrupt blob left in
        // place counts, as reported once already.
        let mut stored: HashSet<Digest> = HashSet::with_capacity(hashed.len());
        for (digest, actual) in hashed {
            match actual {
                Some(actual) if actual != digest => {
                    let repaired = options.repair
                        && ignore_missing(self.driver.delete(&paths::blob_data(&digest)).await)
                            .map(|()| true)?;
                    if !repaired {
                        stored.insert(digest.clone());
                    }
                    found(
                        &mut report,
                        events,
                        Problem::CorruptBlob { digest, actual },
                        repaired,
                    );
                }
                Some(_) => {
                    stored.insert(digest);
                }
                None => {}
            }
        }

        let repos = self.repository_names().await?;
        report.repositories = repos.len();
        events(Event::Checking {
            repositories: repos.len(),
        });
        for repo in repos {
            self.check_repository(&repo, &stored, options, &mut report, events)
                .await?;
            events(Event::Checked {
                repository: repo.to_string(),
            });
        }
        Ok(report)
    }

    async fn check_repository(
        &self,
        repo: &RepoName,
        stored: &HashSet<Digest>,
        options: &Options<'_>,
        report: &mut Report,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<()> {
        let contents = self.contents(repo).await?;
        report.links += contents.layers.len();
        report.manifests += contents.revisions.len();
        let linked: HashSet<&Digest> = contents.layers.iter().collect();
        for digest in contents.layers.iter().filter(|d| !stored.contains(*d)) {
            let repaired = options.repair && self.remove(&paths::layer_link(repo, digest)).await?;
            let problem = Problem::DanglingLink {
                repo: repo.clone(),
                digest: digest.clone(),
            };
            found(report, events, problem, repaired);
        }

        let read: BTreeMap<Digest, _> = futures_util::stream::iter(contents.revisions.clone())
            .map(|d| async move { self.read_revision(repo, &d).await.map(|r| (d, r)) })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        let mut whole: HashSet<&Digest> = HashSet::new();
        for (digest, revision) in &read {
            let why = match revision {
                Ok(revision) if stored.contains(&revision.content) => {
                    whole.insert(digest);
                    if !(options.fetched_later)(repo) {
                        let missing = revision
                            .manifest
                            .blobs
                            .iter()
                            .filter(|b| !(linked.contains(b) && stored.contains(*b)))
                            .chain(
                                revision
                                    .manifest
                                    .children
                                    .iter()
                                    .filter(|c| !read.contains_key(*c)),
                            );
                        for missing in missing {
                            let problem = Problem::MissingReference {
                                repo: repo.clone(),
                                manifest: digest.clone(),
                                missing: missing.clone(),
                            };
                            found(report, events, problem, false);
                        }
                    }
                    continue;
                }
                // Its bytes were corrupt, and removed above.
                Ok(revision) => format!("its bytes ({}) were corrupt", revision.content),
                Err(Unreadable::Link) => "its link does not parse".to_owned(),
                Err(Unreadable::Content(content)) => {
                    format!("its bytes ({content}) are not stored")
                }
                Err(Unreadable::Manifest(_, why)) => format!("its bytes do not parse: {why}"),
            };
            let repaired =
                options.repair && self.remove(&paths::manifest_revision(repo, digest)).await?;
            let problem = Problem::BrokenManifest {
                repo: repo.clone(),
                digest: digest.clone(),
                why,
            };
            found(report, events, problem, repaired);
        }

        for (tag, target) in &contents.tags {
            if target.as_ref().is_some_and(|t| whole.contains(t)) {
                continue;
            }
            let repaired = options.repair && self.remove(&paths::tag(repo, tag)).await?;
            let problem = Problem::DanglingTag {
                repo: repo.clone(),
                tag: tag.clone(),
                target: target.clone(),
            };
            found(report, events, problem, repaired);
        }
        for (subject, referrer) in &contents.referrers {
            if whole.contains(referrer) {
                continue;
            }
            let repaired = options.repair
                && self
                    .remove(&paths::referrer(repo, subject, referrer))
                    .await?;
            let problem = Problem::DanglingReferrer {
                repo: repo.clone(),
                subject: subject.clone(),
                referrer: referrer.clone(),
            };
            found(report, events, problem, repaired);
        }
        Ok(())
    }

    /// Deletes what a repair removes; `true` once it is gone.
    async fn remove(&self, key: &str) -> Result<bool> {
        ignore_missing(self.driver.delete(key).await).map(|()| true)
    }
}

/// Reports a problem as it is found, and keeps it for the report.
fn found(report: &mut Report, events: &(dyn Fn(Event) + Sync), problem: Problem, repaired: bool) {
    events(Event::Found(problem.clone()));
    report.problems.push((problem, repaired));
}
